"""What the lab API server says about itself: discovery (/api, /apis and each group's resource
list, as kubectl reads them), OpenAPI v3 stubs, and the Table columns of `kubectl get`."""
from __future__ import annotations

from datetime import datetime, timezone

from .kinds import KINDS

MINOR = "32"  # the Kubernetes minor version the server claims

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


def table_row(res: str, obj: dict) -> dict:
    partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
    return {"cells": TABLES[res][1](obj), "object": partial}
