"""bgp.Sessions with a fake ExaBGP: a change of the peer list is a reload that leaves the other
sessions alone; a removed peer leaves the RIB at once; what ExaBGP's Adj-RIB-Out still holds is
withdrawn when a peer comes back; and the reason of a peer under TCP MD5 or GTSM says why."""
import asyncio
import ipaddress as ia
import json

from bgp import render
from bgp.sessions import Sessions
from bgp.types import Announcement, PeerConfig, SessionState

A, N = ia.ip_address, ia.ip_network


class FakeExaBGP:
    """What Sessions needs of bgp.process.ExaBGP; reconfigure answers as the real one decides."""

    def __init__(self, runtime_dir, exabgp, on_line, on_connect, on_exit):
        self.on_line, self.on_connect, self.on_exit = on_line, on_connect, on_exit
        self.config = None
        self.sent = []
        self.actions = []
        self.pid = 4242

    async def start(self, text):
        self.config = text

    def reconfigure(self, text):
        if text == self.config:
            action = "unchanged"
        elif render.global_part(text) != render.global_part(self.config):
            action = "restart"
        else:
            action = "reload"
        self.config = text
        self.actions.append(action)
        return action

    def send(self, lines):
        self.sent.extend(lines)
        return True

    async def stop(self):
        pass


def peer(n, **kw):
    return PeerConfig(address=A(f"192.168.5{n}.1"), asn=65000, local_address=A(f"192.168.5{n}.11"), local_asn=65001,
                      router_id=A("192.168.50.11"), **kw)


P1, P2, P3 = peer(1), peer(2), peer(3)


def line(peer_cfg, kind, **msg):
    return json.dumps({"exabgp": "5.0.0", "type": kind, "neighbor": {
        "address": {"local": str(peer_cfg.local_address), "peer": str(peer_cfg.address)},
        "asn": {"local": 65001, "peer": 65000}, **msg}})


def up(s, p, *routes, gr=120):
    caps = {"64": {"name": "graceful restart", "time": gr}} if gr else {}
    s.on_line(line(p, "open", direction="receive", open={"version": 4, "capabilities": caps}))
    s.on_line(line(p, "state", state="up"))
    for prefix, nh in routes:
        s.on_line(line(p, "update", message={"update": {"announce": {"ipv4 unicast": {nh: [{"nlri": prefix}]}}}}))
    s.on_line(line(p, "update", message={"eor": {"afi": "ipv4", "safi": "unicast"}}))


def make(tmp_path, **kw):
    changed, converged = [], []
    s = Sessions(str(tmp_path), "exabgp", 120, 60, changed.append, converged.append, factory=FakeExaBGP, **kw)
    return s, changed, converged


def ann(*prefixes):
    return frozenset(Announcement(N(p)) for p in prefixes)


def run(coro):
    asyncio.run(coro)


def test_adding_a_peer_reloads_and_leaves_the_others_alone(tmp_path):
    async def body():
        s, changed, _ = make(tmp_path)
        s.configure([P1, P2])
        s.announce(ann("10.42.1.0/24"))
        await asyncio.sleep(0)
        exa = s.exabgp
        up(s, P1, ("10.42.2.0/24", "192.168.51.12"))
        up(s, P2, ("10.42.2.0/24", "192.168.52.12"))
        since = {k: s.peer(k).since for k in (P1.key, P2.key)}
        exa.sent.clear()
        s.configure([P1, P2, P3])
        assert exa.actions == ["reload"] and "neighbor 192.168.53.1 {" in exa.config
        assert s.exabgp is exa and exa.sent == []  # nothing said to the established peers
        assert s.peer(P1.key).since == since[P1.key] and s.peer(P1.key).state == SessionState.UP
        assert s.peer(P3.key).state == SessionState.IDLE and s.rib.count() == 2
        up(s, P3)
        assert exa.sent == ["neighbor 192.168.53.1 announce route 10.42.1.0/24 next-hop self",
                            "neighbor 192.168.53.1 announce eor ipv4 unicast"]
        assert s.converged
    run(body())


def test_a_removed_peer_leaves_the_rib_at_once_and_its_late_lines_are_ignored(tmp_path):
    async def body():
        s, changed, _ = make(tmp_path)
        s.configure([P1, P2])
        await asyncio.sleep(0)
        up(s, P1, ("10.42.2.0/24", "192.168.51.12"))
        up(s, P2, ("10.42.2.0/24", "192.168.52.12"), ("10.42.3.0/24", "192.168.52.13"), gr=120)
        changed.clear()
        s.configure([P1])
        # graceful restart was negotiated, yet nothing is kept stale: the peer is gone for good
        assert changed == [{N("10.42.2.0/24"), N("10.42.3.0/24")}]
        assert s.rib.count(P2.key) == 0 and s.rib.count(P1.key) == 1
        assert s.peer(P2.key) is None and [p.key for p in s.peers()] == [P1.key]
        # ExaBGP's own "down" for the removed peer, and an UPDATE that was already on its way
        s.on_line(line(P2, "state", state="down", reason="stop, message [removed]"))
        s.on_line(line(P2, "update", message={"update": {"announce": {"ipv4 unicast": {
            "192.168.52.12": [{"nlri": "10.42.9.0/24"}]}}}}))
        assert s.peer(P2.key) is None and s.rib.count(P2.key) == 0 and changed == [changed[0]]
        assert s.counters["events_removed_peer"] == 2
        assert s.exabgp.actions == ["reload"] and s.peer(P1.key).state == SessionState.UP
        s.configure([P1, P2])  # back again: a new session like any other
        assert s.peer(P2.key).state == SessionState.IDLE
        up(s, P2, ("10.42.2.0/24", "192.168.52.12"))
        assert s.peer(P2.key).state == SessionState.UP and s.rib.count(P2.key) == 1
    run(body())


def test_the_same_peers_in_another_order_change_nothing(tmp_path):
    async def body():
        s, _, _ = make(tmp_path)
        s.configure([P1, P2])
        await asyncio.sleep(0)
        s.configure([P1, P2])
        assert s.exabgp.actions == []
        s.configure([P2, P1])  # another list, the same rendered text
        assert s.exabgp.actions == ["unchanged"]
    run(body())


def test_a_changed_peer_is_reestablished_by_exabgp_with_graceful_restart_as_usual(tmp_path):
    async def body():
        s, changed, _ = make(tmp_path)
        s.configure([P1, P2])
        s.announce(ann("10.42.1.0/24"))
        await asyncio.sleep(0)
        up(s, P1, ("10.42.2.0/24", "192.168.51.12"))
        up(s, P2)
        since2 = s.peer(P2.key).since
        s.configure([peer(1, hold_time=30), P2])
        assert s.exabgp.actions == ["reload"] and "hold-time 30;" in s.exabgp.config
        # ExaBGP closes and reopens that one session; its paths are kept stale meanwhile
        s.on_line(line(P1, "state", state="down", reason="graceful restarted negotiated, closing without "
                                                         "sending any notification"))
        assert s.rib.count(P1.key) == 1 and all(p.stale for p in s.rib.paths())
        s.exabgp.sent.clear()
        up(s, P1, ("10.42.2.0/24", "192.168.51.12"))
        assert not any(p.stale for p in s.rib.paths())
        assert s.exabgp.sent == ["neighbor 192.168.51.1 announce route 10.42.1.0/24 next-hop self",
                                 "neighbor 192.168.51.1 announce eor ipv4 unicast"]
        assert s.peer(P2.key).since == since2
    run(body())


def test_what_exabgp_still_holds_for_a_peer_that_was_down_is_withdrawn_when_it_returns(tmp_path):
    """ExaBGP keeps a peer's Adj-RIB-Out across its session flaps and sends it again on reconnect:
    a prefix given up while the session was down is withdrawn on the way back up."""
    async def body():
        s, _, _ = make(tmp_path)
        s.configure([P1])
        s.announce(ann("10.42.1.0/24", "10.42.7.0/24"))
        await asyncio.sleep(0)
        up(s, P1)
        s.on_line(line(P1, "state", state="down", reason="peer reset"))
        s.announce(ann("10.42.1.0/24"))
        exa = s.exabgp
        exa.sent.clear()
        up(s, P1)
        assert exa.sent == ["neighbor 192.168.51.1 withdraw route 10.42.7.0/24",
                            "neighbor 192.168.51.1 announce route 10.42.1.0/24 next-hop self",
                            "neighbor 192.168.51.1 announce eor ipv4 unicast"]
        # a new ExaBGP starts empty: nothing to withdraw there
        exa.on_exit(1)
        exa.sent.clear()
        up(s, P1)
        assert exa.sent == ["neighbor 192.168.51.1 announce route 10.42.1.0/24 next-hop self",
                            "neighbor 192.168.51.1 announce eor ipv4 unicast"]
        # a new API process: established peers are brought up to date in full
        s.announced = ann("10.42.8.0/24")  # as if the last commands never reached ExaBGP
        exa.sent.clear()
        exa.on_connect()
        assert exa.sent == ["neighbor 192.168.51.1 withdraw route 10.42.1.0/24",
                            "neighbor 192.168.51.1 announce route 10.42.8.0/24 next-hop self"]
    run(body())


class Counters:
    def __init__(self, value):
        self.value, self.reads = value, 0

    def __call__(self):
        self.reads += 1
        return self.value


def test_md5_peer_without_tcp_says_why_with_this_namespaces_counters(tmp_path):
    async def body():
        netstat = Counters({"TCPMD5Failure": 2, "TCPMD5Unexpected": 0, "TCPMD5NotFound": 1, "TCPMinTTLDrop": 0})
        s, _, _ = make(tmp_path, read_counters=netstat)
        s.hints.hint_after, s.hints.interval = 0.05, 0.05
        s.configure([peer(1, password="s3cret"), P2])
        await asyncio.sleep(0.02)
        assert s.peer(P1.key).reason == "" and netstat.reads == 0  # not before security_hint_after
        await asyncio.sleep(0.1)
        reason = s.peer("192.168.51.1").reason
        assert reason.startswith("no TCP connection for 0s; TCP MD5 is configured: a wrong or missing password")
        assert "TCPMD5Failure=2 TCPMD5Unexpected=0 TCPMD5NotFound=1" in reason and "s3cret" not in reason
        assert "TTL" not in reason and s.peer(P2.key).reason == ""  # P2 has neither MD5 nor GTSM
        # a TCP connection: neither MD5 nor GTSM stands in the way, whatever happens next
        s.on_line(line(P1, "state", state="connected"))
        assert s.peer(P1.key).reason == ""
        s.on_line(line(P1, "state", state="down", reason="notification received (2,2) bad peer AS"))
        await asyncio.sleep(0.01)
        assert s.peer(P1.key).reason == "notification received (2,2) bad peer AS"
        reads = netstat.reads
        s.on_line(line(P1, "state", state="up"))
        await asyncio.sleep(0.2)
        assert s.peer(P1.key).reason == "" and netstat.reads == reads  # nobody to explain: no read
        await s.stop()
    run(body())


def test_gtsm_peer_down_after_a_session_keeps_exabgps_reason_first(tmp_path):
    async def body():
        s, _, _ = make(tmp_path, read_counters=Counters(None))
        s.hints.hint_after, s.hints.interval = 0.05, 0.05
        p = peer(1, ttl_security=1)
        s.configure([p])
        await asyncio.sleep(0)
        up(s, p)
        s.on_line(line(p, "state", state="down", reason="hold timer expired"))
        await asyncio.sleep(0.15)
        assert s.peer(p.key).state == SessionState.DOWN
        assert s.peer(p.key).reason.startswith("hold timer expired; no TCP connection for 0s; TTL security (GTSM) is "
                                          "configured for 1 hop: segments arriving with a TTL below 255 are dropped")
        assert s.peer(p.key).reason.endswith("this namespace's /proc/net/netstat could not be read")
        await s.stop()
    run(body())


def test_a_changed_password_starts_the_quiet_time_again(tmp_path):
    async def body():
        clock = [100.0]
        s, _, _ = make(tmp_path, read_counters=Counters({}), clock=lambda: clock[0])
        s.configure([peer(1, password="old")])
        await asyncio.sleep(0)
        clock[0] = 130.0
        s._security_check()
        assert s.peer("192.168.51.1").reason.startswith("no TCP connection for 30s; TCP MD5")
        s.configure([peer(1, password="new")])
        clock[0] = 131.0
        s._security_check()
        assert s.peer("192.168.51.1").reason == ""  # 1 s after the change: too early to blame anything
        clock[0] = 140.0
        s._security_check()
        assert s.peer("192.168.51.1").reason.startswith("no TCP connection for 10s; TCP MD5")
        await s.stop()
    run(body())


def test_peers_are_reported_as_frozen_values_in_configuration_order(tmp_path):
    async def body():
        import dataclasses
        s, _, _ = make(tmp_path)
        s.configure([P2, P1])
        await asyncio.sleep(0)
        up(s, P1, ("10.42.2.0/24", "192.168.51.12"))
        before = s.peer(P1.key)
        assert [p.key for p in s.peers()] == [P2.key, P1.key] and s.peer("192.0.2.9") is None
        assert (before.state, before.paths, before.end_of_rib, before.asn) == (SessionState.UP, 1, {"ipv4"}, 65000)
        try:
            before.state = SessionState.DOWN
        except dataclasses.FrozenInstanceError:
            pass
        else:
            raise AssertionError("PeerStatus is not frozen")
        s.on_line(line(P1, "state", state="down", reason="peer reset"))
        after = s.peer(P1.key)
        assert before.state == SessionState.UP and (after.state, after.reason) == (SessionState.DOWN, "peer reset")
        assert s.ready is False and s.peer(P2.key).state == SessionState.IDLE
    run(body())


def test_both_route_sources_offer_what_the_protocol_names(tmp_path):
    """Sessions and direct mode's DirectSource are the two bgp.source.RouteSource implementations."""
    from bgp.source import RouteSource
    from speaker.direct import DirectSource
    wanted = {n for n in vars(RouteSource) if not n.startswith("_")}
    assert {"paths_for", "prefixes", "paths", "peers", "peer", "converged", "ready", "pid", "stop"} <= wanted
    s, _, _ = make(tmp_path)
    direct = DirectSource("node1", {}, ())
    for source in (s, direct):
        missing = sorted(n for n in wanted if not hasattr(source, n))
        assert not missing, f"{type(source).__name__} lacks {missing}"
    assert (direct.peers(), direct.peer("x"), direct.pid, direct.converged, direct.ready) == ((), None, None, False, False)
    direct.set_synced()
    assert direct.converged and direct.ready
