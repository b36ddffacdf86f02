"""Node objects from the Kubernetes API as typed values, and the index of who owns which PodCIDR.

Pure: raw Node dicts in, values out. Bad input raises NodeError naming the node and the field.
"""
from __future__ import annotations

import bisect
import collections
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from bgp.types import IPAddress, IPNetwork, span
from reconciler.types import Owner

from .config import SpeakerError

log = logging.getLogger(__name__)


ANNOTATION_PREFIX = "podbgp.io/"


class NodeError(SpeakerError):
    """A Node object that cannot be used; one line naming the node and the field."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    pod_cidrs: tuple[IPNetwork, ...]
    addresses: tuple[IPAddress, ...]  # InternalIPs, in the order the Node lists them
    annotations: tuple[tuple[str, str], ...] = ()  # podbgp.io/ ones only, sorted
    labels: tuple[tuple[str, str], ...] = ()  # sorted; of other Nodes only those a selector names

    def address(self, version: int) -> IPAddress | None:
        return next((a for a in self.addresses if a.version == version), None)


def parse_node(obj: Any, label_keys: frozenset[str] | None = None, own: str = "") -> NodeInfo:
    """A Node object as podbgp uses it. label_keys: the label keys kept of Nodes other than `own`
    (those some selector names; None keeps every label): 5,000 Nodes' full label sets cost
    megabytes, and a change of a label nothing reads is then no change at all."""
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
    # only podbgp's own annotations are kept: others change for reasons that are none of ours,
    # and a Node whose used fields are unchanged must compare equal
    annotations = tuple(sorted((str(k), str(v)) for k, v in ann.items() if str(k).startswith(ANNOTATION_PREFIX))) \
        if isinstance(ann, dict) else ()
    raw_labels = meta.get("labels") or {}
    if not isinstance(raw_labels, dict):
        raw_labels = {}
    kept = raw_labels.items() if label_keys is None or name == own else \
        ((k, v) for k, v in raw_labels.items() if k in label_keys)
    labels = tuple(sorted((str(k), str(v)) for k, v in kept))
    return NodeInfo(name=name, pod_cidrs=tuple(cidrs), addresses=tuple(addrs), annotations=annotations, labels=labels)


class NodeView:
    """The Nodes as the speaker uses them, and who owns each PodCIDR, kept up to date per change.

    `upsert` and `delete` return the PodCIDRs whose verdict (owner, disputed, unusable) changed,
    at a cost proportional to the Node's CIDRs and the claims overlapping them, never to the
    number of Nodes. Overlapping claims trust neither Node (`disputed`); a PodCIDR whose Node
    has no InternalIP of its family is `unusable`; every other claimed PodCIDR has an `Owner`.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.owners: dict[IPNetwork, Owner] = {}
        self.disputed: dict[IPNetwork, tuple[str, ...]] = {}
        self.unusable_at: dict[IPNetwork, tuple[str, str]] = {}  # CIDR -> (node, reason)
        self._claims: dict[IPNetwork, tuple[str, ...]] = {}  # CIDR -> the Nodes claiming exactly it
        self._starts: dict[int, list[tuple[int, int]]] = {4: [], 6: []}  # sorted (start, prefixlen)
        self._lengths: dict[int, collections.Counter[int]] = {4: collections.Counter(), 6: collections.Counter()}

    def __len__(self) -> int:
        return len(self.nodes)

    def get(self, name: str) -> NodeInfo | None:
        return self.nodes.get(name)

    @property
    def unusable(self) -> dict[str, str]:
        ordered = sorted(self.unusable_at.items(), key=lambda kv: (kv[0].version, int(kv[0].network_address), kv[0].prefixlen))
        return {name: reason for _c, (name, reason) in ordered}

    # ---- changes -----------------------------------------------------------------------------
    def upsert(self, info: NodeInfo) -> set[IPNetwork]:
        old = self.nodes.get(info.name)
        if old == info:
            return set()
        touched = set(old.pod_cidrs) if old else set()
        self._unclaim(old)
        self.nodes[info.name] = info
        self._claim(info)
        return self._reassess(touched | set(info.pod_cidrs))

    def delete(self, name: str) -> set[IPNetwork]:
        old = self.nodes.pop(name, None)
        if old is None:
            return set()
        self._unclaim(old)
        return self._reassess(set(old.pod_cidrs))

    # ---- the claim index ---------------------------------------------------------------------
    def _claim(self, info: NodeInfo) -> None:
        for c in info.pod_cidrs:
            names = self._claims.get(c, ())
            if not names:
                bisect.insort(self._starts[c.version], (int(c.network_address), c.prefixlen))
                self._lengths[c.version][c.prefixlen] += 1
            if info.name not in names:
                self._claims[c] = names + (info.name,)

    def _unclaim(self, info: NodeInfo | None) -> None:
        for c in info.pod_cidrs if info else ():
            names = self._claims.get(c)
            if names is None:
                continue
            names = tuple(n for n in names if n != info.name)
            self._claims[c] = names
            if not names:
                del self._claims[c]
                starts = self._starts[c.version]
                del starts[bisect.bisect_left(starts, (int(c.network_address), c.prefixlen))]
                self._lengths[c.version][c.prefixlen] -= 1

    def _overlapping(self, net: IPNetwork) -> list[IPNetwork]:
        """Claimed CIDRs other than net that overlap it (CIDRs overlap only by containment)."""
        out = []
        for length, n in self._lengths[net.version].items():
            if n and length < net.prefixlen:
                sup = net.supernet(new_prefix=length)
                if sup in self._claims:
                    out.append(sup)
        start, end = span(net)
        starts = self._starts[net.version]
        cls = type(net)
        for i in range(bisect.bisect_left(starts, (start, net.prefixlen + 1)), len(starts)):
            s, length = starts[i]
            if s > end:
                break
            out.append(cls((s, length)))
        return out

    # ---- verdicts ----------------------------------------------------------------------------
    def _reassess(self, cidrs: set[IPNetwork]) -> set[IPNetwork]:
        affected = set(cidrs)
        for c in cidrs:
            affected.update(self._overlapping(c))
        changed = set()
        for c in affected:
            if self._verdict(c):
                changed.add(c)
        return changed

    def _verdict(self, c: IPNetwork) -> bool:
        """Recompute one CIDR's verdict; True if it changed."""
        before = (self.owners.get(c), self.disputed.get(c), self.unusable_at.get(c))
        self.owners.pop(c, None)
        self.disputed.pop(c, None)
        self.unusable_at.pop(c, None)
        names = set(self._claims.get(c, ()))
        if names:
            for other in self._overlapping(c):
                names.update(self._claims[other])
            if len(names) > 1:
                self.disputed[c] = tuple(sorted(names))
            else:
                node = self.nodes[names.pop()]
                addrs = tuple(a for a in node.addresses if a.version == c.version)
                if addrs:
                    self.owners[c] = Owner(node.name, addrs)
                else:
                    self.unusable_at[c] = (node.name, f"node {node.name}: no InternalIP of IPv{c.version} for podCIDR {c}")
        after = (self.owners.get(c), self.disputed.get(c), self.unusable_at.get(c))
        if after == before:
            return False
        if after[1] and after[1] != before[1]:
            log.warning("node.cidr.disputed cidr=%s nodes=%s", c, ",".join(after[1]))
        if after[2] and after[2] != before[2]:
            log.warning("node.unusable %s", after[2][1])
        return True
