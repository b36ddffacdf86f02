"""Import policy: which learned paths become kernel routes. Pure.

A learned prefix is installed only if the Kubernetes API vouches for it: it equals a PodCIDR of
some Node and (strict mode) its next hop is one of that Node's addresses. Everything else is
rejected with a reason.
"""
from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

from bgp.types import IPNetwork, Path

from .types import Owner, Reason, Rejection, Route


@dataclass(frozen=True, slots=True)
class Policy:
    own: frozenset[IPNetwork]
    cluster: frozenset[IPNetwork]
    service: frozenset[IPNetwork]
    connected: frozenset[IPNetwork]
    owners: Mapping[IPNetwork, Owner]  # vouched PodCIDRs (anything with .addresses), kept live by the caller
    disputed: Container[IPNetwork] = frozenset()
    strict_next_hop: bool = True
    metric: int = 20


def check(policy: Policy, path: Path) -> Reason | None:
    """The reason a path is refused, or None if it may be installed."""
    prefix = path.prefix
    if prefix.prefixlen == 0:
        return Reason.DEFAULT_ROUTE
    if any(prefix.overlaps(o) for o in policy.own if o.version == prefix.version):
        return Reason.OWN_CIDR
    if any(prefix.overlaps(s) for s in policy.service if s.version == prefix.version):
        return Reason.SERVICE_RANGE
    if not any(prefix.subnet_of(c) for c in policy.cluster if c.version == prefix.version):
        return Reason.OUTSIDE_CLUSTER
    if any(prefix.overlaps(c) for c in policy.connected if c.version == prefix.version):
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


def desired_routes(policy: Policy, paths: Iterable[Path]) -> tuple[dict[IPNetwork, Route], list[Rejection]]:
    """Kernel routes wanted for these paths (ECMP where several next hops pass) and the rejections."""
    gateways: dict[IPNetwork, set] = {}
    rejected: list[Rejection] = []
    for path in paths:
        reason = check(policy, path)
        if reason is None:
            gateways.setdefault(path.prefix, set()).add(path.next_hop)
        else:
            rejected.append(Rejection(path.prefix, path.peer, path.next_hop, reason))
    routes = {
        prefix: Route(prefix=prefix, gateways=tuple(sorted(gws)), metric=policy.metric)
        for prefix, gws in gateways.items()
    }
    return routes, rejected


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
