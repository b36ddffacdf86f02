"""A Kubernetes API server for Node objects, for the lab and the tests.

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
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import random
import socket
import ssl
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .kubestore import ApiError, Entry, Store, dumps
from .patch import apply_patch

log = logging.getLogger(__name__)
MINOR = "32"
BOOKMARK_INTERVAL = 5.0
BATCH = 256 << 10  # bytes written to the socket at a time

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
OPEN_PATHS = (["healthz"], ["readyz"], ["livez"], ["version"])
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
COLUMN_DEFINITIONS = [{"name": n, "type": t, "format": f, "description": n, "priority": p} for n, t, f, p in TABLE_COLUMNS]


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


# -- list options: parsing and the real API server's validation -----------------------------------

@dataclass(slots=True)
class ListOptions:
    watch: bool = False
    resource_version: str = ""
    match: str = ""  # resourceVersionMatch
    send_initial: bool | None = None  # sendInitialEvents (None: not given)
    bookmarks: bool = False
    limit: int = 0
    cont: str = ""
    labels: str | None = None
    fields: str | None = None
    timeout: float | None = None


def _bool(name: str, value: str) -> bool:
    """strconv.ParseBool, as the API server decodes boolean query parameters."""
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ApiError(400, "BadRequest", f'strconv.ParseBool: parsing "{value}": invalid syntax ({name})')


def parse_list_options(q: dict[str, str], watch_list: bool) -> ListOptions:
    """The query of a list or watch, defaulted as the API server does (SetListOptionsDefaults)."""
    try:
        opts = ListOptions(watch=_bool("watch", q["watch"]) if "watch" in q else False,
                           resource_version=q.get("resourceVersion", ""), match=q.get(RVM, ""),
                           send_initial=_bool(SIE, q[SIE]) if SIE in q else None,
                           bookmarks=_bool("allowWatchBookmarks", q.get("allowWatchBookmarks", "false")),
                           limit=int(q.get("limit") or 0), cont=q.get("continue", ""),
                           labels=q.get("labelSelector"), fields=q.get("fieldSelector"),
                           timeout=float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", str(exc)) from None
    # with the WatchList gate on, a watch from "" or "0" is a watch-list (its bookmark, if asked
    # for, carries the initial-events-end annotation)
    if watch_list and opts.watch and opts.send_initial is None and not opts.match \
            and opts.resource_version in ("", "0"):
        opts.send_initial, opts.match = True, "NotOlderThan"
    errs = validate_watch(opts, watch_list) if opts.watch else validate_list(opts)
    if errs:
        raise invalid_list_options(errs)
    return opts


def _forbidden(field: str, detail: str) -> tuple[str, str, str]:
    return field, "FieldValueForbidden", f"Forbidden: {detail}"


def _not_supported(field: str, value: str, supported: list[str]) -> tuple[str, str, str]:
    values = ", ".join(f'"{v}"' for v in supported)
    return field, "FieldValueNotSupported", f'Unsupported value: "{value}": supported values: {values}'


RVM, SIE = "resourceVersionMatch", "sendInitialEvents"


def validate_list(o: ListOptions) -> list[tuple[str, str, str]]:
    """ValidateListOptions for a list (k8s.io/apimachinery internalversion/validation)."""
    errs = []
    if o.match:
        if not o.resource_version:
            errs.append(_forbidden(RVM, f"{RVM} is forbidden unless resourceVersion is provided"))
        if o.cont:
            errs.append(_forbidden(RVM, f"{RVM} is forbidden when continue is provided"))
        if o.match not in ("Exact", "NotOlderThan"):
            errs.append(_not_supported(RVM, o.match, ["Exact", "NotOlderThan", ""]))
        if o.match == "Exact" and o.resource_version == "0":
            errs.append(_forbidden(RVM, f'{RVM} "exact" is forbidden for resourceVersion "0"'))
    if o.send_initial is not None:
        errs.append(_forbidden(SIE, f"{SIE} is forbidden for list"))
    return errs


def validate_watch(o: ListOptions, watch_list: bool) -> list[tuple[str, str, str]]:
    """validateWatchOptions; watch_list is the WatchList feature gate."""
    errs = []
    if o.send_initial is not None:
        if o.match != "NotOlderThan":
            errs.append(_forbidden(RVM, f"{SIE} requires setting {RVM} to NotOlderThan"))
        if not watch_list:
            errs.append(_forbidden(SIE, f"{SIE} is forbidden for watch unless the WatchList feature gate is enabled"))
    if o.match:
        if o.send_initial is None:
            errs.append(_forbidden(RVM, f"{RVM} is forbidden for watch unless {SIE} is provided"))
        if o.match != "NotOlderThan":
            errs.append(_not_supported(RVM, o.match, ["NotOlderThan"]))
        if o.cont:
            errs.append(_forbidden(RVM, f"{RVM} is forbidden when continue is provided"))
    return errs


def invalid_list_options(errs: list[tuple[str, str, str]]) -> ApiError:
    """errors.NewInvalid(meta.k8s.io/ListOptions, "", errs): 422 with one cause per field error."""
    texts = [f"{field}: {body}" for field, _, body in dict.fromkeys(errs)]
    agg = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(422, "Invalid", f'ListOptions.meta.k8s.io "" is invalid: {agg}',
                    {"group": "meta.k8s.io", "kind": "ListOptions",
                     "causes": [{"reason": r, "message": body, "field": f} for f, r, body in errs]})


# -- continue tokens (the API server's: base64url of {"v","rv","start"}) ----------------------------

def encode_continue(rv: int, start: str) -> str:
    data = dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_continue(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data.get("v") != "meta.k8s.io/v1":
            raise ValueError("unknown version")
        rv, start = int(data["rv"]), str(data["start"])
        if rv == 0 or rv < -1:
            raise ValueError("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        return rv, start
    except (ValueError, KeyError, TypeError, binascii.Error, AttributeError) as exc:
        raise ApiError(400, "BadRequest", f"continue key is not valid: {exc}") from None


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list.")


# -- what a watch sends --------------------------------------------------------------------------

EMPTY_NODE_STATUS = {"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                     "nodeInfo": {k: "" for k in ("machineID", "systemUUID", "bootID", "kernelVersion", "osImage",
                                                  "containerRuntimeVersion", "kubeletVersion", "kubeProxyVersion",
                                                  "operatingSystem", "architecture")}}


def bookmark(rv: int, initial_events_end: bool = False) -> bytes:
    """A BOOKMARK event as kube-apiserver 1.32 writes it for Nodes: an empty Node carrying the version."""
    meta: dict = {"resourceVersion": str(rv), "creationTimestamp": None}
    if initial_events_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    obj = {"kind": "Node", "apiVersion": "v1", "metadata": meta, "spec": {}, "status": EMPTY_NODE_STATUS}
    return b'{"type":"BOOKMARK","object":%s}\n' % dumps(obj)


def event_line(kind: str, raw: bytes) -> bytes:
    return b'{"type":"%s","object":%s}\n' % (kind.encode(), raw)


def _matches(node: Entry, labels: str | None, fields: str | None) -> bool:
    for sel, getter in ((labels, node.labels.get), (fields, {"metadata.name": node.name}.get)):
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
            elif term.startswith("!"):
                if getter(term[1:].strip()) is not None:
                    return False
            elif term and getter(term) is None:
                return False
    return True


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
    store: Store
    watch_list = True  # the WatchList feature gate (off emulates Kubernetes 1.33)
    token: bytes | None = None  # the bearer token every request but health/version must carry
    accounts: tuple = ()  # (token bytes, user name, RBAC rules): tokens allowed only what rules grant

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
        try:
            if self.token is not None and parts not in OPEN_PATHS:
                self._authorize(method, parts, q)
            self._dispatch(method, parts, q)
        except ApiError as err:
            if not self._body_read:  # a refused request's body must not be read as the next request
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._body_read = True
            self._send(err.code, err.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _authorize(self, method: str, parts: list[str], q: dict[str, str]) -> None:
        scheme, _, presented = (self.headers.get("Authorization") or "").partition(" ")
        presented_b = presented.strip().encode() if scheme.lower() == "bearer" else b""
        if presented_b and hmac.compare_digest(presented_b, self.token or b""):
            return
        for token, user, rules in self.accounts:
            if presented_b and hmac.compare_digest(presented_b, token):
                return authorize(user, rules, method, parts, q)
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
            if method == "GET":
                opts = parse_list_options(q, self.watch_list)
                return self._watch(opts) if opts.watch else self._list(opts)
            if method == "POST":
                body = self._body()
                if q.get("dryRun"):
                    return self._send(201, body)
                return self._send_raw(201, store.create(body).raw)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on the collection")
        name, sub = rest[0], rest[1:]
        if sub not in ([], ["status"]):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        status = sub == ["status"]
        if method == "GET":
            return self._send_raw(200, store.entry(name).raw)
        if method == "PUT":
            return self._send_raw(200, store.update(name, self._body(), status=status).raw)
        if method == "PATCH":
            ctype = (self.headers.get("Content-Type") or "application/merge-patch+json").split(";")[0].strip()
            patch = self._body()
            for _ in range(5):  # optimistic concurrency: retry on a racing writer
                current = store.entry(name)
                updated = apply_patch(current.obj(), patch, ctype)
                updated.setdefault("metadata", {})["resourceVersion"] = str(current.rv)
                try:
                    return self._send_raw(200, store.update(name, updated, status=status).raw)
                except ApiError as err:
                    if err.code != 409:
                        raise
            raise ApiError(409, "Conflict", "too many concurrent writers")
        if method == "DELETE":
            self._body()
            return self._send_raw(200, store.delete(name).raw)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    # -- list ----------------------------------------------------------------------------------
    def _list(self, o: ListOptions) -> None:
        items, at, limit = self._list_source(o)
        page, more = self._page(items, o, limit)
        meta: dict = {"resourceVersion": str(at)}
        if more:
            meta["continue"] = encode_continue(at, page[-1].name + "\x00")
            if not o.labels and not o.fields:
                meta["remainingItemCount"] = more
        if "as=Table" in (self.headers.get("Accept") or ""):
            return self._send_table(meta, page)
        head = b'{"kind":"NodeList","apiVersion":"v1","metadata":%s,"items":[' % dumps(meta)
        body = self._start(len(head) + sum(len(e.raw) for e in page) + max(0, len(page) - 1) + 2)
        body.write(head)
        for i, e in enumerate(page):
            if i:
                body.write(b",")
            body.write(e.raw)
        body.write(b"]}")
        body.end()

    def _list_source(self, o: ListOptions) -> tuple[list[Entry], int, int]:
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
                items, at = store.snapshot()
            else:
                try:
                    items = store.snapshot_at(at)
                except ApiError as err:
                    if err.code == 410:
                        raise ApiError(410, "Expired", CONTINUE_EXPIRED, list_continue=encode_continue(-1, start)) from None
                    raise
            return items[bisect_left([e.name for e in items], start):], at, o.limit
        if o.resource_version in ("", "0"):
            items, at = store.snapshot()
            return items, at, o.limit if o.resource_version == "" else 0
        try:
            want = int(o.resource_version)
        except ValueError:
            raise ApiError(400, "BadRequest", f'invalid resource version "{o.resource_version}"') from None
        if o.match == "Exact" or (not o.match and o.limit):
            return store.snapshot_at(want), want, o.limit
        store.wait_for(want)
        items, at = store.snapshot()
        return items, at, o.limit if o.match else 0

    @staticmethod
    def _page(items: list[Entry], o: ListOptions, limit: int) -> tuple[list[Entry], int]:
        """The matching items up to limit, and how many items lie beyond the page (0: none)."""
        if not o.labels and not o.fields:
            return (items[:limit], max(0, len(items) - limit)) if limit else (items, 0)
        page = []
        for i, e in enumerate(items):
            if _matches(e, o.labels, o.fields):
                page.append(e)
                if limit and len(page) == limit:
                    return page, len(items) - i - 1
        return page, 0

    def _send_table(self, meta: dict, page: list[Entry]) -> None:
        body = self._start(None)
        body.write(b'{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":%s,"columnDefinitions":%s,"rows":['
                   % (dumps(meta), dumps(COLUMN_DEFINITIONS)))
        for i, e in enumerate(page):
            body.write((b"," if i else b"") + dumps(_row(e.obj())))
        body.write(b"]}")
        body.end()

    # -- watch ---------------------------------------------------------------------------------
    def _watch(self, o: ListOptions) -> None:
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
                initial, rv = store.snapshot()
            elif not want and not o.match:  # legacy watch from "" or "0": synthetic ADDED, then changes
                initial, rv = store.snapshot()
            elif not want:  # sendInitialEvents=false: from now on
                rv = store.snapshot()[1]
            else:
                rv = want
            for e in initial:
                if _matches(e, o.labels, o.fields):
                    body.write(self._event("ADDED", e, table))
            if o.send_initial and o.bookmarks:
                body.write(bookmark(rv, initial_events_end=True))
            body.flush()
            self._follow(body, o, rv, time.monotonic() + timeout, table)
            body.end()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _follow(self, body: Body, o: ListOptions, rv: int, deadline: float, table: bool) -> None:
        """Stream the changes after rv until the deadline, with a bookmark every BOOKMARK_INTERVAL."""
        next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
        while not self.server.stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            try:
                events, rv = self.store.events_after(rv, max(0.0, min(deadline, next_bookmark) - now))
            except ApiError as err:
                body.write(event_line("ERROR", dumps(err.status())))
                return
            for ev in events:
                if _matches(ev.entry, o.labels, o.fields):
                    body.write(self._event(ev.kind, ev.entry, table))
            if o.bookmarks and time.monotonic() >= next_bookmark:
                body.write(bookmark(rv))
                next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
            body.flush()

    @staticmethod
    def _event(kind: str, e: Entry, table: bool) -> bytes:
        if not table:
            return event_line(kind, e.raw)
        return event_line(kind, dumps({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                                       "metadata": {"resourceVersion": str(e.rv)},
                                       "columnDefinitions": [], "rows": [_row(e.obj())]}))


VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def authorize(user: str, rules: list[dict], method: str, parts: list[str], q: dict[str, str]) -> None:
    """RBAC as kube-apiserver applies it to a cluster-scoped core resource: the request's verb on its
    resource (with subresource) must be granted by one rule; otherwise 403 with its message."""
    if parts[:2] != ["api", "v1"] or len(parts) < 3:  # discovery and OpenAPI: every authenticated user
        return
    resource = "/".join([parts[2]] + parts[4:5])
    name = parts[3] if len(parts) > 3 else ""
    if method == "GET":
        verb = "get" if name else ("watch" if q.get("watch") in ("1", "true") else "list")
    else:
        verb = VERBS.get(method, method.lower())
    for rule in rules:
        if "" in rule.get("apiGroups", []) and {resource, "*"} & set(rule.get("resources", [])) \
                and {verb, "*"} & set(rule.get("verbs", [])) \
                and (not rule.get("resourceNames") or name in rule["resourceNames"]):
            return
    res, _, sub = resource.partition("/")
    what = f'{res} "{name}"' if name else res
    sub_text = f'"{sub}" subresource of ' if sub else ""
    raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{user}" cannot {verb} resource {sub_text}"{res}" '
                   'in API group "" at the cluster scope',
                   details={"name": name, "kind": res} if name else {"kind": res})


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
          accounts: tuple = ()) -> tuple[list[Server], threading.Event]:
    """Start one HTTP server per (host, port, netns) sharing the store; returns them running.

    watch_list=False emulates Kubernetes 1.33, whose WatchList feature gate is off: a watch with
    sendInitialEvents is refused (422) and clients fall back to list + watch.
    """
    stopping = threading.Event()
    handler = type("BoundHandler", (Handler,), {"store": store, "watch_list": watch_list,
                                                "token": token.encode() if token is not None else None,
                                                "accounts": tuple((t.encode(), u, r) for t, u, r in accounts)})
    servers = []
    for host, port, netns in listeners:
        srv = Server(listen_socket(host, port, netns), handler, stopping, tls)
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
    ap.add_argument("--no-watch-list", action="store_true",
                    help="refuse sendInitialEvents (422), as Kubernetes 1.33 with the WatchList gate off")
    ap.add_argument("--persist-interval", type=float, default=1.0, help="seconds between writes of the state")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="the certificate's private key (PEM)")
    ap.add_argument("--token-file", help="demand this bearer token (401 otherwise)")
    ap.add_argument("--account", action="append", default=[], metavar="TOKEN_FILE=RULES_FILE",
                    help="a service account's token, allowed only what the RBAC rules (JSON) grant")
    args = ap.parse_args(argv)
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
    store = Store(args.state, history=args.history, persist_interval=args.persist_interval)
    accounts = []
    for spec in args.account:
        token_file, _, rules_file = spec.partition("=")
        with open(token_file) as f, open(rules_file) as g:
            doc = json.load(g)
            accounts.append((f.read().strip(), doc["user"], doc["rules"]))
    servers, stopping = serve(store, listeners, watch_list=not args.no_watch_list, tls=tls, token=token,
                              accounts=tuple(accounts))
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
