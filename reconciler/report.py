"""What the reconciler shows the rest of the speaker: frozen values, taken at the moment asked.

Three sizes, so that each reader pays for what it reads:

- `ReconcilerCounts` (`Reconciler.counts()`): sizes only, O(reasons); for /metrics at each scrape.
- `ReconcilerReport` (`Reconciler.report()`): the whole state, sorted; for /status.
- `PrefixReport` (`Reconciler.report_at(prefix)`): one prefix; for `podbgp explain`.

Nobody reads the reconciler's model (its dicts and sets) directly.
"""
from __future__ import annotations

from dataclasses import dataclass

from bgp.types import IPNetwork

from .policy import Policy
from .types import KernelRoute, Reason, Rejection, Route


@dataclass(frozen=True, slots=True)
class ReconcilerCounts:
    """installed: our routes in the kernel. rejected_by_reason: the learned paths refused now,
    per reason, nonzero ones only, sorted by the reason's name; a prefix blocked by a foreign
    route counts as FOREIGN_ROUTE. blocked, failed, pending: prefixes (see ReconcilerReport)."""

    installed: int
    rejected_by_reason: tuple[tuple[Reason, int], ...]
    blocked: int
    failed: int
    pending: int


@dataclass(frozen=True, slots=True)
class ReconcilerReport:
    """The reconciler's state. Every sequence is sorted (prefixes by family, address, length;
    rejections by prefix, then peer).

    installed: our routes in the kernel, as last written or dumped. rejected: every refused path
    with its reason. blocked: prefixes wanted where a foreign route holds our key. failed:
    prefixes the kernel refused in the last pass (retried). pending: prefixes marked and waiting
    for the next pass. synced: the Nodes are listed (nothing is installed before). converged: the
    RIB is complete (nothing is pruned before). last_pass: unix time of the last pass, or None.
    """

    counts: ReconcilerCounts
    installed: tuple[Route | KernelRoute, ...]
    rejected: tuple[Rejection, ...]
    blocked: tuple[IPNetwork, ...]
    failed: tuple[IPNetwork, ...]
    pending: tuple[IPNetwork, ...]
    synced: bool
    converged: bool
    last_pass: float | None


@dataclass(frozen=True, slots=True)
class PrefixReport:
    """The reconciler's state at one prefix.

    policy: the import policy in force (explain evaluates the prefix's paths with it and names
    what a refused path collided with). desired and rejected: the verdict of the last pass.
    installed: our route at our metric, as last written or dumped, or None. foreign_metrics: the
    metrics at which foreign routes sit at this prefix (the model keeps their keys only, not
    their protocol or next hops). blocked, failed, pending, synced, converged, last_pass: as in
    ReconcilerReport, for this prefix.
    """

    prefix: IPNetwork
    policy: Policy
    desired: Route | None
    rejected: tuple[Rejection, ...]
    installed: Route | KernelRoute | None
    foreign_metrics: tuple[int, ...]
    blocked: bool
    failed: bool
    pending: bool
    synced: bool
    converged: bool
    last_pass: float | None


def net_key(net: IPNetwork) -> tuple[int, int, int]:
    """Sort key of a prefix: family, address, length."""
    return (net.version, int(net.network_address), net.prefixlen)
