"""BFD beside the BGP sessions (bgp.sessions with a fake bfd.Engine and a fake ExaBGP): BFD going
from up to down drops the peer's paths at once (stale ones too: no graceful restart) and tears the
session down (Cease 10, BFD down), ignoring what the dead session still hands over; the other
peers' paths stay; a BFD session that never came up, or a change of timers, is no failure; a change
of BFD alone is no ExaBGP reload."""
import asyncio
import ipaddress as ia
from dataclasses import replace

from bgp import bfd
from bgp.types import BfdTimers, SessionState
import pytest

from speaker import status as status_mod
from speaker.config import ConfigError
from speaker.peer_config import parse_peer
from tests.unit.test_bgp_sessions import line, make, peer, up

A, N = ia.ip_address, ia.ip_network
T = BfdTimers(300, 300, 3)


class FakeEngine:
    """What Sessions needs of bgp.bfd.Engine; say() is the engine's event."""

    def __init__(self, on_event, deliver):
        self.on_event, self.deliver = on_event, deliver
        self.sessions, self.started, self.closed = {}, False, False

    def start(self):
        self.started = True

    def add(self, s):
        self.sessions[str(s.peer)] = s

    def remove(self, addr):
        self.sessions.pop(str(addr), None)

    def close(self):
        self.closed = True

    def say(self, peer_cfg, state, diag=0):
        self.on_event(bfd.BfdEvent(peer=str(peer_cfg.address), state=state, diagnostics=diag))


class BrokenEngine(FakeEngine):
    def start(self):
        raise bfd.BfdError("cannot listen on UDP 3784 (IPv4): Address already in use")


def setup(tmp_path, engine=FakeEngine):
    s, changed, converged = make(tmp_path, bfd_engine=engine)
    p1, p2 = peer(1, bfd=T), peer(2)
    s.configure([p1, p2])
    return s, changed, p1, p2


def test_bfd_down_after_up_drops_the_paths_at_once_and_tears_the_session_down(tmp_path):
    async def body():
        s, changed, p1, p2 = setup(tmp_path)
        await asyncio.sleep(0)
        eng, exa = s.bfd, s.exabgp
        assert eng.started and set(eng.sessions) == {"192.168.51.1"}  # only the peer that asks for it
        assert eng.sessions["192.168.51.1"].local == A("192.168.51.11") and not eng.sessions["192.168.51.1"].multihop
        up(s, p1, ("10.42.2.0/24", "192.168.51.12"), ("10.42.3.0/24", "192.168.51.13"))  # GR negotiated
        up(s, p2, ("10.42.2.0/24", "192.168.52.12"))
        eng.say(p1, "init")
        eng.say(p1, "up")
        assert s.peer(p1.key).bfd.state == "up" and s.peer(p1.key).state == SessionState.UP
        changed.clear()
        exa.sent.clear()
        eng.say(p1, "down", 1)
        st = s.peer(p1.key)
        assert st.state == SessionState.DOWN and "BFD down (control detection time expired)" in st.reason
        assert s.rib.count(p1.key) == 0 and s.rib.count(p2.key) == 1  # nothing kept stale; p2's path stays
        assert changed == [{N("10.42.2.0/24"), N("10.42.3.0/24")}]  # handed to the reconciler at once
        assert st.bfd.downs == 1 and st.bfd.dropped == {N("10.42.2.0/24"), N("10.42.3.0/24")}
        assert exa.sent == ["neighbor 192.168.51.1 teardown 10"] and s.counters["bfd_downs"] == 1
        assert "192.168.51.1" in exa.config  # still configured: ExaBGP reconnects as usual
        # an UPDATE already on its way from the dead session, then ExaBGP's "down": ignored
        s.on_line(line(p1, "update", message={"update": {"announce": {"ipv4 unicast": {
            "192.168.51.12": [{"nlri": "10.42.2.0/24"}]}}}}))
        s.on_line(line(p1, "state", state="down", reason="teardown"))
        assert s.rib.count(p1.key) == 0 and "BFD down" in s.peer(p1.key).reason
        # the session comes back (ExaBGP reconnected) and counts again; BFD up clears the drop note
        up(s, p1, ("10.42.2.0/24", "192.168.51.12"))
        assert s.rib.count(p1.key) == 1 and s.peer(p1.key).state == SessionState.UP
        eng.say(p1, "up")
        assert s.peer(p1.key).bfd.dropped == frozenset() and s.peer(p1.key).bfd.downs == 1
    asyncio.run(body())


def test_bfd_down_while_the_session_is_not_established_drops_stale_paths_and_sends_nothing(tmp_path):
    async def body():
        s, changed, p1, _ = setup(tmp_path)
        await asyncio.sleep(0)
        up(s, p1, ("10.42.2.0/24", "192.168.51.12"))
        s.bfd.say(p1, "up")
        s.on_line(line(p1, "state", state="down", reason="hold timer"))  # GR: kept stale
        assert s.rib.count(p1.key) == 1
        s.exabgp.sent.clear()
        s.bfd.say(p1, "down", 1)
        assert s.rib.count(p1.key) == 0 and s.exabgp.sent == []
        up(s, p1, ("10.42.2.0/24", "192.168.51.12"))  # no teardown pending: the next session counts
        assert s.rib.count(p1.key) == 1
    asyncio.run(body())


def test_a_bfd_session_that_never_came_up_is_no_failure(tmp_path):
    async def body():
        s, changed, p1, _ = setup(tmp_path)
        await asyncio.sleep(0)
        up(s, p1, ("10.42.2.0/24", "192.168.51.12"))
        s.bfd.say(p1, "down")  # the peer runs no BFD (yet)
        s.bfd.say(p1, "init")
        s.bfd.say(p1, "down")
        assert s.peer(p1.key).state == SessionState.UP and s.rib.count(p1.key) == 1
        assert s.peer(p1.key).bfd.downs == 0
    asyncio.run(body())


def test_engine_restarted_or_timers_changed_start_the_session_afresh(tmp_path):
    async def body():
        s, changed, p1, p2 = setup(tmp_path)
        await asyncio.sleep(0)
        exa = s.exabgp
        up(s, p1, ("10.42.2.0/24", "192.168.51.12"))
        s.bfd.say(p1, "up")
        s.bfd.on_event(bfd.BfdEvent(peer="", state=bfd.RESTARTED))
        s.bfd.say(p1, "down")  # the new engine's first word
        assert s.rib.count(p1.key) == 1 and s.peer(p1.key).bfd.downs == 0
        s.bfd.say(p1, "up")
        # new timers: the engine's session replaced, no ExaBGP reload, the BGP session untouched
        actions = list(exa.actions)
        p1b = replace(p1, bfd=BfdTimers(100, 100, 5))
        s.configure([p1b, p2])
        assert exa.actions == actions and s.peer(p1.key).state == SessionState.UP
        assert s.bfd.sessions["192.168.51.1"].min_rx == 100 and s.peer(p1.key).bfd.state == "unknown"
        s.bfd.say(p1, "down")  # the replaced session's last word
        assert s.rib.count(p1.key) == 1
        # BFD off for the peer: the engine's session removed, still no reload
        s.configure([replace(p1, bfd=None), p2])
        assert exa.actions == actions and s.bfd.sessions == {} and s.peer(p1.key).bfd is None
    asyncio.run(body())


def test_removed_peer_leaves_the_engine_and_stop_closes_it(tmp_path):
    async def body():
        s, _, p1, p2 = setup(tmp_path)
        await asyncio.sleep(0)
        eng = s.bfd
        s.configure([p2])
        assert eng.sessions == {}
        await s.stop()
        assert eng.closed
    asyncio.run(body())


def test_an_engine_that_cannot_start_leaves_the_sessions_running_and_says_why(tmp_path):
    async def body():
        s, _, p1, _ = setup(tmp_path, engine=BrokenEngine)
        await asyncio.sleep(0)
        up(s, p1, ("10.42.2.0/24", "192.168.51.12"))
        st = s.peer(p1.key)
        assert s.bfd is None and st.state == SessionState.UP and st.bfd.state == "unavailable"
        assert "Address already in use" in st.bfd.error
        assert "bfd unavailable" in "\n".join(status_mod._peer_notes({"bfd": status_mod._bfd(st.bfd)}))
    asyncio.run(body())


def test_status_and_metrics_show_bfd(tmp_path):
    async def body():
        s, _, p1, _ = setup(tmp_path)
        await asyncio.sleep(0)
        up(s, p1, ("10.42.2.0/24", "192.168.51.12"))
        s.bfd.say(p1, "up")
        s.bfd.say(p1, "down", 1)
        doc = status_mod._bfd(s.peer(p1.key).bfd)
        assert doc["state"] == "down" and doc["downs"] == 1 and doc["droppedPaths"] == 1
        assert (doc["minRx"], doc["minTx"], doc["multiplier"]) == (300, 300, 3)
        notes = status_mod._peer_notes({"bfd": doc})
        assert notes == ["  bfd down 300/300 ms x3, downs 1, last: control detection time expired; "
                         "1 paths dropped at its down"]
    asyncio.run(body())


def test_multihop_peer_gets_a_multihop_bfd_session():
    assert bfd.session_for(peer(1, bfd=T, multihop=3)).multihop
    assert bfd.session_for(peer(1, bfd=T, ttl_security=2)).multihop
    assert not bfd.session_for(peer(1, bfd=T, ttl_security=1)).multihop
    assert bfd.session_for(peer(1)) is None
    assert bfd.peer_key("fd00:51:0::1") == "fd00:51::1"


def test_bfd_config_parses_and_refuses_in_one_line():
    base = {"address": "192.168.51.1", "asn": 65000}
    assert parse_peer({**base, "bfd": True}, "peers[0]").bfd == BfdTimers(300, 300, 3)
    assert parse_peer({**base, "bfd": "false"}, "peers[0]").bfd is None
    assert parse_peer({**base}, "peers[0]").bfd is None
    assert parse_peer({**base, "bfd": {"minRx": 100, "multiplier": 5}}, "peers[0]").bfd == BfdTimers(100, 300, 5)
    with pytest.raises(ConfigError, match=r"^peers\[0\]\.bfd\.multiplier: .*"):
        parse_peer({**base, "bfd": {"multiplier": 1}}, "peers[0]")
    with pytest.raises(ConfigError, match=r"^peers\[0\]\.bfd\.minrx: unknown setting \(did you mean minRx\?\)$"):
        parse_peer({**base, "bfd": {"minrx": 100}}, "peers[0]")
