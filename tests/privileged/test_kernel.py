"""The reconciler's kernel side against real netlink in a fresh namespace."""
import asyncio
import ipaddress as ia
import json
import os
import subprocess
import time

import pytest

from reconciler.kernel import KernelTable
from reconciler.links import Links
from reconciler.plan import plan
from reconciler.rtnl import Rtnl
from reconciler.types import Plan, ReconcilerError, Route

N = ia.ip_network
A = ia.ip_address


def ip(ns, *args):
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def routes(ns, fam="-4"):
    return {r["dst"]: r for r in json.loads(ip(ns, "-j", fam, "route", "show", "table", "main"))}


def r(prefix, *gws):
    return Route(N(prefix), tuple(A(g) for g in gws), 20)


@pytest.fixture
def kernel(netns):
    k = KernelTable(protocol=80, netns=netns)
    yield k
    k.close()


def converge(kernel, desired, prune=True):
    ours, foreign = kernel.snapshot()
    p = plan({x.prefix: x for x in desired}, ours, foreign, prune=prune)
    return p, kernel.apply(p)


def test_replace_ecmp_and_idempotent(netns, kernel):
    desired = [r("10.42.2.0/24", "192.168.77.12"), r("10.42.3.0/24", "192.168.77.13", "192.168.77.14"),
               r("fd00:42:0:2::/64", "fd00:77::12"), r("fd00:42:0:3::/64", "fd00:77::13", "fd00:77::14")]
    for attempt in range(2):
        p, res = converge(kernel, desired)
        assert (len(p.replace), res.failed) == ((4, {}) if attempt == 0 else (0, {}))
    v4, v6 = routes(netns), routes(netns, "-6")
    assert v4["10.42.2.0/24"]["gateway"] == "192.168.77.12" and v4["10.42.2.0/24"]["protocol"] == "80"
    assert sorted(h["gateway"] for h in v4["10.42.3.0/24"]["nexthops"]) == ["192.168.77.13", "192.168.77.14"]
    assert v6["fd00:42:0:2::/64"]["gateway"] == "fd00:77::12"
    assert sorted(h["gateway"] for h in v6["fd00:42:0:3::/64"]["nexthops"]) == ["fd00:77::13", "fd00:77::14"]
    # a next hop moves: replaced in place, not added beside
    p, _ = converge(kernel, [r("10.42.2.0/24", "192.168.77.22")] + desired[1:])
    assert [str(x.prefix) for x in p.replace] == ["10.42.2.0/24"]
    assert routes(netns)["10.42.2.0/24"]["gateway"] == "192.168.77.22"


def test_prune_touches_only_our_protocol(netns, kernel):
    ip(netns, "route", "add", "10.42.50.0/24", "via", "192.168.77.50", "proto", "static", "metric", "20")
    ip(netns, "route", "add", "default", "via", "192.168.77.254", "proto", "static")
    converge(kernel, [r("10.42.2.0/24", "192.168.77.12"), r("10.42.3.0/24", "192.168.77.13")])
    # the foreign route sits on a key we want: blocked, never replaced
    p, _ = converge(kernel, [r("10.42.2.0/24", "192.168.77.12"), r("10.42.50.0/24", "192.168.77.12")])
    assert [str(x.prefix) for x in p.blocked] == ["10.42.50.0/24"]
    assert [str(x.prefix) for x in p.delete] == ["10.42.3.0/24"]
    after = routes(netns)
    assert "10.42.3.0/24" not in after
    assert after["10.42.50.0/24"]["gateway"] == "192.168.77.50" and after["10.42.50.0/24"]["protocol"] == "static"
    assert after["default"]["gateway"] == "192.168.77.254"
    converge(kernel, [])  # prune everything of ours
    after = routes(netns)
    assert "10.42.2.0/24" not in after and "10.42.50.0/24" in after and "default" in after


def test_no_prune_before_convergence_and_delete_of_gone_route_is_success(netns, kernel):
    converge(kernel, [r("10.42.2.0/24", "192.168.77.12")])
    p, _ = converge(kernel, [], prune=False)
    assert p.empty and "10.42.2.0/24" in routes(netns)
    ours, _ = kernel.snapshot()
    ip(netns, "route", "del", "10.42.2.0/24", "proto", "80")
    res = kernel.rtnl.write([Route(o.prefix, o.gateways, o.metric) for o in ours], 80, 254, delete=True)
    assert res == {}


def test_failures_are_reported_per_route_and_the_batch_goes_on(netns, kernel):
    p, res = converge(kernel, [r("10.42.2.0/24", "10.99.99.99"), r("10.42.3.0/24", "192.168.77.13")])
    assert list(res.failed) == [r("10.42.2.0/24", "10.99.99.99")]  # unreachable gateway
    assert "10.42.3.0/24" in routes(netns)


def test_large_batch_round_trip(netns, kernel):
    desired = [Route(N((0x0A000000 + i * 256, 24)), (A("192.168.77.12"),), 20) for i in range(5000)]
    p, res = converge(kernel, desired)
    assert res.replaced == 5000 and not res.failed
    ours, _ = kernel.snapshot()
    assert len(ours) == 5000
    p, res = converge(kernel, [])
    assert res.deleted == 5000 and kernel.snapshot()[0] == []


def test_addresses_as_ip_shows_them_and_their_connected_subnets(netns, ipr, kernel):
    """The address dump (reconciler.links) against `ip -j addr`; a point-to-point address
    counts by its local end; link-local and loopback subnets are left out."""
    (eth0p,) = ipr.link_lookup(ifname="eth0p")
    ipr.addr("add", index=eth0p, local="10.99.0.1", address="10.99.0.2", prefixlen=32)
    links = Links(netns)
    try:
        deadline = time.monotonic() + 5  # IPv6 link-local addresses come as the links come up
        while True:
            before = shown(netns)
            got = links.addresses()
            if before == shown(netns) or time.monotonic() > deadline:
                break
        assert sorted(map(str, got)) == before
    finally:
        links.close()
    connected = kernel.connected()
    assert {N("192.168.77.0/24"), N("fd00:77::/64"), N("10.99.0.1/32")} <= connected
    assert not [n for n in connected if n.network_address.is_link_local or n.network_address.is_loopback]


def shown(ns):
    return sorted(str(ia.ip_interface(f"{a['local']}/{a['prefixlen']}"))
                  for link in json.loads(ip(ns, "-j", "addr", "show")) for a in link["addr_info"])


def test_connected_is_read_on_a_running_event_loop(netns, kernel):
    """The speaker asks from its asyncio loop (pyroute2's synchronous IPRoute, used before, could not)."""
    async def body():
        return kernel.connected()

    assert N("192.168.77.0/24") in asyncio.run(body())


def test_a_namespace_that_does_not_exist_is_an_error_not_created(netns):
    name = f"{netns}-missing"
    with pytest.raises(FileNotFoundError):
        Links(name)
    assert not os.path.exists(f"/run/netns/{name}")


def test_dump_parse_agrees_with_ip_for_every_kind_of_route(netns):
    """The hot dump parser against iproute2's own reading of the same tables."""
    for cmd in (["10.42.2.0/24", "via", "192.168.77.12", "proto", "80", "metric", "20"],
                ["10.42.3.0/24", "proto", "80", "metric", "20",
                 "nexthop", "via", "192.168.77.14", "nexthop", "via", "192.168.77.13"],
                ["10.42.4.0/24", "via", "192.168.77.12", "proto", "80", "metric", "20", "table", "1000"],
                ["10.42.5.0/24", "via", "192.168.77.12", "proto", "static", "metric", "7", "table", "100"],
                ["default", "via", "192.168.77.254", "proto", "static"],
                ["fd00:42:0:2::/64", "via", "fd00:77::12", "proto", "80", "metric", "20"],
                ["fd00:42:0:3::/64", "proto", "80", "metric", "20",
                 "nexthop", "via", "fd00:77::14", "nexthop", "via", "fd00:77::13"],
                ["fd00:42:0:4::/64", "via", "fd00:77::12", "proto", "80", "metric", "20", "table", "1000"],
                ["default", "via", "fd00:77::254", "proto", "static"]):
        ip(netns, "route", "add", *cmd)
    index = {link["ifname"]: link["ifindex"] for link in json.loads(ip(netns, "-j", "link", "show"))}
    seen = []
    for x in json.loads(ip(netns, "-N", "-j", "-d", "route", "show", "table", "all")):
        if x["type"] != "1":  # unicast only
            continue
        gws = [x["gateway"]] if "gateway" in x else [h["gateway"] for h in x.get("nexthops", []) if "gateway" in h]
        dst = x["dst"] if x["dst"] != "default" else "::/0" if ":" in gws[0] else "0.0.0.0/0"
        seen.append((str(N(dst)), tuple(str(g) for g in sorted(A(g) for g in gws)), x.get("metric", 0),
                     int(x["protocol"]), int(x["table"]), index.get(x.get("dev"), 0)))
    sock = Rtnl(netns)
    try:
        dumped = sock.routes()  # every table
    finally:
        sock.close()
    got = [(str(x.prefix), tuple(str(g) for g in x.gateways), x.metric, x.protocol, x.table, x.oif) for x in dumped]
    assert sorted(got) == sorted(seen)
    assert ("10.42.3.0/24", ("192.168.77.13", "192.168.77.14"), 20, 80, 254, 0) in got
    assert ("fd00:42:0:4::/64", ("fd00:77::12",), 20, 80, 1000, index["eth0"]) in got


def test_a_table_above_255_and_one_that_does_not_exist(netns):
    ip(netns, "route", "add", "10.42.9.0/24", "via", "192.168.77.9", "proto", "80", "metric", "20")  # main, not 1000
    ip(netns, "route", "add", "10.42.8.0/24", "via", "192.168.77.8", "proto", "static", "metric", "20", "table", "1000")
    missing = KernelTable(protocol=80, table=1001, netns=netns)
    kernel = KernelTable(protocol=80, table=1000, netns=netns)
    try:
        assert missing.snapshot() == ([], [])  # the kernel answers ENOENT for a table it has not got
        desired = [r("10.42.2.0/24", "192.168.77.12"), r("10.42.3.0/24", "192.168.77.13", "192.168.77.14"),
                   r("fd00:42:0:3::/64", "fd00:77::13", "fd00:77::14"), r("10.42.8.0/24", "192.168.77.12")]
        for attempt in range(2):
            p, res = converge(kernel, desired)
            assert (len(p.replace), res.failed, [str(x.prefix) for x in p.blocked]) == (
                (3 if attempt == 0 else 0), {}, ["10.42.8.0/24"])
        ours, foreign = kernel.snapshot()
        assert sorted((str(x.prefix), x.table) for x in ours) == [
            ("10.42.2.0/24", 1000), ("10.42.3.0/24", 1000), ("fd00:42:0:3::/64", 1000)]
        assert [(str(x.prefix), x.protocol, x.table) for x in foreign] == [("10.42.8.0/24", 4, 1000)]
        converge(kernel, [])
        left = json.loads(ip(netns, "-j", "route", "show", "table", "1000"))
        assert [x["dst"] for x in left] == ["10.42.8.0/24"] and "10.42.9.0/24" in routes(netns)
    finally:
        kernel.close()
        missing.close()


def test_snapshot_is_the_same_without_strict_dump_checking(netns, kernel):
    """Kernels before 4.20 ignore the table filter: the routes are then filtered here."""
    ip(netns, "route", "add", "10.42.50.0/24", "via", "192.168.77.50", "proto", "static", "table", "100")
    converge(kernel, [r("10.42.2.0/24", "192.168.77.12"), r("fd00:42:0:3::/64", "fd00:77::13", "fd00:77::14")])
    strict = kernel.snapshot()
    kernel.rtnl.strict = False
    assert kernel.snapshot() == strict and len(strict[0]) == 2
    assert all(x.table == 254 for x in strict[0] + strict[1])


def test_deletes_name_routes_by_key_whatever_they_carry(netns, kernel):
    """A plan may hold Route values among its deletes (an incremental pass deletes what it wrote)."""
    converge(kernel, [r("10.42.2.0/24", "192.168.77.12"), r("fd00:42:0:2::/64", "fd00:77::12")])
    gone = (r("10.42.2.0/24", "192.168.77.99"), r("fd00:42:0:2::/64"))  # next hops play no part
    res = kernel.apply(Plan(replace=(), delete=gone, blocked=()))
    assert (res.deleted, res.failed) == (2, {}) and kernel.snapshot()[0] == []


def test_routes_at_reads_ours_and_foreign_at_one_prefix_only(netns, kernel):
    """What `podbgp explain` shows of the kernel: every route of our table at exactly that prefix,
    any protocol or metric; neighbours, more and less specific prefixes and other tables left out."""
    converge(kernel, [r("10.42.2.0/24", "192.168.77.12"), r("10.42.3.0/24", "192.168.77.13"),
                      r("fd00:42:0:2::/64", "fd00:77::12", "fd00:77::13")])
    for cmd in (["10.42.2.0/24", "via", "192.168.77.50", "proto", "static", "metric", "10"],
                ["10.42.2.0/24", "via", "192.168.77.51", "proto", "static", "metric", "20", "table", "100"],
                ["10.42.2.0/25", "via", "192.168.77.52", "proto", "static"],
                ["10.42.2.0/23", "via", "192.168.77.53", "proto", "static"],
                ["fd00:42:0:2::/64", "via", "fd00:77::50", "proto", "static", "metric", "30"]):
        ip(netns, "route", "add", *cmd)

    def held(prefix):
        return [(x.protocol, x.metric, tuple(map(str, x.gateways)), x.table) for x in kernel.routes_at(N(prefix))]

    for _attempt in range(2):  # a read changes nothing
        assert held("10.42.2.0/24") == [(80, 20, ("192.168.77.12",), 254), (4, 10, ("192.168.77.50",), 254)]
        assert held("fd00:42:0:2::/64") == [(80, 20, ("fd00:77::12", "fd00:77::13"), 254),
                                            (4, 30, ("fd00:77::50",), 254)]
        assert held("10.42.3.0/24") == [(80, 20, ("192.168.77.13",), 254)]
        assert held("10.42.9.0/24") == [] and held("10.42.2.0/26") == []
    assert len(kernel.snapshot()[0]) == 3


def test_routes_at_says_in_one_line_why_it_could_not_read(netns, kernel):
    kernel.netns = f"{netns}-missing"  # the table's own socket stays; a fresh read cannot enter the namespace
    try:
        with pytest.raises(ReconcilerError) as err:
            kernel.routes_at(N("10.42.2.0/24"))
    finally:
        kernel.netns = netns
    text = str(err.value)
    assert text.startswith("route dump of table 254 at 10.42.2.0/24 failed: ") and "\n" not in text
    assert "No such file" in text and not os.path.exists(f"/run/netns/{netns}-missing")
    assert kernel.routes_at(N("10.42.2.0/24")) == []
