"""`podbgp host-route`: the route set checks, macOS's route(8) argv, Linux against a fake IPRoute,
the command's one-line errors, and Node following with a fake watcher. No root."""
import errno
import ipaddress
import os
import signal
import subprocess
import threading
import time

import pytest
from click.testing import CliRunner
from pyroute2.netlink.exceptions import NetlinkError

from hostroute import routes as hostroute
from hostroute.routes import HostRoute, HostRouteError, HostRouter, LinuxBackend, MacBackend, NeedsPrivilege
from speaker.cli import main
from speaker.nodes import NodeInfo
from speaker.listwatch import ApiDown, Changed


def R(dst, via):
    return HostRoute(ipaddress.ip_network(dst), ipaddress.ip_address(via))


def node(name, cidrs, addrs):
    return NodeInfo(name, tuple(ipaddress.ip_network(c) for c in cidrs),
                    tuple(ipaddress.ip_address(a) for a in addrs))


# ---- the route set ------------------------------------------------------------------------------

@pytest.mark.parametrize("routes, pairs", [
    ([R("10.42.1.0/24", "192.168.50.11"), R("10.42.2.0/24", "192.168.50.12")], []),
    ([R("10.42.0.0/16", "192.168.50.11"), R("10.42.2.0/24", "192.168.50.12")],
     [(R("10.42.0.0/16", "192.168.50.11"), R("10.42.2.0/24", "192.168.50.12"))]),
    ([R("10.42.1.0/24", "192.168.50.11"), R("10.42.1.0/24", "192.168.50.12")],  # two gateways, one CIDR
     [(R("10.42.1.0/24", "192.168.50.11"), R("10.42.1.0/24", "192.168.50.12"))]),
    ([R("10.42.1.0/24", "192.168.50.11"), R("10.42.1.0/24", "192.168.50.11")], []),  # the same route twice
    ([R("10.0.0.0/8", "192.168.50.11"), R("fd00::/8", "fd00:50::11")], []),  # families never overlap
    ([R("fd00:42::/48", "fd00:50::11"), R("fd00:42:0:3::/64", "fd00:50::13"), R("10.0.0.0/8", "1.1.1.1")],
     [(R("fd00:42::/48", "fd00:50::11"), R("fd00:42:0:3::/64", "fd00:50::13"))]),
])
def test_overlapping_finds_every_pair_once(routes, pairs):
    assert hostroute.overlapping(routes) == pairs
    assert hostroute.overlapping(reversed(routes)) == pairs


def test_check_refuses_overlaps_and_default_routes_with_one_line():
    with pytest.raises(HostRouteError, match=r"^refusing 10\.42\.0\.0/16 via 192\.168\.50\.11 overlaps "
                                             r"10\.42\.2\.0/24 via 192\.168\.50\.12$"):
        hostroute.check([R("10.42.2.0/24", "192.168.50.12"), R("10.42.0.0/16", "192.168.50.11")])
    with pytest.raises(HostRouteError, match="default route"):
        hostroute.check([R("0.0.0.0/0", "192.168.50.11")])
    mixed = [R("fd00:42::/64", "fd00:50::11"), R("10.42.1.0/24", "192.168.50.11"), R("10.42.1.0/24", "192.168.50.11")]
    assert hostroute.check(mixed) == [R("10.42.1.0/24", "192.168.50.11"), R("fd00:42::/64", "fd00:50::11")]


def test_split_leaves_both_sides_of_an_overlap_out():
    good, problems = hostroute.split([R("10.42.1.0/24", "192.168.50.11"), R("10.42.1.0/24", "192.168.50.12"),
                                      R("10.42.2.0/24", "192.168.50.12"), R("::/0", "fd00::1")])
    assert good == [R("10.42.2.0/24", "192.168.50.12")]
    assert problems == ["::/0 is a default route; host-route routes Pod networks only",
                        "10.42.1.0/24 via 192.168.50.11 overlaps 10.42.1.0/24 via 192.168.50.12"]


def test_summarize_merges_only_what_shares_a_gateway_and_covers_the_same_addresses():
    routes = [R("10.42.0.0/24", "192.168.50.11"), R("10.42.1.0/24", "192.168.50.11"),
              R("10.42.2.0/24", "192.168.50.11"), R("10.42.3.0/24", "192.168.50.12"),
              R("fd00:42::/65", "fd00:50::11"), R("fd00:42::8000:0:0:0/65", "fd00:50::11")]
    assert hostroute.summarize(routes) == [R("10.42.0.0/23", "192.168.50.11"), R("10.42.2.0/24", "192.168.50.11"),
                                           R("10.42.3.0/24", "192.168.50.12"), R("fd00:42::/64", "fd00:50::11")]


@pytest.mark.parametrize("cidrs, vias, message", [
    (["10.42.1.5/24"], ["192.168.50.11"],
     "bad CIDR '10.42.1.5/24': it has host bits set (the network is 10.42.1.0/24)"),
    (["10.42.1.0/33"], ["192.168.50.11"], "bad CIDR '10.42.1.0/33'"),
    (["pods"], ["192.168.50.11"], "bad CIDR 'pods'"),
    (["10.42.1.0/24"], ["node1"], "bad --via 'node1': not an IP address"),
    (["fd00:42::/64"], ["192.168.50.11"], "fd00:42::/64 is IPv6 but no --via of IPv6 was given"),
    (["10.42.1.0/24"], ["192.168.50.11", "192.168.50.12"], "two IPv4 gateways"),
])
def test_via_routes_refuses_bad_input_with_one_line(cidrs, vias, message):
    with pytest.raises(HostRouteError) as info:
        hostroute.via_routes(cidrs, vias)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_via_routes_pairs_each_cidr_with_the_gateway_of_its_family():
    routes = hostroute.via_routes(["fd00:42:0:1::/64", "10.42.1.0/24", "10.42.2.7"], ["fd00:50::11", "192.168.50.11"])
    assert routes == [R("fd00:42:0:1::/64", "fd00:50::11"), R("10.42.1.0/24", "192.168.50.11"),
                      R("10.42.2.7/32", "192.168.50.11")]


@pytest.mark.parametrize("protocol, ok", [(81, True), (5, True), (255, True), (80, False), (4, False), (0, False),
                                          (256, False)])
def test_check_protocol(protocol, ok):
    if ok:
        assert hostroute.check_protocol(protocol) == protocol
    else:
        with pytest.raises(HostRouteError):
            hostroute.check_protocol(protocol)


def test_backend_for_picks_by_platform():
    assert isinstance(hostroute.backend_for("darwin", runner=lambda argv: None), MacBackend)
    assert isinstance(hostroute.backend_for("linux", protocol=99, ipr=FakeIPRoute()), LinuxBackend)
    with pytest.raises(HostRouteError, match="win32"):
        hostroute.backend_for("win32")


# ---- macOS: route(8) argv -----------------------------------------------------------------------

class FakeRoute:
    """route(8) as a table: records every argv; answers as macOS's route does."""

    def __init__(self, table=(), root=True):
        self.table = {(a[-2], a[-1]) for a in table}
        self.argvs = []
        self.root = root

    def __call__(self, argv):
        self.argvs.append(list(argv))
        verb, dst, gw = argv[2], argv[-2], argv[-1]
        net = "net " + dst.split("/")[0]
        if not self.root:
            return subprocess.CompletedProcess(argv, 77, "", "route: must be root to alter routing table\n")
        if verb == "add":
            if any(d == dst for d, _ in self.table):
                return subprocess.CompletedProcess(argv, 1, f"add {net}: gateway {gw}: File exists\n",
                                                   "route: writing to routing socket: File exists\n")
            self.table.add((dst, gw))
            return subprocess.CompletedProcess(argv, 0, f"add {net}: gateway {gw}\n", "")
        if (dst, gw) not in self.table:
            return subprocess.CompletedProcess(argv, 1, f"delete {net}: gateway {gw}: not in table\n",
                                               "route: writing to routing socket: not in table\n")
        self.table.discard((dst, gw))
        return subprocess.CompletedProcess(argv, 0, f"delete {net}: gateway {gw}\n", "")


def test_macos_argv_for_ipv4_and_ipv6_add_and_delete():
    fake = FakeRoute()
    router = HostRouter(MacBackend(fake))
    out = router.apply([R("10.42.1.0/24", "192.168.50.11"), R("fd00:42:0:1::/64", "fd00:50::11")])
    assert out.added == (R("10.42.1.0/24", "192.168.50.11"), R("fd00:42:0:1::/64", "fd00:50::11"))
    router.remove_added()
    assert fake.argvs == [
        ["route", "-n", "add", "-net", "10.42.1.0/24", "192.168.50.11"],
        ["route", "-n", "add", "-inet6", "-net", "fd00:42:0:1::/64", "fd00:50::11"],
        ["route", "-n", "delete", "-net", "10.42.1.0/24", "192.168.50.11"],
        ["route", "-n", "delete", "-inet6", "-net", "fd00:42:0:1::/64", "fd00:50::11"],
    ]
    assert fake.table == set() and router.added == {}


def test_macos_skips_an_existing_route_and_removes_exactly_what_it_added():
    fake = FakeRoute(table=[["10.42.2.0/24", "192.168.50.1"]])
    router = HostRouter(MacBackend(fake))
    want = [R("10.42.1.0/24", "192.168.50.11"), R("10.42.2.0/24", "192.168.50.12")]
    out = router.apply(want)
    assert out.added == (R("10.42.1.0/24", "192.168.50.11"),)
    assert [r for r, _ in out.skipped] == [R("10.42.2.0/24", "192.168.50.12")] and "File exists" in out.skipped[0][1]
    assert router.apply(want).added == () and len(fake.argvs) == 3  # again: only the skipped one is retried
    out = router.remove_added()
    assert out.removed == (R("10.42.1.0/24", "192.168.50.11"),)
    assert fake.argvs[-1] == ["route", "-n", "delete", "-net", "10.42.1.0/24", "192.168.50.11"]
    assert fake.table == {("10.42.2.0/24", "192.168.50.1")}  # the foreign route stays
    assert not any(a[2] == "delete" and a[-2] == "10.42.2.0/24" for a in fake.argvs)


def test_macos_remove_deletes_the_given_set_and_absent_is_success():
    fake = FakeRoute(table=[["10.42.1.0/24", "192.168.50.11"]])
    out = HostRouter(MacBackend(fake)).remove_matching([R("10.42.1.0/24", "192.168.50.11"),
                                                        R("fd00:42::/64", "fd00:50::11")])
    assert out.removed == (R("10.42.1.0/24", "192.168.50.11"),) and out.failed == ()
    assert [a[2:] for a in fake.argvs] == [["delete", "-net", "10.42.1.0/24", "192.168.50.11"],
                                           ["delete", "-inet6", "-net", "fd00:42::/64", "fd00:50::11"]]


def test_macos_without_root_is_needs_privilege():
    router = HostRouter(MacBackend(FakeRoute(root=False)))
    with pytest.raises(NeedsPrivilege):
        router.apply([R("10.42.1.0/24", "192.168.50.11")])
    assert router.added == {}


def test_macos_other_failures_are_per_route():
    def runner(argv):
        if argv[-2] == "10.42.1.0/24":
            return subprocess.CompletedProcess(
                argv, 1, "add net 10.42.1.0: gateway 192.168.50.11: Network is unreachable", "")
        return subprocess.CompletedProcess(argv, 0, "", "")

    out = HostRouter(MacBackend(runner)).apply([R("10.42.1.0/24", "192.168.50.11"),
                                                R("10.42.2.0/24", "192.168.50.12")])
    assert out.added == (R("10.42.2.0/24", "192.168.50.12"),)
    assert out.failed[0][0] == R("10.42.1.0/24", "192.168.50.11") and "unreachable" in out.failed[0][1]


# ---- Linux: a fake IPRoute ----------------------------------------------------------------------

class Msg(dict):
    """The parts of a pyroute2 rtmsg the backend reads: fields by [], attributes by .get()."""


class FakeIPRoute:
    """The main table as the kernel keeps it for `route` add/del/dump, with its errnos."""

    def __init__(self, routes=(), eperm=False):
        self.routes = [dict(r) for r in routes]  # {"dst": "10.42.1.0/24", "gateway": ..., "proto": ...}
        self.eperm = eperm
        self.calls = []
        self.lock = threading.Lock()
        self.closed = False

    def route(self, cmd, **kw):
        with self.lock:
            self.calls.append((cmd, kw))
            if cmd == "dump":
                return [self._msg(r) for r in self.routes if r.get("table", 254) == kw.get("table", 254)]
            if self.eperm:
                raise NetlinkError(errno.EPERM, "Operation not permitted")
            net = ipaddress.ip_network(kw["dst"])
            if cmd == "add":
                assert kw["proto"] and kw["table"] == 254
                if any(ipaddress.ip_network(r["dst"]) == net for r in self.routes):
                    raise NetlinkError(errno.EEXIST, "File exists")
                self.routes.append({"dst": str(net), "gateway": kw["gateway"], "proto": kw["proto"]})
                return [Msg()]
            assert cmd == "del"
            for r in self.routes:
                same = ipaddress.ip_network(r["dst"]) == net and r["gateway"] == kw["gateway"]
                if same and r["proto"] == kw["proto"]:
                    self.routes.remove(r)
                    return [Msg()]
            raise NetlinkError(errno.ESRCH, "No such process")

    @staticmethod
    def _msg(r):
        net = ipaddress.ip_network(r["dst"])
        return Msg(family=2 if net.version == 4 else 10, dst_len=net.prefixlen, proto=r["proto"], table=254,
                   dst=None if net.prefixlen == 0 else str(net.network_address), gateway=r.get("gateway"))

    def close(self):
        self.closed = True

    def mine(self, proto=81):
        with self.lock:
            return sorted((r["dst"], r["gateway"]) for r in self.routes if r["proto"] == proto)

    def writes(self):
        return [(c, kw["dst"]) for c, kw in self.calls if c != "dump"]


FOREIGN = [{"dst": "10.42.3.0/24", "gateway": "192.168.50.1", "proto": 4},
           {"dst": "0.0.0.0/0", "gateway": "192.168.50.1", "proto": 16},
           {"dst": "192.168.50.0/24", "gateway": None, "proto": 2}]
WANT = [R("10.42.1.0/24", "192.168.50.11"), R("10.42.3.0/24", "192.168.50.13"), R("fd00:42:0:1::/64", "fd00:50::11")]


def test_linux_adds_with_its_protocol_skips_foreign_routes_removes_only_its_own():
    ipr = FakeIPRoute(FOREIGN)
    router = HostRouter(LinuxBackend(ipr))
    for _ in range(2):  # twice: the second pass changes nothing
        out = router.apply(WANT)
    assert ipr.mine() == [("10.42.1.0/24", "192.168.50.11"), ("fd00:42:0:1::/64", "fd00:50::11")]
    assert ipr.writes() == [("add", "10.42.1.0/24"), ("add", "fd00:42:0:1::/64")]  # never the foreign 10.42.3.0/24
    assert out.added == () and [r for r, _ in out.skipped] == [R("10.42.3.0/24", "192.168.50.13")]
    assert "proto static via 192.168.50.1" in out.skipped[0][1]
    adds = [kw for c, kw in ipr.calls if c == "add"]
    assert all(kw["proto"] == 81 and kw["table"] == 254 for kw in adds)
    out = router.remove_added()
    assert out.removed == (R("10.42.1.0/24", "192.168.50.11"), R("fd00:42:0:1::/64", "fd00:50::11"))
    assert ipr.routes == FOREIGN


def test_linux_apply_is_level_triggered():
    ipr = FakeIPRoute()
    router = HostRouter(LinuxBackend(ipr, protocol=99))
    router.apply([R("10.42.1.0/24", "192.168.50.11"), R("10.42.2.0/24", "192.168.50.12")])
    out = router.apply([R("10.42.2.0/24", "192.168.50.22"), R("10.42.4.0/24", "192.168.50.14")])
    assert out.removed == (R("10.42.1.0/24", "192.168.50.11"), R("10.42.2.0/24", "192.168.50.12"))
    assert out.added == (R("10.42.2.0/24", "192.168.50.22"), R("10.42.4.0/24", "192.168.50.14"))
    assert ipr.mine(99) == [("10.42.2.0/24", "192.168.50.22"), ("10.42.4.0/24", "192.168.50.14")]
    router.apply([])
    assert ipr.mine(99) == [] and router.added == {}


def test_linux_an_earlier_runs_route_is_kept_not_adopted_and_another_gateway_is_not_replaced():
    ipr = FakeIPRoute([{"dst": "10.42.1.0/24", "gateway": "192.168.50.11", "proto": 81},
                       {"dst": "10.42.2.0/24", "gateway": "192.168.50.99", "proto": 81}])
    router = HostRouter(LinuxBackend(ipr))
    out = router.apply([R("10.42.1.0/24", "192.168.50.11"), R("10.42.2.0/24", "192.168.50.12")])
    assert out.kept == (R("10.42.1.0/24", "192.168.50.11"),) and out.added == ()
    assert "another podbgp host-route" in out.skipped[0][1]
    assert router.remove_added().removed == () and len(ipr.routes) == 2 and ipr.writes() == []


def test_linux_a_route_that_appears_between_dump_and_add_is_skipped():
    ipr = FakeIPRoute()
    backend = LinuxBackend(ipr)
    backend.present = lambda: {}  # the dump did not see it; the kernel's EXCL create does
    ipr.routes.append({"dst": "10.42.1.0/24", "gateway": "192.168.50.1", "proto": 4})
    out = HostRouter(backend).apply([R("10.42.1.0/24", "192.168.50.11")])
    assert out.added == () and "File exists" in out.skipped[0][1]


def test_linux_remove_matches_its_protocol_and_the_given_destinations():
    ipr = FakeIPRoute(FOREIGN + [{"dst": "10.42.1.0/24", "gateway": "192.168.50.11", "proto": 81},
                                 {"dst": "10.42.2.0/24", "gateway": "192.168.50.12", "proto": 81},
                                 {"dst": "10.42.5.0/24", "gateway": "192.168.50.15", "proto": 99}])
    out = HostRouter(LinuxBackend(ipr)).remove_matching([R("10.42.1.0/24", "192.168.50.77"),
                                                         R("10.42.3.0/24", "192.168.50.13"),
                                                         R("10.42.5.0/24", "192.168.50.15")])
    assert out.removed == (R("10.42.1.0/24", "192.168.50.11"),)  # ours by protocol, whatever the gateway
    assert ipr.writes() == [("del", "10.42.1.0/24")]
    assert ipr.mine() == [("10.42.2.0/24", "192.168.50.12")] and ipr.mine(99) == [("10.42.5.0/24", "192.168.50.15")]


def test_linux_eperm_is_needs_privilege_and_other_errors_are_per_route():
    with pytest.raises(NeedsPrivilege):
        HostRouter(LinuxBackend(FakeIPRoute(eperm=True))).apply([R("10.42.1.0/24", "192.168.50.11")])
    ipr = FakeIPRoute()
    real = ipr.route

    def route(cmd, **kw):
        if cmd == "add" and kw["dst"] == "10.42.1.0/24":
            raise NetlinkError(errno.ENETUNREACH, "Network is unreachable")
        return real(cmd, **kw)

    ipr.route = route
    out = HostRouter(LinuxBackend(ipr)).apply([R("10.42.1.0/24", "10.9.9.9"), R("10.42.2.0/24", "192.168.50.12")])
    assert out.added == (R("10.42.2.0/24", "192.168.50.12"),)
    assert out.failed == ((R("10.42.1.0/24", "10.9.9.9"), "add 10.42.1.0/24 via 10.9.9.9: Network is unreachable"),)


# ---- the command --------------------------------------------------------------------------------

def invoke(args, **obj):
    return CliRunner().invoke(main, ["host-route", *args], obj=obj)


def one_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("podbgp host-route:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--via", "192.168.50.11", "10.42.1.5/24"],
     "podbgp host-route: bad CIDR '10.42.1.5/24': it has host bits set (the network is 10.42.1.0/24)"),
    (["--via", "192.168.50.11", "not-a-cidr"],
     "podbgp host-route: bad CIDR 'not-a-cidr': 'not-a-cidr' does not appear to be an IPv4 or IPv6 network"),
    (["10.42.1.0/24"], "podbgp host-route: give --via NODE_IP with CIDRs, or --kubeconfig (one of the two)"),
    ([], "podbgp host-route: give --via NODE_IP with CIDRs, or --kubeconfig (one of the two)"),
    (["--via", "192.168.50.11", "--kubeconfig", "k"], "podbgp host-route: give --via NODE_IP with CIDRs, or "
                                                       "--kubeconfig (one of the two)"),
    (["--kubeconfig", "k", "10.42.1.0/24"],
     "podbgp host-route: with --kubeconfig the CIDRs come from the Nodes; give none"),
    (["--via", "192.168.50.11"], "podbgp host-route: --via needs the CIDRs to route"),
    (["--via", "192.168.50.11", "10.42.0.0/16", "10.42.1.0/24"],
     "podbgp host-route: refusing 10.42.0.0/16 via 192.168.50.11 overlaps 10.42.1.0/24 via 192.168.50.11"),
    (["--via", "192.168.50.11", "--protocol", "80", "10.42.1.0/24"],
     "podbgp host-route: --protocol 80 is the speaker's route protocol; host-route needs its own"),
    (["--via", "192.168.50.11", "--once", "--remove", "10.42.1.0/24"],
     "podbgp host-route: --once and --remove exclude each other"),
])
def test_cli_usage_errors_are_one_line_exit_2_and_touch_nothing(args, message):
    def no_backend():
        raise AssertionError("no backend may be opened for bad usage")

    result = invoke(args, backend=no_backend)
    assert result.exit_code == 2 and result.stderr == message + "\n" and result.stdout == ""


def test_cli_once_then_remove_via_linux():
    ipr = FakeIPRoute(FOREIGN)
    result = invoke(["--via", "192.168.50.11", "--via", "fd00:50::11", "--once", "10.42.1.0/24", "fd00:42:0:1::/64"],
                    backend=lambda: LinuxBackend(ipr))
    assert result.exit_code == 0, result.stderr
    assert ipr.mine() == [("10.42.1.0/24", "192.168.50.11"), ("fd00:42:0:1::/64", "fd00:50::11")] and ipr.closed
    result = invoke(["--via", "192.168.50.11", "--once", "10.42.3.0/24"], backend=lambda: LinuxBackend(ipr))
    assert result.exit_code == 1  # skipped for a foreign route: said, and the exit status says it too
    result = invoke(["--via", "192.168.50.11", "--via", "fd00:50::11", "--remove", "10.42.1.0/24", "fd00:42:0:1::/64",
                     "10.42.3.0/24"], backend=lambda: LinuxBackend(ipr))
    assert result.exit_code == 0 and ipr.mine() == [] and ipr.routes == FOREIGN


def test_cli_once_via_macos_with_summarize():
    fake = FakeRoute()
    result = invoke(["--via", "192.168.50.11", "--summarize", "--once", "10.42.0.0/24", "10.42.1.0/24"],
                    backend=lambda: MacBackend(fake))
    assert result.exit_code == 0, result.stderr
    assert fake.argvs == [["route", "-n", "add", "-net", "10.42.0.0/23", "192.168.50.11"]]


@pytest.mark.parametrize("backend, message", [
    (lambda: LinuxBackend(FakeIPRoute(eperm=True)), "podbgp host-route: needs CAP_NET_ADMIN (run as root)"),
    (lambda: MacBackend(FakeRoute(root=False)), "podbgp host-route: needs root to change routes (run it with sudo)"),
])
def test_cli_without_privilege_says_so_in_one_line(backend, message):
    result = invoke(["--via", "192.168.50.11", "--once", "10.42.1.0/24"], backend=backend)
    assert result.exit_code == 1 and one_line(result) == message


NODES = [node("node1", ["10.42.1.0/24", "fd00:42:0:1::/64"], ["192.168.50.11", "fd00:50::11"]),
         node("node2", ["10.42.2.0/24", "fd00:42:0:2::/64"], ["192.168.50.12"]),  # no IPv6 InternalIP
         node("node3", ["10.42.3.0/24"], [])]


def test_cli_kubeconfig_once_routes_each_node_via_its_internal_ip_of_the_family(caplog):
    ipr = FakeIPRoute()
    result = invoke(["--kubeconfig", "k", "--once"], backend=lambda: LinuxBackend(ipr), list_nodes=lambda k: NODES)
    assert result.exit_code == 0, result.stderr
    assert ipr.mine() == [("10.42.1.0/24", "192.168.50.11"), ("10.42.2.0/24", "192.168.50.12"),
                          ("fd00:42:0:1::/64", "fd00:50::11")]
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hostroute.node.skip")]
    assert skipped == ["hostroute.node.skip node node2: no InternalIP of IPv6 for podCIDR fd00:42:0:2::/64; skipped",
                       "hostroute.node.skip node node3: no InternalIP of IPv4 for podCIDR 10.42.3.0/24; skipped"]
    result = invoke(["--kubeconfig", "k", "--remove"], backend=lambda: LinuxBackend(ipr), list_nodes=lambda k: NODES)
    assert result.exit_code == 0 and ipr.mine() == []


def test_cli_kubeconfig_refuses_overlapping_node_cidrs_and_unreachable_api_in_one_line():
    overlapping = NODES[:1] + [node("node9", ["10.42.0.0/16"], ["192.168.50.19"])]
    ipr = FakeIPRoute()
    result = invoke(["--kubeconfig", "k", "--once"], backend=lambda: LinuxBackend(ipr),
                    list_nodes=lambda k: overlapping)
    assert result.exit_code == 1 and ipr.writes() == []
    assert one_line(result) == ("podbgp host-route: refusing 10.42.0.0/16 via 192.168.50.19 overlaps "
                                "10.42.1.0/24 via 192.168.50.11")

    def down(kubeconfig):
        raise ConnectionRefusedError(111, "Connection refused")

    result = invoke(["--kubeconfig", "k", "--once"], backend=lambda: LinuxBackend(ipr), list_nodes=down)
    assert result.exit_code == 1
    assert one_line(result) == "podbgp host-route: cannot list Nodes with k: ConnectionRefusedError: [Errno 111] " \
                               "Connection refused"


def poll(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_cli_foreground_follows_nodes_and_removes_what_it_added_on_sigterm():
    """The fake watcher plays a list, a deletion and a new Node, checks the table after each,
    then sends this process SIGTERM (the command's handler, not pytest's, receives it)."""
    ipr = FakeIPRoute(FOREIGN)
    seen = []

    def watch(kubeconfig, emit):
        def play():
            try:
                emit(Changed(values=tuple(NODES[:2]), synced=True))
                seen.append(poll(lambda: len(ipr.mine()) == 3))
                emit(Changed(deleted=("node1",)))
                emit(Changed(values=(node("node4", ["10.42.4.0/24"], ["192.168.50.14"]),)))
                emit(ApiDown("a blip after the list: the routes stay"))
                seen.append(poll(lambda: ipr.mine() == [("10.42.2.0/24", "192.168.50.12"),
                                                        ("10.42.4.0/24", "192.168.50.14")]))
            finally:
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=play, daemon=True).start()
        return lambda: seen.append("closed")

    result = invoke(["--kubeconfig", "k"], backend=lambda: LinuxBackend(ipr), watch_nodes=watch)
    assert result.exit_code == 0, result.stderr
    assert seen == [True, True, "closed"]
    assert ipr.mine() == [] and ipr.routes == FOREIGN


def test_cli_foreground_exits_in_one_line_if_the_first_list_fails():
    def watch(kubeconfig, emit):
        threading.Thread(target=emit, args=(ApiDown("ConnectionRefusedError: refused"),), daemon=True).start()
        return lambda: None

    result = invoke(["--kubeconfig", "k"], backend=lambda: LinuxBackend(FakeIPRoute()), watch_nodes=watch)
    assert result.exit_code == 1
    assert one_line(result) == "podbgp host-route: cannot list Nodes with k: ConnectionRefusedError: refused"


def test_version_names_podbgp_and_exabgp():
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"podbgp {version('podbgp')} (exabgp {version('exabgp')})\n"
