"""Diff desired routes against the kernel. Pure."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from bgp.types import IPNetwork

from .types import KernelRoute, Plan, Route, hops_of, ident_of


def plan(
    desired: Mapping[IPNetwork, Route],
    ours: Iterable[KernelRoute],
    foreign: Iterable[KernelRoute],
    prune: bool = True,
) -> Plan:
    """What to replace and delete so the kernel holds exactly `desired` under our protocol.

    `ours` are the kernel routes carrying our protocol number, `foreign` every other route of the
    same table. A desired route whose key a foreign route already holds is blocked, never
    replaced. With prune=False (before convergence) nothing is deleted. Routes are matched by
    their plain `ident` (the key as numbers) and next hops compared packed, so dumped kernel
    routes never need their ipaddress objects; output is sorted by key.
    """
    have = {r.ident: r for r in ours}
    taken = {r.ident for r in foreign}
    wanted = {ident_of(r.prefix, r.metric): r for r in desired.values()}
    replace: list[Route] = []
    blocked: list[Route] = []
    for key in sorted(wanted):
        route = wanted[key]
        if key in taken:
            blocked.append(route)
            continue
        current = have.get(key)
        if current is None or current.hops != hops_of(route.gateways):
            replace.append(route)
    delete = [have[k] for k in sorted(have) if k not in wanted] if prune else []
    return Plan(replace=tuple(replace), delete=tuple(delete), blocked=tuple(blocked))
