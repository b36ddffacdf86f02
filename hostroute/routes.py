"""Routes from a workstation or VM to the Pod network, through the nodes (`podbgp host-route`).

Knows the OS's routing (netlink on Linux, route(8) on macOS) and nothing about Kubernetes: the
command hands it (CIDR, gateway) pairs. `HostRouter` adds them without ever replacing a route it
did not add, remembers exactly what it added, and removes exactly that. On Linux every route it
adds carries its own `rtm_protocol` (81 unless told otherwise; the speaker's is 80), so a later
`--remove` finds its routes by that mark; macOS has no such mark, so there it removes the routes
it is given.

The checks on a set of routes (`check`, `overlapping`, `summarize`) are pure.
"""
from __future__ import annotations

import errno as E
import ipaddress
import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import netaddr

log = logging.getLogger(__name__)

DEFAULT_PROTOCOL = 81
SPEAKER_PROTOCOL = 80
MAIN_TABLE = 254
_PROTO_NAMES = {2: "kernel", 3: "boot", 4: "static", 11: "zebra", 12: "bird", 16: "dhcp", 186: "bgp"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostRouteError(Exception):
    """A route that could not be added or removed, or a set of routes refused; one line."""


class NeedsPrivilege(HostRouteError):
    """The OS refused for lack of privilege (EPERM from netlink, `route` run without root)."""


class RouteExists(HostRouteError):
    """A route to the same destination is there already (the kernel's EEXIST)."""


@dataclass(frozen=True, slots=True)
class HostRoute:
    dst: Network
    via: Address

    def __post_init__(self) -> None:
        if self.dst.version != self.via.version:
            raise HostRouteError(f"{self.dst} is IPv{self.dst.version} but its gateway {self.via} is "
                                 f"IPv{self.via.version}")

    def __str__(self) -> str:
        return f"{self.dst} via {self.via}"

    def __lt__(self, other: "HostRoute") -> bool:  # IPv4 first, then by address and length
        return self._key() < other._key()

    def _key(self) -> tuple[int, int, int, int]:
        return self.dst.version, int(self.dst.network_address), self.dst.prefixlen, int(self.via)


@dataclass(frozen=True, slots=True)
class Present:
    """A route the OS has to some destination: whose (protocol) and where it points."""

    protocol: int | None
    via: str | None

    def describe(self) -> str:
        proto = "" if self.protocol is None else f"proto {_PROTO_NAMES.get(self.protocol, self.protocol)}"
        return " ".join(p for p in (proto, f"via {self.via}" if self.via else "") if p) or "a route"


# ---- pure checks ------------------------------------------------------------------------------

def parse_network(text: str) -> Network:
    """A CIDR from the command line; HostRouteError with one line if it is not one."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise HostRouteError(f"bad CIDR {text!r}: {exc}") from None
        raise HostRouteError(f"bad CIDR {text!r}: it has host bits set (the network is {loose})") from None


def via_routes(cidrs: Iterable[str], vias: Iterable[str]) -> list[HostRoute]:
    """`--via A [--via B] CIDR...`: each CIDR routed via the gateway of its family (one gateway
    per family at most). HostRouteError (one line) for anything malformed."""
    gateways: dict[int, Address] = {}
    for text in vias:
        try:
            gw = ipaddress.ip_address(text.strip())
        except ValueError:
            raise HostRouteError(f"bad --via {text!r}: not an IP address") from None
        if gw.version in gateways and gateways[gw.version] != gw:
            raise HostRouteError(f"two IPv{gw.version} gateways (--via {gateways[gw.version]} and {gw}); "
                                 "give one per family")
        gateways[gw.version] = gw
    routes = []
    for text in cidrs:
        net = parse_network(text)
        if net.version not in gateways:
            raise HostRouteError(f"{net} is IPv{net.version} but no --via of IPv{net.version} was given")
        routes.append(HostRoute(net, gateways[net.version]))
    return routes


def check_protocol(protocol: int) -> int:
    """A route protocol host-route may mark its routes with (and delete by)."""
    if not 5 <= protocol <= 255:
        raise HostRouteError(f"--protocol {protocol}: give 5..255 (0..4 are the kernel's: unspec, redirect, "
                             "kernel, boot, static)")
    if protocol == SPEAKER_PROTOCOL:
        raise HostRouteError(f"--protocol {protocol} is the speaker's route protocol; host-route needs its own")
    return protocol


def overlapping(routes: Iterable[HostRoute]) -> list[tuple[HostRoute, HostRoute]]:
    """Pairs of distinct routes whose destinations overlap, sorted; identical routes count once.
    A sweep over the ranges sorted by first address: an overlap is with a range that started
    earlier and has not ended yet."""
    spans = sorted((r.dst.version, n.first, -n.last, r) for r in set(routes) for n in [netaddr.IPNetwork(str(r.dst))])
    pairs: list[tuple[HostRoute, HostRoute]] = []
    active: list[tuple[int, int, HostRoute]] = []  # (version, last, route)
    for version, first, neg_last, route in spans:
        active = [a for a in active if a[0] == version and a[1] >= first]
        pairs += [(a[2], route) for a in active]
        active.append((version, -neg_last, route))
    return sorted(pairs)


def split(routes: Iterable[HostRoute]) -> tuple[list[HostRoute], list[str]]:
    """(the routes that can go in, one line per problem), deduplicated and sorted. A default
    route is refused; destinations that overlap (one would shadow part of the other, or two
    gateways claim one CIDR) leave both sides out."""
    routes = sorted(set(routes))
    problems = [f"{r.dst} is a default route; host-route routes Pod networks only"
                for r in routes if r.dst.prefixlen == 0]
    pairs = overlapping(r for r in routes if r.dst.prefixlen)
    problems += [f"{a} overlaps {b}" for a, b in pairs]
    bad = {r for pair in pairs for r in pair}
    return [r for r in routes if r.dst.prefixlen and r not in bad], problems


def check(routes: Iterable[HostRoute]) -> list[HostRoute]:
    """The routes, deduplicated and sorted; HostRouteError (one line) if `split` finds a problem."""
    good, problems = split(routes)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise HostRouteError(f"refusing {problems[0]}{more}")
    return good


def summarize(routes: Iterable[HostRoute]) -> list[HostRoute]:
    """Routes through the same gateway merged into the fewest prefixes covering exactly the same
    addresses (netaddr.cidr_merge): 10.42.0.0/24 and 10.42.1.0/24 via X become 10.42.0.0/23."""
    by_via: dict[Address, list[netaddr.IPNetwork]] = {}
    for r in routes:
        by_via.setdefault(r.via, []).append(netaddr.IPNetwork(str(r.dst)))
    return sorted(HostRoute(ipaddress.ip_network(str(n)), via)
                  for via, nets in by_via.items() for n in netaddr.cidr_merge(nets))


# ---- backends ---------------------------------------------------------------------------------

class Backend(Protocol):
    """One OS's routing table as HostRouter uses it (LinuxBackend, MacBackend; tests pass fakes).
    `protocol` is the mark its routes carry, None where the OS has no such mark;
    `needs_privilege` says, after "podbgp host-route: ", what NeedsPrivilege means there."""

    protocol: int | None
    needs_privilege: str

    def present(self) -> dict[Network, Present]: ...
    def add(self, route: HostRoute) -> None: ...
    def delete(self, route: HostRoute) -> bool: ...
    def owned(self) -> list[HostRoute] | None: ...
    def close(self) -> None: ...


def _raise_for(code: int, what: str) -> None:
    if code in (E.EPERM, E.EACCES):
        raise NeedsPrivilege(f"{what}: {os.strerror(code)}")
    if code == E.EEXIST:
        raise RouteExists(f"{what}: {os.strerror(code)}")
    raise HostRouteError(f"{what}: {os.strerror(code)}")


class LinuxBackend:
    """The main table through netlink (pyroute2's IPRoute, or anything with its `route` call)."""

    needs_privilege = "needs CAP_NET_ADMIN (run as root)"

    def __init__(self, ipr: Any = None, protocol: int = DEFAULT_PROTOCOL, table: int = MAIN_TABLE) -> None:
        if ipr is None:
            from pyroute2 import IPRoute

            ipr = IPRoute()
        self.ipr = ipr
        self.protocol = protocol
        self.table = table

    def close(self) -> None:
        self.ipr.close()

    def _dump(self) -> Iterable[tuple[Network, Present]]:
        for msg in self.ipr.route("dump", table=self.table):
            if msg.get("table") not in (None, self.table) or msg["family"] not in (2, 10):
                continue
            zero = "0.0.0.0" if msg["family"] == 2 else "::"
            dst = ipaddress.ip_network(f"{msg.get('dst') or zero}/{msg['dst_len']}", strict=False)
            yield dst, Present(msg["proto"], msg.get("gateway"))

    def present(self) -> dict[Network, Present]:
        """Every route of the table by destination (any protocol, any metric, any type)."""
        return dict(self._dump())

    def owned(self) -> list[HostRoute]:
        """The table's routes that carry our protocol (with a single gateway), sorted."""
        return sorted(HostRoute(dst, ipaddress.ip_address(p.via)) for dst, p in self._dump()
                      if p.protocol == self.protocol and p.via)

    def add(self, route: HostRoute) -> None:
        """Create, never replace: pyroute2's "add" is NLM_F_CREATE|NLM_F_EXCL, so the kernel
        answers EEXIST (RouteExists) if a route with this destination and metric is there."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self.ipr.route("add", dst=str(route.dst), gateway=str(route.via), proto=self.protocol, table=self.table)
        except NetlinkError as exc:
            _raise_for(exc.code, f"add {route}")

    def delete(self, route: HostRoute) -> bool:
        """Delete our route (the kernel matches the protocol and the gateway); False if it was gone."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self.ipr.route("del", dst=str(route.dst), gateway=str(route.via), proto=self.protocol, table=self.table)
        except NetlinkError as exc:
            if exc.code in (E.ESRCH, E.ENOENT):
                return False
            _raise_for(exc.code, f"delete {route}")
        return True


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def run_route(argv: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


class MacBackend:
    """macOS through route(8), run by `runner` (tests pass one that records the argv). route(8)
    adds with RTM_ADD, which never replaces: it prints "File exists" when the route is there."""

    protocol = None
    needs_privilege = "needs root to change routes (run it with sudo)"

    def __init__(self, runner: Runner = run_route) -> None:
        self.runner = runner

    def close(self) -> None:
        pass

    @staticmethod
    def argv(verb: str, route: HostRoute) -> list[str]:
        family = ["-inet6"] if route.dst.version == 6 else []
        return ["route", "-n", verb, *family, "-net", str(route.dst), str(route.via)]

    def _run(self, verb: str, route: HostRoute) -> tuple[int, str]:
        try:
            proc = self.runner(self.argv(verb, route))
        except (OSError, subprocess.SubprocessError) as exc:
            raise HostRouteError(f"{verb} {route}: cannot run route(8): {exc}") from None
        text = " ".join(f"{proc.stdout or ''} {proc.stderr or ''}".split())
        if proc.returncode == 77 or "must be root" in text or "Operation not permitted" in text:
            raise NeedsPrivilege(f"{verb} {route}: {text or 'permission denied'}")
        return proc.returncode, text

    def present(self) -> dict[Network, Present]:
        return {}  # route(8) itself refuses an existing destination (see add)

    def owned(self) -> None:
        return None  # macOS routes carry no protocol mark

    def add(self, route: HostRoute) -> None:
        rc, text = self._run("add", route)
        if "File exists" in text:
            raise RouteExists(f"add {route}: {text}")
        if rc != 0:
            raise HostRouteError(f"add {route}: route exited {rc}: {text}")

    def delete(self, route: HostRoute) -> bool:
        rc, text = self._run("delete", route)
        if "not in table" in text:
            return False
        if rc != 0:
            raise HostRouteError(f"delete {route}: route exited {rc}: {text}")
        return True


def backend_for(platform: str, protocol: int = DEFAULT_PROTOCOL, ipr: Any = None,
                runner: Runner = run_route) -> Backend:
    """The backend of `platform` (a sys.platform value)."""
    if platform.startswith("linux"):
        return LinuxBackend(ipr, protocol=protocol)
    if platform == "darwin":
        return MacBackend(runner)
    raise HostRouteError(f"no host-route backend for platform {platform!r} (Linux and macOS only)")


# ---- the router ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    added: tuple[HostRoute, ...] = ()
    removed: tuple[HostRoute, ...] = ()
    skipped: tuple[tuple[HostRoute, str], ...] = ()  # (route, why): a route to its destination is there
    kept: tuple[HostRoute, ...] = ()  # the same route, ours, from an earlier run: left as is, not ours to remove
    failed: tuple[tuple[HostRoute, str], ...] = ()


@dataclass
class HostRouter:
    """Adds routes, remembers exactly the ones it added, removes exactly those.

    `apply` is level-triggered: it receives the whole desired set, removes what this process
    added that is no longer desired (or whose gateway changed), and adds the rest, skipping any
    destination the table already routes. NeedsPrivilege propagates; other failures are per route.
    """

    backend: Backend
    added: dict[Network, HostRoute] = field(default_factory=dict)
    _reported: dict[Network, str] = field(default_factory=dict)  # skips already logged, not repeated

    def apply(self, desired: Iterable[HostRoute]) -> Outcome:
        want = {r.dst: r for r in desired}
        removed, failed = self._remove(sorted(r for dst, r in self.added.items() if want.get(dst) != r))
        present = self.backend.present()
        added, skipped, kept = [], [], []
        for route in sorted(want.values()):
            dst = route.dst
            if self.added.get(dst) == route:
                continue
            verdict, why = self._add(route, present.get(dst))
            if verdict == "added":
                added.append(route)
            elif verdict == "failed":
                failed.append((route, why))
            else:
                if verdict == "kept":
                    kept.append(route)
                else:
                    skipped.append((route, why))
                if self._reported.get(dst) != why:  # said once, not at every pass
                    self._reported[dst] = why
                    log.log(logging.INFO if verdict == "kept" else logging.WARNING,
                            "hostroute.%s dst=%s via=%s reason=%s", verdict, dst, route.via, why)
        for dst in set(self._reported) - set(want):
            del self._reported[dst]
        return Outcome(tuple(added), tuple(removed), tuple(skipped), tuple(kept), tuple(failed))

    def _add(self, route: HostRoute, present: Present | None) -> tuple[str, str]:
        """("added" | "kept" | "skipped" | "failed", why) for one route."""
        mark = self.backend.protocol
        if present is not None and mark is not None and present.protocol == mark:
            if present.via == str(route.via):
                return "kept", f"already routed by an earlier podbgp host-route (proto {mark}); left as is"
            return "skipped", f"routed by another podbgp host-route (proto {mark} via {present.via}); not replaced"
        if present is not None:
            return "skipped", f"a route to {route.dst} exists ({present.describe()}); not replaced"
        try:
            self.backend.add(route)
        except RouteExists as exc:
            return "skipped", f"a route to {route.dst} exists ({exc}); not replaced"
        except NeedsPrivilege:
            raise
        except HostRouteError as exc:
            log.error("hostroute.add.failed dst=%s via=%s error=%s", route.dst, route.via, exc)
            return "failed", str(exc)
        self.added[route.dst] = route
        self._reported.pop(route.dst, None)
        log.info("hostroute.add dst=%s via=%s", route.dst, route.via)
        return "added", ""

    def remove_added(self) -> Outcome:
        """Remove every route this process added (on exit)."""
        removed, failed = self._remove(sorted(self.added.values()))
        return Outcome(removed=tuple(removed), failed=tuple(failed))

    def remove_matching(self, routes: Iterable[HostRoute]) -> Outcome:
        """`--remove`: where routes carry our mark (Linux), delete ours to these destinations
        whatever their gateway; elsewhere, delete these routes as given."""
        routes = list(routes)
        owned = self.backend.owned()
        if owned is not None:
            dsts = {r.dst for r in routes}
            routes = [r for r in owned if r.dst in dsts]
        removed, failed = self._remove(sorted(routes), forget=False)
        return Outcome(removed=tuple(removed), failed=tuple(failed))

    def _remove(self, routes: Iterable[HostRoute], forget: bool = True) -> tuple[list[HostRoute], list]:
        removed, failed = [], []
        for route in routes:
            try:
                gone = self.backend.delete(route)
            except NeedsPrivilege:
                raise
            except HostRouteError as exc:
                failed.append((route, str(exc)))
                log.error("hostroute.delete.failed dst=%s via=%s error=%s", route.dst, route.via, exc)
                continue
            if forget:
                self.added.pop(route.dst, None)
            if gone:
                removed.append(route)
                log.info("hostroute.delete dst=%s via=%s", route.dst, route.via)
            else:
                log.info("hostroute.delete.absent dst=%s via=%s", route.dst, route.via)
        return removed, failed
