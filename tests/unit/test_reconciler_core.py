import ipaddress as ia

import pytest

from bgp.types import Path
from reconciler.plan import plan
from reconciler.policy import Policy, check, desired_routes
from reconciler.types import KernelRoute, Owner, Reason, Route

N = ia.ip_network
A = ia.ip_address

POLICY = Policy(
    own=frozenset({N("10.42.1.0/24"), N("fd00:42:0:1::/64")}),
    cluster=frozenset({N("10.42.0.0/16"), N("fd00:42::/48")}),
    service=frozenset({N("10.43.0.0/16"), N("10.42.250.0/24"), N("fd00:43::/108")}),
    connected=frozenset({N("192.168.50.0/24"), N("10.42.77.0/24")}),
    owners={N("10.42.2.0/24"): Owner("node2", frozenset({A("192.168.50.12")})),
            N("10.42.3.0/24"): Owner("node3", frozenset({A("192.168.50.13")})),
            N("fd00:42:0:2::/64"): Owner("node2", frozenset({A("fd00:50::12")}))},
    disputed=frozenset({N("10.42.9.0/24")}),
)


@pytest.mark.parametrize("prefix,nh,reason", [
    ("10.42.2.0/24", "192.168.50.12", None),
    ("fd00:42:0:2::/64", "fd00:50::12", None),
    ("0.0.0.0/0", "192.168.50.1", Reason.DEFAULT_ROUTE),
    ("::/0", "fd00:50::1", Reason.DEFAULT_ROUTE),
    ("10.42.1.0/24", "192.168.50.11", Reason.OWN_CIDR),
    ("10.42.1.128/25", "192.168.50.12", Reason.OWN_CIDR),
    ("172.16.99.0/24", "192.168.50.12", Reason.OUTSIDE_CLUSTER),
    ("10.42.0.0/15", "192.168.50.12", Reason.OWN_CIDR),
    ("10.43.5.0/24", "192.168.50.12", Reason.SERVICE_RANGE),
    ("10.42.250.0/24", "192.168.50.12", Reason.SERVICE_RANGE),
    ("10.42.77.0/24", "192.168.50.12", Reason.CONNECTED),
    ("10.42.9.0/24", "192.168.50.12", Reason.DISPUTED),
    ("10.42.4.0/24", "192.168.50.14", Reason.NO_SUCH_NODE),
    ("10.42.2.7/32", "192.168.50.12", Reason.NO_SUCH_NODE),
    ("10.42.2.0/24", "192.168.50.13", Reason.NEXT_HOP_MISMATCH),
    ("10.42.2.0/24", "192.168.50.1", Reason.NEXT_HOP_MISMATCH),
    ("fd00:42:0:2::/64", "fe80::1", Reason.LINK_LOCAL_NEXT_HOP),
])
def test_policy_reasons(prefix, nh, reason):
    assert check(POLICY, Path("p", N(prefix), A(nh))) == reason


def test_relaxed_next_hop_allows_tor_rewrite():
    from dataclasses import replace
    relaxed = replace(POLICY, strict_next_hop=False)
    assert check(relaxed, Path("p", N("10.42.2.0/24"), A("192.168.50.1"))) is None


def test_desired_routes_merge_peers_into_ecmp_and_list_rejections():
    from dataclasses import replace
    relaxed = replace(POLICY, strict_next_hop=False)
    paths = [Path("tor1", N("10.42.2.0/24"), A("192.168.50.1")), Path("tor2", N("10.42.2.0/24"), A("192.168.50.2")),
             Path("tor1", N("0.0.0.0/0"), A("192.168.50.1"))]
    routes, rejected = desired_routes(relaxed, paths)
    assert routes == {N("10.42.2.0/24"): Route(N("10.42.2.0/24"), (A("192.168.50.1"), A("192.168.50.2")), 20)}
    assert [(str(r.prefix), r.reason) for r in rejected] == [("0.0.0.0/0", Reason.DEFAULT_ROUTE)]


def kr(prefix, gws, proto=80, metric=20):
    return KernelRoute(N(prefix), tuple(A(g) for g in gws), metric, proto, 254)


def r(prefix, *gws):
    return Route(N(prefix), tuple(A(g) for g in gws), 20)


def apply_fake(kernel, p):
    for route in p.delete:
        del kernel[(route.prefix, route.metric)]
    for route in p.replace:
        kernel[(route.prefix, route.metric)] = kr(str(route.prefix), [str(g) for g in route.gateways])


def test_plan_replace_delete_block_and_idempotent():
    desired = {x.prefix: x for x in [r("10.42.2.0/24", "192.168.50.12"), r("10.42.3.0/24", "192.168.50.13"),
                                     r("fd00:42:0:2::/64", "fd00:50::12"), r("10.42.5.0/24", "192.168.50.15")]}
    kernel = {(k.prefix, k.metric): k for k in [kr("10.42.2.0/24", ["192.168.50.99"]), kr("10.42.8.0/24", ["192.168.50.18"])]}
    foreign = [kr("10.42.5.0/24", ["192.168.50.1"], proto=4), kr("0.0.0.0/0", ["192.168.50.1"], proto=4, metric=0)]
    first = plan(desired, kernel.values(), foreign)
    assert [str(x.prefix) for x in first.replace] == ["10.42.2.0/24", "10.42.3.0/24", "fd00:42:0:2::/64"]
    assert [str(x.prefix) for x in first.delete] == ["10.42.8.0/24"]
    assert [str(x.prefix) for x in first.blocked] == ["10.42.5.0/24"]
    apply_fake(kernel, first)
    second = plan(desired, kernel.values(), foreign)
    assert second.empty and [str(x.prefix) for x in second.blocked] == ["10.42.5.0/24"]


def test_plan_before_convergence_never_deletes():
    kernel = [kr("10.42.8.0/24", ["192.168.50.18"])]
    assert plan({}, kernel, [], prune=False).empty
    assert len(plan({}, kernel, [], prune=True).delete) == 1
