"""Values of the reconciler: kernel routes, owners, rejections, plans; and `RibReader`, what it
reads learned paths through. No I/O."""
from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from operator import attrgetter
from typing import Protocol

from bgp.types import IPAddress, IPNetwork, Path

DEFAULT_PROTOCOL = 80  # rtm_protocol of every route podbgp owns (unused by other daemons)
MAIN_TABLE = 254


class RibReader(Protocol):
    """The learned paths, as the reconciler reads them (bgp.rib.Rib has these two methods; so
    does every route source). The reconciler is handed one and only reads it."""

    def paths_for(self, prefix: IPNetwork) -> Iterable[Path]:
        """Every path held for `prefix`."""
        ...

    def prefixes(self) -> Iterable[IPNetwork]:
        """Every prefix with at least one path."""
        ...


class ReconcilerError(Exception):
    """Base of the reconciler's errors."""


class NetlinkError(ReconcilerError):
    def __init__(self, errno: int, what: str) -> None:
        super().__init__(f"{what}: errno {errno}")
        self.errno = errno


Ident = tuple[int, int, int, int]  # (ip version, network address as an int, prefix length, metric)


def ident_of(prefix: IPNetwork, metric: int) -> Ident:
    """What identifies a route in one kernel table, as plain numbers: equal for equal (prefix,
    metric), sorted by family, address, length, metric."""
    return (prefix.version, int(prefix.network_address), prefix.prefixlen, metric)


def hops_of(gateways: tuple[IPAddress, ...]) -> tuple[bytes, ...]:
    return tuple(g.packed for g in gateways)


@dataclass(frozen=True, slots=True)
class Route:
    prefix: IPNetwork
    gateways: tuple[IPAddress, ...]  # sorted; more than one = ECMP
    metric: int = 20

    @property
    def ident(self) -> Ident:
        return ident_of(self.prefix, self.metric)

    @property
    def hops(self) -> tuple[bytes, ...]:
        return hops_of(self.gateways)


_NET = {4: IPv4Network, 6: IPv6Network}  # by ip version
_ADDR = {4: IPv4Address, 16: IPv6Address}  # by packed length
_new = object.__new__


class KernelRoute:
    """A route as dumped from the kernel. Immutable; compares and hashes by value.

    Built from values, `KernelRoute(prefix, gateways, metric, protocol, table, oif=0)`, or by the
    dump parser from the numbers of the netlink message, `KernelRoute.dumped(ident, hops,
    protocol, table, oif)`. A dumped route builds its `ipaddress` objects (`.prefix`,
    `.gateways`) only when first asked: `plan` and the delete path use the plain
    `.ident` (see `ident_of`) and `.hops` (the gateways' packed addresses, sorted), which cost
    nothing to compare, so a table of 100k routes can be dumped, diffed and pruned without them.
    """

    __slots__ = ("_ident", "_hops", "_protocol", "_table", "_oif", "_prefix", "_gateways")

    def __init__(self, prefix: IPNetwork, gateways: tuple[IPAddress, ...], metric: int, protocol: int,
                 table: int, oif: int = 0) -> None:
        self._prefix, self._gateways = prefix, tuple(gateways)
        self._ident, self._hops = ident_of(prefix, metric), hops_of(self._gateways)
        self._protocol, self._table, self._oif = protocol, table, oif

    @classmethod
    def dumped(cls, ident: Ident, hops: tuple[bytes, ...], protocol: int, table: int, oif: int = 0) -> KernelRoute:
        route = _new(cls)
        route._ident, route._hops, route._protocol, route._table, route._oif = ident, hops, protocol, table, oif
        route._prefix = route._gateways = None
        return route

    ident = property(attrgetter("_ident"))
    hops = property(attrgetter("_hops"))
    protocol = property(attrgetter("_protocol"))
    table = property(attrgetter("_table"))
    oif = property(attrgetter("_oif"))

    @property
    def metric(self) -> int:
        return self._ident[3]

    @property
    def prefix(self) -> IPNetwork:
        if self._prefix is None:
            version, address, length, _metric = self._ident
            self._prefix = _NET[version]((address, length))
        return self._prefix

    @property
    def gateways(self) -> tuple[IPAddress, ...]:
        if self._gateways is None:
            self._gateways = tuple(_ADDR[len(h)](h) for h in self._hops)
        return self._gateways

    def _values(self) -> tuple:
        return (self._ident, self._hops, self._protocol, self._table, self._oif)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KernelRoute):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return (f"KernelRoute(prefix={self.prefix!r}, gateways={self.gateways!r}, metric={self.metric!r}, "
                f"protocol={self._protocol!r}, table={self._table!r}, oif={self._oif!r})")

    def __reduce__(self):
        return (KernelRoute.dumped, self._values())


class Reason(str, enum.Enum):
    """Why a learned path was not installed."""

    DEFAULT_ROUTE = "default-route"
    OWN_CIDR = "own-cidr"
    OUTSIDE_CLUSTER = "outside-cluster-cidr"
    SERVICE_RANGE = "service-range"
    SERVICE_ADDRESS = "service-address"  # inside a LoadBalancer pool or an allowed ExternalIP range
    CONNECTED = "overlaps-connected-subnet"
    NO_SUCH_NODE = "no-such-node"
    NEXT_HOP_MISMATCH = "next-hop-mismatch"
    DISPUTED = "disputed-cidr"
    LINK_LOCAL_NEXT_HOP = "link-local-next-hop"
    FOREIGN_ROUTE = "foreign-route-present"


@dataclass(frozen=True, slots=True)
class Owner:
    """Which Node holds a PodCIDR, by the Kubernetes API: its name and its InternalIPs of the
    CIDR's family (the next hops the import policy accepts). speaker.nodes.NodeView keeps one
    per vouched PodCIDR; the policy and `podbgp explain` read them."""

    node: str
    addresses: tuple[IPAddress, ...]  # a tuple, not a set: 5,000 Nodes hold 10,000 of these


@dataclass(frozen=True, slots=True)
class Rejection:
    prefix: IPNetwork
    peer: str
    next_hop: IPAddress
    reason: Reason


@dataclass(frozen=True, slots=True)
class Plan:
    replace: tuple[Route, ...]
    delete: tuple[Route | KernelRoute, ...]  # our routes as dumped, or as the model last wrote them
    blocked: tuple[Route, ...]  # desired, but a foreign route holds the same key

    @property
    def empty(self) -> bool:
        return not self.replace and not self.delete
