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
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .kubestore import KINDS, ApiError, Entry, Store, check_service_cidrs, dumps
from .patch import apply_patch

log = logging.getLogger(__name__)
MINOR = "32"
BOOKMARK_INTERVAL = 5.0
BATCH = 256 << 10  # bytes written to the socket at a time

VERBS_ALL = ["create", "delete", "get", "list", "patch", "update", "watch"]
SINGULAR_STATUS = ["get", "patch", "update"]


def resource_list(group_version: str) -> dict:
    """The APIResourceList of one group version: its kinds and their status subresources."""
    out = []
    for kind in KINDS.values():
        if kind.api_version != group_version:
            continue
        item = {"name": kind.resource, "singularName": kind.kind.lower(), "namespaced": kind.namespaced,
                "kind": kind.kind, "verbs": VERBS_ALL}
        if kind.short_names:
            item["shortNames"] = list(kind.short_names)
        if kind.resource == "services":
            item["categories"] = ["all"]
        out.append(item)
        if kind.status:
            out.append({"name": f"{kind.resource}/status", "singularName": "", "namespaced": kind.namespaced,
                        "kind": kind.kind, "verbs": SINGULAR_STATUS})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": out}


GROUPS = sorted({k.group for k in KINDS.values() if k.group})
GROUP_LIST = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
    {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
     "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in GROUPS]}
GROUP_VERSIONS = ["v1", *(f"{g}/v1" for g in GROUPS)]
RESOURCES = resource_list("v1")
OPENAPI_HASH = "podbgplab2"
OPEN_PATHS = (["healthz"], ["readyz"], ["livez"], ["version"])
SCHEMA_PACKAGE = {"": "core", "discovery.k8s.io": "discovery", "coordination.k8s.io": "coordination",
                  "events.k8s.io": "events"}


def _openapi_path(group_version: str) -> str:
    return "api/v1" if group_version == "v1" else f"apis/{group_version}"


def openapi_v3(group_version: str) -> dict:
    """A minimal OpenAPI v3 document of one group version: what kubectl create/apply looks for (the
    group-version-kind of the POST and PATCH operations, and that they take fieldValidation)."""
    paths, schemas = {}, {}
    param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
    for kind in KINDS.values():
        if kind.api_version != group_version:
            continue
        gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
        ext = {"x-kubernetes-group-version-kind": gvk}
        base = f"/{_openapi_path(group_version)}/" + ("namespaces/{namespace}/" if kind.namespaced else "")
        paths[f"{base}{kind.resource}"] = {"post": {**ext, "x-kubernetes-action": "post", "parameters": param,
                                                    "responses": {"201": {"description": "Created"}}}}
        paths[f"{base}{kind.resource}/{{name}}"] = {"patch": {**ext, "x-kubernetes-action": "patch", "parameters": param,
                                                               "responses": {"200": {"description": "OK"}}}}
        schemas[f"io.k8s.api.{SCHEMA_PACKAGE[kind.group]}.{kind.version}.{kind.kind}"] = {
            "type": "object", "x-kubernetes-group-version-kind": [gvk]}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": f"v1.{MINOR}.0"},
            "paths": paths, "components": {"schemas": schemas}}


OPENAPI_INDEX = {"paths": {_openapi_path(gv): {"serverRelativeURL": f"/openapi/v3/{_openapi_path(gv)}?hash={OPENAPI_HASH}"}
                           for gv in GROUP_VERSIONS}}
OPENAPI_DOCS = {_openapi_path(gv): openapi_v3(gv) for gv in GROUP_VERSIONS}

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


def _columns(*cols: tuple[str, int]) -> list[dict]:
    return [{"name": n, "type": "string", "format": "name" if n == "Name" else "", "description": n, "priority": p}
            for i, (n, p) in enumerate(cols)]


def _node_cells(node: dict) -> list:
    meta, status = node["metadata"], node.get("status", {})
    addrs: dict = {}
    for a in status.get("addresses", []):
        addrs.setdefault(a.get("type"), a.get("address"))
    ready = next((c.get("status") for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
    roles = sorted(k.split("/", 1)[1] for k in meta.get("labels", {}) if k.startswith("node-role.kubernetes.io/"))
    info = status.get("nodeInfo", {})
    return [meta["name"], "Ready" if ready == "True" else ("NotReady" if ready else "Unknown"),
            ",".join(roles) or "<none>", _age(meta.get("creationTimestamp", "")),
            info.get("kubeletVersion", ""), addrs.get("InternalIP", "<none>"), addrs.get("ExternalIP", "<none>"),
            info.get("osImage", "<unknown>"), info.get("kernelVersion", "<unknown>"),
            info.get("containerRuntimeVersion", "<unknown>")]


def _service_cells(svc: dict) -> list:
    """kubectl's columns for a Service (k8s.io/kubernetes pkg/printers/internalversion printService)."""
    meta, spec, status = svc["metadata"], svc.get("spec", {}), svc.get("status", {})
    typ = spec.get("type", "ClusterIP")
    external = list(spec.get("externalIPs") or [])
    if typ == "LoadBalancer":
        ingress = [i.get("ip") or i.get("hostname") for i in (status.get("loadBalancer") or {}).get("ingress") or []]
        external = ingress + external or ["<pending>"]
    elif typ == "ExternalName":
        external = [spec.get("externalName", "")]
    ports = [f"{p.get('port')}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
             for p in spec.get("ports") or []]
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    return [meta["name"], typ, spec.get("clusterIP") or "<none>", ",".join(external) or "<none>",
            ",".join(ports) or "<none>", _age(meta.get("creationTimestamp", "")), selector or "<none>"]


def _slice_cells(s: dict) -> list:
    ports = ",".join(str(p.get("port")) for p in s.get("ports") or [] if p.get("port") is not None) or "<unset>"
    addrs = [a for ep in s.get("endpoints") or [] for a in ep.get("addresses") or []]
    shown = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")
    return [s["metadata"]["name"], s.get("addressType", ""), ports, shown or "<unset>",
            _age(s["metadata"].get("creationTimestamp", ""))]


def _lease_cells(lease: dict) -> list:
    return [lease["metadata"]["name"], (lease.get("spec") or {}).get("holderIdentity", ""),
            _age(lease["metadata"].get("creationTimestamp", ""))]


def _event_cells(ev: dict) -> list:
    obj = ev.get("involvedObject") or ev.get("regarding") or {}
    last = ev.get("lastTimestamp") or ev.get("eventTime") or ev["metadata"].get("creationTimestamp", "")
    return [_age(last), ev.get("type", ""), ev.get("reason", ""),
            f"{(obj.get('kind') or '').lower()}/{obj.get('name', '')}", ev.get("message") or ev.get("note") or ""]


TABLES = {
    "nodes": (_columns(("Name", 0), ("Status", 0), ("Roles", 0), ("Age", 0), ("Version", 0), ("Internal-IP", 1),
                       ("External-IP", 1), ("OS-Image", 1), ("Kernel-Version", 1), ("Container-Runtime", 1)),
              _node_cells),
    "services": (_columns(("Name", 0), ("Type", 0), ("Cluster-IP", 0), ("External-IP", 0), ("Port(s)", 0),
                          ("Age", 0), ("Selector", 1)), _service_cells),
    "endpointslices": (_columns(("Name", 0), ("AddressType", 0), ("Ports", 0), ("Endpoints", 0), ("Age", 0)),
                       _slice_cells),
    "leases": (_columns(("Name", 0), ("Holder", 0), ("Age", 0)), _lease_cells),
    "events": (_columns(("Last Seen", 0), ("Type", 0), ("Reason", 0), ("Object", 0), ("Message", 0)), _event_cells),
}
TABLES["events.events.k8s.io"] = TABLES["events"]


def _row(res: str, obj: dict) -> dict:
    partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
    return {"cells": TABLES[res][1](obj), "object": partial}


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
# what an empty object of each kind serializes to in Go (the body of a BOOKMARK)
EMPTY_BODY = {"nodes": {"spec": {}, "status": EMPTY_NODE_STATUS},
              "services": {"spec": {}, "status": {"loadBalancer": {}}},
              "endpointslices": {"addressType": "", "endpoints": None},
              "leases": {"spec": {}},
              "events": {"involvedObject": {}, "reportingComponent": "", "reportingInstance": "",
                         "source": {}, "firstTimestamp": None, "lastTimestamp": None, "eventTime": None},
              "events.events.k8s.io": {"eventTime": None, "reportingController": "", "reportingInstance": ""}}


def bookmark(rv: int, initial_events_end: bool = False, res: str = "nodes") -> bytes:
    """A BOOKMARK event as kube-apiserver 1.32 writes it: an empty object of the kind carrying the version."""
    meta: dict = {"resourceVersion": str(rv), "creationTimestamp": None}
    if initial_events_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    kind = KINDS[res]
    obj = {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": meta, **EMPTY_BODY[res]}
    return b'{"type":"BOOKMARK","object":%s}\n' % dumps(obj)


def event_line(kind: str, raw: bytes) -> bytes:
    return b'{"type":"%s","object":%s}\n' % (kind.encode(), raw)


SELECTOR_TERMS = re.compile(r",(?![^()]*\))")  # the commas between terms, not those inside "in (a,b)"
SET_TERM = re.compile(r"^(!?)\s*([^\s!=]+)\s+(in|notin)\s*\((.*)\)$")


def _field_getter(e: Entry):
    """A field selector's view of an object: name and namespace from the key, other fields parsed."""
    def get(path: str) -> str | None:
        if path == "metadata.name":
            return e.name.rpartition("/")[2]
        if path == "metadata.namespace":
            return e.name.rpartition("/")[0]
        value = json.loads(e.raw)
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool):
            return "true" if value else "false"
        return None if value is None else str(value)
    return get


def _matches(e: Entry, labels: str | None, fields: str | None) -> bool:
    for sel, getter in ((labels, e.labels.get), (fields, _field_getter(e) if fields else None)):
        if not sel:
            continue
        for term in SELECTOR_TERMS.split(sel):
            term = term.strip()
            in_set = SET_TERM.match(term)
            if in_set:
                values = {v.strip() for v in in_set.group(4).split(",")}
                if (getter(in_set.group(2)) in values) != (in_set.group(3) == "in"):
                    return False
            elif "!=" in term:
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
    # TCP_NODELAY, as kube-apiserver (Go) has it: headers and body are written apart, and with
    # Nagle the body waits for the client's delayed ACK (~40 ms per response)
    disable_nagle_algorithm = True
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
            return self._send(200, GROUP_LIST)
        if method == "GET" and parts == ["api", "v1"]:
            return self._send(200, RESOURCES)
        if method == "GET" and len(parts) == 3 and parts[0] == "apis" and f"{parts[1]}/{parts[2]}" in GROUP_VERSIONS:
            return self._send(200, resource_list(f"{parts[1]}/{parts[2]}"))
        if method == "GET" and parts == ["openapi", "v3"]:
            return self._send(200, OPENAPI_INDEX)
        if method == "GET" and parts[:2] == ["openapi", "v3"] and "/".join(parts[2:]) in OPENAPI_DOCS:
            return self._send(200, OPENAPI_DOCS["/".join(parts[2:])])
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
                return self._send_raw(201, store.create(body, res, ns).raw)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on the collection")
        name, sub = rest[0], rest[1:]
        if sub not in ([], ["status"] if kind.status else []) or (kind.namespaced and ns is None):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        status, key = sub == ["status"], f"{ns}/{name}" if kind.namespaced else name
        if method == "GET":
            found = store.entry(key, res)
            if "as=Table" in (self.headers.get("Accept") or ""):
                return self._send_table({"resourceVersion": str(found.rv)}, [found], res)
            return self._send_raw(200, found.raw)
        if method == "PUT":
            return self._send_raw(200, store.update(key, self._body(), status=status, res=res).raw)
        if method == "PATCH":
            ctype = (self.headers.get("Content-Type") or "application/merge-patch+json").split(";")[0].strip()
            patch = self._body()
            for _ in range(5):  # optimistic concurrency: retry on a racing writer
                current = store.entry(key, res)
                updated = apply_patch(current.obj(), patch, ctype)
                updated.setdefault("metadata", {})["resourceVersion"] = str(current.rv)
                try:
                    return self._send_raw(200, store.update(key, updated, status=status, res=res).raw)
                except ApiError as err:
                    if err.code != 409 or err.reason != "Conflict":
                        raise
            raise ApiError(409, "Conflict", "too many concurrent writers")
        if method == "DELETE":
            self._body()
            return self._send_raw(200, store.delete(key, res).raw)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

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
            if _matches(e, o.labels, o.fields):
                page.append(e)
                if limit and len(page) == limit:
                    return page, len(items) - i - 1
        return page, 0

    def _send_table(self, meta: dict, page: list[Entry], res: str) -> None:
        body = self._start(None)
        body.write(b'{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":%s,"columnDefinitions":%s,"rows":['
                   % (dumps(meta), dumps(TABLES[res][0])))
        for i, e in enumerate(page):
            body.write((b"," if i else b"") + dumps(_row(res, e.obj())))
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
                if _matches(e, o.labels, o.fields):
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
                if (prefix is None or ev.entry.name.startswith(prefix)) and _matches(ev.entry, o.labels, o.fields):
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
                                       "columnDefinitions": [], "rows": [_row(res, e.obj())]}))


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
          node_ports: tuple[int, int] | None = None) -> tuple[list[Server], threading.Event]:
    """Start one HTTP server per (host, port, netns) sharing the store; returns them running.

    watch_list=False emulates Kubernetes 1.33, whose WatchList feature gate is off: a watch with
    sendInitialEvents is refused (422) and clients fall back to list + watch. service_cidrs: the
    ranges Services get their cluster IPs from (at most one per family; the first family is the
    default one), as kube-apiserver's --service-cluster-ip-range; node_ports (first, last) as its
    --service-node-port-range.
    """
    if service_cidrs or node_ports:
        store.set_service_cidrs(service_cidrs or store.rules["services"].cidrs, node_ports)
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
                    help="a service account's token, allowed only what the RBAC rules (JSON) grant")
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
