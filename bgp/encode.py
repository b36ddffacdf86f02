"""Encode typed intents as ExaBGP API commands (one line each). Pure.

ExaBGP 5.0.15's API takes the static-route syntax after `neighbor X announce route`:
`... next-hop self community [65000:100 65000:200] local-preference 200`
(exabgp/configuration/static/parser.py: `community` reads one value or a bracketed list,
`local_preference` a decimal number). A prefix announced again with other attributes replaces
the one ExaBGP holds for the peer (implicit withdraw): no withdraw is sent first.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from .types import Announcement, IPNetwork, PeerConfig, family_of

Sent = Mapping[IPNetwork, Announcement]  # what ExaBGP holds for one peer, by prefix


def announce(peer: str, ann: Announcement) -> str:
    nh = "self" if ann.next_hop is None else str(ann.next_hop)
    cmd = f"neighbor {peer} announce route {ann.prefix} next-hop {nh}"
    if ann.communities:
        cmd += f" community [{' '.join(sorted(ann.communities, key=_community_key))}]"
    if ann.local_pref is not None:
        cmd += f" local-preference {ann.local_pref}"
    return cmd


def withdraw(peer: str, ann: Announcement) -> str:
    return f"neighbor {peer} withdraw route {ann.prefix}"


def eor(peer: str, family: str) -> str:
    return f"neighbor {peer} announce eor {family} unicast"


def teardown(peer: str, subcode: int = 1) -> str:
    """End the session with a Cease NOTIFICATION of this subcode (1: maximum number of prefixes
    reached, RFC 4486). ExaBGP 5.0 (reactor/api/command/neighbor.py) sends it to an established
    peer and then reconnects as usual: keeping it away is a reload without the peer."""
    return f"neighbor {peer} teardown {subcode}"


def for_peer(cfg: PeerConfig, ann: Announcement | None) -> Announcement | None:
    """The announcement as this peer gets it, or None if it gets none: only its families, Service
    routes only if it exports them, LOCAL_PREF only inside the AS (iBGP)."""
    if ann is None or family_of(ann.prefix) not in cfg.families or (ann.service and not cfg.export_services):
        return None
    if ann.local_pref is not None and cfg.asn != cfg.local_asn:
        return replace(ann, local_pref=None)
    return ann


def changes(peer: str, sent: Sent, wanted: Mapping[IPNetwork, Announcement | None]) -> list[str]:
    """Commands for the prefixes in `wanted` only (None = not announced to the peer), against
    what the peer was `sent`: withdraws, then announces of what is new or has other attributes.
    Work is proportional to len(wanted), whatever the size of `sent`."""
    gone, new = [], []
    for prefix, ann in wanted.items():
        had = sent.get(prefix)
        if ann is None:
            if had is not None:
                gone.append(had)
        elif ann != had:
            new.append(ann)
    return [withdraw(peer, a) for a in sorted(gone, key=_key)] + [announce(peer, a) for a in sorted(new, key=_key)]


def view(cfg: PeerConfig, announced: Iterable[Announcement]) -> dict[IPNetwork, Announcement]:
    """Everything this peer should hold now, by prefix."""
    out = {}
    for a in announced:
        if (v := for_peer(cfg, a)) is not None:
            out[a.prefix] = v
    return out


def resync(peer: str, held: Sent, wanted: Sent) -> list[str]:
    """Commands that leave a peer announcing exactly `wanted` (from view()) whatever part of
    `held` ExaBGP still has for it: withdraws of what is gone, then every announcement (ExaBGP
    drops one it holds)."""
    gone = sorted((a for p, a in held.items() if p not in wanted), key=_key)
    return [withdraw(peer, a) for a in gone] + [announce(peer, a) for a in sorted(wanted.values(), key=_key)]


def _key(a: Announcement) -> tuple[int, str]:
    return (a.prefix.version, str(a.prefix))


def _community_key(c: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in c.split(":"))
    except ValueError:
        return (1 << 32,)
