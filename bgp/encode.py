"""Encode typed intents as ExaBGP API commands (one line each). Pure."""
from __future__ import annotations

from .types import Announcement, family_of


def announce(peer: str, ann: Announcement) -> str:
    nh = "self" if ann.next_hop is None else str(ann.next_hop)
    return f"neighbor {peer} announce route {ann.prefix} next-hop {nh}"


def withdraw(peer: str, ann: Announcement) -> str:
    return f"neighbor {peer} withdraw route {ann.prefix}"


def eor(peer: str, family: str) -> str:
    return f"neighbor {peer} announce eor {family} unicast"


def sync(peer: str, families: frozenset[str], old: frozenset[Announcement], new: frozenset[Announcement]) -> list[str]:
    """Commands that take one peer from announcing `old` to announcing `new` (sorted, deterministic)."""
    wanted = {a for a in new if family_of(a.prefix) in families}
    had = {a for a in old if family_of(a.prefix) in families}
    gone = sorted(had - wanted, key=_key)
    added = sorted(wanted - had, key=_key)
    return [withdraw(peer, a) for a in gone if a.prefix not in {w.prefix for w in wanted}] + [
        announce(peer, a) for a in added
    ]


def resync(peer: str, families: frozenset[str], held: frozenset[Announcement],
           new: frozenset[Announcement]) -> list[str]:
    """Commands that leave a peer announcing exactly `new` whatever part of `held` ExaBGP still
    has for it: withdraws of what is gone, then every announcement (ExaBGP drops one it holds)."""
    wanted = {a for a in new if family_of(a.prefix) in families}
    prefixes = {a.prefix for a in wanted}
    gone = sorted({a for a in held if family_of(a.prefix) in families and a.prefix not in prefixes}, key=_key)
    return [withdraw(peer, a) for a in gone] + [announce(peer, a) for a in sorted(wanted, key=_key)]


def _key(a: Announcement) -> tuple[int, str]:
    return (a.prefix.version, str(a.prefix))
