"""The RIB of paths learned from peers, indexed by peer and by prefix. Pure; no I/O.

Every change reports the prefixes it touched, so the reconciler recomputes only those.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from .types import IPNetwork, Path, UpdateEvent


class Rib:
    def __init__(self) -> None:
        self._by_peer: dict[str, dict[IPNetwork, Path]] = {}
        self._by_prefix: dict[IPNetwork, dict[str, Path]] = {}
        self._v6: dict[str, int] = {}  # IPv6 paths per peer (for maxPrefixes per family)

    def _drop(self, peer: str, prefix: IPNetwork) -> None:
        paths = self._by_prefix.get(prefix)
        if paths is not None:
            paths.pop(peer, None)
            if not paths:
                del self._by_prefix[prefix]

    def apply(self, ev: UpdateEvent) -> set[IPNetwork]:
        """Apply one UPDATE; return the prefixes whose paths changed."""
        table = self._by_peer.setdefault(ev.peer, {})
        changed: set[IPNetwork] = set()
        v6 = 0
        for prefix in ev.withdrawn:
            if table.pop(prefix, None) is not None:
                self._drop(ev.peer, prefix)
                changed.add(prefix)
                v6 -= prefix.version == 6
        for path in ev.announced:
            old = table.get(path.prefix)
            if old != path:
                if old is None:
                    v6 += path.prefix.version == 6
                table[path.prefix] = path
                self._by_prefix.setdefault(path.prefix, {})[ev.peer] = path
                changed.add(path.prefix)
        if v6:
            self._v6[ev.peer] = self._v6.get(ev.peer, 0) + v6
        return changed

    def peer_down(self, peer: str, keep_stale: bool) -> set[IPNetwork]:
        """A session went down: drop its paths (returned), or keep them marked stale (graceful restart).

        Marking stale changes no kernel route, so it reports no prefix."""
        table = self._by_peer.get(peer)
        if not table:
            return set()
        if keep_stale:
            for prefix, path in table.items():
                if not path.stale:
                    stale = replace(path, stale=True)
                    table[prefix] = stale
                    self._by_prefix[prefix][peer] = stale
            return set()
        del self._by_peer[peer]
        self._v6.pop(peer, None)
        for prefix in table:
            self._drop(peer, prefix)
        return set(table)

    def sweep_stale(self, peer: str) -> set[IPNetwork]:
        """Remove the peer's paths still stale (after its End-of-RIB or restart timer)."""
        table = self._by_peer.get(peer, {})
        stale = {p for p, path in table.items() if path.stale}
        for prefix in stale:
            del table[prefix]
            self._drop(peer, prefix)
        if v6 := sum(p.version == 6 for p in stale):
            self._v6[peer] -= v6
        return stale

    def paths_for(self, prefix: IPNetwork) -> Iterable[Path]:
        paths = self._by_prefix.get(prefix)
        return paths.values() if paths else ()

    def prefixes(self) -> Iterable[IPNetwork]:
        return self._by_prefix.keys()

    def paths(self) -> Iterator[Path]:
        for peer in sorted(self._by_peer):
            yield from self._by_peer[peer].values()

    def count(self, peer: str | None = None, family: str | None = None) -> int:
        """Paths held, of one peer or all, of one family ("ipv4", "ipv6") or both."""
        if peer is not None:
            n, v6 = len(self._by_peer.get(peer, {})), self._v6.get(peer, 0)
            return n if family is None else v6 if family == "ipv6" else n - v6
        return sum(len(t) for t in self._by_peer.values())
