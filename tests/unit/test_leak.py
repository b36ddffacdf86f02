"""A ToR that leaks a large table (issue 14, part 1): paths the import policy refuses for good are
counted per peer and reason, never stored; maxPrefixes warns or tears the session down (Cease 1)
and brings it back after restartAfter."""
import asyncio
import ipaddress as ia
import tracemalloc

import pytest

from bgp import limits
from bgp.types import EorEvent, OpenEvent, Path, PeerConfig, SessionState, StateEvent, UpdateEvent
from reconciler.policy import Policy, static_check
from reconciler.types import Reason
from speaker import config as cfgmod
from speaker.config import ConfigError
from tests.unit.test_bgp_sessions import make, peer

A, N = ia.ip_address, ia.ip_network
CLUSTER = Policy(own=frozenset(), cluster=frozenset({N("10.42.0.0/16"), N("fd00:42::/48")}),
                 service=frozenset({N("10.43.0.0/16")}), connected=frozenset(), owners={},
                 service_ranges=frozenset({N("10.96.0.0/24")}))


def refuse(prefix):
    reason = static_check(CLUSTER, prefix)
    return None if reason is None else reason.value


def leak(peer_key, n, start=0, per_update=500, hop="192.168.51.1"):
    """n IPv4 /24s outside the cluster (in 11.0.0.0/8 and up), per_update to an UPDATE."""
    nh = A(hop)
    for first in range(start, start + n, per_update):
        yield UpdateEvent(peer_key, announced=tuple(
            Path(peer_key, ia.IPv4Network(((11 << 24) + (i << 8), 24)), nh) for i in range(first, min(first + per_update, start + n))))


def withdraw_leak(peer_key, n, per_update=500):
    for first in range(0, n, per_update):
        yield UpdateEvent(peer_key, withdrawn=tuple(
            ia.IPv4Network(((11 << 24) + (i << 8), 24)) for i in range(first, min(first + per_update, n))))


def pods(peer_key, *prefixes):
    return UpdateEvent(peer_key, announced=tuple(Path(peer_key, N(p), A("192.168.51.12")) for p in prefixes))


def bring_up(s, p):
    s.on_event(OpenEvent(p.key, 120))
    s.on_event(StateEvent(p.key, SessionState.UP))


def run(coro):
    return asyncio.run(coro)


# ---- the static part of the policy ------------------------------------------------------------

@pytest.mark.parametrize("prefix, reason", [
    ("0.0.0.0/0", Reason.DEFAULT_ROUTE), ("172.16.0.0/24", Reason.OUTSIDE_CLUSTER),
    ("10.43.1.0/24", Reason.SERVICE_RANGE), ("10.96.0.7/32", Reason.SERVICE_ADDRESS),
    ("10.0.0.0/8", Reason.SERVICE_RANGE), ("fd00:99::/48", Reason.OUTSIDE_CLUSTER),
    ("10.42.7.0/24", None), ("fd00:42:0:7::/64", None)])
def test_static_check_names_the_reasons_no_node_can_lift(prefix, reason):
    assert static_check(CLUSTER, N(prefix)) is reason


# ---- refused paths are counted, not stored ----------------------------------------------------

def test_100k_refused_announcements_leave_the_rib_at_the_accepted_count(tmp_path):
    async def body():
        s, changed, _ = make(tmp_path, refuse=refuse)
        p = peer(1)
        s.configure([p])
        await asyncio.sleep(0)
        bring_up(s, p)
        s.on_event(pods(p.key, "10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"))
        marked = len(changed)
        for ev in leak(p.key, 100_000):
            s.on_event(ev)
        assert s.rib.count() == 3 and len(list(s.prefixes())) == 3
        assert len(changed) == marked, "refused paths must not wake the reconciler"
        st = s.peer(p.key)
        assert st.paths == 3 and st.refused == (("outside-cluster-cidr", 100_000),)
        assert dict(st.counted) == {"ipv4": 100_003}
        # withdraws of refused prefixes, and of prefixes never announced: no-ops for the RIB
        for ev in withdraw_leak(p.key, 100_000):
            s.on_event(ev)
        s.on_event(UpdateEvent(p.key, withdrawn=(N("172.31.0.0/24"), N("10.42.200.0/24"))))
        assert s.rib.count() == 3 and len(changed) == marked
        assert dict(s.peer(p.key).counted) == {"ipv4": 3}
    run(body())


def test_200k_refused_announcements_cost_the_sessions_under_2_mib(tmp_path):
    async def body():
        s, _, _ = make(tmp_path, refuse=refuse)
        p = peer(1)
        s.configure([p])
        await asyncio.sleep(0)
        bring_up(s, p)
        for ev in leak(p.key, 2_000):  # warm up: caches, counters, the exact set filled
            s.on_event(ev)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for ev in leak(p.key, 200_000, start=2_000):
                s.on_event(ev)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert s.rib.count() == 0 and s.peer(p.key).refused == (("outside-cluster-cidr", 202_000),)
        assert grown < 2 * 1024 * 1024, f"the Sessions grew by {grown} bytes"
    run(body())


def test_refused_count_is_exact_for_a_few_prefixes_and_an_upper_bound_beyond():
    c = limits.RefusedCount()
    default = N("0.0.0.0/0")
    for _ in range(5):  # a default route re-announced with new attributes: still one held
        c.announced(default, "default-route")
    assert c.held("ipv4") == 1 and c.by_reason["default-route"] == 5
    c.withdrawn(N("172.16.0.0/24"))  # never announced: nothing to uncount
    c.withdrawn(default)
    c.withdrawn(default)
    assert c.held("ipv4") == 0
    for i in range(limits.EXACT + 10):
        c.announced(ia.IPv6Network(((0xfd99 << 112) + (i << 80), 48)), "outside-cluster-cidr")
    assert c.held("ipv6") == limits.EXACT + 10 and c.held("ipv4") == 0
    c.reset()
    assert c.held("ipv6") == 0 and not c.by_reason


def test_counters_reset_when_the_session_goes_down(tmp_path):
    async def body():
        s, _, _ = make(tmp_path, refuse=refuse)
        p = peer(1)
        s.configure([p])
        await asyncio.sleep(0)
        bring_up(s, p)
        for ev in leak(p.key, 3_000):
            s.on_event(ev)
        assert s.peer(p.key).refused == (("outside-cluster-cidr", 3_000),)
        s.on_event(StateEvent(p.key, SessionState.DOWN, "peer reset"))
        st = s.peer(p.key)
        assert st.refused == () and dict(st.counted) == {"ipv4": 0}
    run(body())


# ---- maxPrefixes --------------------------------------------------------------------------------

def test_warn_keeps_the_session_and_says_by_how_much(tmp_path):
    async def body():
        s, _, _ = make(tmp_path, refuse=refuse)
        p = peer(1, max_prefixes=(("ipv4", 1_000),))
        s.configure([p])
        await asyncio.sleep(0)
        bring_up(s, p)
        s.on_event(pods(p.key, "10.42.1.0/24", "10.42.2.0/24"))
        for ev in leak(p.key, 1_500):  # a leak of refused routes counts too
            s.on_event(ev)
        st = s.peer(p.key)
        assert st.state == SessionState.UP and st.paths == 2
        assert st.over == "ipv4 1502 > maxPrefixes 1000 (over by 502)" and st.excess == 502
        assert s.counters["max_prefixes_exceeded"] == 1  # once per crossing, not per UPDATE
        assert not any("teardown" in c for c in s.exabgp.sent)
        for ev in withdraw_leak(p.key, 1_500):
            s.on_event(ev)
        assert s.peer(p.key).over == "" and s.counters["max_prefixes_exceeded"] == 1
    run(body())


def test_teardown_sends_cease_1_keeps_exabgp_away_and_comes_back_after_restart_after(tmp_path):
    async def body():
        loop = asyncio.get_running_loop()
        now = [loop.time()]
        loop.time = lambda: now[0]  # a fake clock for the loop's timers
        s, changed, _ = make(tmp_path, refuse=refuse)
        p = peer(1, max_prefixes=(("ipv4", 100), ("ipv6", 10)), max_prefixes_action="teardown", restart_after=30)
        other = peer(2)
        s.configure([p, other])
        await asyncio.sleep(0)
        exa = s.exabgp
        bring_up(s, p)
        bring_up(s, other)
        s.on_event(pods(p.key, "10.42.1.0/24"))
        s.on_event(pods(other.key, "10.42.2.0/24"))
        for ev in leak(p.key, 150):
            s.on_event(ev)
        assert exa.sent[-1] == "neighbor 192.168.51.1 teardown 1"
        assert s.counters["max_prefixes_teardowns"] == 1
        for ev in leak(p.key, 50, start=150):  # still arriving before ExaBGP acts: no second teardown
            s.on_event(ev)
        assert exa.sent.count("neighbor 192.168.51.1 teardown 1") == 1
        s.on_event(StateEvent(p.key, SessionState.DOWN, "notification sent (6,1)"))
        # its paths leave at once (no graceful restart: it is not restarting), the other peer's stay
        assert s.rib.count(p.key) == 0 and s.rib.count(other.key) == 1
        assert "neighbor 192.168.51.1 {" not in exa.config and "neighbor 192.168.52.1 {" in exa.config
        st = s.peer(p.key)
        assert st.state == SessionState.DOWN and st.resume_at is not None and st.over.startswith("ipv4 ")
        s.on_event(StateEvent(p.key, SessionState.DOWN, "echo"))  # ignored while suspended
        s.on_event(pods(p.key, "10.42.1.0/24"))  # a reconnect before the reload took effect: ignored
        assert s.rib.count(p.key) == 0 and s.counters["events_suspended_peer"] == 1
        assert s.peer(p.key).reason == "notification sent (6,1)"
        now[0] += 29
        await asyncio.sleep(0)
        assert "neighbor 192.168.51.1 {" not in exa.config
        now[0] += 2
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert "neighbor 192.168.51.1 {" in exa.config
        st = s.peer(p.key)
        assert st.resume_at is None and st.over == "" and st.state == SessionState.IDLE
        bring_up(s, p)
        s.on_event(pods(p.key, "10.42.1.0/24"))
        assert s.peer(p.key).state == SessionState.UP and s.rib.count(p.key) == 1
    run(body())


# ---- configuration --------------------------------------------------------------------------------

def _peer(**extra):
    cfg = cfgmod.parse({"nodeName": "n1", "asn": 65001, "clusterCIDRs": ["10.42.0.0/16"], "peers": [{"address": "192.168.50.1", "asn": 65000, **extra}]})
    return cfg.peers[0]


def test_max_prefixes_keys():
    p = _peer(maxPrefixes=20000)
    assert p.max_prefixes == (("ipv4", 20000), ("ipv6", 20000)) and p.max_prefixes_action == "warn"
    p = _peer(maxPrefixes={"ipv4": 20000, "ipv6": 5000, "action": "teardown", "restartAfter": 120})
    assert (p.max_prefixes, p.max_prefixes_action, p.restart_after) == (
        (("ipv4", 20000), ("ipv6", 5000)), "teardown", 120)
    assert _peer().max_prefixes == ()
    with pytest.raises(ConfigError, match=r"peers\[0\].maxPrefixes.action: 'drop' is not warn or teardown"):
        _peer(maxPrefixes={"ipv4": 10, "action": "drop"})
    with pytest.raises(ConfigError, match=r"maxPrefixes: give a limit"):
        _peer(maxPrefixes={"action": "teardown"})
    with pytest.raises(ConfigError, match=r"maxPrefixes"):
        _peer(maxPrefixes={"ipv4": 10, "ipv5": 3})


def test_max_prefixes_is_no_reload_of_exabgp(tmp_path):
    async def body():
        s, _, _ = make(tmp_path)
        s.configure([peer(1)])
        await asyncio.sleep(0)
        text = s.exabgp.config
        s.configure([peer(1, max_prefixes=(("ipv4", 5),))])
        assert s.exabgp.config == text
    run(body())
