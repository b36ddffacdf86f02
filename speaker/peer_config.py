"""BGP peers as configured: the global `peers:` of the config file and a Node's podbgp.io/peers
annotation, each peer's keys (address, asn, port, holdTime, keepaliveTime, multihop,
ttlSecurity, passwordKey, exportServices, maxPrefixes, bfd; in the config also families and
nodeSelector) parsed into a `Peer`.

maxPrefixes: an int (the limit of each family), or a mapping {ipv4: N, ipv6: N, action: warn |
teardown, restartAfter: seconds}; a family left out has no limit. action warn (the default)
alarms and keeps the session; teardown ends it with a Cease "maximum number of prefixes reached"
and re-establishes it restartAfter seconds later (default 60). What counts: the peer's paths held
in the RIB plus the ones the import policy refuses for good (counted, not stored), so a leak of
routes outside the cluster trips it too (bgp.limits).

bfd: true (300 ms x 3), false, or a mapping {minRx: ms, minTx: ms, multiplier: n} (defaults 300,
300, 3): a BFD session beside the BGP session; when BFD goes from up to down, the peer's paths
leave the kernel at once and the session is torn down (Cease "BFD down"; bgp.sessions).

Every default is a `Peer` field default, read from there by the parser. Every refusal is a
ConfigError with one line naming the peer and the field.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bgp.types import BfdTimers, IPAddress

from . import selector
from .config_values import ConfigError, boolean, defaults, integer, ip, known_keys, label_selector, listed
from .selector import Selector


def keepalive_for(hold_time: int) -> int:
    """The keepalive interval of a hold time: a third of it, the only ratio ExaBGP sends."""
    return hold_time // 3


@dataclass(frozen=True, slots=True)
class Peer:
    """A BGP peer from the config or a Node's podbgp.io/peers annotation. The password itself
    is never here: `password_key` names a file in the mounted Secret (Config.secrets_dir)."""

    address: IPAddress
    asn: int
    hold_time: int = 9
    keepalive_time: int | None = None  # None: keepalive_for(hold_time), filled in at creation
    port: int = 179
    password_key: str | None = None
    multihop: int | None = None
    ttl_security: int | None = None
    families: frozenset[str] = frozenset()  # empty: the family of the address
    node_selector: Selector = selector.EVERYTHING  # the nodes this peer applies to
    export_services: bool = True  # the peer gets this node's Service routes (not only its PodCIDRs)
    max_prefixes: tuple[tuple[str, int], ...] = ()  # (family, limit), sorted; empty: no limit
    max_prefixes_action: str = "warn"  # warn | teardown
    restart_after: int = 60  # seconds after a teardown
    bfd: BfdTimers | None = None  # BFD beside the session; None: none

    def __post_init__(self) -> None:
        if self.keepalive_time is None:
            object.__setattr__(self, "keepalive_time", keepalive_for(self.hold_time))


# the keys of a peer in a Node's podbgp.io/peers annotation; the config adds families and nodeSelector
ANNOTATION_PEER_KEYS = {"address", "asn", "port", "holdTime", "keepaliveTime", "multihop", "ttlSecurity", "passwordKey",
                        "exportServices", "maxPrefixes", "bfd"}
PEER_KEYS = ANNOTATION_PEER_KEYS | {"families", "nodeSelector"}
_DEFAULT = defaults(Peer)


def peer_list(value: Any) -> list:
    """The config's `peers:` as a list, each item still to parse (absent or empty: no peer)."""
    peers = value or []
    if not isinstance(peers, list):
        raise ConfigError("peers: expected a list")
    return peers


def parse_peers(items: list) -> tuple[Peer, ...]:
    """The items of the config's `peers:`, each named peers[i] in a refusal."""
    return tuple(parse_peer(p, f"peers[{i}]") for i, p in enumerate(items))


def parse_peer(raw: Any, where: str, keys: Iterable[str] = PEER_KEYS) -> Peer:
    """One peer from the config (`keys` all of them) or from a Node's podbgp.io/peers annotation
    (`keys` ANNOTATION_PEER_KEYS); ConfigError naming `where` and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with address and asn")
    if "password" in raw:  # before the unknown-key check, which would suggest passwordKey less clearly
        raise ConfigError(f"{where}.password: a password must not sit in a ConfigMap or annotation; put it in "
                          "the Secret podbgp-bgp-passwords and name its key with passwordKey")
    known_keys(raw, keys, where)
    fams = frozenset(listed(raw, "families"))
    bad = sorted(fams - {"ipv4", "ipv6"})
    if bad:
        raise ConfigError(f"{where}.families: unknown family {bad[0]!r} (ipv4, ipv6)")
    hold = _hold(raw.get("holdTime", _DEFAULT.hold_time), f"{where}.holdTime")
    if raw.get("multihop") and raw.get("ttlSecurity"):
        raise ConfigError(f"{where}.ttlSecurity: multihop and ttlSecurity exclude each other (GTSM sends with "
                          "TTL 255; give ttlSecurity the hop count instead)")
    return Peer(
        address=ip(raw.get("address"), f"{where}.address"),
        asn=integer(raw.get("asn"), f"{where}.asn", 1, 4294967295),
        hold_time=hold,
        keepalive_time=_keepalive(raw.get("keepaliveTime"), hold, f"{where}.keepaliveTime"),
        port=integer(raw.get("port", _DEFAULT.port), f"{where}.port", 1, 65535),
        password_key=_secret_key(raw.get("passwordKey"), f"{where}.passwordKey"),
        multihop=integer(raw["multihop"], f"{where}.multihop", 1, 255) if raw.get("multihop") else None,
        ttl_security=integer(raw["ttlSecurity"], f"{where}.ttlSecurity", 1, 254) if raw.get("ttlSecurity") else None,
        families=fams,
        node_selector=label_selector(raw.get("nodeSelector"), f"{where}.nodeSelector"),
        export_services=boolean(raw.get("exportServices", _DEFAULT.export_services), f"{where}.exportServices"),
        **_max_prefixes(raw.get("maxPrefixes"), f"{where}.maxPrefixes"),
        bfd=_bfd(raw.get("bfd"), f"{where}.bfd"),
    )


MAX_PREFIXES_KEYS = {"ipv4", "ipv6", "action", "restartAfter"}


def _max_prefixes(value: Any, where: str) -> dict[str, Any]:
    """maxPrefixes as Peer's fields: an int for every family, or a mapping (see the module doc)."""
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        n = integer(value, where, 1, 2**32 - 1)
        return {"max_prefixes": (("ipv4", n), ("ipv6", n))}
    known_keys(value, MAX_PREFIXES_KEYS, where)
    limits = tuple((f, integer(value[f], f"{where}.{f}", 1, 2**32 - 1)) for f in ("ipv4", "ipv6") if f in value)
    if not limits:
        raise ConfigError(f"{where}: give a limit for ipv4, ipv6 or both (or one int for every family)")
    action = str(value.get("action", _DEFAULT.max_prefixes_action))
    if action not in ("warn", "teardown"):
        raise ConfigError(f"{where}.action: {action!r} is not warn or teardown")
    after = integer(value.get("restartAfter", _DEFAULT.restart_after), f"{where}.restartAfter", 1, 86400)
    return {"max_prefixes": limits, "max_prefixes_action": action, "restart_after": after}


BFD_KEYS = {"minRx", "minTx", "multiplier"}
_BFD = defaults(BfdTimers)


def _bfd(value: Any, where: str) -> BfdTimers | None:
    """bfd: absent or false (none), true (the defaults) or {minRx, minTx, multiplier}."""
    if value is None or value == "":
        return None
    if not isinstance(value, dict):
        return BfdTimers() if boolean(value, where) else None
    known_keys(value, BFD_KEYS, where)
    # FRR's bounds: intervals of 10 ms to 60 s, a multiplier of 2 to 255
    return BfdTimers(min_rx=integer(value.get("minRx", _BFD.min_rx), f"{where}.minRx", 10, 60000),
                     min_tx=integer(value.get("minTx", _BFD.min_tx), f"{where}.minTx", 10, 60000),
                     multiplier=integer(value.get("multiplier", _BFD.multiplier), f"{where}.multiplier", 2, 255))


def _hold(value: Any, where: str) -> int:
    n = integer(value, where, 0, 65535)
    if n in (1, 2):
        raise ConfigError(f"{where}: {n} is not allowed (0 or at least 3 seconds, RFC 4271)")
    return n


def _keepalive(value: Any, hold: int, where: str) -> int | None:
    """The keepaliveTime given, checked against the hold time; None (Peer's default) when unset."""
    if value is None or value == "":
        return None
    n = integer(value, where, 0, 65535)
    if hold == 0 and n != 0:
        raise ConfigError(f"{where}: {n} with holdTime 0 (no keepalives without a hold time); leave it unset or 0")
    if hold and not 1 <= n < hold:
        raise ConfigError(f"{where}: {n} must be at least 1 and less than holdTime {hold}")
    if n != keepalive_for(hold):
        raise ConfigError(f"{where}: {n} cannot be honoured: ExaBGP sends a keepalive every holdTime/3 "
                          f"({keepalive_for(hold)} with holdTime {hold}); leave it unset or set holdTime to {3 * n}")
    return n


_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


def _secret_key(value: Any, where: str) -> str | None:
    """A Secret's data key (what kubectl create secret accepts): also a plain file name."""
    if value is None or value == "":
        return None
    text = str(value)
    if not _SECRET_KEY_RE.match(text) or text in (".", ".."):
        raise ConfigError(f"{where}: {text!r} is not a Secret key (letters, digits, '-', '_', '.')")
    return text
