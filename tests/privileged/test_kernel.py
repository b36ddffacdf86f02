"""The reconciler's kernel side against real netlink in a fresh namespace."""
import ipaddress as ia
import json
import subprocess

import pytest

from reconciler.kernel import KernelTable
from reconciler.plan import plan
from reconciler.types import Route

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


def test_connected_subnets(netns, kernel):
    assert {N("192.168.77.0/24"), N("fd00:77::/64")} <= kernel.connected()
