"""bgp.bfd.Engine against a real bfdd: two namespaces over a veth, our engine in one, a plain
bfdd (also an Engine) in the other. Up; the peer's bfdd stopped -> down within ~1 s (300 ms x 3);
continued -> up; no false down while the consuming loop is blocked for 2 s."""
import asyncio
import ctypes
import ipaddress as ia
import os
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from bgp import bfd

A = ia.ip_address


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def in_netns(ns, fn):
    """Run fn with this thread in namespace ns (bfdd, our child, inherits it), then come back."""
    here = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        setns(fd)
        return fn()
    finally:
        setns(here)
        os.close(fd)
        os.close(here)


@pytest.fixture
def pair():
    tag = uuid.uuid4().hex[:6]
    a, b = f"pbfa{tag}", f"pbfb{tag}"
    made, engines = [], []
    base = tempfile.mkdtemp(prefix="pbfd")
    os.chmod(base, 0o755)
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        sh("ip", "-n", a, "addr", "add", "10.99.0.1/24", "dev", "va")
        sh("ip", "-n", b, "addr", "add", "10.99.0.2/24", "dev", "vb")
        sh("ip", "-n", a, "link", "set", "va", "up")
        sh("ip", "-n", b, "link", "set", "vb", "up")
        yield a, b, base, engines
    finally:
        for e in engines:
            e.close()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["rm", "-rf", base])


def test_engine_sees_up_down_up_and_no_false_down_while_the_loop_is_busy(pair):
    a, b, base, engines = pair
    loop = asyncio.new_event_loop()
    seen = []

    def deliver(fn, ev):
        loop.call_soon_threadsafe(fn, ev)

    ours = bfd.Engine(os.path.join(base, "ours"), lambda ev: seen.append((time.monotonic(), ev)), deliver)
    theirs = bfd.Engine(os.path.join(base, "theirs"), lambda ev: None, lambda fn, ev: None)
    engines += [ours, theirs]
    in_netns(a, ours.start)
    in_netns(b, theirs.start)
    ours.add(bfd.BfdSession(peer=A("10.99.0.2"), local=A("10.99.0.1")))
    theirs.add(bfd.BfdSession(peer=A("10.99.0.1"), local=A("10.99.0.2")))

    def wait_state(state, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.02))
            if seen and seen[-1][1].state == state:
                return seen[-1][0]
        raise AssertionError(f"no {state} within {timeout}s: {seen}")

    wait_state("up", 10)
    time.sleep(2.0)  # the loop blocked: nothing is read into it, bfdd keeps the session up
    loop.run_until_complete(asyncio.sleep(0.1))
    assert [ev.state for _, ev in seen][-1] == "up" and all(ev.state != "down" for _, ev in seen)
    t0 = time.monotonic()
    os.kill(theirs.proc.pid, signal.SIGSTOP)
    try:
        down = wait_state("down", 5) - t0
    finally:
        os.kill(theirs.proc.pid, signal.SIGCONT)
    t1 = time.monotonic()
    up = wait_state("up", 10) - t1
    print(f"bfd: peer stopped -> down after {down:.2f} s (300 ms x 3); continued -> up after {up:.2f} s")
    assert down <= 1.5
    loop.close()
