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


def _key(a: Announcement) -> tuple[int, str]:
    return (a.prefix.version, str(a.prefix))
