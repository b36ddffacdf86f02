"""A Kubernetes API server for Node objects, for the lab and the tests.

It speaks the real REST protocol closely enough that the official Python client and kubectl work
against it unmodified: discovery, OpenAPI v3 stubs, list (also as a Table), watch with bookmarks
and 410 on compacted versions, create, get, update, patch (merge, strategic, JSON), delete, and
the status subresource. It may listen in several network namespaces at once (each node of the
lab reaches it on its own loopback), which is how a node in the lab sees "its" API server.
"""
from __future__ import annotations

import copy
import json
import logging
import random
import socket
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .kubestore import ApiError, Store
from .patch import apply_patch

log = logging.getLogger(__name__)
MINOR = "32"
BOOKMARK_INTERVAL = 5.0

RESOURCES = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
    "resources": [
        {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["no"]},
        {"name": "nodes/status", "singularName": "", "namespaced": False, "kind": "Node",
         "verbs": ["get", "patch", "update"]},
    ],
}
OPENAPI_HASH = "podbgplab1"
GVK = {"x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": "Node"}}
OPENAPI_V1 = {
    "openapi": "3.0.0",
    "info": {"title": "Kubernetes", "version": f"v1.{MINOR}.0"},
    "paths": {
        "/api/v1/nodes/{name}": {
            "patch": {**GVK, "x-kubernetes-action": "patch",
                      "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                      "responses": {"200": {"description": "OK"}}},
        },
        "/api/v1/nodes": {
            "post": {**GVK, "x-kubernetes-action": "post",
                     "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                     "responses": {"201": {"description": "Created"}}},
        },
    },
    "components": {"schemas": {"io.k8s.api.core.v1.Node": {"type": "object", **GVK,
                                                           "x-kubernetes-group-version-kind": [GVK["x-kubernetes-group-version-kind"]]}}},
}

TABLE_COLUMNS = [
    ("Name", "string", "name", 0), ("Status", "string", "", 0), ("Roles", "string", "", 0),
    ("Age", "string", "", 0), ("Version", "string", "", 0), ("Internal-IP", "string", "", 1),
    ("External-IP", "string", "", 1), ("OS-Image", "string", "", 1), ("Kernel-Version", "string", "", 1),
    ("Container-Runtime", "string", "", 1),
]


def _age(ts: str) -> str:
    try:
        then = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return "<unknown>"
    secs = int((datetime.now(timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _row(node: dict) -> dict:
    meta, status = node["metadata"], node.get("status", {})
    addrs: dict = {}
    for a in status.get("addresses", []):
        addrs.setdefault(a.get("type"), a.get("address"))
    ready = next((c.get("status") for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
    roles = sorted(k.split("/", 1)[1] for k in meta.get("labels", {}) if k.startswith("node-role.kubernetes.io/"))
    info = status.get("nodeInfo", {})
    cells = [meta["name"], "Ready" if ready == "True" else ("NotReady" if ready else "Unknown"),
             ",".join(roles) or "<none>", _age(meta.get("creationTimestamp", "")),
             info.get("kubeletVersion", ""), addrs.get("InternalIP", "<none>"), addrs.get("ExternalIP", "<none>"),
             info.get("osImage", "<unknown>"), info.get("kernelVersion", "<unknown>"),
             info.get("containerRuntimeVersion", "<unknown>")]
    partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    return {"cells": cells, "object": partial}


def _matches(node: dict, labels: str | None, fields: str | None) -> bool:
    for sel, getter in ((labels, lambda k: node["metadata"].get("labels", {}).get(k)),
                        (fields, lambda k: {"metadata.name": node["metadata"]["name"]}.get(k))):
        if not sel:
            continue
        for term in sel.split(","):
            term = term.strip()
            if "!=" in term:
                k, v = term.split("!=", 1)
                if getter(k.strip()) == v.strip():
                    return False
            elif "=" in term:
                k, v = term.replace("==", "=").split("=", 1)
                if getter(k.strip()) != v.strip():
                    return False
            elif term and getter(term) is None:
                return False
    return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "podbgp-lab-apiserver"
    store: Store

    def log_message(self, fmt: str, *args) -> None:  # quiet by default
        log.debug("http %s", fmt % args)

    # -- plumbing ------------------------------------------------------------------------------
    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict | list:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            try:
                import yaml
                return yaml.safe_load(raw) or {}
            except Exception:
                raise ApiError(400, "BadRequest", "body is neither JSON nor YAML") from None

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if self.server.stopping.is_set():
            self.close_connection = True
        try:
            self._dispatch(method, parts, q)
        except ApiError as err:
            self._send(err.code, err.status())
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = lambda self: self._route("GET")  # noqa: E731
    do_POST = lambda self: self._route("POST")  # noqa: E731
    do_PUT = lambda self: self._route("PUT")  # noqa: E731
    do_PATCH = lambda self: self._route("PATCH")  # noqa: E731
    do_DELETE = lambda self: self._route("DELETE")  # noqa: E731

    def _dispatch(self, method: str, parts: list[str], q: dict[str, str]) -> None:
        if method == "GET" and parts == ["version"]:
            return self._send(200, {"major": "1", "minor": MINOR, "gitVersion": f"v1.{MINOR}.0",
                                    "platform": "linux/amd64", "compiler": "gc"})
        if method == "GET" and parts in (["healthz"], ["readyz"], ["livez"]):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(data)
            return None
        if method == "GET" and parts == ["api"]:
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.server.server_address[0]}:{self.server.server_address[1]}"}]})
        if method == "GET" and parts == ["apis"]:
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if method == "GET" and parts == ["api", "v1"]:
            return self._send(200, RESOURCES)
        if method == "GET" and parts == ["openapi", "v3"]:
            return self._send(200, {"paths": {"api/v1": {"serverRelativeURL": f"/openapi/v3/api/v1?hash={OPENAPI_HASH}"}}})
        if method == "GET" and parts == ["openapi", "v3", "api", "v1"]:
            return self._send(200, OPENAPI_V1)
        if parts[:3] == ["api", "v1", "nodes"]:
            return self._nodes(method, parts[3:], q)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _nodes(self, method: str, rest: list[str], q: dict[str, str]) -> None:
        store = self.store
        if not rest:
            if method == "GET" and q.get("watch") in ("true", "1"):
                return self._watch(q)
            if method == "GET":
                return self._list(q)
            if method == "POST":
                body = self._body()
                if q.get("dryRun"):
                    return self._send(201, body)
                return self._send(201, store.create(body))
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on the collection")
        name, sub = rest[0], rest[1:]
        if sub not in ([], ["status"]):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        status = sub == ["status"]
        if method == "GET":
            return self._send(200, store.get(name))
        if method == "PUT":
            return self._send(200, store.update(name, self._body(), status=status))
        if method == "PATCH":
            ctype = (self.headers.get("Content-Type") or "application/merge-patch+json").split(";")[0].strip()
            patch = self._body()
            for _ in range(5):  # optimistic concurrency: retry on a racing writer
                current = store.get(name)
                updated = apply_patch(copy.deepcopy(current), patch, ctype)
                updated.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
                try:
                    return self._send(200, store.update(name, updated, status=status))
                except ApiError as err:
                    if err.code != 409:
                        raise
            raise ApiError(409, "Conflict", "too many concurrent writers")
        if method == "DELETE":
            self._body()
            return self._send(200, store.delete(name))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _list(self, q: dict[str, str]) -> None:
        rv_match = q.get("resourceVersionMatch")
        if rv_match == "Exact" and q.get("resourceVersion"):
            want = int(q["resourceVersion"])
            if want < self.store.compacted:
                raise ApiError(410, "Expired", f"too old resource version: {want}")
        items, rv = self.store.list()
        items = [n for n in items if _matches(n, q.get("labelSelector"), q.get("fieldSelector"))]
        if "as=Table" in (self.headers.get("Accept") or ""):
            return self._send(200, {
                "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
                "columnDefinitions": [{"name": n, "type": t, "format": f, "description": n, "priority": p}
                                      for n, t, f, p in TABLE_COLUMNS],
                "rows": [_row(n) for n in items]})
        return self._send(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": rv},
                                "items": items})

    # -- watch ---------------------------------------------------------------------------------
    def _chunk(self, obj: dict) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, q: dict[str, str]) -> None:
        timeout = float(q.get("timeoutSeconds") or random.uniform(60, 120))
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        table = "as=Table" in (self.headers.get("Accept") or "")
        labels, fields = q.get("labelSelector"), q.get("fieldSelector")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def emit(kind: str, obj: dict) -> None:
            if table and kind != "BOOKMARK" and kind != "ERROR":
                obj = {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                       "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                       "columnDefinitions": [], "rows": [_row(obj)]}
            self._chunk({"type": kind, "object": obj})

        try:
            start = q.get("resourceVersion") or "0"
            if start == "0":
                items, rv_text = self.store.list()
                for node in items:
                    if _matches(node, labels, fields):
                        emit("ADDED", node)
                rv = int(rv_text)
            else:
                rv = int(start)
            deadline = threading.Event()
            timer = threading.Timer(timeout, deadline.set)
            timer.daemon = True
            timer.start()
            try:
                while not deadline.is_set() and not self.server.stopping.is_set():
                    try:
                        events, rv = self.store.events_after(rv, min(BOOKMARK_INTERVAL, timeout))
                    except ApiError as err:
                        self._chunk({"type": "ERROR", "object": err.status()})
                        break
                    for _rv, kind, obj in events:
                        if _matches(obj, labels, fields):
                            emit(kind, obj)
                    if not events and bookmarks:
                        self._chunk({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1",
                                                                   "metadata": {"resourceVersion": str(rv)}}})
            finally:
                timer.cancel()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sock: socket.socket, handler: type, stopping: threading.Event) -> None:
        self.stopping = stopping
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]


def listen_socket(host: str, port: int, netns: str | None) -> socket.socket:
    from reconciler.rtnl import in_netns

    with in_netns(netns):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    return sock


def serve(store: Store, listeners: list[tuple[str, int, str | None]]) -> tuple[list[Server], threading.Event]:
    """Start one HTTP server per (host, port, netns) sharing the store; returns them running."""
    stopping = threading.Event()
    handler = type("BoundHandler", (Handler,), {"store": store})
    servers = []
    for host, port, netns in listeners:
        srv = Server(listen_socket(host, port, netns), handler, stopping)
        threading.Thread(target=srv.serve_forever, name=f"api-{netns or 'host'}", daemon=True).start()
        servers.append(srv)
    return servers, stopping


def main(argv: list[str] | None = None) -> int:
    """`python -m lab.apiserver --state FILE --listen HOST:PORT[@NETNS] ...`"""
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="lab.apiserver")
    ap.add_argument("--state", required=True, help="JSON file holding the Node objects")
    ap.add_argument("--listen", action="append", required=True, help="HOST:PORT or HOST:PORT@NETNS")
    ap.add_argument("--history", type=int, default=1000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    listeners = []
    for spec in args.listen:
        addr, _, netns = spec.partition("@")
        host, _, port = addr.rpartition(":")
        listeners.append((host.strip("[]"), int(port), netns or None))
    store = Store(args.state, history=args.history)
    servers, stopping = serve(store, listeners)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    log.info("apiserver.ready listeners=%s", ",".join(args.listen))
    print("ready", flush=True)
    done.wait()
    stopping.set()
    for srv in servers:
        srv.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
