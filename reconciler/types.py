"""Values of the reconciler: kernel routes, the vouch table, plans. No I/O."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from bgp.types import IPAddress, IPNetwork

DEFAULT_PROTOCOL = 80  # rtm_protocol of every route podbgp owns (unused by other daemons)
MAIN_TABLE = 254


class ReconcilerError(Exception):
    """Base of the reconciler's errors."""


class NetlinkError(ReconcilerError):
    def __init__(self, errno: int, what: str) -> None:
        super().__init__(f"{what}: errno {errno}")
        self.errno = errno


@dataclass(frozen=True, slots=True)
class RouteKey:
    """What identifies a route in one kernel table: family is implied by the prefix."""

    prefix: IPNetwork
    metric: int

    def sort_key(self) -> tuple[int, int, int, int]:
        return (self.prefix.version, int(self.prefix.network_address), self.prefix.prefixlen, self.metric)


@dataclass(frozen=True, slots=True)
class Route:
    prefix: IPNetwork
    gateways: tuple[IPAddress, ...]  # sorted; more than one = ECMP
    metric: int = 20

    @property
    def key(self) -> RouteKey:
        return RouteKey(self.prefix, self.metric)


@dataclass(frozen=True, slots=True)
class KernelRoute:
    """A route as dumped from the kernel."""

    prefix: IPNetwork
    gateways: tuple[IPAddress, ...]
    metric: int
    protocol: int
    table: int
    oif: int = 0

    @property
    def key(self) -> RouteKey:
        return RouteKey(self.prefix, self.metric)


class Reason(str, enum.Enum):
    """Why a learned path was not installed."""

    DEFAULT_ROUTE = "default-route"
    OWN_CIDR = "own-cidr"
    OUTSIDE_CLUSTER = "outside-cluster-cidr"
    SERVICE_RANGE = "service-range"
    CONNECTED = "overlaps-connected-subnet"
    NO_SUCH_NODE = "no-such-node"
    NEXT_HOP_MISMATCH = "next-hop-mismatch"
    DISPUTED = "disputed-cidr"
    LINK_LOCAL_NEXT_HOP = "link-local-next-hop"
    FOREIGN_ROUTE = "foreign-route-present"


@dataclass(frozen=True, slots=True)
class Owner:
    """What the Kubernetes API says about a PodCIDR: the node it belongs to and its addresses."""

    node: str
    addresses: frozenset[IPAddress]


@dataclass(frozen=True, slots=True)
class Rejection:
    prefix: IPNetwork
    peer: str
    next_hop: IPAddress
    reason: Reason


@dataclass(frozen=True, slots=True)
class Plan:
    replace: tuple[Route, ...]
    delete: tuple[KernelRoute, ...]
    blocked: tuple[Route, ...]  # desired, but a foreign route holds the same key

    @property
    def empty(self) -> bool:
        return not self.replace and not self.delete
