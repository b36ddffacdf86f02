"""A streaming HTTP client for the Kubernetes API over the official client's configuration and REST
layer, generic over the resource path (`/api/v1/nodes`, `/api/v1/services`,
`/apis/discovery.k8s.io/v1/endpointslices`): a collection as a stream of items, watch streams,
PATCH; every failure a KubeError saying in one line what could not be reached and why.

What of the official client is kept, and why (kubernetes 37.0.2, Python 3.11, RSS in MiB read
from /proc/self/status right after the imports in a fresh interpreter; VmHWM equal to VmRSS):

    candidate                                              bare 10.7 ->   with urllib3 22.5 ->
    `import kubernetes` (as before)                              46.1         +23.6
    skip only kubernetes/__init__ (ApiClient, config pkg)        42.7         +20.2
    this module, in-cluster (the DaemonSet)                      25.8          +3.3
    this module, kubeconfig (kube_config imported)               42.9         +20.4

`kubernetes.client` itself is already lazy in 37.x (its models load on first use), so the cost
is elsewhere: `kubernetes/__init__` imports dynamic, stream, utils, leaderelection and informer;
`ApiClient` brings pydantic (4.4) and a pydantic response model (5.9 with it); the package
`kubernetes.config` imports the kubeconfig loader and with it requests, oauthlib and dateutil
(6.4) even for the in-cluster loader. So this module keeps:

- `kubernetes.client.configuration.Configuration`: host, TLS (CA, client certificate, server
  name), proxy and the bearer token with its refresh hook;
- `kubernetes.config.incluster_config` (the DaemonSet's loader, which re-reads the bound
  service-account token file every minute through that hook) and, only with --kubeconfig,
  `kubernetes.config.kube_config` (exec plugins, client certificates, OIDC; it imports ApiClient,
  so that path costs what it did);
- `kubernetes.client.rest.RESTClientObject`: the urllib3 pool with keep-alive socket options,
  TLS and proxies, doing every request, with `Configuration.retries = 0` so podbgp's backoff is
  the only retry.

Watch streams it reads itself: lines split as bytes (`split_lines`) and decoded with orjson. A
watch event of a 100-endpoint EndpointSlice (22.7 KB) took 220-260 us in `json.loads` of the str
`kubernetes.watch.watch.iter_resp_lines` makes of it, and takes ~100 us in `orjson.loads` of the
bytes (CPython 3.11, orjson 3.13, whose import adds 1.3 MiB of RSS); that decoding was the
largest part of the speaker's CPU under EndpointSlice churn (bench.services). orjson refuses what
the API server never sends (invalid UTF-8, integers beyond 64 bits): such a line fails the watch,
which is retried like any other failure.

It drops ApiClient: its param_serialize joined host, path and query and set the Accept and
authorization headers (`Configuration.auth_settings()`, which calls the refresh hook); that is
`_request` below. To import those modules without running the package `__init__`s, `kubernetes`,
`kubernetes.config` and `kubernetes.utils` are registered as skeleton packages first (unless the
process already imported kubernetes): their submodules import as usual, and the first use of any
other name runs the real `__init__` into the same module, so code elsewhere in the process that
does `from kubernetes import client, config` still gets the whole package.

The whole speaker (`podbgp speaker`, API unreachable, VmRSS = VmHWM 4 s after start, two runs
each): before 59.8 MiB with either loader; now 46.2 in-cluster (-13.6: less than the 20 of a bare
interpreter because the speaker loads yaml, ssl and the like anyway) and 59.5 with --kubeconfig.
Without pyroute2 (reconciler.links reads the addresses itself): 36.3 in-cluster, 50.1 with
--kubeconfig. bench.scale runs the speaker in-cluster, as the DaemonSet does.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import socket
import ssl
import sys
import threading
import types
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import orjson

NODES = "/api/v1/nodes"
SERVICES = "/api/v1/services"
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1/endpointslices"


class _Skeleton(types.ModuleType):
    """A package of the kubernetes distribution whose `__init__` has not run yet."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name not in ("__all__", "__version__", "__project__"):
            raise AttributeError(name)
        sub = f"{self.__name__}.{name}"
        if importlib.util.find_spec(sub) is not None:
            return importlib.import_module(sub)
        self.__class__ = types.ModuleType  # from here on an ordinary module
        self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def _skeletons(names: tuple[str, ...] = ("kubernetes", "kubernetes.config", "kubernetes.utils")) -> None:
    if "kubernetes" in sys.modules:
        return
    for name in names:
        module = importlib.util.module_from_spec(importlib.util.find_spec(name))
        module.__class__ = _Skeleton
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


_skeletons()
import kubernetes.client.rest as _rest  # noqa: E402
import kubernetes.config.incluster_config as _incluster  # noqa: E402
from kubernetes.client.configuration import Configuration  # noqa: E402


class KubeError(Exception):
    """A request the API did not serve. `status`: the HTTP status, None if the API was not reached."""

    def __init__(self, line: str, status: int | None = None) -> None:
        super().__init__(line)
        self.status = status


class WatchListUnsupported(KubeError):
    """The server refuses sendInitialEvents (422: the WatchList feature is off)."""


# ---- failures in words ------------------------------------------------------------------------

def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "reason", None) if isinstance(getattr(e, "reason", None), BaseException) else None,
                 e.__cause__, e.__context__]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]


def _why(exc: BaseException) -> str | None:
    """Why a connection failed, in words; None if exc is not a transport failure."""
    from urllib3 import exceptions as u3

    chain = list(_chain(exc))
    gai = next((f" ({e.strerror.lower()})" for e in chain if isinstance(e, socket.gaierror) and e.strerror), "")
    checks = [
        (ssl.SSLCertVerificationError, lambda e: f"TLS certificate verification failed ({e.verify_message or e.reason})"),
        (u3.NameResolutionError, lambda e: f"DNS lookup of {getattr(e.conn, 'host', '?')} failed{gai}"),
        (socket.gaierror, lambda e: f"DNS lookup failed{gai}"),
        (ConnectionRefusedError, lambda e: "connection refused"),
        (ConnectionResetError, lambda e: "connection reset by the server"),
        (u3.ReadTimeoutError, lambda e: "no answer in time (read timeout)"),
        (socket.timeout, lambda e: "connection timed out"),
        (u3.ConnectTimeoutError, lambda e: "connection timed out"),
        (ssl.SSLError, lambda e: f"TLS handshake failed ({str(e.reason or e.strerror or e).replace('_', ' ').lower()})"),
        (u3.SSLError, lambda e: "TLS handshake failed"),
        (u3.ProtocolError, lambda e: "the connection broke off"),
        (OSError, lambda e: (e.strerror or str(e)).lower() if (e.strerror or str(e)) else None),
    ]
    for kind, say in checks:
        for e in chain:
            if isinstance(e, kind) and (text := say(e)):
                return text.splitlines()[0]
    return None


def http_line(status: int, body: bytes | str | None, server: str = "") -> str:
    """`the Kubernetes API at S answered HTTP 403 Forbidden: <the Status message>`."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    try:
        message = json.loads(body or b"{}").get("message", "")
    except (ValueError, AttributeError):
        message = (body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")).strip()
    at = f" at {server}" if server else ""
    text = f"the Kubernetes API{at} answered HTTP {status} {phrase}".rstrip()
    return (f"{text}: {message}" if message else text).splitlines()[0][:300]


def describe(exc: BaseException, server: str = "") -> str:
    """One line in words for a failed API request: what could not be reached and why, or what the
    API answered; the exception's type and first line for anything else."""
    if isinstance(exc, KubeError):
        return str(exc)
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status >= 100:  # the full client's ApiException
        return http_line(status, getattr(exc, "body", None) or getattr(exc, "reason", ""), server)
    why = _why(exc)
    if why:
        return f"cannot reach the Kubernetes API{f' at {server}' if server else ''}: {why}"
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300]


# ---- a collection decoded item by item ---------------------------------------------------------

class ListStream:
    """Iterate the items of a `{"metadata": ..., "items": [...]}` document arriving in chunks;
    `resource_version` is known once the metadata has gone by. Holds one item at a time."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._dec = json.JSONDecoder()
        self._pending = b""
        self.resource_version: str | None = None

    def _more(self) -> bool:
        for chunk in self._chunks:
            if not chunk:
                continue
            data = self._pending + chunk
            try:
                text = data.decode()
                self._pending = b""
            except UnicodeDecodeError as exc:  # a multi-byte character split across chunks
                text, self._pending = data[:exc.start].decode(), data[exc.start:]
            self._buf = self._buf[self._pos:] + text
            self._pos = 0
            return True
        self._eof = True
        return False

    def _skip(self, chars: str = " \t\r\n") -> str:
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in chars:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                raise ValueError("list response ended early")

    def _value(self) -> Any:
        self._skip()
        while True:
            try:
                value, end = self._dec.raw_decode(self._buf, self._pos)
            except ValueError:
                if self._more():
                    continue
                raise
            # a number at the very end of the buffer may be cut short: make sure it is complete
            if end == len(self._buf) and not self._eof and self._more():
                continue
            self._pos = end
            return value

    def _expect(self, char: str) -> None:
        if self._skip() != char:
            raise ValueError(f"list response: expected {char!r} at offset {self._pos}")
        self._pos += 1

    def __iter__(self) -> Iterator[dict]:
        self._expect("{")
        while True:
            c = self._skip(" \t\r\n,")
            if c == "}":
                return
            key = self._value()
            self._expect(":")
            if key != "items":
                value = self._value()
                if key == "metadata" and isinstance(value, dict):
                    self.resource_version = str(value.get("resourceVersion") or "") or None
                continue
            self._expect("[")
            while True:
                if self._skip(" \t\r\n,") == "]":
                    self._pos += 1
                    break
                yield self._value()


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-empty lines of a byte stream arriving in chunks, without their newline; an
    unterminated last line is dropped (a watch stream cut off mid-event). Linear in the bytes
    however an event is split across chunks."""
    pending: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if pending:
                pending.append(chunk[start:end])
                line = b"".join(pending)
                pending.clear()
            else:
                line = chunk[start:end]
            if line.strip():
                yield line
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])


# ---- the client ---------------------------------------------------------------------------------

def load_configuration(kubeconfig: str | None) -> Configuration:
    """The kubeconfig file's current context, or the in-cluster service account."""
    cfg = type.__call__(Configuration)  # not a copy of the process-wide default
    if kubeconfig:
        from kubernetes.config import kube_config

        kube_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        _incluster.load_incluster_config(client_configuration=cfg)
    return cfg


class KubeClient:
    """GET a collection as a stream, watch streams and PATCH, for any resource path."""

    def __init__(self, kubeconfig: str | None, read_timeout: float = 75.0,
                 configuration: Configuration | None = None) -> None:
        cfg = configuration or load_configuration(kubeconfig)
        cfg.retries = 0  # urllib3 retries off: the caller's backoff is the only one
        self.configuration, self.server = cfg, cfg.host
        self.rest = _rest.RESTClientObject(cfg)
        self.read_timeout = read_timeout

    def _request(self, method: str, path: str, query: list[tuple[str, str]] = (), body: Any = None,
                 content_type: str | None = None, timeout: tuple[float, float] = (5, 30)):
        """The urllib3 response, not preloaded, once the status is 2xx; else KubeError."""
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "User-Agent": "podbgp"}
        for auth in self.configuration.auth_settings().values():  # calls the token's refresh hook
            if auth["in"] == "header" and auth["value"]:
                headers[auth["key"]] = auth["value"]
        if content_type:
            headers["Content-Type"] = content_type
        try:
            resp = self.rest.request(method, url, headers=headers, body=body, _request_timeout=timeout).response
        except Exception as exc:
            raise KubeError(describe(exc, self.server)) from exc
        if not 200 <= resp.status <= 299:
            try:
                data = resp.data
            finally:
                resp.release_conn()
            raise KubeError(http_line(resp.status, data, self.server), resp.status)
        return resp

    def list(self, path: str) -> ListStream:
        """The collection from the API server's watch cache (resourceVersion=0), item by item."""
        resp = self._request("GET", path, [("resourceVersion", "0")], timeout=(5, 60))
        return ListStream(self._guarded(resp.stream(1 << 16), resp))

    def watch_list(self, path: str, timeout: int, stop: threading.Event) -> Iterator[dict]:
        """A streaming list: ADDED per object, then the initial-events-end bookmark, then the watch."""
        try:
            resp = self._request("GET", path, [
                ("watch", "true"), ("sendInitialEvents", "true"), ("resourceVersionMatch", "NotOlderThan"),
                ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout))], timeout=(5, self.read_timeout))
        except KubeError as exc:
            if exc.status in (400, 422):
                raise WatchListUnsupported(str(exc), exc.status) from None
            raise
        return self._lines(resp, stop)

    def watch(self, path: str, resource_version: str, timeout: int, stop: threading.Event) -> Iterator[dict]:
        resp = self._request("GET", path, [("watch", "true"), ("resourceVersion", resource_version),
                                           ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout))],
                             timeout=(5, self.read_timeout))
        return self._lines(resp, stop)

    def patch(self, path: str, body: Any, content_type: str = "application/strategic-merge-patch+json") -> None:
        resp = self._request("PATCH", path, body=body, content_type=content_type)
        try:
            resp.data
        finally:
            resp.release_conn()

    # ---- single objects (the allocator's Lease, Service status and Events) -----------------------
    def _object(self, method: str, path: str, body: Any = None, content_type: str | None = None,
                timeout: tuple[float, float] = (5, 30)) -> dict:
        """One request answered by one object, parsed; KubeError (with .status) otherwise."""
        resp = self._request(method, path, body=body, content_type=content_type, timeout=timeout)
        try:
            data = resp.data
        finally:
            resp.release_conn()
        try:
            obj = json.loads(data or b"{}")
        except ValueError as exc:
            raise KubeError(f"the Kubernetes API at {self.server} answered {method} {path} with "
                            f"something that is not JSON: {exc}", resp.status) from None
        if not isinstance(obj, dict):
            raise KubeError(f"the Kubernetes API at {self.server} answered {method} {path} with a "
                            f"{type(obj).__name__}, not an object", resp.status)
        return obj

    def get(self, path: str, timeout: tuple[float, float] = (5, 30)) -> dict:
        """GET one object (a 404 is a KubeError with status 404)."""
        return self._object("GET", path, timeout=timeout)

    def create(self, path: str, body: dict, timeout: tuple[float, float] = (5, 30)) -> dict:
        """POST an object to the collection at `path`; the created object (409: it exists)."""
        return self._object("POST", path, body, "application/json", timeout)

    def replace(self, path: str, body: dict, timeout: tuple[float, float] = (5, 30)) -> dict:
        """PUT the whole object; with metadata.resourceVersion set, a stale one answers 409."""
        return self._object("PUT", path, body, "application/json", timeout)

    update = replace

    def patch_object(self, path: str, body: Any, content_type: str = "application/merge-patch+json",
                     timeout: tuple[float, float] = (5, 30)) -> dict:
        """PATCH (JSON merge patch unless told) and return the object as patched."""
        return self._object("PATCH", path, body, content_type, timeout)

    def patch_node_status(self, name: str, body: dict) -> None:
        """PATCH /api/v1/nodes/{name}/status, strategic merge (conditions merge by type)."""
        self.patch(f"{NODES}/{name}/status", body)

    def _lines(self, resp, stop: threading.Event) -> Iterator[dict]:
        for line in split_lines(self._guarded(resp.stream(amt=None, decode_content=False), resp)):
            if stop.is_set():
                return
            yield orjson.loads(line)

    def _guarded(self, items: Iterable, resp) -> Iterator:
        """Items of a response being read; a broken stream becomes a KubeError; closed at the end."""
        try:
            yield from items
        except Exception as exc:
            raise KubeError(describe(exc, self.server)) from exc
        finally:
            resp.close()
            resp.release_conn()
