"""Typed values that the rest of podbgp sees instead of ExaBGP text."""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BgpError(Exception):
    """Base of every error raised by the bgp package."""


class DecodeError(BgpError):
    """A line from ExaBGP could not be understood (the only error the decoder raises)."""


class ConfigError(BgpError):
    """The ExaBGP configuration could not be rendered or was refused by ExaBGP."""


def family_of(net: IPNetwork | IPAddress) -> str:
    return "ipv4" if net.version == 4 else "ipv6"


def span(net: IPNetwork) -> tuple[int, int]:
    """The first and the last address of net as ints. Unlike `broadcast_address`, `overlaps` and
    `subnet_of` this caches nothing on net: those store a hostmask and a broadcast address in the
    network's __dict__ (~400 bytes), which on 10,000 long-lived PodCIDRs is 4 MiB."""
    start = int(net.network_address)
    return start, start | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


@dataclass(frozen=True, slots=True)
class BfdTimers:
    """BFD (RFC 5880) asked for a BGP session: the intervals we want, in milliseconds, and the
    detect multiplier. A peer is declared down after multiplier x the negotiated receive interval
    without a packet (300 ms x 3: 0.9 s)."""

    min_rx: int = 300
    min_tx: int = 300
    multiplier: int = 3


@dataclass(frozen=True, slots=True)
class Announcement:
    """One prefix this node originates, with the next hop it wants (None = next-hop self).

    communities: standard communities "ASN:VALUE" (sorted by the encoder when sent).
    local_pref: LOCAL_PREF, sent to iBGP peers only (eBGP peers never get it).
    service: a Service address (not a PodCIDR): sent only to peers whose config.export_services.
    """

    prefix: IPNetwork
    next_hop: IPAddress | None = None
    communities: tuple[str, ...] = ()
    local_pref: int | None = None
    service: bool = False


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A BGP session as the speaker wants it (already resolved for this node).

    password: the TCP MD5 key (RFC 2385), read by the speaker from its mounted Secret; it is
    never logged, never part of an exception message, and not shown by repr().
    multihop: eBGP multihop, the TTL we send with (1..255). ttl_security: GTSM (RFC 5082), the
    number of hops the peer may be away (1..254): we send with TTL 255 and accept only segments
    arriving with a TTL of at least 256 - hops. The two exclude each other.
    hold_time: 0, or 3..65535 seconds. keepalive: ExaBGP 5 has no keepalive setting; it sends one
    every negotiated hold time / 3, so only None or hold_time // 3 can be honoured.
    port: the peer's TCP port.
    listen: also accept the peer's connection on our :179 (local_address), as a mesh member must:
    both ends connect and BGP's collision detection keeps one session.
    export_services: the peer gets announcements with service=True. Not part of ExaBGP's config
    (render ignores it), so flipping it changes only what is announced, never the session.
    max_prefixes: (family, limit) pairs, sorted; empty: no limit. What counts toward a family's
    limit: the peer's paths held in the RIB plus the paths of that family it sent that the import
    policy refuses for good (counted, not stored: bgp.limits). Over the limit, max_prefixes_action
    "warn" logs, counts and shows it and keeps the session; "teardown" ends the session with a
    Cease "maximum number of prefixes reached" (RFC 4486 subcode 1) and re-establishes it
    restart_after seconds later. Not part of ExaBGP's config either (render ignores them).
    bfd: the BFD timers of a BFD session run beside the BGP session by podbgp (bgp.bfd, podbgp's
    BFD engine), single hop unless multihop; when it goes from up to down the peer's paths are
    dropped at once (no graceful restart) and the session is torn down. Not part of ExaBGP's config
    (render ignores it): a change of it is no reload.
    """

    address: IPAddress
    asn: int
    local_address: IPAddress
    local_asn: int
    router_id: ipaddress.IPv4Address
    hold_time: int = 9
    families: frozenset[str] = frozenset({"ipv4"})
    graceful_restart: int = 120  # seconds; 0 = disabled
    password: str | None = field(default=None, repr=False)
    multihop: int | None = None
    ttl_security: int | None = None
    passive: bool = False
    port: int = 179
    keepalive: int | None = None
    listen: bool = False
    export_services: bool = True
    max_prefixes: tuple[tuple[str, int], ...] = ()
    max_prefixes_action: str = "warn"  # "warn" | "teardown"
    restart_after: int = 60  # seconds, after a teardown
    bfd: BfdTimers | None = None  # BFD on this session (bgp.bfd); None: none

    @property
    def key(self) -> str:
        return str(self.address)

    @property
    def secured(self) -> bool:
        """TCP MD5 or GTSM: settings under which a mismatch drops segments without a word."""
        return self.password is not None or self.ttl_security is not None


class SessionState(str, enum.Enum):
    IDLE = "idle"
    CONNECTED = "connected"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Path:
    """A learned path: prefix via next hop, from one peer."""

    peer: str
    prefix: IPNetwork
    next_hop: IPAddress
    as_path: tuple[int, ...] = ()
    stale: bool = False


# ---- events decoded from ExaBGP -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StateEvent:
    peer: str
    state: SessionState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UpdateEvent:
    peer: str
    announced: tuple[Path, ...] = ()
    withdrawn: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class OpenEvent:
    """The peer's OPEN: its graceful-restart time if it advertised the capability, else None."""

    peer: str
    graceful_restart: int | None


@dataclass(frozen=True, slots=True)
class EorEvent:
    peer: str
    family: str  # "ipv4" | "ipv6"


@dataclass(frozen=True, slots=True)
class AckEvent:
    ok: bool


@dataclass(frozen=True, slots=True)
class ShutdownEvent:
    pass


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """A well-formed message of a kind podbgp does not act on (kept for counting)."""

    kind: str


Event = StateEvent | UpdateEvent | OpenEvent | EorEvent | AckEvent | ShutdownEvent | IgnoredEvent

