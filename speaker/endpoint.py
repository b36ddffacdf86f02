"""The speaker's two HTTP listeners, and the client `podbgp status` and `podbgp explain` use.

- `statusAddress` (TCP, what Prometheus and the kubelet reach): /metrics, /healthz, /livez,
  /readyz, nothing else.
- `<runtimeDir>/status.sock` (a Unix socket, mode 0600, root's): everything, /status and
  /explain included. They show the node's peers, routes and the import policy's reasons:
  node-local information, for whoever is root on the node (or execs into its Pod).
"""
from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from . import explain
from .config import parse_address
from .status import metrics_registry, status_chunks

if TYPE_CHECKING:
    from .app import Speaker

log = logging.getLogger(__name__)

SOCKET_NAME = "status.sock"
DEFAULT_SOCKET = "/run/podbgp/" + SOCKET_NAME
PUBLIC = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})
NOT_HERE = (b"not found: this address serves /metrics, /healthz and /readyz only; /status and /explain are on the "
            b"node's Unix socket (<runtimeDir>/status.sock): run `podbgp status` on the node\n")


class EndpointError(Exception):
    """The speaker answered, but not 200: `status` is the HTTP code, the message its one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def socket_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, SOCKET_NAME)


class Endpoints:
    """Both listeners; close() stops them and removes the socket, if it is still the one we bound."""

    def __init__(self, public: asyncio.AbstractServer, local: asyncio.AbstractServer, path: str) -> None:
        self.public, self.local, self.path = public, local, path
        self._inode = _inode(path)

    def close(self) -> None:
        self.public.close()
        self.local.close()
        if self._inode is not None and _inode(self.path) == self._inode:  # not a successor's socket
            os.unlink(self.path)

    async def wait_closed(self) -> None:
        await self.public.wait_closed()
        await self.local.wait_closed()


async def serve(sp: Speaker, address: str, path: str) -> Endpoints:
    """The public listener on `address` (see parse_address), the local one on the Unix socket `path`."""
    public = await serve_public(sp, address)
    try:
        local = await serve_local(sp, path)
    except BaseException:
        public.close()
        raise
    return Endpoints(public, local, path)


async def serve_public(sp: Speaker, address: str) -> asyncio.AbstractServer:
    host, port = parse_address(address)
    return await asyncio.start_server(_handler(sp, local=False), host, port, reuse_address=True)


async def serve_local(sp: Speaker, path: str) -> asyncio.AbstractServer:
    return await asyncio.start_unix_server(_handler(sp, local=True), sock=bind_unix(path))


def bind_unix(path: str) -> socket.socket:
    """A listening-ready Unix socket at `path`, mode 0600 from the start; a stale socket there (a
    speaker that was killed) is replaced; anything else in the way is an error."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(f"{path} exists and is not a socket; not replacing it")
        os.unlink(path)
        log.info("status.socket.replaced path=%s", path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # before any worker thread starts (speaker.cli): no window at a wider mode
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _handler(sp: Speaker, local: bool):
    registry = metrics_registry(sp)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            accept = ""
            while (header := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                name, _, value = header.decode(errors="replace").partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
            parts = request.decode(errors="replace").split()
            path, _, query = (parts[1] if len(parts) > 1 else "/").partition("?")
            if not local and path not in PUBLIC:
                code, ctype, data = "404 Not Found", "text/plain", NOT_HERE
            elif path == "/explain":  # may read the kernel in a worker thread (speaker.explain)
                code, ctype, data = await explain.respond(sp, query)
            elif path == "/status":  # streamed: the body ends when the connection closes
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
                for chunk in status_chunks(sp):
                    writer.write(chunk)
                    await writer.drain()
                return
            else:
                code, ctype, data = respond(sp, path, registry, accept)
            writer.write(f"HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                         "Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
    return handle


def respond(sp: Speaker, path: str, registry: CollectorRegistry | None = None, accept: str = "") -> tuple[str, str, bytes]:
    """/metrics, /healthz (/livez), /readyz; anything else 404."""
    if path == "/metrics":
        encode, ctype = choose_encoder(accept)  # text 0.0.4 unless the scraper asks for OpenMetrics
        return "200 OK", ctype, encode(registry if registry is not None else metrics_registry(sp))
    if path in ("/healthz", "/livez"):
        return "200 OK", "text/plain", b"ok\n"
    if path == "/readyz":
        ready = sp.synced and sp.source.ready
        return ("200 OK" if ready else "503 Service Unavailable"), "text/plain", (b"ok\n" if ready else b"not ready\n")
    return "404 Not Found", "text/plain", b"not found\n"


# ---- the client: `podbgp status`, `podbgp explain` ---------------------------------------------

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        try:
            self.sock.connect(self.unix_path)
        except BaseException:
            self.sock.close()
            raise


def fetch(path: str, target: str = "/status", timeout: float = 5.0) -> dict:
    """GET `target` from the speaker's Unix socket at `path`, as JSON. OSError: nobody answers
    there; EndpointError: it answered, not 200 (the body's first line as the message)."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise EndpointError(resp.status, body.decode(errors="replace").strip().splitlines()[0] if body.strip() else resp.reason)
    return json.loads(body)
