"""A Kubernetes API server for Nodes, Services, EndpointSlices, Leases and Events, for the lab and the tests.

It speaks the real REST protocol closely enough that the official Python client and kubectl work
against it unmodified: discovery, OpenAPI v3 stubs, list (also as a Table), watch with bookmarks
and 410 on compacted versions, the streaming list ("watch-list", KEP 3157), paged lists with
continue tokens, create, get, update, patch (merge, strategic, JSON), delete, and the status
subresource. It may listen in several network namespaces at once (each node of the lab reaches it
on its own loopback), which is how a node in the lab sees "its" API server. Given a certificate and
a token file it serves HTTPS and, like kube-apiserver, answers 401 to a request without that bearer
token (the health and version endpoints stay open, as for system:unauthenticated). A service
account's token may come with the rules its ClusterRole grants (RBAC PolicyRules): a request
with that token that no rule allows gets kube-apiserver's 403.

Built for 5,000-10,000 Nodes: lists and watches write each Node's stored JSON bytes as they are,
a batch at a time, and never build the whole answer in memory.

This module is the HTTP side (routing, RBAC, the handler, the server); the store is
lab.kubestore, each kind's rules lab.kinds, discovery and tables lab.discovery, list options,
continue tokens, watch lines and selectors lab.listing.
"""
from __future__ import annotations

import hmac
import json
import logging
import random
import socket
import ssl
import threading
import time
from bisect import bisect_left
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .admission import ADMIN, Admission, Request, User
from .discovery import (GROUP_LIST, GROUP_VERSIONS, MINOR, OPEN_PATHS, OPENAPI_DOCS, OPENAPI_INDEX, RESOURCES, TABLES,
                        resource_list, table_row)
from .kinds import KINDS, ApiError, check_service_cidrs, dumps
from .kubestore import Entry, Store
from .listing import (CONTINUE_EXPIRED, ListOptions, bookmark, decode_continue, encode_continue, event_line, matches,
                      parse_list_options)
from .patch import apply_patch

log = logging.getLogger(__name__)
BOOKMARK_INTERVAL = 5.0
BATCH = 256 << 10  # bytes written to the socket at a time

class Body:
    """A response body written in batches: chunked, or raw after a Content-Length."""

    def __init__(self, wfile, chunked: bool) -> None:
        self.wfile, self.chunked = wfile, chunked
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            data = b"".join(self.parts)
            self.parts.clear()
            self.size = 0
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        if hasattr(self.wfile, "flush"):
            self.wfile.flush()

    def end(self) -> None:
        self.flush()
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "podbgp-lab-apiserver"
    # TCP_NODELAY, as kube-apiserver (Go) has it: headers and body are written apart, and with
    # Nagle the body waits for the client's delayed ACK (~40 ms per response)
    disable_nagle_algorithm = True
    store: Store
    watch_list = True  # the WatchList feature gate (off emulates Kubernetes 1.33)
    token: bytes | None = None  # the bearer token every request but health/version must carry
    accounts: tuple = ()  # (token bytes, User, RBAC rules): tokens allowed only what rules grant
    admission: Admission | None = None  # ValidatingAdmissionPolicies, evaluated on every write

    def log_message(self, fmt: str, *args) -> None:  # quiet by default
        log.debug("http %s", fmt % args)

    # -- plumbing ------------------------------------------------------------------------------
    def _send(self, code: int, body: dict) -> None:
        self._send_raw(code, dumps(body))

    def _send_raw(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start(self, length: int | None) -> Body:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        return Body(self.wfile, chunked=length is None)

    def _body(self) -> dict | list:
        length = 0 if self._body_read else int(self.headers.get("Content-Length") or 0)
        self._body_read = True
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
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        parts = [p for p in url.path.split("/") if p]
        if self.server.stopping.is_set():
            self.close_connection = True
        self._body_read = False
        self._user = ADMIN  # without a token demanded, every request is the administrator's
        try:
            if self.token is not None and parts not in OPEN_PATHS:
                self._user = self._authorize(method, parts, q)
            self._dispatch(method, parts, q)
        except ApiError as err:
            if not self._body_read:  # a refused request's body must not be read as the next request
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._body_read = True
            self._send(err.code, err.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _authorize(self, method: str, parts: list[str], q: dict[str, str]) -> User:
        """The user the request's bearer token names, once RBAC allows the request (401, 403 otherwise)."""
        scheme, _, presented = (self.headers.get("Authorization") or "").partition(" ")
        presented_b = presented.strip().encode() if scheme.lower() == "bearer" else b""
        if presented_b and hmac.compare_digest(presented_b, self.token or b""):
            return ADMIN
        for token, user, rules in self.accounts:
            if presented_b and hmac.compare_digest(presented_b, token):
                authorize(user.name, rules, method, parts, q)
                return user
        raise ApiError(401, "Unauthorized", "Unauthorized")

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
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return None
        if method == "GET" and parts == ["api"]:
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.server.server_address[0]}:{self.server.server_address[1]}"}]})
        if method == "GET" and parts == ["apis"]:
            return self._send(200, GROUP_LIST)
        if method == "GET" and parts == ["api", "v1"]:
            return self._send(200, RESOURCES)
        if method == "GET" and len(parts) == 3 and parts[0] == "apis" and f"{parts[1]}/{parts[2]}" in GROUP_VERSIONS:
            return self._send(200, resource_list(f"{parts[1]}/{parts[2]}"))
        if method == "GET" and parts == ["openapi", "v3"]:
            return self._send(200, OPENAPI_INDEX)
        if method == "GET" and parts[:2] == ["openapi", "v3"] and "/".join(parts[2:]) in OPENAPI_DOCS:
            return self._send(200, OPENAPI_DOCS["/".join(parts[2:])])
        if method == "POST" and parts == ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"]:
            # `kubectl auth whoami` (its body, protobuf from kubectl, says nothing): who the token is
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._body_read = True
            return self._send(201, {"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                                    "metadata": {"creationTimestamp": None},
                                    "status": {"userInfo": self._user.info()}})
        target = resolve(parts)
        if target is not None:
            return self._resource(method, *target, q)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _resource(self, method: str, res: str, ns: str | None, rest: list[str], q: dict[str, str]) -> None:
        """A collection (rest empty), an object (rest [name]) or its status (rest [name, "status"])."""
        store, kind = self.store, KINDS[res]
        if not rest:
            if method == "GET":
                opts = parse_list_options(q, self.watch_list)
                return self._watch(opts, res, ns) if opts.watch else self._list(opts, res, ns)
            if method == "POST" and (ns is not None or not kind.namespaced):
                body = self._body()
                if q.get("dryRun"):
                    return self._send(201, body)
                return self._send_raw(201, store.create(body, res, ns, review=self._review("CREATE", res, ns, "", "")).raw)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on the collection")
        name, sub = rest[0], rest[1:]
        if sub not in ([], ["status"] if kind.status else []) or (kind.namespaced and ns is None):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        status, key = sub == ["status"], f"{ns}/{name}" if kind.namespaced else name
        review = self._review("DELETE" if method == "DELETE" else "UPDATE", res, ns, name, "/".join(sub))
        if method == "GET":
            found = store.entry(key, res)
            if "as=Table" in (self.headers.get("Accept") or ""):
                return self._send_table({"resourceVersion": str(found.rv)}, [found], res)
            return self._send_raw(200, found.raw)
        if method == "PUT":
            return self._send_raw(200, store.update(key, self._body(), status=status, res=res, review=review).raw)
        if method == "PATCH":
            ctype = (self.headers.get("Content-Type") or "application/merge-patch+json").split(";")[0].strip()
            patch = self._body()
            for _ in range(5):  # optimistic concurrency: retry on a racing writer
                current = store.entry(key, res)
                updated = apply_patch(current.obj(), patch, ctype)
                updated.setdefault("metadata", {})["resourceVersion"] = str(current.rv)
                try:
                    return self._send_raw(200, store.update(key, updated, status=status, res=res, review=review).raw)
                except ApiError as err:
                    if err.code != 409 or err.reason != "Conflict":
                        raise
            raise ApiError(409, "Conflict", "too many concurrent writers")
        if method == "DELETE":
            self._body()
            return self._send_raw(200, store.delete(key, res, review=review).raw)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _review(self, operation: str, res: str, ns: str | None, name: str, sub: str):
        """The admission check of one write (None when no policy is loaded): called by the store with
        the object about to be stored and the stored one, it raises kube-apiserver's denial."""
        if not self.admission:
            return None
        kind, user = KINDS[res], self._user

        def review(obj: dict | None, old: dict | None) -> None:
            self.admission.review(Request(operation, kind.group, kind.version, kind.resource, kind.kind,
                                          name or ((obj or {}).get("metadata") or {}).get("name", ""), ns or "",
                                          user, obj, old, sub))
        return review

    # -- list ----------------------------------------------------------------------------------
    def _list(self, o: ListOptions, res: str, ns: str | None) -> None:
        items, at, limit = self._list_source(o, res, ns)
        page, more = self._page(items, o, limit)
        meta: dict = {"resourceVersion": str(at)}
        if more:
            meta["continue"] = encode_continue(at, page[-1].name + "\x00")
            if not o.labels and not o.fields:
                meta["remainingItemCount"] = more
        if "as=Table" in (self.headers.get("Accept") or ""):
            return self._send_table(meta, page, res)
        kind = KINDS[res]
        head = b'{"kind":"%sList","apiVersion":"%s","metadata":%s,"items":[' % (
            kind.kind.encode(), kind.api_version.encode(), dumps(meta))
        body = self._start(len(head) + sum(len(e.raw) for e in page) + max(0, len(page) - 1) + 2)
        body.write(head)
        for i, e in enumerate(page):
            if i:
                body.write(b",")
            body.write(e.raw)
        body.write(b"]}")
        body.end()

    def _list_source(self, o: ListOptions, res: str, ns: str | None) -> tuple[list[Entry], int, int]:
        """The items a list reads (from its continue key on), their version, and the limit that holds.

        rv "0": the watch cache, whole (limit ignored); rv "": a consistent read that pages;
        rv N: not older than N (Exact, or legacy rv N with a limit: exactly N, from the history).
        """
        store = self.store
        if o.cont:
            if o.resource_version:
                raise ApiError(400, "BadRequest", "specifying resource version is not allowed when using continue")
            at, start = decode_continue(o.cont)
            if at == -1:  # a continuation the client accepted as inconsistent: go on at the latest
                items, at = store.snapshot(res, ns)
            else:
                try:
                    items = store.snapshot_at(at, res, ns)
                except ApiError as err:
                    if err.code == 410:
                        raise ApiError(410, "Expired", CONTINUE_EXPIRED, list_continue=encode_continue(-1, start)) from None
                    raise
            return items[bisect_left([e.name for e in items], start):], at, o.limit
        if o.resource_version in ("", "0"):
            items, at = store.snapshot(res, ns)
            return items, at, o.limit if o.resource_version == "" else 0
        try:
            want = int(o.resource_version)
        except ValueError:
            raise ApiError(400, "BadRequest", f'invalid resource version "{o.resource_version}"') from None
        if o.match == "Exact" or (not o.match and o.limit):
            return store.snapshot_at(want, res, ns), want, o.limit
        store.wait_for(want)
        items, at = store.snapshot(res, ns)
        return items, at, o.limit if o.match else 0

    @staticmethod
    def _page(items: list[Entry], o: ListOptions, limit: int) -> tuple[list[Entry], int]:
        """The matching items up to limit, and how many items lie beyond the page (0: none)."""
        if not o.labels and not o.fields:
            return (items[:limit], max(0, len(items) - limit)) if limit else (items, 0)
        page = []
        for i, e in enumerate(items):
            if matches(e, o.labels, o.fields):
                page.append(e)
                if limit and len(page) == limit:
                    return page, len(items) - i - 1
        return page, 0

    def _send_table(self, meta: dict, page: list[Entry], res: str) -> None:
        body = self._start(None)
        body.write(b'{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":%s,"columnDefinitions":%s,"rows":['
                   % (dumps(meta), dumps(TABLES[res][0])))
        for i, e in enumerate(page):
            body.write((b"," if i else b"") + dumps(table_row(res, e.obj())))
        body.write(b"]}")
        body.end()

    # -- watch ---------------------------------------------------------------------------------
    def _watch(self, o: ListOptions, res: str, ns: str | None) -> None:
        store = self.store
        timeout = o.timeout if o.timeout is not None else random.uniform(60, 120)
        table = "as=Table" in (self.headers.get("Accept") or "")
        initial: list[Entry] = []
        try:
            want = int(o.resource_version or 0)
        except ValueError:
            raise ApiError(400, "BadRequest", f'invalid resource version "{o.resource_version}"') from None
        body = self._start(None)
        try:
            try:
                if want > store.rv:  # a version the store has not reached: wait a little, as the cache does
                    store.wait_for(want)
            except ApiError as err:
                body.write(event_line("ERROR", dumps(err.status())))
                return body.end()
            if o.send_initial:  # watch-list: the state at one version, then the changes after it
                initial, rv = store.snapshot(res, ns)
            elif not want and not o.match:  # legacy watch from "" or "0": synthetic ADDED, then changes
                initial, rv = store.snapshot(res, ns)
            elif not want:  # sendInitialEvents=false: from now on
                rv = store.rv
            else:
                rv = want
            for e in initial:
                if matches(e, o.labels, o.fields):
                    body.write(self._event("ADDED", e, table, res))
            if o.send_initial and o.bookmarks:
                body.write(bookmark(rv, initial_events_end=True, res=res))
            body.flush()
            self._follow(body, o, (res, ns), rv, time.monotonic() + timeout, table)
            body.end()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _follow(self, body: Body, o: ListOptions, where: tuple[str, str | None], rv: int, deadline: float,
                table: bool) -> None:
        """Stream the changes after rv until the deadline, with a bookmark every BOOKMARK_INTERVAL."""
        res, ns = where
        prefix = None if ns is None else f"{ns}/"
        next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
        while not self.server.stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            try:
                events, rv = self.store.events_after(rv, max(0.0, min(deadline, next_bookmark) - now), res)
            except ApiError as err:
                body.write(event_line("ERROR", dumps(err.status())))
                return
            for ev in events:
                if (prefix is None or ev.entry.name.startswith(prefix)) and matches(ev.entry, o.labels, o.fields):
                    body.write(self._event(ev.kind, ev.entry, table, res))
            if o.bookmarks and time.monotonic() >= next_bookmark:
                body.write(bookmark(rv, res=res))
                next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
            body.flush()

    @staticmethod
    def _event(kind: str, e: Entry, table: bool, res: str) -> bytes:
        if not table:
            return event_line(kind, e.raw)
        return event_line(kind, dumps({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                                       "metadata": {"resourceVersion": str(e.rv)},
                                       "columnDefinitions": [], "rows": [table_row(res, e.obj())]}))


VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
BY_PATH = {(k.api_version, k.resource): name for name, k in KINDS.items()}


def resolve(parts: list[str]) -> tuple[str, str | None, list[str]] | None:
    """(store table, namespace or None, [name[, subresource]]) of a resource path; None for any other."""
    if parts[:2] == ["api", "v1"]:
        gv, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    ns = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    res = BY_PATH.get((gv, rest[0])) if rest else None
    if res is None or (ns is not None and not KINDS[res].namespaced) or len(rest) > 3:
        return None
    return res, ns, rest[1:]


def authorize(user: str, rules: list[dict], method: str, parts: list[str], q: dict[str, str]) -> None:
    """RBAC as kube-apiserver applies it: the request's verb on its resource (with subresource), in
    its API group and namespace, must be granted by one rule (a rule with a "namespace" key, from a
    RoleBinding, only in that namespace); otherwise 403 with its message."""
    target = resolve(parts)
    if target is None:  # discovery and OpenAPI: every authenticated user (anything else is a 404)
        return
    res, ns, rest = target
    kind = KINDS[res]
    resource = "/".join([kind.resource] + rest[1:2])
    name = rest[0] if rest else ""
    if method == "GET":
        verb = "get" if name else ("watch" if q.get("watch") in ("1", "true") else "list")
    else:
        verb = VERBS.get(method, method.lower())
    for rule in rules:  # a rule from a RoleBinding carries its namespace (lab.daemonset.rbac) and holds only there
        if {kind.group, "*"} & set(rule.get("apiGroups", [])) and {resource, "*"} & set(rule.get("resources", [])) \
                and {verb, "*"} & set(rule.get("verbs", [])) \
                and (not rule.get("resourceNames") or name in rule["resourceNames"]) \
                and ("namespace" not in rule or rule["namespace"] == ns):
            return
    # responsewriters.forbiddenMessage, wrapped by errors.NewForbidden(group resource, name, ...)
    what = f'{kind.qualified} "{name}"' if name else kind.qualified
    scope = f'in the namespace "{ns}"' if ns is not None else "at the cluster scope"
    details = {"name": name} if name else {}
    if kind.group:
        details["group"] = kind.group
    details["kind"] = kind.resource
    raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
                   f'in API group "{kind.group}" {scope}', details=details)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sock: socket.socket, handler: type, stopping: threading.Event,
                 tls: ssl.SSLContext | None = None) -> None:
        self.stopping = stopping
        self.tls = tls
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]

    def get_request(self):
        conn, addr = self.socket.accept()
        if self.tls is not None:  # the handshake runs in the request's thread, on its first read
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def handle_error(self, request, client_address) -> None:
        log.debug("http.error client=%s", client_address, exc_info=True)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def listen_socket(host: str, port: int, netns: str | None) -> socket.socket:
    from reconciler.rtnl import in_netns

    with in_netns(netns):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    return sock


def serve(store: Store, listeners: list[tuple[str, int, str | None]], watch_list: bool = True,
          tls: ssl.SSLContext | None = None, token: str | None = None,
          accounts: tuple = (), service_cidrs: list[str] | None = None,
          node_ports: tuple[int, int] | None = None,
          admission: Admission | None = None) -> tuple[list[Server], threading.Event]:
    """Start one HTTP server per (host, port, netns) sharing the store; returns them running.

    watch_list=False emulates Kubernetes 1.33, whose WatchList feature gate is off: a watch with
    sendInitialEvents is refused (422) and clients fall back to list + watch. service_cidrs: the
    ranges Services get their cluster IPs from (at most one per family; the first family is the
    default one), as kube-apiserver's --service-cluster-ip-range; node_ports (first, last) as its
    --service-node-port-range. accounts: (token, user, RBAC rules), the user a lab.admission.User or a
    name; admission: the ValidatingAdmissionPolicies every write goes through.
    """
    if service_cidrs or node_ports:
        store.set_service_cidrs(service_cidrs or store.rules["services"].cidrs, node_ports)
    stopping = threading.Event()
    handler = type("BoundHandler", (Handler,), {"store": store, "watch_list": watch_list,
                                                "token": token.encode() if token is not None else None,
                                                "accounts": tuple((t.encode(), u if isinstance(u, User) else User.named(u), r)
                                                                  for t, u, r in accounts),
                                                "admission": admission})
    servers = []
    for host, port, netns in listeners:
        srv = Server(listen_socket(host, port, netns), handler, stopping, tls)
        threading.Thread(target=srv.serve_forever, name=f"api-{netns or 'host'}", daemon=True).start()
        servers.append(srv)
    return servers, stopping


def load_admission(path: str | None, store: Store) -> Admission | None:
    """The policies of a YAML file, their params read from the store (as the API server's informers do)."""
    if not path:
        return None
    import yaml

    from .admission import policy_objects
    with open(path) as f:
        objects = policy_objects([d for d in yaml.safe_load_all(f) if d])
    log.info("apiserver.admission policies=%d file=%s", sum(o["kind"] == "ValidatingAdmissionPolicy" for o in objects), path)
    return Admission(objects, store_params(store))


def store_params(store: Store):
    """A lab.admission.ParamSource over the store: one object by name, or those a selector picks."""
    def params(api_version: str, kind: str, ns: str, name: str, labels: dict | None) -> list[dict]:
        res = next((r for r, k in KINDS.items() if k.api_version == api_version and k.kind == kind), None)
        if res is None:
            return []
        space = ns if KINDS[res].namespaced else None
        if name:
            try:
                return [store.get(f"{space}/{name}" if space else name, res)]
            except ApiError:
                return []
        items, _ = store.snapshot(res, space)
        return [e.obj() for e in items if all(e.labels.get(k) == v for k, v in (labels or {}).items())]
    return params


def main(argv: list[str] | None = None) -> int:
    """`python -m lab.apiserver --state FILE --listen HOST:PORT[@NETNS] ...`"""
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="lab.apiserver")
    ap.add_argument("--state", required=True, help="JSON file holding the objects")
    ap.add_argument("--listen", action="append", required=True, help="HOST:PORT or HOST:PORT@NETNS")
    ap.add_argument("--history", type=int, default=1000)
    ap.add_argument("--no-watch-list", action="store_true",
                    help="refuse sendInitialEvents (422), as Kubernetes 1.33 with the WatchList gate off")
    ap.add_argument("--persist-interval", type=float, default=1.0, help="seconds between writes of the state")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="the certificate's private key (PEM)")
    ap.add_argument("--token-file", help="demand this bearer token (401 otherwise)")
    ap.add_argument("--account", action="append", default=[], metavar="TOKEN_FILE=RULES_FILE",
                    help="a service account's token, allowed only what the RBAC rules grant; RULES_FILE (JSON) holds "
                         "user, rules and optionally uid and extra (a bound token's node-name, pod-name, ...)")
    ap.add_argument("--admission", metavar="FILE",
                    help="ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding objects (YAML) to enforce")
    ap.add_argument("--service-cidr", action="append", default=[], metavar="CIDR",
                    help="a range Services' cluster IPs come from (at most one per IP family; default 10.0.0.0/24)")
    ap.add_argument("--service-node-port-range", metavar="FIRST-LAST",
                    help="the node ports Services get (default 30000-32767)")
    args = ap.parse_args(argv)
    try:
        check_service_cidrs(args.service_cidr)
        node_ports = None
        if args.service_node_port_range:
            first, _, last = args.service_node_port_range.partition("-")
            node_ports = (int(first), int(last))
            if not 0 < node_ports[0] <= node_ports[1] < 65536:
                raise ValueError(f"--service-node-port-range {args.service_node_port_range}: not a range of ports")
    except ValueError as exc:
        ap.error(str(exc))
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    token = None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    listeners = []
    for spec in args.listen:
        addr, _, netns = spec.partition("@")
        host, _, port = addr.rpartition(":")
        listeners.append((host.strip("[]"), int(port), netns or None))
    store = Store(args.state, history=args.history, persist_interval=args.persist_interval,
                  service_cidrs=args.service_cidr or None, node_ports=node_ports)
    accounts = []
    for spec in args.account:
        token_file, _, rules_file = spec.partition("=")
        with open(token_file) as f, open(rules_file) as g:
            doc = json.load(g)
            user = User.named(doc["user"])
            if doc.get("extra") or doc.get("uid"):
                user = User(user.name, doc.get("uid", ""), user.groups,
                            tuple(sorted((k, tuple(v)) for k, v in (doc.get("extra") or {}).items())))
            accounts.append((f.read().strip(), user, doc["rules"]))
    servers, stopping = serve(store, listeners, watch_list=not args.no_watch_list, tls=tls, token=token,
                              accounts=tuple(accounts), admission=load_admission(args.admission, store))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    log.info("apiserver.ready listeners=%s", ",".join(args.listen))
    print("ready", flush=True)
    done.wait()
    stopping.set()
    for srv in servers:
        srv.shutdown()
    store.close()
    log.info("apiserver.stopped resourceVersion=%s", store.rv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
