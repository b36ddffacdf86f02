"""Diff desired routes against the kernel. Pure.

The rule is `diff`, over the reconciler's model of the table: routes by ident (the key as plain
numbers), and the idents foreign routes hold. The reconciler's full pass diffs the whole table,
its incremental pass only the marked prefixes; both call it. `plan` is the same rule for routes
as dumped from the kernel.
"""
from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from bgp.types import IPNetwork

from .types import Ident, KernelRoute, Plan, Route


def plan(
    desired: Mapping[IPNetwork, Route],
    ours: Iterable[KernelRoute],
    foreign: Iterable[KernelRoute],
    prune: bool = True,
) -> Plan:
    """What to replace and delete so the kernel holds exactly `desired` under our protocol.

    `ours` are the kernel routes carrying our protocol number, `foreign` every other route of the
    same table. See `diff` for the rule.
    """
    return diff({r.ident: r for r in desired.values()}, {r.ident: r for r in ours}, {r.ident for r in foreign}, prune)


NOTHING = Plan(replace=(), delete=(), blocked=())  # what diff returns, this very value, when nothing differs


def diff(
    wanted: Mapping[Ident, Route],
    ours: Mapping[Ident, Route | KernelRoute],
    taken: Container[Ident],
    prune: bool = True,
) -> Plan:
    """The rule: a wanted route is replaced where our route at its key is missing or has other
    next hops; blocked, never replaced, where a foreign route holds its key (`taken`); with
    prune (after convergence) each of `ours` whose key is not wanted is deleted, before that
    nothing is.

    Keys are `ident`s (see reconciler.types.ident_of) and next hops are compared packed, so
    dumped kernel routes never need their ipaddress objects; output is sorted by key. Work is
    proportional to `wanted` and `ours`: `taken` is only asked about wanted keys, so a caller
    diffing some prefixes restricts those two to them and hands `taken` whole.
    """
    replace: list[Route] = []
    blocked: list[Route] = []
    for key in sorted(wanted) if len(wanted) > 1 else wanted:
        route = wanted[key]
        if key in taken:
            blocked.append(route)
            continue
        current = ours.get(key)
        if current is None or current.hops != route.hops:
            replace.append(route)
    delete = [ours[k] for k in sorted(ours) if k not in wanted] if prune else []
    if not (replace or delete or blocked):
        return NOTHING
    return Plan(replace=tuple(replace), delete=tuple(delete), blocked=tuple(blocked))
