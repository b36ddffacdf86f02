"""speaker.allocator: the pure LoadBalancer IP allocator, rule by rule (issue 13, Deliver 4)."""
import dataclasses
import ipaddress

import pytest

from speaker import selector
from speaker.allocator import ALREADY_TAKEN, OUTSIDE_POOLS, POOL_EXHAUSTED, Allocator, Event, SetIngress

from speaker.service_config import Pool, ServicesConfig

try:  # the contract's Service value (speaker/services.py: P3)
    from speaker.services import ServiceInfo
except ImportError:  # before it lands: a double with the contract's field names
    @dataclasses.dataclass(frozen=True, slots=True)
    class ServiceInfo:
        key: str
        type: str
        cluster_ips: tuple
        external_ips: tuple
        ingress: tuple
        lb_class: str | None
        external_policy: str
        internal_policy: str
        advertise_cluster_ip: bool
        sharing_key: str | None
        requested_ips: tuple
        ip_families: tuple
        ip_family_policy: str
        ports: tuple
        labels: tuple

IP = ipaddress.ip_address


def pool(name, *cidrs, select=None):
    return Pool(name=name, cidrs=tuple(ipaddress.ip_network(c) for c in cidrs),
                service_selector=selector.parse(select))


def config(*pools, cls="podbgp.io/bgp"):
    return ServicesConfig(load_balancer_class=cls, pools=tuple(pools), allocate=True)


def svc(name, *, type="LoadBalancer", ingress=(), lb_class=None, sharing=None, requested=(), families=("IPv4",),
        policy="SingleStack", ports=(("TCP", 80),), labels=()):
    return ServiceInfo(
        key=f"default/{name}", type=type, cluster_ips=(), external_ips=(),
        ingress=tuple((IP(i), "VIP") for i in ingress), lb_class=lb_class, external_policy="Cluster",
        internal_policy="Cluster", advertise_cluster_ip=False, sharing_key=sharing,
        requested_ips=tuple(IP(i) for i in requested), ip_families=tuple(families), ip_family_policy=policy,
        ports=tuple(sorted(ports)), labels=tuple(sorted(labels)))


def ips(actions, key):
    """The IPs the last SetIngress of `key` writes, as strings."""
    sets = [a for a in actions if isinstance(a, SetIngress) and a.key == f"default/{key}"]
    assert sets, actions
    return [str(i) for i in sets[-1].ips]


def events(actions):
    return [a for a in actions if isinstance(a, Event)]


def echo(info, actions):
    """The Service as the watch shows it once the allocator's write arrived."""
    out = [a for a in actions if isinstance(a, SetIngress) and a.key == info.key]
    return dataclasses.replace(info, ingress=tuple((i, "VIP") for i in out[-1].ips)) if out else info


def test_lowest_free_address_first_never_network_or_broadcast():
    alloc = Allocator(config(pool("p", "203.0.113.0/30")))
    assert ips(alloc.on_service(svc("a")), "a") == ["203.0.113.1"]
    assert ips(alloc.on_service(svc("b")), "b") == ["203.0.113.2"]
    acts = alloc.on_service(svc("c"))  # .0 network and .3 broadcast are never handed out
    assert events(acts)[0].reason == POOL_EXHAUSTED and "pool exhausted" in events(acts)[0].message
    assert alloc.status()["pools"] == {"p": {"used": 2, "size": 2}}
    assert "default/c" in alloc.status()["problems"]


def test_slash_31_and_32_use_every_address_and_ipv6_skips_the_anycast_address():
    alloc = Allocator(config(pool("p", "198.51.100.0/31", "198.51.100.9/32"), pool("v6", "fd00:113::/126")))
    got = [ips(alloc.on_service(svc(n)), n)[0] for n in "abc"]
    assert got == ["198.51.100.0", "198.51.100.1", "198.51.100.9"]
    got6 = [ips(alloc.on_service(svc(n, families=("IPv6",))), n)[0] for n in ("d", "e", "f")]
    assert got6 == ["fd00:113::1", "fd00:113::2", "fd00:113::3"]
    assert events(alloc.on_service(svc("g", families=("IPv6",))))[0].reason == POOL_EXHAUSTED


def test_a_huge_ipv6_pool_costs_nothing():
    alloc = Allocator(config(pool("big", "fd00::/64")))
    assert ips(alloc.on_service(svc("a", families=("IPv6",))), "a") == ["fd00::1"]
    assert alloc.status()["pools"]["big"] == {"used": 1, "size": 2 ** 64 - 1}


def test_release_on_delete_and_reuse_of_the_lowest():
    alloc = Allocator(config(pool("p", "203.0.113.0/24")))
    for n in "abc":
        alloc.on_service(svc(n))
    assert alloc.on_delete("default/a") == []
    assert ips(alloc.on_service(svc("d")), "d") == ["203.0.113.1"]
    assert ips(alloc.on_service(svc("e")), "e") == ["203.0.113.4"]


def test_type_change_away_from_load_balancer_clears_and_releases():
    alloc = Allocator(config(pool("p", "203.0.113.0/24")))
    a = echo(svc("a"), alloc.on_service(svc("a")))
    acts = alloc.on_service(dataclasses.replace(a, type="ClusterIP"))
    assert acts == [SetIngress("default/a", ())]
    assert ips(alloc.on_service(svc("b")), "b") == ["203.0.113.1"]


def test_other_classes_are_never_touched_and_a_class_change_releases():
    alloc = Allocator(config(pool("p", "203.0.113.0/24")))
    assert alloc.on_service(svc("x", lb_class="other.io/lb")) == []
    assert alloc.on_service(svc("y", lb_class="other.io/lb", ingress=["203.0.113.1"])) == []
    assert alloc.decide([svc("y", lb_class="other.io/lb", ingress=["203.0.113.1"])]) == []
    a = echo(svc("a", lb_class="podbgp.io/bgp"), alloc.on_service(svc("a", lb_class="podbgp.io/bgp")))
    assert alloc.assigned["default/a"] == (IP("203.0.113.1"),)  # y's status is not ours to respect
    assert alloc.on_service(dataclasses.replace(a, lb_class="other.io/lb")) == []  # left alone
    assert ips(alloc.on_service(svc("b")), "b") == ["203.0.113.1"]


def test_requested_ip_inside_a_pool_is_given_exactly():
    alloc = Allocator(config(pool("p", "203.0.113.0/24")))
    assert ips(alloc.on_service(svc("a", requested=["203.0.113.77"])), "a") == ["203.0.113.77"]
    assert ips(alloc.on_service(svc("b")), "b") == ["203.0.113.1"]


@pytest.mark.parametrize("ip, reason, words", [
    ("192.0.2.5", OUTSIDE_POOLS, "outside every pool"),
    ("203.0.113.0", OUTSIDE_POOLS, "network, broadcast"),
    ("203.0.113.255", OUTSIDE_POOLS, "network, broadcast"),
    ("198.51.100.5", OUTSIDE_POOLS, "serviceSelector does not match"),
])
def test_requested_ip_that_cannot_be_given_is_an_event_and_a_problem(ip, reason, words):
    alloc = Allocator(config(pool("p", "203.0.113.0/24"), pool("gold", "198.51.100.0/24", select="tier=gold")))
    acts = alloc.on_service(svc("a", requested=[ip]))
    [ev] = events(acts)
    assert (ev.key, ev.reason) == ("default/a", reason) and words in ev.message, ev
    assert not any(isinstance(a, SetIngress) for a in acts)
    assert words in alloc.status()["problems"]["default/a"]
    assert alloc.on_service(svc("a", requested=[ip])) == []  # said once, not on every event


def test_requested_ip_already_taken():
    alloc = Allocator(config(pool("p", "203.0.113.0/24")))
    alloc.on_service(svc("a"))
    [ev] = events(alloc.on_service(svc("b", requested=["203.0.113.1"])))
    assert ev.reason == ALREADY_TAKEN and "already taken by default/a" in ev.message
    alloc.on_delete("default/a")
    assert ips(alloc.on_service(svc("b", requested=["203.0.113.1"])), "b") == ["203.0.113.1"]
    assert "default/b" not in alloc.status()["problems"]


def test_service_selector_picks_the_pool():
    alloc = Allocator(config(pool("gold", "198.51.100.0/24", select="tier=gold"), pool("p", "203.0.113.0/24")))
    assert ips(alloc.on_service(svc("a")), "a") == ["203.0.113.1"]
    assert ips(alloc.on_service(svc("b", labels=[("tier", "gold")])), "b") == ["198.51.100.1"]


def test_dual_stack_one_ip_per_family_single_stack_one():
    alloc = Allocator(config(pool("p", "203.0.113.0/24", "fd00:113::/112")))
    both = alloc.on_service(svc("a", families=("IPv6", "IPv4"), policy="RequireDualStack"))
    assert ips(both, "a") == ["203.0.113.1", "fd00:113::1"]
    one = alloc.on_service(svc("b", families=("IPv6", "IPv4"), policy="SingleStack"))
    assert ips(one, "b") == ["fd00:113::2"]
    [ev] = events(Allocator(config(pool("p", "203.0.113.0/24"))).on_service(
        svc("c", families=("IPv4", "IPv6"), policy="PreferDualStack")))
    assert ev.reason == POOL_EXHAUSTED and "IPv6" in ev.message


def test_sharing_needs_the_same_key_and_distinct_ports():
    alloc = Allocator(config(pool("p", "203.0.113.0/24")))
    assert ips(alloc.on_service(svc("a", sharing="k", ports=[("TCP", 80)])), "a") == ["203.0.113.1"]
    assert ips(alloc.on_service(svc("b", sharing="k", ports=[("TCP", 443)])), "b") == ["203.0.113.1"]
    assert ips(alloc.on_service(svc("c", sharing="k", ports=[("TCP", 80)])), "c") == ["203.0.113.2"]  # conflict
    assert ips(alloc.on_service(svc("d", sharing="k", ports=[("UDP", 80)])), "d") == ["203.0.113.1"]  # other proto
    assert ips(alloc.on_service(svc("e", sharing="other", ports=[("TCP", 9)])), "e") == ["203.0.113.3"]
    assert ips(alloc.on_service(svc("f", ports=[("TCP", 9)])), "f") == ["203.0.113.4"]
    # a requested shared IP: same key and free ports only
    [ev] = events(alloc.on_service(svc("g", requested=["203.0.113.1"], sharing="x", ports=[("TCP", 1)])))
    assert ev.reason == ALREADY_TAKEN
    assert ips(alloc.on_service(svc("h", requested=["203.0.113.1"], sharing="k", ports=[("TCP", 1)])), "h") \
        == ["203.0.113.1"]
    # the shared IP stays held while any holder is left
    for k in "abd":
        alloc.on_delete(f"default/{k}")
    assert ips(alloc.on_service(svc("i")), "i") == ["203.0.113.5"]
    assert ips(alloc.on_delete("default/h"), "g") == ["203.0.113.1"]  # g was waiting for it
    assert ips(alloc.on_service(svc("j")), "j") == ["203.0.113.6"]
    assert alloc.status()["pools"]["p"]["used"] == 6  # .1 g, .2 c, .3 e, .4 f, .5 i, .6 j


def test_a_port_change_that_conflicts_moves_the_service():
    alloc = Allocator(config(pool("p", "203.0.113.0/24")))
    a = echo(svc("a", sharing="k", ports=[("TCP", 80)]), alloc.on_service(svc("a", sharing="k", ports=[("TCP", 80)])))
    b = echo(svc("b", sharing="k", ports=[("TCP", 443)]),
             alloc.on_service(svc("b", sharing="k", ports=[("TCP", 443)])))
    assert a.ingress[0][0] == b.ingress[0][0]
    assert ips(alloc.on_service(dataclasses.replace(b, ports=(("TCP", 80),))), "b") == ["203.0.113.2"]
    assert alloc.on_service(a) == []  # a keeps its IP


def test_echo_of_our_own_write_does_nothing():
    alloc = Allocator(config(pool("p", "203.0.113.0/24")))
    a = echo(svc("a"), alloc.on_service(svc("a")))
    assert alloc.on_service(a) == []
    assert alloc.on_service(a) == []  # idempotent
    # the echo not yet seen: a second event without the status writes the same again
    assert alloc.on_service(svc("a")) == [SetIngress("default/a", (IP("203.0.113.1"),))]


def test_rebuild_after_restart_keeps_every_valid_ip_and_hands_none_out_twice():
    cfg = config(pool("p", "203.0.113.0/29"))
    first = Allocator(cfg)
    services = []
    for n in "abcd":
        services.append(echo(svc(n), first.on_service(svc(n))))
    services = [s for s in services if s.key != "default/b"]  # b deleted: .2 free
    fresh = Allocator(cfg)  # a restart, or another speaker taking the Lease
    assert fresh.decide(services + [svc("e")]) == [SetIngress("default/e", (IP("203.0.113.2"),))]
    assert sorted(map(str, (i for v in fresh.assigned.values() for i in v))) == \
        ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]
    assert ips(fresh.on_service(svc("f")), "f") == ["203.0.113.5"]


def test_rebuild_resolves_a_double_claim_and_drops_invalid_status():
    alloc = Allocator(config(pool("p", "203.0.113.0/24")))
    acts = alloc.decide([svc("b", ingress=["203.0.113.9"]), svc("a", ingress=["203.0.113.9"]),
                         svc("c", ingress=["192.0.2.1"]), svc("r", requested=["203.0.113.1"]),
                         svc("old", type="ClusterIP", ingress=["203.0.113.50"]),
                         svc("foreign", type="ClusterIP", ingress=["192.0.2.7"])])
    assert alloc.assigned["default/a"] == (IP("203.0.113.9"),)  # first by key keeps it
    assert ips(acts, "r") == ["203.0.113.1"]  # requests are placed before lowest-free
    assert ips(acts, "b") == ["203.0.113.2"] and ips(acts, "c") == ["203.0.113.3"]
    assert ips(acts, "old") == []  # left type LoadBalancer: cleared
    assert not [a for a in acts if a.key in ("default/a", "default/foreign")]


def test_exhaustion_is_said_once_and_clears_when_an_ip_frees():
    alloc = Allocator(config(pool("p", "203.0.113.0/31")))
    alloc.on_service(svc("a"))
    alloc.on_service(svc("b"))
    assert len(events(alloc.on_service(svc("c")))) == 1
    assert alloc.on_service(svc("c")) == []
    alloc.on_delete("default/a")
    assert ips(alloc.on_service(svc("c")), "c") == ["203.0.113.0"]
    assert alloc.status()["problems"] == {}


def test_no_pools_is_a_problem_not_a_crash():
    alloc = Allocator(config())
    [ev] = events(alloc.on_service(svc("a")))
    assert ev.reason == POOL_EXHAUSTED and "no pool" in ev.message
    assert alloc.status() == {"pools": {}, "problems": {"default/a": f"service default/a: {ev.message}"}}


def test_a_waiting_service_gets_the_address_freed_by_a_delete_or_a_type_change():
    alloc = Allocator(config(pool("p", "203.0.113.0/30")))
    a = echo(svc("a"), alloc.on_service(svc("a")))
    alloc.on_service(svc("b"))
    assert events(alloc.on_service(svc("c")))[0].reason == POOL_EXHAUSTED
    assert events(alloc.on_service(svc("d", requested=["203.0.113.2"])))[0].reason == ALREADY_TAKEN
    assert ips(alloc.on_delete("default/b"), "d") == ["203.0.113.2"]  # the request first
    assert "default/c" in alloc.status()["problems"]
    acts = alloc.on_service(dataclasses.replace(a, type="NodePort"))
    assert ips(acts, "a") == [] and ips(acts, "c") == ["203.0.113.1"]
    assert alloc.status()["problems"] == {}
    assert alloc.on_service(svc("c")) == [SetIngress("default/c", (IP("203.0.113.1"),))]  # no echo yet
