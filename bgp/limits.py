"""Paths refused for good, counted instead of stored; and a peer's maxPrefixes. Pure; no I/O.

A ToR that leaks its whole table (a million routes outside the cluster) must not cost the speaker
a million Path objects. The speaker hands Sessions a predicate, the static part of its import
policy (reconciler.policy.static_check: a default route, outside every cluster CIDR, inside the
Service range or a Service pool): no later API change can lift those refusals, so such a path is
counted here, per peer and reason, and never enters the RIB.

What is kept per peer, for the current session only (reset when it goes down, since the peer
sends its table again on the next one):
- `by_reason`: refused announcements received, per reason (what status and explain show:
  "N such paths from PEER"); it only grows during a session.
- `held(family)`: refused paths the peer holds now, as far as counting can tell: exact for the
  first EXACT prefixes (a default route, a few stray prefixes: a set of them), beyond that
  announcements minus withdraws with no per-prefix memory, so a refused prefix announced again
  with new attributes counts twice: an upper bound, which is what a leak guard wants.
"""
from __future__ import annotations

import collections
from collections.abc import Mapping

from .types import IPNetwork, PeerConfig

EXACT = 1024  # refused prefixes remembered exactly per peer before counting takes over


class RefusedCount:
    __slots__ = ("by_reason", "_held", "_exact")

    def __init__(self) -> None:
        self.by_reason: collections.Counter[str] = collections.Counter()
        self._held = [0, 0]  # ipv4, ipv6
        self._exact: set[IPNetwork] | None = set()

    def announced(self, prefix: IPNetwork, reason: str) -> None:
        self.by_reason[reason] += 1
        exact = self._exact
        if exact is not None:
            if prefix in exact:
                return  # the same refused prefix again: an implicit withdraw and announce
            exact.add(prefix)
            if len(exact) > EXACT:
                self._exact = None  # a leak: count from now on, remember nothing per prefix
        self._held[prefix.version == 6] += 1

    def withdrawn(self, prefix: IPNetwork) -> None:
        exact = self._exact
        if exact is not None:
            if prefix not in exact:
                return  # never announced (or already withdrawn): a no-op
            exact.discard(prefix)
        i = prefix.version == 6
        if self._held[i]:
            self._held[i] -= 1

    def held(self, family: str) -> int:
        return self._held[family == "ipv6"]

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def reset(self) -> None:
        self.by_reason.clear()
        self._held = [0, 0]
        self._exact = set()


Over = tuple[tuple[str, int, int], ...]  # (family, counted, limit) of each family over its limit


def over_limit(cfg: PeerConfig, counted: Mapping[str, int]) -> Over:
    """The families of `cfg` whose counted paths exceed its maxPrefixes (empty: none)."""
    return tuple((fam, counted.get(fam, 0), limit) for fam, limit in cfg.max_prefixes
                 if counted.get(fam, 0) > limit)


def describe(over: Over) -> str:
    """'ipv4 1200000 > maxPrefixes 20000 (over by 1180000)', one clause per family."""
    return "; ".join(f"{fam} {n} > maxPrefixes {limit} (over by {n - limit})" for fam, n, limit in over)
