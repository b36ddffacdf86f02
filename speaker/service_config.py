"""The `services:` section of the speaker's configuration: which Service addresses this node may
announce (LoadBalancer pools, allowed ExternalIP ranges, the cluster IP mode) and with which BGP
attributes.

Each default is stated once, as a field default of the dataclasses below. Every refusal is a
ConfigError with one line naming the field (`services.` first).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bgp.types import IPAddress, IPNetwork, span

from . import selector
from .config_values import ConfigError, boolean, defaults, integer, known_keys, label_selector, listed, mapping, net
from .selector import Selector

__all__ = ["CLUSTER_IP_MODES", "Pool", "ServicesConfig", "check_ranges", "parse_services"]

CLUSTER_IP_MODES = ("off", "cidr", "perService")


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    cidrs: tuple[IPNetwork, ...]
    service_selector: Selector = selector.EVERYTHING  # for the allocator: which Services draw from it
    communities: tuple[str, ...] = ()  # standard communities "ASN:VALUE"
    local_preference: int | None = None

    def holds(self, ip: IPAddress) -> bool:
        return any(c.version == ip.version and ip in c for c in self.cidrs)


@dataclass(frozen=True, slots=True)
class ServicesConfig:
    load_balancer_class: str = "podbgp.io/bgp"
    pools: tuple[Pool, ...] = ()
    allocate: bool = False
    # the speakers that stand for election as the allocator (their own Node's labels): every
    # candidate reads the Lease every retry interval, so a large cluster names a few nodes here
    allocator_node_selector: Selector = selector.EVERYTHING
    external_ip_cidrs: tuple[IPNetwork, ...] = ()
    cluster_ip_mode: str = "off"  # "off" | "cidr" | "perService"

    def pool_of(self, ip: IPAddress) -> Pool | None:
        """The pool holding ip (pools never overlap, so at most one)."""
        return next((p for p in self.pools if p.holds(ip)), None)

    def external_ip_allowed(self, ip: IPAddress) -> bool:
        return any(c.version == ip.version and ip in c for c in self.external_ip_cidrs)

    @property
    def ranges(self) -> tuple[IPNetwork, ...]:
        """Every Service address range: the pools' CIDRs and the allowed ExternalIP ranges."""
        return tuple(c for p in self.pools for c in p.cidrs) + self.external_ip_cidrs


_KEYS = {"loadBalancerClass", "loadBalancer", "externalIPs", "clusterIP"}
_LB_KEYS = {"pools", "allocate", "allocatorNodeSelector"}
_POOL_KEYS = {"name", "cidrs", "serviceSelector", "communities", "localPreference"}
W = "services"


def parse_services(raw: Any) -> ServicesConfig:
    """The `services:` mapping (absent or null: the defaults, nothing announced)."""
    if raw is None:
        return ServicesConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{W}: expected a mapping")
    known_keys(raw, _KEYS, W)
    d = defaults(ServicesConfig)
    lb = _sub(raw, "loadBalancer")
    known_keys(lb, _LB_KEYS, f"{W}.loadBalancer")
    ext = _sub(raw, "externalIPs")
    known_keys(ext, {"allowedCIDRs"}, f"{W}.externalIPs")
    cip = _sub(raw, "clusterIP")
    known_keys(cip, {"mode"}, f"{W}.clusterIP")
    cls = raw.get("loadBalancerClass", d.load_balancer_class)
    if not isinstance(cls, str) or not cls.strip():
        raise ConfigError(f"{W}.loadBalancerClass: {cls!r} is not a class name such as podbgp.io/bgp")
    pools_raw = lb.get("pools") or []
    if not isinstance(pools_raw, list):
        raise ConfigError(f"{W}.loadBalancer.pools: expected a list")
    pools = tuple(_pool(p, f"{W}.loadBalancer.pools[{i}]") for i, p in enumerate(pools_raw))
    _unique_names(pools)
    allowed = tuple(net(c, f"{W}.externalIPs.allowedCIDRs[{i}]") for i, c in enumerate(_listed(ext, "allowedCIDRs")))
    return ServicesConfig(
        load_balancer_class=cls.strip(), pools=pools,
        allocate=boolean(lb.get("allocate", d.allocate), f"{W}.loadBalancer.allocate"),
        allocator_node_selector=label_selector(lb.get("allocatorNodeSelector"), f"{W}.loadBalancer.allocatorNodeSelector"),
        external_ip_cidrs=allowed, cluster_ip_mode=_mode(cip.get("mode", d.cluster_ip_mode)))


def _sub(raw: dict, key: str) -> dict:
    try:
        return mapping(raw, key)
    except ConfigError:
        raise ConfigError(f"{W}.{key}: expected a mapping") from None


def _listed(raw: dict, key: str, where: str = "") -> list:
    try:
        return listed(raw, key)
    except ConfigError:
        raise ConfigError(f"{where or W + '.externalIPs.' + key}: expected a list") from None


def _mode(value: Any) -> str:
    text = str(value).strip()
    for m in CLUSTER_IP_MODES:
        if text.lower() == m.lower():
            return m
    raise ConfigError(f"{W}.clusterIP.mode: {value!r} is not one of {', '.join(CLUSTER_IP_MODES)}")


def _pool(raw: Any, where: str) -> Pool:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with name and cidrs")
    known_keys(raw, _POOL_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: required (a word naming the pool)")
    cidrs = tuple(net(c, f"{where}.cidrs[{i}]") for i, c in enumerate(_listed(raw, "cidrs", f"{where}.cidrs")))
    if not cidrs:
        raise ConfigError(f"{where}.cidrs: at least one CIDR is required")
    comms = tuple(_community(c, f"{where}.communities[{i}]")
                  for i, c in enumerate(_listed(raw, "communities", f"{where}.communities")))
    lp = raw.get("localPreference")
    return Pool(name=name.strip(), cidrs=cidrs,
                service_selector=_selector(raw.get("serviceSelector"), f"{where}.serviceSelector"),
                communities=comms,
                local_preference=None if lp in (None, "") else integer(lp, f"{where}.localPreference", 0, 4294967295))


def _community(value: Any, where: str) -> str:
    asn, sep, val = str(value).strip().partition(":")
    if not sep or not asn.isdigit() or not val.isdigit() or int(asn) > 65535 or int(val) > 65535:
        raise ConfigError(f"{where}: {value!r} is not a standard community ASN:VALUE (each 0..65535)")
    return f"{int(asn)}:{int(val)}"


def _selector(value: Any, where: str) -> Selector:
    """A label selector string (as meshNodeSelector), or a mapping of matchLabels/matchExpressions."""
    if isinstance(value, dict):
        value = _selector_text(value, where)
    return label_selector(value, where)


_EXPR_OPS = {"In": "in", "NotIn": "notin"}


def _selector_text(raw: dict, where: str) -> str:
    known_keys(raw, {"matchLabels", "matchExpressions"}, where)
    labels = raw.get("matchLabels") or {}
    exprs = raw.get("matchExpressions") or []
    if not isinstance(labels, dict) or not isinstance(exprs, list):
        raise ConfigError(f"{where}: matchLabels must be a mapping and matchExpressions a list")
    parts = [f"{k}={v}" for k, v in sorted(labels.items())]
    for i, e in enumerate(exprs):
        key, op, values = (e.get("key"), e.get("operator"), e.get("values") or []) if isinstance(e, dict) else (None,) * 3
        if not isinstance(key, str) or not isinstance(values, list):
            raise ConfigError(f"{where}.matchExpressions[{i}]: expected key, operator and values")
        if op in _EXPR_OPS:
            parts.append(f"{key} {_EXPR_OPS[op]} ({','.join(map(str, values))})")
        elif op in ("Exists", "DoesNotExist"):
            parts.append(key if op == "Exists" else f"!{key}")
        else:
            raise ConfigError(f"{where}.matchExpressions[{i}].operator: {op!r} is not In, NotIn, Exists or DoesNotExist")
    return ",".join(parts)


def _unique_names(pools: Sequence[Pool]) -> None:
    seen: dict[str, int] = {}
    for i, p in enumerate(pools):
        if p.name in seen:
            raise ConfigError(f"{W}.loadBalancer.pools[{i}].name: {p.name!r} is also pools[{seen[p.name]}]")
        seen[p.name] = i


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    if a.version != b.version:
        return False
    (s1, e1), (s2, e2) = span(a), span(b)
    return s1 <= e2 and s2 <= e1


def check_ranges(svc: ServicesConfig, cluster_cidrs: Sequence[IPNetwork], service_cidrs: Sequence[IPNetwork]) -> None:
    """Pools and allowed ExternalIP ranges stay out of the Pod and Service ranges; pools never
    overlap each other (an address belongs to one pool, with one set of BGP attributes)."""
    if svc.cluster_ip_mode != "off" and not service_cidrs:
        raise ConfigError(f"{W}.clusterIP.mode: {svc.cluster_ip_mode} needs serviceCIDRs (the range cluster IPs come from)")
    named = [(f"{W}.loadBalancer.pools[{i}].cidrs[{j}]", c) for i, p in enumerate(svc.pools) for j, c in enumerate(p.cidrs)]
    allowed = [(f"{W}.externalIPs.allowedCIDRs[{i}]", c) for i, c in enumerate(svc.external_ip_cidrs)]
    for where, c in named + allowed:
        for what, nets in (("clusterCIDRs", cluster_cidrs), ("serviceCIDRs", service_cidrs)):
            for k, other in enumerate(nets):
                if _overlap(c, other):
                    raise ConfigError(f"{where}: {c} overlaps {what}[{k}] {other}; Service addresses must lie "
                                      "outside the Pod and Service ranges")
    for n, (where, c) in enumerate(named):
        for other_where, other in named[:n]:
            if _overlap(c, other):
                raise ConfigError(f"{where}: {c} overlaps {other_where} {other}; pools must be disjoint")
