"""The RIB of paths learned from peers, keyed by peer and prefix. Pure; no I/O."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from .types import IPNetwork, Path, UpdateEvent


class Rib:
    def __init__(self) -> None:
        self._paths: dict[str, dict[IPNetwork, Path]] = {}
        self.generation = 0  # bumped on every real change; cheap "did anything change" test

    def apply(self, ev: UpdateEvent) -> bool:
        """Apply one UPDATE; return True if the RIB changed."""
        table = self._paths.setdefault(ev.peer, {})
        changed = False
        for prefix in ev.withdrawn:
            if table.pop(prefix, None) is not None:
                changed = True
        for path in ev.announced:
            if table.get(path.prefix) != path:
                table[path.prefix] = path
                changed = True
        if changed:
            self.generation += 1
        return changed

    def peer_down(self, peer: str, keep_stale: bool) -> bool:
        """A session went down: drop its paths, or keep them marked stale (graceful restart)."""
        table = self._paths.get(peer)
        if not table:
            return False
        if keep_stale:
            for prefix, path in table.items():
                table[prefix] = replace(path, stale=True)
        else:
            del self._paths[peer]
        self.generation += 1
        return True

    def sweep_stale(self, peer: str) -> int:
        """Remove the peer's paths still stale (after its End-of-RIB or restart timer)."""
        table = self._paths.get(peer, {})
        stale = [p for p, path in table.items() if path.stale]
        for prefix in stale:
            del table[prefix]
        if stale:
            self.generation += 1
        return len(stale)

    def paths(self) -> Iterator[Path]:
        for peer in sorted(self._paths):
            yield from self._paths[peer].values()

    def count(self, peer: str | None = None) -> int:
        if peer is not None:
            return len(self._paths.get(peer, {}))
        return sum(len(t) for t in self._paths.values())

    def peers(self) -> list[str]:
        return sorted(self._paths)
