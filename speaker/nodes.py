"""Node objects from the Kubernetes API as typed values, and the index of who owns which PodCIDR.

Pure: raw Node dicts in, values out. Bad input raises NodeError naming the node and the field.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bgp.types import IPAddress, IPNetwork

from .config import SpeakerError


class NodeError(SpeakerError):
    """A Node object that cannot be used; one line naming the node and the field."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    pod_cidrs: tuple[IPNetwork, ...]
    addresses: tuple[IPAddress, ...]  # InternalIPs, in the order the Node lists them
    annotations: tuple[tuple[str, str], ...] = ()

    def address(self, version: int) -> IPAddress | None:
        return next((a for a in self.addresses if a.version == version), None)


def parse_node(obj: Any) -> NodeInfo:
    if not isinstance(obj, dict):
        raise NodeError("node: not an object")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise NodeError("node: metadata.name missing")
    name = meta["name"]
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        raise NodeError(f"node {name}: spec/status is not an object")
    raw_cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    if not isinstance(raw_cidrs, list):
        raise NodeError(f"node {name}: spec.podCIDRs is not a list")
    cidrs: list[IPNetwork] = []
    for i, text in enumerate(raw_cidrs):
        try:
            net = ipaddress.ip_network(str(text), strict=True)
        except ValueError as exc:
            raise NodeError(f"node {name}: spec.podCIDRs[{i}] {text!r} is invalid ({exc})") from None
        if any(c.version == net.version for c in cidrs):
            raise NodeError(f"node {name}: spec.podCIDRs has two IPv{net.version} CIDRs")
        cidrs.append(net)
    addrs: list[IPAddress] = []
    raw_addrs = status.get("addresses") or []
    if not isinstance(raw_addrs, list):
        raise NodeError(f"node {name}: status.addresses is not a list")
    for i, a in enumerate(raw_addrs):
        if not isinstance(a, dict) or a.get("type") != "InternalIP":
            continue
        try:
            addrs.append(ipaddress.ip_address(str(a.get("address"))))
        except ValueError:
            raise NodeError(f"node {name}: status.addresses[{i}].address {a.get('address')!r} is invalid") from None
    ann = meta.get("annotations") or {}
    annotations = tuple(sorted((str(k), str(v)) for k, v in ann.items())) if isinstance(ann, dict) else ()
    return NodeInfo(name=name, pod_cidrs=tuple(cidrs), addresses=tuple(addrs), annotations=annotations)


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who the API says owns each PodCIDR, with the CIDRs that no node may be trusted with."""

    owners: Mapping[IPNetwork, tuple[str, frozenset[IPAddress]]]
    disputed: Mapping[IPNetwork, tuple[str, ...]]  # CIDR -> the nodes claiming overlapping ranges
    unusable: Mapping[str, str]  # node name -> reason it is not trusted


def ownership(nodes: Iterable[NodeInfo]) -> Ownership:
    """Map each PodCIDR to its node; overlapping claims trust neither side."""
    claims: list[tuple[IPNetwork, NodeInfo]] = [(c, n) for n in nodes for c in n.pod_cidrs]
    claims.sort(key=lambda cn: (cn[0].version, int(cn[0].network_address), cn[0].prefixlen, cn[1].name))
    disputed: dict[IPNetwork, set[str]] = {}
    by_version: dict[int, list[tuple[IPNetwork, NodeInfo]]] = {4: [], 6: []}
    for c, n in claims:
        by_version[c.version].append((c, n))
    for group in by_version.values():
        # sorted by start address: an overlap can only be with a range that started earlier and
        # has not ended yet, so track the furthest end seen so far
        active: list[tuple[IPNetwork, NodeInfo]] = []
        for c, n in group:
            active = [(a, m) for a, m in active if a.broadcast_address >= c.network_address]
            for a, m in active:
                if m.name != n.name:
                    disputed.setdefault(a, set()).update({m.name, n.name})
                    disputed.setdefault(c, set()).update({m.name, n.name})
            active.append((c, n))
    owners: dict[IPNetwork, tuple[str, frozenset[IPAddress]]] = {}
    unusable: dict[str, str] = {}
    for c, n in claims:
        if c in disputed:
            continue
        if n.address(c.version) is None:
            unusable[n.name] = f"node {n.name}: no InternalIP of IPv{c.version} for podCIDR {c}"
            continue
        owners[c] = (n.name, frozenset(a for a in n.addresses if a.version == c.version))
    return Ownership(owners=owners, disputed={c: tuple(sorted(v)) for c, v in disputed.items()}, unusable=unusable)
