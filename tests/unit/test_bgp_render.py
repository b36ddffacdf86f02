"""The session security and timer keywords of the rendered ExaBGP configuration: golden file, the
real ExaBGP's parser reading them back, and the inputs refused with a one-line reason."""
import ipaddress as ia
import json
import os
import subprocess
import sys

import pytest

from bgp import render
from bgp.types import ConfigError, PeerConfig
from tests.conftest import FIXTURES

A = ia.ip_address
API = ["/usr/bin/python3", "-m", "bgp.api_child", "/run/podbgp/api.sock"]
GOLDEN = os.path.join(FIXTURES, "golden", "exabgp-security-timers.conf")
SECRET = 'p@ss w0rd;"{}#\\'  # every character ExaBGP's parser would stumble on


def peer(addr, local, **kw):
    return PeerConfig(address=A(addr), asn=65000, local_address=A(local), local_asn=65001,
                      router_id=A("192.168.50.11"), **kw)


PEERS = [
    # TCP MD5 + GTSM for a directly connected ToR on another port, hold 30 s (keepalive 10 s)
    peer("192.168.50.1", "192.168.50.11", password=SECRET, ttl_security=1, port=1179, hold_time=30, keepalive=10),
    # eBGP multihop 3, no hold time (no keepalives), no graceful restart
    peer("192.168.60.1", "192.168.60.11", multihop=3, hold_time=0, graceful_restart=0),
    # IPv6, GTSM for a peer up to 2 hops away
    peer("fd00:50::1", "fd00:50::11", families=frozenset({"ipv6"}), ttl_security=2),
]

# what ExaBGP 5 makes of them: its own parser, in a child so that its global environment stays there
READ_BACK = r"""
import json, sys
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.util.psk import decode_base64
log.init(getenv())
from exabgp.configuration.configuration import Configuration
conf = Configuration([sys.argv[1]])
if not conf.reload():
    sys.exit(f"refused: {conf.error}")
out = {}
for n in conf.neighbors.values():
    key = n["md5-password"]
    out[str(n["peer-address"].top())] = {
        "md5": decode_base64(key).decode() if key and n["md5-base64"] else key,
        "outgoing-ttl": n["outgoing-ttl"], "incoming-ttl": n["incoming-ttl"], "connect": n["connect"],
        "hold-time": int(n["hold-time"]), "keepalive": int(n["hold-time"].keepalive()),
        "graceful-restart": n["capability"]["graceful-restart"],
    }
print(json.dumps(out))
"""


def test_render_security_and_timers_matches_golden_file():
    text = render.render(PEERS, API)
    if os.environ.get("PODBGP_UPDATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            f.write(text)
    with open(GOLDEN) as f:
        assert text == f.read()
    assert SECRET not in text  # base64 only
    assert render.render(list(reversed(PEERS)), API) == text


def test_real_exabgp_reads_back_what_was_meant(tmp_path):
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render.render(PEERS, API))
    exabgp = os.path.join(os.path.dirname(sys.executable), "exabgp")
    ok = subprocess.run([exabgp, "validate", "-r", str(conf)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    done = subprocess.run([sys.executable, "-c", READ_BACK, str(conf)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["192.168.50.1"] == {"md5": SECRET, "outgoing-ttl": 255, "incoming-ttl": 255, "connect": 1179,
                                   "hold-time": 30, "keepalive": 10, "graceful-restart": 120}
    assert got["192.168.60.1"] == {"md5": None, "outgoing-ttl": 3, "incoming-ttl": None, "connect": 0,
                                   "hold-time": 0, "keepalive": 0, "graceful-restart": False}
    assert got["fd00:50::1"] == {"md5": None, "outgoing-ttl": 255, "incoming-ttl": 254, "connect": 0,
                                 "hold-time": 9, "keepalive": 3, "graceful-restart": 120}


@pytest.mark.parametrize("kw, words", [
    (dict(multihop=2, ttl_security=1), "multihop and ttl security exclude each other"),
    (dict(ttl_security=0), "ttl security 0 must be 1..254 hops"),
    (dict(ttl_security=255), "ttl security 255 must be 1..254 hops"),
    (dict(multihop=256), "multihop 256 must be 1..255"),
    (dict(hold_time=2), "hold time 2 must be 0 or 3..65535"),
    (dict(hold_time=9, keepalive=1), "keepalive 1s cannot be set: ExaBGP sends a keepalive every negotiated "
                                     "hold time / 3 (3s with hold time 9s)"),
    (dict(port=0), "port 0 is not a TCP port"),
    (dict(password=""), "the TCP MD5 password must be 1..80 bytes (it has 0)"),
    (dict(password="é" * 41), "the TCP MD5 password must be 1..80 bytes (it has 82)"),
])
def test_render_refuses_what_exabgp_cannot_do_in_one_line(kw, words):
    with pytest.raises(ConfigError) as bad:
        render.render([peer("192.168.50.1", "192.168.50.11", **kw)], API)
    assert str(bad.value).startswith("peer 192.168.50.1: ") and words in str(bad.value)
    assert "\n" not in str(bad.value)
    with pytest.raises(ConfigError) as one:  # the same, for one peer at a time
        render.check(peer("192.168.50.1", "192.168.50.11", **kw))
    assert str(one.value) == str(bad.value)


def test_the_password_stays_out_of_repr_and_errors():
    p = peer("192.168.50.1", "192.168.50.11", password="hunter2-" * 11)
    assert "hunter2" not in repr(p)
    with pytest.raises(ConfigError) as bad:
        render.render([p], API)
    assert "hunter2" not in str(bad.value)


def test_check_passes_what_render_takes():
    for p in PEERS:
        render.check(p)


def test_keepalive_of_a_third_of_the_hold_time_is_what_exabgp_does_anyway():
    text = render.render([peer("192.168.50.1", "192.168.50.11", hold_time=9, keepalive=3)], API)
    assert "hold-time 9;" in text and "keepalive" not in text


def test_global_part_is_the_process_section_only():
    text = render.render(PEERS, API)
    assert render.global_part(text) == render.global_part(render.render(PEERS[:1], API))
    assert "neighbor" not in render.global_part(text) and "process podbgp" in render.global_part(text)
    assert render.global_part(text) != render.global_part(render.render(PEERS, API[:-1] + ["/other.sock"]))


def test_a_listening_peer_gets_our_port_bound_on_its_local_address(tmp_path):
    text = render.render([peer("192.168.50.12", "192.168.50.11", listen=True), peer("192.168.50.13", "192.168.50.11")], API)
    blocks = {b.split()[0]: b for b in text.split("\nneighbor ")[1:]}
    assert "listen 179;" in blocks["192.168.50.12"] and "listen" not in blocks["192.168.50.13"]
    conf = tmp_path / "exabgp.conf"
    conf.write_text(text)
    exabgp = os.path.join(os.path.dirname(sys.executable), "exabgp")
    ok = subprocess.run([exabgp, "validate", "-r", str(conf)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
