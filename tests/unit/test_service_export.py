"""Service routes on the BGP side: communities and LOCAL_PREF in ExaBGP 5's command syntax (checked
with ExaBGP's own parser), export only to peers with export_services (mesh members: off unless
meshExportServices), a flip of export_services that touches no session and no configuration,
Sessions.update() as exact as announce() and with work in proportion to the change, and the
import side refusing learned paths inside the Service address ranges."""
import asyncio
import ipaddress as ia
import random

import pytest

from bgp import encode, render
from bgp.sessions import Sessions
from bgp.types import Announcement, Path, PeerConfig, SessionState
from reconciler.loop import Reconciler
from reconciler.policy import Policy, check
from reconciler.types import Reason
from speaker import config as cfgmod
from speaker.config import ConfigError
from speaker.nodes import NodeInfo
from speaker.peers import plan
from tests.unit.test_bgp_sessions import FakeExaBGP, line, up

A, N = ia.ip_address, ia.ip_network
LOCAL_AS = 65001


def peer(addr, asn=65000, families=("ipv4",), **kw):
    a = A(addr)
    local = A("192.168.51.11") if a.version == 4 else A("fd00:51::11")
    return PeerConfig(address=a, asn=asn, local_address=local, local_asn=LOCAL_AS, router_id=A("192.168.50.11"),
                      families=frozenset(families), **kw)


EBGP = peer("192.168.51.1")  # eBGP, exports Services (the default)
IBGP = peer("192.168.52.1", asn=LOCAL_AS, families=("ipv4", "ipv6"))  # iBGP, both families
MESH = peer("192.168.53.1", asn=LOCAL_AS, export_services=False)  # a mesh member by default


def svc(prefix, communities=(), local_pref=None, service=True):
    return Announcement(N(prefix), communities=tuple(communities), local_pref=local_pref, service=service)


def pod(prefix):
    return Announcement(N(prefix))


def run(coro):
    asyncio.run(coro)


async def make(peers, *, announced=frozenset()):
    """Sessions with a fake ExaBGP, every peer up, the commands so far cleared."""
    s = Sessions("/nonexistent", "exabgp", 120, 60, lambda _: None, lambda _: None, factory=FakeExaBGP)
    s.configure(list(peers))
    s.announce(frozenset(announced))
    await asyncio.sleep(0)  # ExaBGP started
    for p in peers:
        up(s, p)
    s.exabgp.sent.clear()
    return s


class Adj:
    """Each peer's Adj-RIB-Out as ExaBGP would hold it after the commands: prefix -> attribute text."""

    def __init__(self):
        self.rib = {}

    def apply(self, cmds):
        for c in cmds:
            words = c.split()
            peer_, verb, prefix = words[1], words[2], words[4]
            if words[3] != "route":
                continue  # eor
            held = self.rib.setdefault(peer_, {})
            if verb == "announce":
                held[prefix] = " ".join(words[5:])
            else:
                held.pop(prefix, None)


def expected(peers, announced):
    """What each peer should hold, by the rules restated here (not through encode.for_peer)."""
    out = {}
    for p in peers:
        held = {}
        for a in announced:
            fam = "ipv4" if a.prefix.version == 4 else "ipv6"
            if fam not in p.families or (a.service and not p.export_services):
                continue
            attrs = "next-hop self"
            if a.communities:
                attrs += " community [" + " ".join(sorted(a.communities, key=lambda c: tuple(map(int, c.split(":"))))) + "]"
            if a.local_pref is not None and p.asn == p.local_asn:
                attrs += f" local-preference {a.local_pref}"
            held[str(a.prefix)] = attrs
        out[p.key] = held
    return out


# ---- the commands ---------------------------------------------------------------------------

def test_announce_carries_sorted_communities_and_local_preference():
    a = svc("203.0.113.7/32", ["65000:200", "65000:100", "7:3"], 200)
    assert encode.announce("192.168.52.1", a) == (
        "neighbor 192.168.52.1 announce route 203.0.113.7/32 next-hop self community [7:3 65000:100 65000:200] "
        "local-preference 200")
    assert encode.announce("192.168.52.1", svc("fd00:113::7/128", ["65000:100"])) == (
        "neighbor 192.168.52.1 announce route fd00:113::7/128 next-hop self community [65000:100]")
    assert encode.announce("192.168.52.1", pod("10.42.1.0/24")) == (
        "neighbor 192.168.52.1 announce route 10.42.1.0/24 next-hop self")


def test_local_preference_goes_to_ibgp_peers_only_and_services_to_exporting_peers_only():
    a = svc("203.0.113.7/32", ["65000:100"], 200)
    assert encode.for_peer(IBGP, a) == a
    assert encode.for_peer(EBGP, a) == svc("203.0.113.7/32", ["65000:100"])  # communities kept
    assert encode.for_peer(MESH, a) is None
    assert encode.for_peer(MESH, pod("10.42.1.0/24")) == pod("10.42.1.0/24")  # PodCIDRs go everywhere
    assert encode.for_peer(EBGP, svc("fd00:113::7/128")) is None  # not its family


def test_exabgp_5_parses_the_commands_with_every_attribute():
    """The text after `neighbor X ` through ExaBGP's own API route parser (the version pinned)."""
    exa_api = pytest.importorskip("exabgp.reactor.api")
    from exabgp.configuration.configuration import Configuration
    from exabgp.environment import getenv
    from exabgp.logger import option
    from exabgp.version import release
    assert release.startswith("5.0.")
    option.setup(getenv())
    api = exa_api.API.__new__(exa_api.API)
    api.configuration = Configuration([])
    for a, want in ((svc("203.0.113.7/32", ["65000:200", "65000:100"], 200),
                     "203.0.113.7/32 next-hop self local-preference 200 community [ 65000:100 65000:200 ]"),
                    (svc("fd00:113::7/128", ["65000:100"]), "fd00:113::7/128 next-hop self community 65000:100"),
                    (svc("198.51.100.9/32", (), 50), "198.51.100.9/32 next-hop self local-preference 50")):
        cmd = encode.announce("192.168.52.1", a).split(" ", 2)[2]
        changes = api.api_route(cmd)
        assert [c.extensive() for c in changes] == [want], cmd


def test_render_ignores_export_services():
    api = ["/bin/true"]
    for p in (EBGP, IBGP, MESH):
        on = PeerConfig(**{f: getattr(p, f) for f in PeerConfig.__slots__ if f != "export_services"})
        off = PeerConfig(**{f: getattr(p, f) for f in PeerConfig.__slots__ if f != "export_services"},
                         export_services=False)
        assert render.render([on], api) == render.render([off], api)


# ---- export per peer ----------------------------------------------------------------------------

def test_service_routes_go_only_to_exporting_peers_with_their_attributes():
    async def body():
        s = await make([EBGP, IBGP, MESH], announced={pod("10.42.1.0/24")})
        s.update([svc("203.0.113.7/32", ["65000:100"], 200), svc("fd00:113::7/128")], [])
        assert s.exabgp.sent == [
            "neighbor 192.168.51.1 announce route 203.0.113.7/32 next-hop self community [65000:100]",
            "neighbor 192.168.52.1 announce route 203.0.113.7/32 next-hop self community [65000:100] "
            "local-preference 200",
            "neighbor 192.168.52.1 announce route fd00:113::7/128 next-hop self",
        ]
        # other attributes for the same prefix: announced again (implicit withdraw), no withdraw
        s.exabgp.sent.clear()
        s.update([svc("203.0.113.7/32", ["65000:100"], 300)], [svc("203.0.113.7/32", ["65000:100"], 200)])
        assert s.exabgp.sent == [  # the eBGP peer's view did not change: nothing for it
            "neighbor 192.168.52.1 announce route 203.0.113.7/32 next-hop self community [65000:100] "
            "local-preference 300"]
        s.exabgp.sent.clear()
        s.update([], [svc("203.0.113.7/32", ["65000:100"], 300), svc("fd00:113::7/128")])
        assert s.exabgp.sent == ["neighbor 192.168.51.1 withdraw route 203.0.113.7/32",
                                 "neighbor 192.168.52.1 withdraw route 203.0.113.7/32",
                                 "neighbor 192.168.52.1 withdraw route fd00:113::7/128"]
        s.exabgp.sent.clear()
        s.update([], [svc("10.42.1.0/24")])  # not what is announced for that prefix: ignored
        assert s.exabgp.sent == [] and s.announced == {pod("10.42.1.0/24")}
    run(body())


def cfg(**kw):
    raw = {"nodeName": "node1", "asn": 64512, "clusterCIDRs": ["10.42.0.0/16"], **kw}
    return cfgmod.parse(raw)


def info(name, addr):
    return NodeInfo(name=name, pod_cidrs=(N(f"10.42.{name[-1]}.0/24"),), addresses=(A(addr),), annotations=(),
                    labels=())


def test_peers_take_export_services_from_config_annotation_and_mesh_default():
    c = cfg(mesh=True, peers=[{"address": "192.168.50.1", "asn": 65000},
                              {"address": "192.168.50.2", "asn": 65000, "exportServices": False}])
    me = info("node1", "192.168.50.11")
    me = NodeInfo(name=me.name, pod_cidrs=me.pod_cidrs, addresses=me.addresses, labels=(), annotations=(
        ("podbgp.io/peers", '[{address: 192.168.50.3, asn: 65003, exportServices: "false"}, '
                            '{address: 192.168.50.4, asn: 65004}]'),))
    mesh = {"node1": (A("192.168.50.11"),), "node2": (A("192.168.50.12"),)}
    got = {str(p.address): p.export_services for p in plan(c, me, mesh, lambda k: None).peers}
    assert got == {"192.168.50.1": True, "192.168.50.2": False, "192.168.50.3": False, "192.168.50.4": True,
                   "192.168.50.12": False}  # the mesh member: meshExportServices, default false
    c = cfg(mesh=True, meshExportServices=True, peers=[])
    assert [p.export_services for p in plan(c, me, mesh, lambda k: None).peers if p.listen] == [True]


def test_export_services_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"peers\[0\]\.exportServices: 'maybe' is not true or false"):
        cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "exportServices": "maybe"}])


# ---- flipping export_services ---------------------------------------------------------------

def test_flipping_export_services_announces_or_withdraws_without_touching_exabgp_config():
    async def body():
        routes = {pod("10.42.1.0/24"), svc("203.0.113.7/32", ["65000:100"]), svc("198.51.100.9/32")}
        s = await make([EBGP, MESH], announced=routes)
        exa, since = s.exabgp, {k: s.peer(k).since for k in (EBGP.key, MESH.key)}
        config = exa.config
        mesh_on = PeerConfig(**{f: getattr(MESH, f) for f in PeerConfig.__slots__ if f != "export_services"})
        s.configure([EBGP, mesh_on])
        assert exa.sent == ["neighbor 192.168.53.1 announce route 198.51.100.9/32 next-hop self",
                            "neighbor 192.168.53.1 announce route 203.0.113.7/32 next-hop self community [65000:100]"]
        ebgp_off = PeerConfig(**{f: getattr(EBGP, f) for f in PeerConfig.__slots__ if f != "export_services"},
                              export_services=False)
        exa.sent.clear()
        s.configure([ebgp_off, mesh_on])
        assert exa.sent == ["neighbor 192.168.51.1 withdraw route 198.51.100.9/32",
                            "neighbor 192.168.51.1 withdraw route 203.0.113.7/32"]
        assert exa.actions == [] and exa.config == config  # no reconfigure, no reload, no restart
        assert s.configured == [ebgp_off, mesh_on]
        assert all(s.peer(k).state == SessionState.UP and s.peer(k).since == since[k] for k in since)
        # what each peer holds is noted: a session flap brings back exactly that
        exa.sent.clear()
        s.on_line(line(ebgp_off, "state", state="down", reason="peer reset"))
        up(s, ebgp_off)
        assert exa.sent == ["neighbor 192.168.51.1 announce route 10.42.1.0/24 next-hop self",
                            "neighbor 192.168.51.1 announce eor ipv4 unicast"]
    run(body())


def test_a_flip_together_with_a_session_change_reloads_only_for_the_session_change():
    async def body():
        s = await make([EBGP, MESH], announced={svc("203.0.113.7/32")})
        exa = s.exabgp
        ebgp_off = PeerConfig(**{f: getattr(EBGP, f) for f in PeerConfig.__slots__ if f != "export_services"},
                              export_services=False)
        mesh_30 = PeerConfig(**{f: getattr(MESH, f) for f in PeerConfig.__slots__ if f != "hold_time"}, hold_time=30)
        s.configure([ebgp_off, mesh_30])
        assert exa.actions == ["reload"] and "hold-time 30;" in exa.config
        assert exa.sent == ["neighbor 192.168.51.1 withdraw route 203.0.113.7/32"]
        assert s.peer(EBGP.key).state == SessionState.UP
    run(body())


# ---- update() against announce() ------------------------------------------------------------------

PREFIXES = [f"203.0.113.{i}/32" for i in range(8)] + [f"fd00:113::{i}/128" for i in range(4)] + ["10.42.1.0/24"]
VARIANTS = [dict(), dict(communities=["65000:100"]), dict(communities=["65000:200", "65000:100"], local_pref=200),
            dict(local_pref=50)]


def random_ann(rnd, prefix):
    return svc(prefix, service=rnd.random() < 0.8, **rnd.choice(VARIANTS))


def held(s):
    return {k: dict(rec.sent) for k, rec in s._peers.items()}


@pytest.mark.parametrize("seed", range(25))
def test_update_leaves_each_peer_exactly_as_announce_does(seed):
    """Random adds, removes and attribute changes, with session flaps, API reconnects and export
    flips between them: update(added, removed) and announce(full) end with the same per-peer
    `sent`, and the commands of each leave every peer holding exactly its share."""
    async def body():
        rnd = random.Random(seed)
        peers = [EBGP, IBGP, MESH]
        inc, full = await make(peers), await make(peers)
        adj = {id(inc): Adj(), id(full): Adj()}
        now = {}
        for step in range(40):
            added, removed = [], []
            for prefix in rnd.sample(PREFIXES, rnd.randint(1, 5)):
                old = now.get(prefix)
                if old is not None and rnd.random() < 0.4:
                    removed.append(now.pop(prefix))
                    continue
                new = random_ann(rnd, prefix)
                if old is not None:
                    removed.append(old)
                added.append(new)
                now[prefix] = new
            rnd.shuffle(removed)
            inc.update(added, removed)
            full.announce(frozenset(now.values()))
            event = rnd.random()
            for s in (inc, full):
                if event < 0.1:  # a session flap: ExaBGP keeps what it holds and sends it again
                    p = random.Random(step).choice(peers)
                    s.on_line(line(p, "state", state="down", reason="peer reset"))
                    up(s, p)
                elif event < 0.15:
                    s.exabgp.on_connect()
                elif event < 0.25:
                    flip = random.Random(step).choice(range(len(peers)))
                    cfgs = s.configured
                    c = cfgs[flip]
                    cfgs[flip] = PeerConfig(**{f: getattr(c, f) for f in PeerConfig.__slots__
                                               if f != "export_services"}, export_services=not c.export_services)
                    s.configure(cfgs)
                adj[id(s)].apply(s.exabgp.sent)
                s.exabgp.sent.clear()
            assert held(inc) == held(full)
            want = expected(inc.configured, now.values())
            for s in (inc, full):
                assert s.announced == frozenset(now.values())
                assert {k: v for k, v in adj[id(s)].rib.items() if v} == {k: v for k, v in want.items() if v}
                assert {k: {str(p): " ".join(encode.announce(k, a).split()[5:]) for p, a in v.items()}
                        for k, v in held(s).items()} == want
            assert inc.exabgp.actions == [] and full.exabgp.actions == []  # flips reload nothing
    run(body())


def test_each_peer_has_its_own_sent_record():
    async def body():
        s = await make([EBGP, IBGP], announced={pod("10.42.1.0/24")})
        a, b = (s._peers[p.key].sent for p in (EBGP, IBGP))
        assert a == b and a is not b
    run(body())


# ---- End-of-RIB held until the Services are listed -------------------------------------------

def test_end_of_rib_waits_for_release_when_held():
    async def body():
        s = Sessions("/nonexistent", "exabgp", 120, 60, lambda _: None, lambda _: None, factory=FakeExaBGP,
                     hold_eor=True)
        s.configure([EBGP, IBGP])
        s.announce(frozenset({pod("10.42.1.0/24")}))
        await asyncio.sleep(0)
        up(s, EBGP)
        exa = s.exabgp
        assert exa.sent == ["neighbor 192.168.51.1 announce route 10.42.1.0/24 next-hop self"]  # no EoR yet
        exa.sent.clear()
        s.update([svc("203.0.113.7/32")], [])
        s.release_eor()
        assert exa.sent == ["neighbor 192.168.51.1 announce route 203.0.113.7/32 next-hop self",
                            "neighbor 192.168.51.1 announce eor ipv4 unicast"]  # the peer still down: nothing
        exa.sent.clear()
        s.release_eor()
        up(s, IBGP)  # after the release: at once
        assert exa.sent[-2:] == ["neighbor 192.168.52.1 announce eor ipv4 unicast",
                                 "neighbor 192.168.52.1 announce eor ipv6 unicast"]
    run(body())


# ---- resync after an API reconnect ------------------------------------------------------------

def test_commands_lost_while_the_api_is_away_are_made_good_on_reconnect():
    async def body():
        s = await make([EBGP, IBGP, MESH], announced={pod("10.42.1.0/24"), svc("203.0.113.1/32")})
        exa = s.exabgp
        exa.send = lambda lines: False  # the API process is gone: nothing reaches ExaBGP
        s.update([svc("203.0.113.2/32", ["65000:100"], 200)], [svc("203.0.113.1/32")])
        assert {k: sorted(map(str, v)) for k, v in held(s).items()} == {
            EBGP.key: ["10.42.1.0/24", "203.0.113.1/32"], IBGP.key: ["10.42.1.0/24", "203.0.113.1/32"],
            MESH.key: ["10.42.1.0/24"]}  # what ExaBGP was last told, not what was asked
        del exa.send
        exa.on_connect()
        assert exa.sent == [
            "neighbor 192.168.51.1 withdraw route 203.0.113.1/32",
            "neighbor 192.168.51.1 announce route 10.42.1.0/24 next-hop self",
            "neighbor 192.168.51.1 announce route 203.0.113.2/32 next-hop self community [65000:100]",
            "neighbor 192.168.52.1 withdraw route 203.0.113.1/32",
            "neighbor 192.168.52.1 announce route 10.42.1.0/24 next-hop self",
            "neighbor 192.168.52.1 announce route 203.0.113.2/32 next-hop self community [65000:100] "
            "local-preference 200",
            "neighbor 192.168.53.1 announce route 10.42.1.0/24 next-hop self",
        ]
        assert held(s) == {p.key: encode.view(p, s.announced) for p in (EBGP, IBGP, MESH)}
    run(body())


# ---- the work of update() does not grow with what is announced ----------------------------------

def test_update_work_is_proportional_to_the_change_not_to_what_is_announced(monkeypatch):
    async def body():
        many = {svc(f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}/32") for i in range(10_000)}
        s = await make([EBGP, IBGP, MESH], announced=many | {pod("10.42.1.0/24")})
        assert len(s._peers[EBGP.key].sent) == 10_001 and len(s._peers[MESH.key].sent) == 1
        calls = []
        real = encode.for_peer
        monkeypatch.setattr(encode, "for_peer", lambda cfg, a: calls.append(1) or real(cfg, a))
        for name in ("view", "resync"):  # the whole-set paths: not taken by update()
            monkeypatch.setattr(encode, name, lambda *a, **k: pytest.fail("a whole-set path in update()"))
        monkeypatch.setattr(Sessions, "announced", property(lambda self: pytest.fail("the whole set read")))
        old = svc("10.200.0.7/32")
        for i in range(100):
            new = svc("10.200.0.7/32", [f"65000:{i}"])
            s.update([new], [old])
            old = new
        assert len(calls) == 100 * 3  # one prefix, three peers, each time
        assert len(s.exabgp.sent) == 100 * 2  # the two exporting peers, one announce each
        s.update([svc("198.51.100.1/32")], [old])
        assert len(calls) == 300 + 2 * 3 and len(s.exabgp.sent) == 200 + 4
    run(body())


# ---- the import side ------------------------------------------------------------------------

def test_learned_paths_inside_or_over_a_service_range_are_refused_with_their_own_reason():
    pol = Policy(own=frozenset(), cluster=frozenset({N("10.42.0.0/16")}), service=frozenset({N("10.43.0.0/16")}),
                 connected=frozenset(), owners={}, service_ranges=frozenset({N("203.0.113.0/24"), N("fd00:113::/112")}))
    hop = A("192.168.50.12")
    for prefix in ("203.0.113.7/32", "203.0.113.0/24", "203.0.112.0/23", "fd00:113::5/128"):
        nh = hop if N(prefix).version == 4 else A("fd00:50::12")
        assert check(pol, Path("tor", N(prefix), nh)) is Reason.SERVICE_ADDRESS, prefix
    assert check(pol, Path("tor", N("203.0.114.0/24"), hop)) is Reason.OUTSIDE_CLUSTER
    assert check(pol, Path("tor", N("10.43.1.0/24"), hop)) is Reason.SERVICE_RANGE
    assert Reason.SERVICE_ADDRESS.value == "service-address"
    rec = Reconciler(None, None, {}, frozenset(), [N("10.42.0.0/16")], [], service_ranges=[N("203.0.113.0/24")])
    assert rec.policy.service_ranges == frozenset({N("203.0.113.0/24")})
    assert Reconciler(None, None, {}, frozenset(), [], []).policy.service_ranges == frozenset()


def test_two_announcements_of_one_prefix_resolve_the_same_whatever_the_order():
    async def body():
        a, b = svc("203.0.113.7/32", ["65000:100"]), svc("203.0.113.7/32", ["65000:200"])
        s1 = await make([EBGP])
        s1.announce(frozenset({a, b}))
        s2 = await make([EBGP])
        s2.update([b, a], [])
        s3 = await make([EBGP])
        s3.update([a, b], [])
        s2.announce(frozenset({b, a}))
        s3.announce(frozenset({b, a}))
        assert s1.announced == s2.announced == s3.announced and len(s1.announced) == 1
        assert held(s1) == held(s2) == held(s3)
    run(body())
