"""What a route source is: the one seam between where paths come from and who reads them.

BGP sessions (bgp.sessions.Sessions: ExaBGP and its peers) and direct mode
(speaker.direct.DirectSource: paths derived from the Node objects) are both route sources. The
reconciler reads a source's paths (`paths_for`, `prefixes`: reconciler.types.RibReader is the
part it needs); status, metrics and explain read its peers' status as frozen values and whether
it has converged. Nobody outside the source reads its insides: ExaBGP, its RIB's dicts, its
timers.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .rib import Rib
from .types import IPAddress, IPNetwork, Path, SessionState


@dataclass(frozen=True, slots=True)
class BfdStatus:
    """A peer's BFD session: the BFD engine's last state (up, down, init, adm-down; "unknown" before its
    first word, "unavailable" when the engine cannot run: error says why), since when, the timers asked
    for (ms), the last diagnostic in words, how many times it went from up to down, whether the BGP
    session is held down for it, and the prefixes whose paths were dropped at its last down."""

    state: str
    since: float | None
    min_rx: int
    min_tx: int
    multiplier: int
    multihop: bool
    diagnostics: str
    downs: int
    dropped: frozenset[IPNetwork] = frozenset()
    dropped_at: float | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peer's session as a source reports it, at the moment it was asked.

    since: the unix time the session entered `state` (None: not yet seen in any state).
    reason: why it is in that state, in words (ExaBGP's reason, then what podbgp can tell about
    TCP MD5 or GTSM when no TCP connection comes up). end_of_rib: the families whose End-of-RIB
    arrived in the current session. paths: the paths from this peer now in the RIB (stale ones
    of a graceful restart included). refused: paths of this session the import policy refuses for
    good, counted and not stored, per reason (bgp.limits). counted: per family, what counts
    toward maxPrefixes (paths held plus refused ones held). max_prefixes: the limits, per family.
    over: how the peer is over its limits, in words ("" when it is not); excess: by how many paths
    (the largest excess of its families, as last counted: kept while torn down). resume_at: unix time a
    session torn down for maxPrefixes comes back (None: not torn down). bfd: its BFD session (None:
    the config asks for none)."""

    key: str
    address: IPAddress
    asn: int
    local_address: IPAddress
    local_asn: int
    families: frozenset[str]
    state: SessionState
    since: float | None
    reason: str
    end_of_rib: frozenset[str]
    paths: int
    refused: tuple[tuple[str, int], ...] = ()
    counted: tuple[tuple[str, int], ...] = ()
    max_prefixes: tuple[tuple[str, int], ...] = ()
    over: str = ""
    excess: int = 0
    resume_at: float | None = None
    bfd: BfdStatus | None = None


class RouteSource(Protocol):
    """Where learned paths come from. Implemented by bgp.sessions.Sessions (mode: bgp) and
    speaker.direct.DirectSource (mode: direct)."""

    def paths_for(self, prefix: IPNetwork) -> Iterable[Path]:
        """Every path this source holds for `prefix` (one per peer at most)."""
        ...

    def prefixes(self) -> Iterable[IPNetwork]:
        """Every prefix with at least one path."""
        ...

    def paths(self) -> Iterator[Path]:
        """Every path, sorted by peer."""
        ...

    def peers(self) -> tuple[PeerStatus, ...]:
        """Each configured peer's status, in configuration order (direct mode has none)."""
        ...

    def peer(self, key: str) -> PeerStatus | None:
        """One peer's status; None for a peer that is not configured."""
        ...

    @property
    def converged(self) -> bool:
        """True once what the source holds is complete enough to prune by (sessions up and
        End-of-RIB, or the grace timer; in direct mode, the first full Node list)."""
        ...

    @property
    def ready(self) -> bool:
        """True while routes can flow: a BGP session is Established (direct mode: converged)."""
        ...

    @property
    def pid(self) -> int | None:
        """The engine's process id (ExaBGP's), None when there is no such process."""
        ...

    async def stop(self) -> None:
        ...


class RibPaths:
    """The path half of a route source that keeps its paths in a bgp.rib.Rib (`self.rib`)."""

    rib: Rib

    def paths_for(self, prefix: IPNetwork) -> Iterable[Path]:
        return self.rib.paths_for(prefix)

    def prefixes(self) -> Iterable[IPNetwork]:
        return self.rib.prefixes()

    def paths(self) -> Iterator[Path]:
        return self.rib.paths()
