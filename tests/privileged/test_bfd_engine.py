"""podbgp's BFD engine (bgp.bfd.Engine running bgp.bfd_engine) against FRR's bfdd: two namespaces
over a veth, our engine in one (run as root with no capability at all, as the DaemonSet's speaker
could), FRR 8.4's bfdd alone in the other, 300 ms x 3 over IPv4 and IPv6. Up on both sides; the
peer's bfdd stopped -> down within a second; continued -> up; no false down while the consuming
loop is blocked for 2 s; our engine stopped -> FRR hears AdminDown, no failure."""
import asyncio
import ctypes
import ipaddress as ia
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from bgp import bfd

A = ia.ip_address
BFDD = "/usr/lib/frr/bfdd"
NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def in_netns(ns, fn):
    """Run fn with this thread in namespace ns (a child started there inherits it), then come back."""
    here = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        setns(fd)
        return fn()
    finally:
        setns(here)
        os.close(fd)
        os.close(here)


FRR_CONF = """hostname peer
bfd
 peer 10.99.0.1 local-address 10.99.0.2
  receive-interval 300
  transmit-interval 300
  detect-multiplier 3
 !
 peer fd00:99::1 local-address fd00:99::2
  receive-interval 300
  transmit-interval 300
  detect-multiplier 3
 !
!
"""


@pytest.fixture
def pair():
    if not os.path.exists(BFDD):
        pytest.skip("FRR's bfdd is not installed")
    tag = uuid.uuid4().hex[:6]
    a, b = f"pbfa{tag}", f"pbfb{tag}"
    made, engines, procs = [], [], []
    base = tempfile.mkdtemp(prefix="pbfd")
    os.chmod(base, 0o755)
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, n in ((a, "va", 1), (b, "vb", 2)):
            sh("ip", "-n", ns, "addr", "add", f"10.99.0.{n}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"fd00:99::{n}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        frr = os.path.join(base, "frr")
        os.makedirs(frr)
        with open(os.path.join(frr, "bfdd.conf"), "w") as f:
            f.write(FRR_CONF)
        shutil.chown(frr, "frr", "frr")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", b, BFDD, "-u", "frr", "-g", "frr", "-f", os.path.join(frr, "bfdd.conf"),
             "-i", os.path.join(frr, "bfdd.pid"), "--vty_socket", frr, "-z", os.path.join(frr, "zserv.api"),
             "--bfdctl", os.path.join(frr, "bfdd.sock"), "--log", f"file:{frr}/bfdd.log", "-A", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        yield a, b, frr, proc, engines
    finally:
        for e in engines:
            e.close()
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def frr_peers(b, frr) -> dict:
    out = subprocess.run(["ip", "netns", "exec", b, "vtysh", "--vty_socket", frr, "--config_dir", frr, "-d", "bfdd",
                          "-c", "show bfd peers json"], capture_output=True, text=True).stdout
    try:
        return {p["peer"]: p for p in json.loads(out)}
    except ValueError:
        return {}


def test_our_engine_against_frr_bfdd(pair):
    a, b, frr, frr_proc, engines = pair
    loop = asyncio.new_event_loop()
    seen = []

    def deliver(fn, ev):
        loop.call_soon_threadsafe(fn, ev)

    ours = bfd.Engine(lambda ev: seen.append((time.monotonic(), ev)), deliver,
                      argv=[*NO_CAPS, sys.executable, "-m", "bgp.bfd_engine"])
    engines.append(ours)
    in_netns(a, ours.start)
    for n, m in (("10.99.0.2", "10.99.0.1"), ("fd00:99::2", "fd00:99::1")):
        ours.add(bfd.BfdSession(peer=A(n), local=A(m)))

    def last(peer):
        return next((ev.state for _, ev in reversed(seen) if ev.peer == peer), None)

    def wait(pred, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.01))
            if pred():
                return time.monotonic()
        raise AssertionError(f"{what} not within {timeout}s: {seen}")

    try:
        wait(lambda: last("10.99.0.2") == "up" and last("fd00:99::2") == "up", 10, "up on both families")
        peers = frr_peers(b, frr)
        assert {peers[x]["status"] for x in ("10.99.0.1", "fd00:99::1")} == {"up"}, peers
        assert peers["10.99.0.1"]["remote-receive-interval"] == 300 and peers["10.99.0.1"]["remote-detect-multiplier"] == 3
        time.sleep(2.0)  # the consuming loop blocked: nothing is read into it, the engine keeps the session up
        loop.run_until_complete(asyncio.sleep(0.1))
        assert all(ev.state != "down" for _, ev in seen)
        assert {p["status"] for p in frr_peers(b, frr).values()} == {"up"}
        t0 = time.monotonic()
        os.kill(frr_proc.pid, signal.SIGSTOP)
        try:
            down = wait(lambda: last("10.99.0.2") == "down" and last("fd00:99::2") == "down", 5, "down") - t0
        finally:
            os.kill(frr_proc.pid, signal.SIGCONT)
        t1 = time.monotonic()
        up = wait(lambda: last("10.99.0.2") == "up" and last("fd00:99::2") == "up", 10, "up again") - t1
        diag = {ev.diagnostics for _, ev in seen if ev.state == "down"}
        print(f"bfd: FRR's bfdd stopped -> down after {down:.2f} s (300 ms x 3, both families); "
              f"continued -> up after {up:.2f} s")
        assert down <= 1.2 and diag == {1}
        # our engine stops: every peer gets AdminDown, which FRR takes as no failure
        ours.close()
        peers = frr_peers(b, frr)
        print("bfd: our engine stopped -> FRR says " + ", ".join(
            f"{k} {v['status']} (remote diagnostic: {v.get('remote-diagnostic')})" for k, v in sorted(peers.items())))
        assert {p["status"] for p in peers.values()} == {"down"}
        assert {p.get("remote-diagnostic") for p in peers.values()} == {"administratively down"}
    finally:
        loop.close()
