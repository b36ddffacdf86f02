"""Typed values that the rest of podbgp sees instead of ExaBGP text."""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Announcement:
    """One prefix this node originates, with the next hop it wants (None = next-hop self)."""

    prefix: IPNetwork
    next_hop: IPAddress | None = None


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A BGP session as the speaker wants it (already resolved for this node)."""

    address: IPAddress
    asn: int
    local_address: IPAddress
    local_asn: int
    router_id: ipaddress.IPv4Address
    hold_time: int = 9
    families: frozenset[str] = frozenset({"ipv4"})
    graceful_restart: int = 120  # seconds; 0 = disabled
    password: str | None = None
    multihop: int | None = None
    ttl_security: int | None = None
    passive: bool = False

    @property
    def key(self) -> str:
        return str(self.address)


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

