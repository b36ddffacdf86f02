import ipaddress as ia
import os
import subprocess
import sys

import pytest

from bgp import encode, render
from bgp.rib import Rib
from bgp.types import Announcement, ConfigError, Path, PeerConfig, UpdateEvent
from tests.conftest import FIXTURES

N = ia.ip_network
A = ia.ip_address


def ann(p):
    return Announcement(N(p))


def test_changes_withdraw_then_announce_only_the_peer_family():
    v4 = PeerConfig(address=A("192.168.50.1"), asn=65000, local_address=A("192.168.50.11"), local_asn=65001,
                    router_id=A("192.168.50.11"))
    v6 = PeerConfig(address=A("fd00:50::1"), asn=65000, local_address=A("fd00:50::11"), local_asn=65001,
                    router_id=A("192.168.50.11"), families=frozenset({"ipv6"}))
    old = [ann("10.42.1.0/24"), ann("fd00:42:0:1::/64")]
    new = [ann("10.42.9.0/24"), ann("fd00:42:0:1::/64")]
    prefixes = {a.prefix for a in old + new}
    now = {a.prefix: a for a in new}
    for cfg, cmds in ((v4, ["neighbor 192.168.50.1 withdraw route 10.42.1.0/24",
                            "neighbor 192.168.50.1 announce route 10.42.9.0/24 next-hop self"]), (v6, [])):
        wanted = {p: encode.for_peer(cfg, now.get(p)) for p in prefixes}
        assert encode.changes(str(cfg.address), encode.view(cfg, old), wanted) == cmds
    assert encode.eor("fd00:50::1", "ipv6") == "neighbor fd00:50::1 announce eor ipv6 unicast"


def path(peer, prefix, nh, stale=False):
    return Path(peer, N(prefix), A(nh), stale=stale)


def test_rib_apply_withdraw_reports_the_prefixes_it_changed():
    rib = Rib()
    p2 = N("10.42.2.0/24")
    assert rib.apply(UpdateEvent("p", announced=(path("p", "10.42.2.0/24", "192.168.50.12"),))) == {p2}
    assert rib.apply(UpdateEvent("p", announced=(path("p", "10.42.2.0/24", "192.168.50.12"),))) == set()
    assert rib.apply(UpdateEvent("q", announced=(path("q", "10.42.2.0/24", "192.168.50.13"),))) == {p2}
    assert rib.count() == 2 and sorted(str(p.next_hop) for p in rib.paths_for(p2)) == ["192.168.50.12", "192.168.50.13"]
    assert rib.apply(UpdateEvent("p", withdrawn=(p2,))) == {p2}
    assert rib.apply(UpdateEvent("p", withdrawn=(p2,))) == set()
    assert [str(p.peer) for p in rib.paths_for(p2)] == ["q"]
    assert rib.apply(UpdateEvent("q", withdrawn=(p2,))) == {p2}
    assert rib.count() == 0 and list(rib.prefixes()) == [] and list(rib.paths_for(p2)) == []


def test_rib_peer_down_drops_or_keeps_stale_then_sweeps():
    rib = Rib()
    rib.apply(UpdateEvent("a", announced=(path("a", "10.42.2.0/24", "1.1.1.2"), path("a", "10.42.3.0/24", "1.1.1.3"))))
    rib.apply(UpdateEvent("b", announced=(path("b", "10.42.2.0/24", "1.1.1.2"),)))
    assert rib.peer_down("b", keep_stale=False) == {N("10.42.2.0/24")}
    assert rib.count("b") == 0
    assert rib.peer_down("a", keep_stale=True) == set()  # stale paths still route: no kernel change
    assert all(p.stale for p in rib.paths()) and all(p.stale for p in rib.paths_for(N("10.42.3.0/24")))
    rib.apply(UpdateEvent("a", announced=(path("a", "10.42.2.0/24", "1.1.1.2"),)))  # refreshed
    assert rib.sweep_stale("a") == {N("10.42.3.0/24")}
    assert [(str(p.prefix), p.stale) for p in rib.paths()] == [("10.42.2.0/24", False)]


def peer(addr, local, fams=frozenset({"ipv4"}), **kw):
    return PeerConfig(address=A(addr), asn=65000, local_address=A(local), local_asn=65001,
                      router_id=A("192.168.50.11"), families=fams, **kw)


PEERS = [peer("fd00:50::1", "fd00:50::11", frozenset({"ipv6"}), password="s3cret", hold_time=3),
         peer("192.168.50.1", "192.168.50.11")]
API = ["/usr/bin/python3", "-m", "bgp.api_child", "/run/podbgp/api.sock"]
GOLDEN = os.path.join(FIXTURES, "golden", "exabgp-two-peers.conf")


def test_render_matches_golden_file():
    text = render.render(PEERS, API)
    if os.environ.get("PODBGP_UPDATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            f.write(text)
    with open(GOLDEN) as f:
        assert text == f.read()
    assert render.render(list(reversed(PEERS)), API) == text  # sorted, deterministic


def test_real_exabgp_validates_rendered_config(tmp_path):
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render.render(PEERS + [peer("192.168.60.1", "192.168.60.11", graceful_restart=0, multihop=3)], API))
    exabgp = os.path.join(os.path.dirname(sys.executable), "exabgp")
    ok = subprocess.run([exabgp, "validate", "-r", str(conf)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    conf.write_text(render.render(PEERS, API).replace("hold-time 3;", "hold-time banana;"))
    bad = subprocess.run([exabgp, "validate", "-r", str(conf)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


def test_render_refuses_bad_input():
    with pytest.raises(ConfigError):
        render.render([], API)
    with pytest.raises(ConfigError):
        render.render([peer("192.168.50.1", "fd00:50::11")], API)
    # any character goes into a password (it is rendered in base64); only its length is limited
    assert 'md5-password "YSI7Yn0=";' in render.render([peer("192.168.50.1", "192.168.50.11", password='a";b}')], API)
    with pytest.raises(ConfigError) as bad:
        render.render([peer("192.168.50.1", "192.168.50.11", password="x" * 81)], API)
    assert "x" * 8 not in str(bad.value)
