"""Import policy: which learned paths become kernel routes. Pure.

A learned prefix is installed only if the Kubernetes API vouches for it: it equals a PodCIDR of
some Node and (strict mode) its next hop is one of that Node's addresses. Everything else is
rejected with a reason. Service addresses (the Service CIDRs, the LoadBalancer pools and the
allowed ExternalIP ranges) are what nodes announce, never what they install.
"""
from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from bgp.types import IPNetwork, Path

from .types import Owner, Reason, Rejection, Route


@dataclass(frozen=True, slots=True)
class Policy:
    own: frozenset[IPNetwork]
    cluster: frozenset[IPNetwork]
    service: frozenset[IPNetwork]
    connected: frozenset[IPNetwork]
    owners: Mapping[IPNetwork, Owner]  # vouched PodCIDRs, kept live by the caller (speaker.nodes.NodeView)
    disputed: Container[IPNetwork] = frozenset()
    strict_next_hop: bool = True
    metric: int = 20
    service_ranges: frozenset[IPNetwork] = frozenset()  # LoadBalancer pools and allowed ExternalIP ranges


Span = tuple[int, int, int]  # (ip version, first address, last address) as integers


@lru_cache(maxsize=64)
def _spans(nets: frozenset[IPNetwork]) -> tuple[Span, ...]:
    return tuple(_span(n) for n in nets)


def _span(net: IPNetwork) -> Span:
    first = int(net.network_address)
    return net.version, first, first + (1 << (net.max_prefixlen - net.prefixlen)) - 1


def _overlaps(span: Span, spans: tuple[Span, ...]) -> bool:
    v, first, last = span
    return any(w == v and lo <= last and first <= hi for w, lo, hi in spans)


def _inside(span: Span, spans: tuple[Span, ...]) -> bool:
    v, first, last = span
    return any(w == v and lo <= first and last <= hi for w, lo, hi in spans)


PERMANENT = frozenset({Reason.DEFAULT_ROUTE, Reason.SERVICE_RANGE, Reason.SERVICE_ADDRESS, Reason.OUTSIDE_CLUSTER})


def static_check(policy: Policy, prefix: IPNetwork) -> Reason | None:
    """The reason `prefix` is refused whatever the Nodes say, or None: a default route, inside the
    Service range or a Service pool, outside every cluster CIDR (all from the configuration,
    fixed for the life of the process). Whenever this gives a reason, check() refuses the path
    too (it asks this after OWN_CIDR only), so a route source
    may count such paths instead of storing them (bgp.limits)."""
    if prefix.prefixlen == 0:
        return Reason.DEFAULT_ROUTE
    span = _span(prefix)
    if _overlaps(span, _spans(policy.service)):
        return Reason.SERVICE_RANGE
    if policy.service_ranges and _overlaps(span, _spans(policy.service_ranges)):
        return Reason.SERVICE_ADDRESS
    if not _inside(span, _spans(policy.cluster)):
        return Reason.OUTSIDE_CLUSTER
    return None


def check(policy: Policy, path: Path) -> Reason | None:
    """The reason a path is refused, or None if it may be installed.

    Ranges are compared as integers (the same answers as ipaddress's overlaps/subnet_of, at a
    tenth of the cost: this runs once per learned path and UPDATE)."""
    prefix = path.prefix
    span = _span(prefix)
    if prefix.prefixlen and _overlaps(span, _spans(policy.own)):
        return Reason.OWN_CIDR
    reason = static_check(policy, prefix)  # the reasons no Node can lift, in one place
    if reason is not None:
        return reason
    if _overlaps(span, _spans(policy.connected)):
        return Reason.CONNECTED
    if prefix in policy.disputed:
        return Reason.DISPUTED
    owner = policy.owners.get(prefix)
    if owner is None:
        return Reason.NO_SUCH_NODE
    if path.next_hop.is_link_local:
        return Reason.LINK_LOCAL_NEXT_HOP
    if policy.strict_next_hop and path.next_hop not in owner.addresses:
        return Reason.NEXT_HOP_MISMATCH
    return None


def evaluate(policy: Policy, prefix: IPNetwork, paths: Iterable[Path]) -> tuple[Route | None, tuple[Rejection, ...]]:
    """The kernel route wanted for one prefix given its learned paths, and the paths refused."""
    gateways = set()
    rejected = []
    for path in paths:
        reason = check(policy, path)
        if reason is None:
            gateways.add(path.next_hop)
        else:
            rejected.append(Rejection(path.prefix, path.peer, path.next_hop, reason))
    route = Route(prefix=prefix, gateways=tuple(sorted(gateways)), metric=policy.metric) if gateways else None
    return route, tuple(sorted(rejected, key=lambda r: r.peer))
