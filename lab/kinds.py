"""What the lab API server serves, kind by kind: the kinds (URL names, groups, short names), errors
in kube-apiserver's words, and each resource's own rules (Node podCIDRs; Service defaults and the
cluster IP and node port allocation; EndpointSlice and Lease validation), which the store
(lab.kubestore) consults on every write. The machinery that stores, versions and watches is one
for all kinds and lives in lab.kubestore.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .kubestore import Entry


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None,
                 list_continue: str | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details, self.list_continue = details, list_continue

    def status(self) -> dict:
        meta = {"continue": self.list_continue} if self.list_continue else {}
        out = {"kind": "Status", "apiVersion": "v1", "metadata": meta, "status": "Failure",
               "message": self.message, "reason": self.reason}
        if self.details:
            out["details"] = self.details
        out["code"] = self.code
        return out


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()

# -- the kinds served ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Kind:
    resource: str  # the plural in the URL
    kind: str
    group: str = ""  # "" is the core group
    version: str = "v1"
    namespaced: bool = True
    status: bool = False  # status is a subresource: written only through /status
    short_names: tuple[str, ...] = ()
    table: str = ""  # the name in the store and its state file (default: resource)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The resource as messages name it: "services", "leases.coordination.k8s.io"."""
        return f"{self.resource}.{self.group}" if self.group else self.resource

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def details(self, name: str) -> dict:
        out = {"name": name}
        if self.group:
            out["group"] = self.group
        out["kind"] = self.resource
        return out


NODES = Kind("nodes", "Node", namespaced=False, status=True, short_names=("no",))
SERVICES = Kind("services", "Service", status=True, short_names=("svc",))
SLICES = Kind("endpointslices", "EndpointSlice", group="discovery.k8s.io")
LEASES = Kind("leases", "Lease", group="coordination.k8s.io")
EVENTS = Kind("events", "Event", short_names=("ev",))
EVENTS_V1 = Kind("events", "Event", group="events.k8s.io", short_names=("ev",), table="events.events.k8s.io")
KINDS: dict[str, Kind] = {k.table or k.resource: k for k in (NODES, SERVICES, SLICES, LEASES, EVENTS, EVENTS_V1)}


def table_of(kind: Kind) -> str:
    return kind.table or kind.resource


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.qualified} "{name}" not found', kind.details(name))


def invalid(kind: Kind, name: str, field: str, msg: str, reason: str = "FieldValueInvalid") -> ApiError:
    """errors.NewInvalid for one field error: 422 `Service "x" is invalid: spec.ports: Required value`."""
    return ApiError(422, "Invalid", f'{kind.qualified_kind} "{name}" is invalid: {field}: {msg}',
                    {"name": name, **({"group": kind.group} if kind.group else {}), "kind": kind.kind,
                     "causes": [{"reason": reason, "message": msg, "field": field}]})


def go_strings(values: list) -> str:
    """A Go []string as %#v prints it (the API server's messages quote values so)."""
    return "[]string{" + ", ".join(json.dumps(str(v)) for v in values) + "}"

# -- each resource's own rules ---------------------------------------------------------------------

class Rules:
    """A resource's defaults and validation (admit, before a write) and its bookkeeping of what the
    stored objects hold (committed, after; load, at start). The default: none of either."""
    status_on_create = False  # whether create keeps the status it is given (Nodes do)

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def admit(self, name: str, obj: dict, old: dict | None, status: bool) -> None:
        """Default and validate obj (the whole object as it would be stored); raise ApiError to refuse."""

    def committed(self, old: Entry | None, new: Entry | None) -> None:
        """A write was stored (old None: created; new None: deleted)."""

    def load(self, entries) -> None:
        """The objects read at start."""


class NodeRules(Rules):
    status_on_create = True

    def admit(self, name: str, obj: dict, old: dict | None, status: bool) -> None:
        obj.setdefault("spec", {})
        obj.setdefault("status", {})
        if not status:
            validate_spec(name, obj["spec"], None if old is None else old.get("spec", {}))


class LeaseRules(Rules):
    def admit(self, name: str, obj: dict, old: dict | None, status: bool) -> None:
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            raise invalid(self.kind, name, "spec", "Invalid value: must be an object")
        for field in ("leaseDurationSeconds", "leaseTransitions"):
            value = spec.get(field)
            if value is None:
                continue
            if not isinstance(value, int) or value < (1 if field == "leaseDurationSeconds" else 0):
                bound = "greater than 0" if field == "leaseDurationSeconds" else "greater than or equal to 0"
                raise invalid(self.kind, name, f"spec.{field}", f"Invalid value: {json.dumps(value)}: must be {bound}")


ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


class SliceRules(Rules):
    """EndpointSlice validation (k8s.io/kubernetes pkg/apis/discovery/validation), the parts clients meet."""

    def admit(self, name: str, obj: dict, old: dict | None, status: bool) -> None:
        inv = lambda field, msg, reason="FieldValueInvalid": invalid(self.kind, name, field, msg, reason)  # noqa: E731
        at = obj.get("addressType")
        if not at:
            raise inv("addressType", "Required value", "FieldValueRequired")
        if at not in ADDRESS_TYPES:
            raise inv("addressType", _unsupported(at, ADDRESS_TYPES), "FieldValueNotSupported")
        if old is not None and old.get("addressType") != at:
            raise inv("addressType", f"Invalid value: {json.dumps(at)}: field is immutable")
        endpoints = obj.get("endpoints")
        if endpoints is None:
            obj["endpoints"] = endpoints = []
        if not isinstance(endpoints, list):
            raise inv("endpoints", "Invalid value: must be a list")
        if len(endpoints) > 1000:
            raise inv("endpoints", f"Too many: {len(endpoints)}: must have at most 1000 items", "FieldValueTooMany")
        for i, ep in enumerate(endpoints):
            addrs = ep.get("addresses") if isinstance(ep, dict) else None
            if not addrs:
                raise inv(f"endpoints[{i}].addresses", "Required value: must contain at least 1 address",
                          "FieldValueRequired")
            if len(addrs) > 100:
                raise inv(f"endpoints[{i}].addresses", f"Too many: {len(addrs)}: must have at most 100 items",
                          "FieldValueTooMany")
            for j, a in enumerate(addrs):
                if at != "FQDN" and _family(a) != at:
                    raise inv(f"endpoints[{i}].addresses[{j}]",
                              f"Invalid value: {json.dumps(a)}: must be a valid {at} address")
        for i, port in enumerate(obj.get("ports") or []):
            if not isinstance(port, dict):
                raise inv(f"ports[{i}]", "Invalid value: must be an object")
            port.setdefault("name", "")
            port.setdefault("protocol", "TCP")


def _family(text: object) -> str | None:
    try:
        ip = ipaddress.ip_address(str(text))
    except ValueError:
        return None
    return "IPv4" if ip.version == 4 else "IPv6"


def _unsupported(value: object, supported) -> str:
    values = ", ".join(f'"{v}"' for v in supported)
    return f'Unsupported value: {json.dumps(value)}: supported values: {values}'


# -- Services: defaults, cluster IPs, node ports ----------------------------------------------------

DEFAULT_SERVICE_CIDRS = ("10.0.0.0/24",)  # kube-apiserver's default --service-cluster-ip-range
NODE_PORTS = (30000, 32767)  # kube-apiserver's default --service-node-port-range
SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")


class Pool:
    """Numbers handed out from [lo, hi]: the next free one after the last handed out, so that a
    number freed comes back only when the others are used (cost per pick: the used ones skipped)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.used: set[int] = set()
        self.cursor = lo

    def __contains__(self, n: int) -> bool:
        return self.lo <= n <= self.hi

    def pick(self, avoid: set[int]) -> int | None:
        n = self.cursor
        for _ in range(max(0, self.hi - self.lo + 1)):
            if n not in self.used and n not in avoid:
                self.cursor = n + 1 if n < self.hi else self.lo
                return n
            n = n + 1 if n < self.hi else self.lo
        return None


def service_cidr_pool(cidr: str) -> tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network, Pool]:
    net = ipaddress.ip_network(cidr, strict=True)
    first = int(net.network_address) + 1  # the network address is never handed out
    last = int(net.broadcast_address) - (1 if net.version == 4 else 0)  # nor IPv4's broadcast
    return ("IPv4" if net.version == 4 else "IPv6"), net, Pool(first, last)


def check_service_cidrs(cidrs) -> list[str]:
    """The flags' CIDRs as kube-apiserver accepts them: at most one per family, an IPv6 one no larger
    than /108; ValueError with the reason otherwise."""
    seen: set[int] = set()
    for c in cidrs:
        net = ipaddress.ip_network(c, strict=True)
        if net.version in seen:
            raise ValueError(f"--service-cidr: at most one range per IP family ({c})")
        if net.version == 6 and net.prefixlen < 108:
            raise ValueError(f"--service-cidr {c} is too large; for 128-bit addresses, the mask must be >= 108")
        seen.add(net.version)
    return list(cidrs)


class ServiceRules(Rules):
    """What kube-apiserver's Service REST storage does on a write: defaults, validation, and the
    allocation of cluster IPs (per ipFamilies/ipFamilyPolicy) and node ports, released on delete."""

    def __init__(self, kind: Kind, cidrs, node_ports: tuple[int, int] | None = None) -> None:
        super().__init__(kind)
        self.cidrs = check_service_cidrs(cidrs)
        self.ranges = {}  # family -> (network, Pool), in the order configured
        for c in self.cidrs:
            fam, net, pool = service_cidr_pool(c)
            self.ranges[fam] = (net, pool)
        self.ports = Pool(*(node_ports or NODE_PORTS))

    def _inv(self, name: str, field: str, msg: str, reason: str = "FieldValueInvalid") -> ApiError:
        return invalid(self.kind, name, field, msg, reason)

    # bookkeeping: what the stored Services hold
    def _held(self, obj: dict) -> tuple[list[tuple[str, int]], list[int]]:
        spec = obj.get("spec") or {}
        ips = []
        for text in spec.get("clusterIPs") or []:
            fam = _family(text)
            if fam in self.ranges and int(ipaddress.ip_address(text)) in self.ranges[fam][1]:
                ips.append((fam, int(ipaddress.ip_address(text))))
        ports = [p["nodePort"] for p in spec.get("ports") or [] if isinstance(p.get("nodePort"), int)]
        if isinstance(spec.get("healthCheckNodePort"), int):
            ports.append(spec["healthCheckNodePort"])
        return ips, ports

    def _hold(self, obj: dict, add: bool) -> None:
        ips, ports = self._held(obj)
        for fam, n in ips:
            (self.ranges[fam][1].used.add if add else self.ranges[fam][1].used.discard)(n)
        for p in ports:
            (self.ports.used.add if add else self.ports.used.discard)(p)

    def committed(self, old: Entry | None, new: Entry | None) -> None:
        if old is not None:
            self._hold(old.obj(), False)
        if new is not None:
            self._hold(new.obj(), True)

    def load(self, entries) -> None:
        for e in entries:
            self._hold(e.obj(), True)

    # admission
    def admit(self, name: str, obj: dict, old: dict | None, status: bool) -> None:
        if status:
            return self._admit_status(name, obj)
        obj.setdefault("status", {"loadBalancer": {}})
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            raise self._inv(name, "spec", "Invalid value: must be an object")
        old_spec = (old or {}).get("spec") or {}
        typ = spec.setdefault("type", "ClusterIP")
        if typ not in SERVICE_TYPES:
            raise self._inv(name, "spec.type", _unsupported(typ, SERVICE_TYPES), "FieldValueNotSupported")
        spec.setdefault("sessionAffinity", "None")
        if old is not None and old_spec.get("type") == "LoadBalancer" != typ:
            # dropTypeDependentFields: what only a LoadBalancer has goes with the type, unless changed
            for k in ("allocateLoadBalancerNodePorts", "loadBalancerClass"):
                if k in spec and spec[k] == old_spec.get(k):
                    del spec[k]
        self._policies(name, spec, old_spec)
        self._lb_class(name, spec, old_spec, old)
        if typ == "ExternalName":
            if not spec.get("externalName"):
                raise self._inv(name, "spec.externalName", "Required value", "FieldValueRequired")
            given = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
            if given and (old is None or given != old_spec.get("clusterIPs")):
                raise self._inv(name, "spec.clusterIPs", f"Invalid value: {go_strings(given)}: "
                                "must be empty for ExternalName services")
            for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"):
                spec.pop(k, None)
        picked = self._node_ports(name, spec, old_spec)
        if typ != "ExternalName":
            self._cluster_ips(name, spec, old_spec if old_spec.get("type") != "ExternalName" else {})
        self._health_port(name, spec, old_spec, picked)

    def _policies(self, name: str, spec: dict, old_spec: dict) -> None:
        typ = spec["type"]
        if typ != "ExternalName":
            spec.setdefault("internalTrafficPolicy", "Cluster")
        # externally accessible: a node port, a load balancer, or external IPs; otherwise the
        # external policy is dropped (as when an update removes the last external IP)
        if typ in ("NodePort", "LoadBalancer") or (typ == "ClusterIP" and spec.get("externalIPs")):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        else:
            spec.pop("externalTrafficPolicy", None)
        for field in ("internalTrafficPolicy", "externalTrafficPolicy"):
            if field in spec and spec[field] not in ("Cluster", "Local"):
                raise self._inv(name, f"spec.{field}", _unsupported(spec[field], ("Cluster", "Local")),
                                "FieldValueNotSupported")
        if typ == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        elif "allocateLoadBalancerNodePorts" in spec:
            raise self._inv(name, "spec.allocateLoadBalancerNodePorts",
                            "Forbidden: may only be used when `type` is 'LoadBalancer'", "FieldValueForbidden")
        for i, ip in enumerate(spec.get("externalIPs") or []):
            if _family(ip) is None:
                raise self._inv(name, f"spec.externalIPs[{i}]", f"Invalid value: {json.dumps(ip)}: must be a valid IP address")
        ports = spec.get("ports") or []
        if not ports and typ != "ExternalName" and spec.get("clusterIP") != "None":
            raise self._inv(name, "spec.ports", "Required value", "FieldValueRequired")
        for i, p in enumerate(ports):
            if not isinstance(p, dict) or not isinstance(p.get("port"), int) or not 1 <= p["port"] <= 65535:
                value = p.get("port") if isinstance(p, dict) else p
                raise self._inv(name, f"spec.ports[{i}].port",
                                f"Invalid value: {json.dumps(value)}: must be between 1 and 65535, inclusive")
            if len(ports) > 1 and not p.get("name"):
                raise self._inv(name, f"spec.ports[{i}].name", "Required value", "FieldValueRequired")
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p["port"])

    def _lb_class(self, name: str, spec: dict, old_spec: dict, old: dict | None) -> None:
        cls = spec.get("loadBalancerClass")
        if cls is not None and spec["type"] != "LoadBalancer":
            raise self._inv(name, "spec.loadBalancerClass",
                            "Forbidden: may only be used when `type` is 'LoadBalancer'", "FieldValueForbidden")
        if old is not None and old_spec.get("type") == "LoadBalancer" and spec["type"] == "LoadBalancer" \
                and cls != old_spec.get("loadBalancerClass"):
            raise self._inv(name, "spec.loadBalancerClass",
                            f"Invalid value: {json.dumps(cls) if cls is not None else 'null'}: may not change once set")

    def _cluster_ips(self, name: str, spec: dict, old_spec: dict) -> None:
        """spec.clusterIP(s), ipFamilies and ipFamilyPolicy as the API server settles them."""
        old_ips = old_spec.get("clusterIPs") or []
        if old_ips and not spec.get("clusterIP") and not spec.get("clusterIPs"):
            spec["clusterIPs"] = list(old_ips)  # an update that leaves them out keeps them (patchAllocatedValues)
            spec["clusterIP"] = old_ips[0]
            for k in ("ipFamilies", "ipFamilyPolicy"):
                if k not in spec and k in old_spec:
                    spec[k] = list(old_spec[k]) if isinstance(old_spec[k], list) else old_spec[k]
        ips = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
        if spec.get("clusterIP") and spec.get("clusterIPs") and spec["clusterIP"] != spec["clusterIPs"][0]:
            raise self._inv(name, "spec.clusterIPs[0]",
                            f"Invalid value: {json.dumps(spec['clusterIPs'][0])}: must match `clusterIP` when both are specified")
        for i, ip in enumerate(old_ips[:len(ips)]):
            if ips[i] != ip:
                raise self._inv(name, "spec.clusterIPs[0]", f"Invalid value: {go_strings(ips)}: may not change once set")
        headless = ips[:1] == ["None"]
        families = self._families(name, spec, [] if headless else ips)
        if headless:
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
            return
        out, held = [], {fam: int(ipaddress.ip_address(ip)) for ip in old_ips if (fam := _family(ip))}
        for i, fam in enumerate(families):
            out.append(self._one_ip(name, fam, ips[i] if i < len(ips) else None, ips, held.get(fam)))
        spec["clusterIPs"], spec["clusterIP"] = out, out[0]

    def _families(self, name: str, spec: dict, ips: list[str]) -> list[str]:
        configured = list(self.ranges)
        fams = list(spec.get("ipFamilies") or [])
        for i, fam in enumerate(fams):
            if fam not in ("IPv4", "IPv6"):
                raise self._inv(name, f"spec.ipFamilies[{i}]", _unsupported(fam, ("IPv4", "IPv6")), "FieldValueNotSupported")
            if fam in fams[:i]:
                raise self._inv(name, f"spec.ipFamilies[{i}]", f"Duplicate value: {json.dumps(fam)}", "FieldValueDuplicate")
        for i, ip in enumerate(ips):
            fam = _family(ip)
            if fam is None:
                raise self._inv(name, f"spec.clusterIPs[{i}]",
                                f"Invalid value: {json.dumps(ip)}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")
            if i < len(fams) and fams[i] != fam:
                raise self._inv(name, f"spec.ipFamilies[{i}]",
                                f"Invalid value: {json.dumps(fams[i])}: does not match IP family of `clusterIPs[{i}]`")
            if i >= len(fams):
                fams.append(fam)
        policy = spec.get("ipFamilyPolicy")
        if policy is not None and policy not in POLICIES:
            raise self._inv(name, "spec.ipFamilyPolicy", _unsupported(policy, POLICIES), "FieldValueNotSupported")
        if policy in (None, "SingleStack") and len(fams) > 1:
            raise self._inv(name, "spec.ipFamilyPolicy", f"Invalid value: {json.dumps(policy or 'SingleStack')}: "
                            "must be RequireDualStack or PreferDualStack when multiple 'ipFamilies' are specified")
        policy = policy or "SingleStack"
        if policy == "RequireDualStack" and len(configured) < 2:
            raise self._inv(name, "spec.ipFamilyPolicy",
                            'Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services')
        for i, fam in enumerate(fams):
            if fam not in configured:
                raise self._inv(name, f"spec.ipFamilies[{i}]", f"Invalid value: {json.dumps(fam)}: not configured on this cluster")
        if not fams:
            fams = configured[:1]
        if policy != "SingleStack":
            fams += [f for f in configured if f not in fams]
        spec["ipFamilyPolicy"], spec["ipFamilies"] = policy, fams
        return fams

    def _one_ip(self, name: str, fam: str, want: str | None, ips: list[str], held: int | None) -> str:
        net, pool = self.ranges[fam]
        if want is None:
            n = pool.pick(set())
            if n is None:
                raise ApiError(500, "InternalError", "Internal error occurred: failed to allocate a serviceIP: range is full",
                               {"causes": [{"message": "failed to allocate a serviceIP: range is full"}]})
            return str(ipaddress.ip_address(n))
        n = int(ipaddress.ip_address(want))
        if n not in pool:
            why = f"the provided IP ({want}) is not in the valid range. The range of valid IPs is {net}"
        elif n in pool.used and n != held:
            why = "provided IP is already allocated"
        else:
            return str(ipaddress.ip_address(n))
        raise self._inv(name, "spec.clusterIPs", f"Invalid value: {go_strings(ips)}: failed to allocate IP {want}: {why}")

    def _node_port(self, name: str, field: str, want: object, held: set[int], picked: set[int]) -> int:
        if want is None:
            n = self.ports.pick(picked)
            if n is None:
                raise ApiError(500, "InternalError", "Internal error occurred: failed to allocate a nodePort: range is full")
            picked.add(n)
            return n
        if not isinstance(want, int) or want not in self.ports:
            raise self._inv(name, field, f"Invalid value: {json.dumps(want)}: provided port is not in the valid range. "
                            f"The range of valid ports is {self.ports.lo}-{self.ports.hi}")
        if (want in self.ports.used and want not in held) or want in picked:
            raise self._inv(name, field, f"Invalid value: {want}: provided port is already allocated")
        picked.add(want)
        return want

    def _node_ports(self, name: str, spec: dict, old_spec: dict) -> set[int]:
        typ = spec["type"]
        wanted = typ == "NodePort" or (typ == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts"))
        old = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort") for p in old_spec.get("ports") or []}
        held, picked = {n for n in old.values() if n}, set()
        for i, p in enumerate(spec.get("ports") or []):
            if typ in ("ClusterIP", "ExternalName"):
                if p.get("nodePort") and p.get("nodePort") != old.get((p["port"], p["protocol"])):
                    raise self._inv(name, f"spec.ports[{i}].nodePort",
                                    f"Forbidden: may not be used when `type` is '{typ}'", "FieldValueForbidden")
                p.pop("nodePort", None)
                continue
            want = p.get("nodePort") or old.get((p["port"], p["protocol"]))
            if wanted or want:
                p["nodePort"] = self._node_port(name, f"spec.ports[{i}].nodePort", want, held, picked)
        return picked

    def _health_port(self, name: str, spec: dict, old_spec: dict, picked: set[int]) -> None:
        if spec["type"] == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local":
            old = old_spec.get("healthCheckNodePort")
            spec["healthCheckNodePort"] = self._node_port(name, "spec.healthCheckNodePort",
                                                          spec.get("healthCheckNodePort") or old,
                                                          {old} if old else set(), picked)
        elif spec.get("healthCheckNodePort") and spec.get("healthCheckNodePort") != old_spec.get("healthCheckNodePort"):
            raise self._inv(name, "spec.healthCheckNodePort",
                            "Invalid value: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'")
        else:
            spec.pop("healthCheckNodePort", None)

    def _admit_status(self, name: str, obj: dict) -> None:
        status = obj.get("status")
        if not isinstance(status, dict):
            obj["status"] = status = {}
        status.setdefault("loadBalancer", {})
        for i, ing in enumerate((status.get("loadBalancer") or {}).get("ingress") or []):
            path = f"status.loadBalancer.ingress[{i}]"
            if not isinstance(ing, dict):
                raise self._inv(name, path, "Invalid value: must be an object")
            if "ip" in ing and _family(ing["ip"]) is None:
                raise self._inv(name, f"{path}.ip", f"Invalid value: {json.dumps(ing['ip'])}: must be a valid IP address")
            if "ipMode" in ing:
                if ing["ipMode"] not in ("VIP", "Proxy"):
                    raise self._inv(name, f"{path}.ipMode", _unsupported(ing["ipMode"], ("Proxy", "VIP")),
                                    "FieldValueNotSupported")
                if "ip" not in ing:
                    raise self._inv(name, f"{path}.ipMode", "Forbidden: may not be specified when `ip` is not",
                                    "FieldValueForbidden")
            elif "ip" in ing:
                ing["ipMode"] = "VIP"  # defaulted since 1.30 (LoadBalancerIPMode)


def too_large(want: int, have: int) -> ApiError:
    """What a real API server answers when asked for a version its cache has not reached (504)."""
    return ApiError(504, "Timeout", f"Timeout: Too large resource version: {want}, current: {have}",
                    {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                     "retryAfterSeconds": 1})


def validate_spec(name: str, spec: dict, old: dict | None) -> None:
    def invalid(field: str, msg: str) -> ApiError:
        return ApiError(422, "Invalid", f'Node "{name}" is invalid: {field}: {msg}')

    pod_cidr = spec.get("podCIDR", "") or ""
    cidrs = spec.get("podCIDRs") or []
    families = set()
    for i, c in enumerate(cidrs):
        try:
            net = ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise invalid(f"spec.podCIDRs[{i}]", f'Invalid value: "{c}": must be a valid CIDR') from None
        if net.version in families:
            raise invalid("spec.podCIDRs", "Invalid value: may specify no more than one CIDR for each IP family")
        families.add(net.version)
    if pod_cidr:
        try:
            ipaddress.ip_network(pod_cidr, strict=False)
        except ValueError:
            raise invalid("spec.podCIDR", f'Invalid value: "{pod_cidr}": must be a valid CIDR') from None
    if cidrs and cidrs[0] != pod_cidr:
        raise invalid("spec.podCIDRs", "Invalid value: the first entry must equal spec.podCIDR")
    if old is not None:
        before = old.get("podCIDR", "") or ""
        if before and before != pod_cidr:
            raise invalid("spec.podCIDR", "Forbidden: podCIDR cannot be changed once set")
        old_cidrs = old.get("podCIDRs") or []
        if old_cidrs and old_cidrs != cidrs:
            raise invalid("spec.podCIDRs", "Forbidden: node updates may not change podCIDR except from \"\" to valid")
