"""The LoadBalancer IP allocator's pure core: which ingress IPs each Service of podbgp's
loadBalancerClass should carry, as actions (set or clear a Service's ingress IPs; a Warning Event
for a request it cannot meet). No I/O: speaker.lbipam runs it, elected, and does the writes.

Rules (issue 13, Deliver 4):
- only Services of type LoadBalancer whose loadBalancerClass is unset or the configured one;
  Services of another class are never touched, not even their status;
- pools (ServicesConfig.pools) in configuration order; a pool's serviceSelector must match the
  Service's labels; one IP per family in spec.ipFamilies (SingleStack: the first only);
- spec.loadBalancerIP / annotation podbgp.io/load-balancer-ips (ServiceInfo.requested_ips) are
  given exactly, if each is a usable address of a pool the Service may use and free or shareable;
- an IP is shared only by Services with the same podbgp.io/sharing-key whose (protocol, port)
  pairs are disjoint; a Service with the same key is placed on an IP its key already holds first;
- never a pool's network or broadcast address (IPv4 prefixes shorter than /31), never the
  all-zero host (subnet-router anycast) address of an IPv6 prefix shorter than /127;
- otherwise the lowest free address (deterministic), found through a per-range cursor and a set of
  used integers, never a list of a range's addresses;
- a Service whose status already holds a valid IP keeps it: `decide` rebuilds the whole state
  from the Services' status (after a restart or a fail-over no IP is handed out twice; of two
  Services claiming one unshareable IP the first by key keeps it, the other gets a new one);
- an IP is released when its Service is deleted, leaves type LoadBalancer (its ingress is cleared)
  or leaves podbgp's class (left alone).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bgp.types import IPAddress, IPNetwork

if TYPE_CHECKING:  # speaker.services / speaker.service_config (P3): used by attribute only
    from .service_config import Pool, ServicesConfig
    from .services import ServiceInfo

LOAD_BALANCER = "LoadBalancer"
FAMILY = {4: "IPv4", 6: "IPv6"}

# Event reasons (the message says the rest in one line)
OUTSIDE_POOLS = "IPOutsidePools"
ALREADY_TAKEN = "IPAlreadyTaken"
POOL_EXHAUSTED = "PoolExhausted"


@dataclass(frozen=True, slots=True)
class SetIngress:
    """Write status.loadBalancer.ingress of Service `key` to these IPs (empty: clear it)."""
    key: str
    ips: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class Event:
    """A Warning Event on Service `key`: a request the allocator cannot meet."""
    key: str
    reason: str
    message: str


Action = SetIngress | Event


class _Range:
    """One CIDR of one pool: the usable integers [lo, hi], those in use, and a cursor below which
    every usable integer is in use (so the lowest free one is found without a list)."""

    __slots__ = ("pool", "net", "lo", "hi", "used", "cursor")

    def __init__(self, pool: Pool, net: IPNetwork) -> None:
        self.pool, self.net = pool, net
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if net.version == 4 and net.prefixlen < 31:
            lo, hi = lo + 1, hi - 1  # network and broadcast
        elif net.version == 6 and net.prefixlen < 127:
            lo += 1  # the subnet-router anycast address
        self.lo, self.hi = lo, hi
        self.used: set[int] = set()
        self.cursor = lo

    @property
    def size(self) -> int:
        return max(0, self.hi - self.lo + 1)

    def usable(self, n: int) -> bool:
        return self.lo <= n <= self.hi

    def take(self, n: int) -> None:
        self.used.add(n)

    def free(self, n: int) -> None:
        self.used.discard(n)
        self.cursor = min(self.cursor, n)

    def lowest_free(self) -> int | None:
        c = self.cursor
        while c <= self.hi and c in self.used:
            c += 1
        self.cursor = c
        return c if c <= self.hi else None


@dataclass(slots=True)
class _Holders:
    """The Services on one IP, with the sharing key they all carry and the ports of each."""
    sharing_key: str | None
    ports: dict[str, frozenset[tuple[str, int]]] = field(default_factory=dict)

    def admits(self, info: ServiceInfo) -> bool:
        if not self.ports or set(self.ports) == {info.key}:
            return True
        if info.sharing_key is None or info.sharing_key != self.sharing_key:
            return False
        taken = set().union(*(p for k, p in self.ports.items() if k != info.key))
        return taken.isdisjoint(info.ports)


def ours(info: ServiceInfo, load_balancer_class: str) -> bool:
    return info.type == LOAD_BALANCER and info.lb_class in (None, load_balancer_class)


def wanted_families(info: ServiceInfo) -> tuple[str, ...]:
    fams = tuple(info.ip_families) or tuple(FAMILY[ip.version] for ip in info.cluster_ips[:1]) or ("IPv4",)
    return fams[:1] if info.ip_family_policy == "SingleStack" else fams


def _ips(ips: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(sorted(set(ips), key=lambda ip: (ip.version, int(ip))))


class Allocator:
    """The allocation state and the decisions. `decide` rebuilds everything from the Services
    (their status included); `on_service` and `on_delete` follow one Service each."""

    def __init__(self, cfg: ServicesConfig) -> None:
        self.load_balancer_class = cfg.load_balancer_class
        self.pools: tuple[Pool, ...] = tuple(cfg.pools)
        self._ranges = [_Range(p, net) for p in self.pools for net in p.cidrs]
        self._reset()

    def _reset(self) -> None:
        for r in self._ranges:
            r.used.clear()
            r.cursor = r.lo
        self._holders: dict[IPAddress, _Holders] = {}
        self._by_key: dict[str, set[IPAddress]] = {}  # sharing key -> IPs it holds
        self.assigned: dict[str, tuple[IPAddress, ...]] = {}
        self.problems: dict[str, str] = {}
        self._waiting: dict[str, ServiceInfo] = {}  # Services whose request is not met (retried on a release)
        self._freed = False

    # ---- entry points ----------------------------------------------------------------------
    def decide(self, services: Iterable[ServiceInfo]) -> list[Action]:
        """Forget everything, then: Services whose status holds valid IPs keep them (in key
        order), then those asking for IPs, then the rest get the lowest free ones."""
        self._reset()
        mine, actions = [], []
        for info in sorted(services, key=lambda s: s.key):
            if ours(info, self.load_balancer_class):
                mine.append(info)
            elif info.type != LOAD_BALANCER and info.ingress and self._all_in_pools(info):
                actions.append(SetIngress(info.key, ()))  # left type LoadBalancer while we were away
        rest = [info for info in mine if not self._keep(info, [ip for ip, _ in info.ingress])]
        for info in sorted(rest, key=lambda s: (not s.requested_ips, s.key)):
            actions += self._place(info)
        for info in mine:
            actions += self._write(info)
        return actions

    def on_service(self, info: ServiceInfo) -> list[Action]:
        """A Service was added or changed."""
        if not ours(info, self.load_balancer_class):
            held = self._forget(info.key)
            if info.type != LOAD_BALANCER and info.ingress and (held or self._all_in_pools(info)):
                return [SetIngress(info.key, ())] + self._retry()
            return self._retry()
        held = self.assigned.get(info.key)
        current = held or tuple(ip for ip, _ in info.ingress)
        self._release(info.key)
        if self._keep(info, current):
            self.problems.pop(info.key, None)
            self._waiting.pop(info.key, None)
            if held == self.assigned[info.key]:
                self._freed = False  # the same IPs taken back: nothing freed
            return self._write(info) + self._retry()
        return self._place(info) + self._write(info) + self._retry()

    def on_delete(self, key: str) -> list[Action]:
        self._forget(key)
        return self._retry()

    def _forget(self, key: str) -> tuple[IPAddress, ...]:
        self.problems.pop(key, None)
        self._waiting.pop(key, None)
        return self._release(key)

    def _retry(self) -> list[Action]:
        """Once an address was freed, place the Services still waiting (requests first)."""
        actions: list[Action] = []
        while self._freed and self._waiting:
            self._freed = False
            for info in sorted(self._waiting.values(), key=lambda s: (not s.requested_ips, s.key)):
                actions += self._place(info) + self._write(info)
        self._freed = False
        return actions

    def status(self) -> dict[str, Any]:
        usage: dict[str, dict[str, int]] = {}
        for r in self._ranges:
            u = usage.setdefault(r.pool.name, {"used": 0, "size": 0})
            u["used"] += len(r.used)
            u["size"] += r.size
        return {"pools": usage, "problems": dict(sorted(self.problems.items()))}

    # ---- placing one Service ---------------------------------------------------------------
    def _eligible(self, info: ServiceInfo) -> list[_Range]:
        labels = dict(info.labels)
        return [r for r in self._ranges if r.pool.service_selector.matches(labels)]

    def _range_of(self, ip: IPAddress, ranges: Iterable[_Range]) -> _Range | None:
        return next((r for r in ranges if r.net.version == ip.version and ip in r.net), None)

    def _all_in_pools(self, info: ServiceInfo) -> bool:
        return all(self._range_of(ip, self._ranges) is not None for ip, _ in info.ingress)

    def _keep(self, info: ServiceInfo, ips: Iterable[IPAddress]) -> bool:
        """Claim IPs the Service holds already, if they are still right for it."""
        ips = _ips(ips)
        if not ips:
            return False
        if info.requested_ips:
            if set(ips) != set(info.requested_ips):
                return False
        elif sorted(FAMILY[ip.version] for ip in ips) != sorted(set(wanted_families(info))):
            return False
        eligible = self._eligible(info)
        for ip in ips:
            r = self._range_of(ip, eligible)
            if r is None or not r.usable(int(ip)) or not self._admits(ip, info):
                return False
        self._take(info, ips)
        return True

    def _place(self, info: ServiceInfo) -> list[Action]:
        ips, reason, message = self._requested(info) if info.requested_ips else self._choose(info)
        if ips:
            self._take(info, ips)
            self.problems.pop(info.key, None)
            self._waiting.pop(info.key, None)
            return []
        self._waiting[info.key] = info
        line = f"service {info.key}: {message}"
        if self.problems.get(info.key) == line:
            return []  # said already
        self.problems[info.key] = line
        return [Event(info.key, reason, message)]

    def _requested(self, info: ServiceInfo) -> tuple[tuple[IPAddress, ...], str, str]:
        eligible = self._eligible(info)
        for ip in _ips(info.requested_ips):
            r = self._range_of(ip, eligible)
            if r is None:
                where = "a pool whose serviceSelector does not match the Service" \
                    if self._range_of(ip, self._ranges) else "no configured pool"
                return (), OUTSIDE_POOLS, f"requested IP {ip} is outside every pool this Service may use ({where})"
            if not r.usable(int(ip)):
                return (), OUTSIDE_POOLS, f"requested IP {ip} is outside every pool's usable addresses " \
                                          f"(network, broadcast or anycast address of {r.net} in pool {r.pool.name})"
            if not self._admits(ip, info):
                others = ", ".join(sorted(k for k in self._holders[ip].ports if k != info.key))
                return (), ALREADY_TAKEN, f"requested IP {ip} is already taken by {others} " \
                                          f"(sharing needs the same podbgp.io/sharing-key and distinct ports)"
        return _ips(info.requested_ips), "", ""

    def _choose(self, info: ServiceInfo) -> tuple[tuple[IPAddress, ...], str, str]:
        eligible = self._eligible(info)
        ips = []
        for fam in wanted_families(info):
            version = 4 if fam == "IPv4" else 6
            ranges = [r for r in eligible if r.net.version == version]
            ip = self._shared(info, ranges) or self._lowest(ranges)
            if ip is None:
                names = ", ".join(dict.fromkeys(r.pool.name for r in ranges))
                why = f"no free {fam} address in pool(s) {names}" if ranges \
                    else f"no pool with an {fam} range matches this Service"
                return (), POOL_EXHAUSTED, f"pool exhausted: {why}"
            ips.append(ip)
        return _ips(ips), "", ""

    def _shared(self, info: ServiceInfo, ranges: list[_Range]) -> IPAddress | None:
        if info.sharing_key is None:
            return None
        fits = [ip for ip in self._by_key.get(info.sharing_key, ())
                if self._range_of(ip, ranges) is not None and self._admits(ip, info)]
        return min(fits, key=int, default=None)

    @staticmethod
    def _lowest(ranges: list[_Range]) -> IPAddress | None:
        for r in ranges:
            n = r.lowest_free()
            if n is not None:
                return ipaddress.IPv6Address(n) if r.net.version == 6 else ipaddress.IPv4Address(n)
        return None

    # ---- the books -------------------------------------------------------------------------
    def _admits(self, ip: IPAddress, info: ServiceInfo) -> bool:
        holders = self._holders.get(ip)
        return holders is None or holders.admits(info)

    def _take(self, info: ServiceInfo, ips: tuple[IPAddress, ...]) -> None:
        for ip in ips:
            holders = self._holders.get(ip)
            if holders is None:
                holders = self._holders[ip] = _Holders(info.sharing_key)
                self._range_of(ip, self._ranges).take(int(ip))
                if info.sharing_key is not None:
                    self._by_key.setdefault(info.sharing_key, set()).add(ip)
            holders.ports[info.key] = frozenset(info.ports)
        self.assigned[info.key] = ips

    def _release(self, key: str) -> tuple[IPAddress, ...]:
        ips = self.assigned.pop(key, ())
        for ip in ips:
            holders = self._holders[ip]
            holders.ports.pop(key, None)
            if holders.ports:
                continue
            del self._holders[ip]
            self._range_of(ip, self._ranges).free(int(ip))
            self._freed = True
            if holders.sharing_key is not None:
                held = self._by_key[holders.sharing_key]
                held.discard(ip)
                if not held:
                    del self._by_key[holders.sharing_key]
        return ips

    def _write(self, info: ServiceInfo) -> list[Action]:
        """Set the status to what the Service holds (cleared if it holds nothing), unless it is so."""
        ips = self.assigned.get(info.key, ())
        if _ips(ip for ip, _ in info.ingress) == ips and all(mode == "VIP" for _, mode in info.ingress):
            return []
        return [SetIngress(info.key, ips)]
