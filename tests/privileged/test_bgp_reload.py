"""bgp.Sessions with the real ExaBGP in a network namespace, FRR bgpd peers in others: what a change
of the peer list does to the sessions that stay (nothing), to the removed one and to a new one.

The helpers here (namespaces, veths, FRR, an asyncio loop inside a namespace) are shared with
test_bgp_security.py. Names are unique per run; everything is removed on every path; processes
are stopped by the PID they were started with.
"""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import ipaddress as ia
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from bgp.sessions import Sessions
from lab.runner import pid_alive
from bgp.types import Announcement, PeerConfig, SessionState

FRR_DIR = "/usr/lib/frr"
CLONE_NEWNET = 0x40000000
A = ia.ip_address
OUR_ROUTE = "10.42.1.0/24"


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: rc={done.returncode} {done.stderr.strip()[-400:]}")
    return done.stdout


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    """Poll `check` until it returns something true; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)


class Topo:
    """Namespaces, veths, static routes and FRR daemons of one test; `close()` removes them all."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.namespaces: list[str] = []
        self.pids: list[int] = []
        self.links = 0
        self.dir = tempfile.mkdtemp(prefix=f"podbgp-bgp-{self.tag}-")
        os.chmod(self.dir, 0o755)  # FRR's daemons run as the frr user

    def ns(self, role: str, forward: bool = False) -> str:
        name = f"pb{self.tag}-{role}"
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        if forward:
            _run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return name

    def link(self, a: str, a_addr: str, b: str, b_addr: str) -> None:
        """A veth between namespaces a and b, with an address (CIDR) on each end, both ends up."""
        self.links += 1
        a_if = b_if = f"l{self.links}"  # names are per namespace
        _run("ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
        _run("ip", "-n", a, "addr", "add", a_addr, "dev", a_if)
        _run("ip", "-n", b, "addr", "add", b_addr, "dev", b_if)
        _run("ip", "-n", a, "link", "set", a_if, "up")
        _run("ip", "-n", b, "link", "set", b_if, "up")

    def route(self, ns: str, dst: str, via: str) -> None:
        _run("ip", "-n", ns, "route", "add", dst, "via", via)

    def frr(self, ns: str, conf: str) -> Frr:
        d = os.path.join(self.dir, ns)
        os.makedirs(d)
        with open(os.path.join(d, "zebra.conf"), "w") as f:
            f.write(f"hostname {ns}\n")
        with open(os.path.join(d, "bgpd.conf"), "w") as f:
            f.write(conf)
        with open(os.path.join(d, "vtysh.conf"), "w") as f:
            f.write("username root nopassword\n")
        for path in [d] + [os.path.join(d, f) for f in os.listdir(d)]:
            shutil.chown(path, "frr", "frr")  # the daemons drop to the frr user, as in FRR's own packages
        for daemon in ("zebra", "bgpd"):
            pidfile = os.path.join(d, f"{daemon}.pid")
            _run("ip", "netns", "exec", ns, f"{FRR_DIR}/{daemon}", "-d", "-u", "frr", "-g", "frr",
                 "-f", os.path.join(d, f"{daemon}.conf"), "-i", pidfile, "-z", os.path.join(d, "zserv.api"),
                 "--vty_socket", d, "--log", f"file:{os.path.join(d, daemon + '.log')}", "-A", "127.0.0.1")
            pid = int(wait_for(lambda: _read(pidfile), 10, f"{daemon} pid file in {d}"))
            self.pids.append(pid)
        return Frr(ns, d)

    def close(self) -> None:
        for root, _, files in os.walk(self.dir):  # a daemon whose pid file came too late is ours too
            for name in files:
                pid = _read(os.path.join(root, name)) if name in ("zebra.pid", "bgpd.pid") else None
                if pid and pid.isdigit() and int(pid) not in self.pids:
                    self.pids.append(int(pid))
        for pid in reversed(self.pids):
            _stop_pid(pid)
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Frr:
    def __init__(self, ns: str, d: str) -> None:
        self.ns, self.dir = ns, d

    def vtysh(self, command: str) -> str:
        return _run("vtysh", "--vty_socket", self.dir, "--config_dir", self.dir, "-c", command)

    def neighbor(self, addr: str) -> dict:
        return json.loads(self.vtysh(f"show bgp neighbor {addr} json")).get(addr, {})

    def established(self, addr: str) -> bool:
        return self.neighbor(addr).get("bgpState") == "Established"

    def routes(self) -> dict:
        return json.loads(self.vtysh("show bgp ipv4 unicast json")).get("routes", {})

    def log(self) -> str:
        return _read(os.path.join(self.dir, "bgpd.log")) or ""


def frr_conf(router_id: str, asn: int, peer: str, peer_asn: int, *extra: str, gr: bool = True,
             originate: str | None = None) -> str:
    """One eBGP neighbor, every UPDATE received logged (debug bgp updates in); `originate` is a
    prefix this FRR announces."""
    lines = [
        "frr defaults traditional",
        "debug bgp updates in",
        "debug bgp neighbor-events",
        f"router bgp {asn}",
        f" bgp router-id {router_id}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        " bgp graceful-restart" if gr else " bgp graceful-restart-disable",
        f" neighbor {peer} remote-as {peer_asn}",
        f" neighbor {peer} timers connect 1",
        *(f" neighbor {peer} {x}" for x in extra),
        " address-family ipv4 unicast",
        *([f"  network {originate}"] if originate else []),
        f"  neighbor {peer} activate",
        " exit-address-family",
        "",
    ]
    return "\n".join(lines)


def netstat(ns: str) -> dict[str, int]:
    """The TcpExt counters of a namespace."""
    from bgp.security import parse_netstat
    return parse_netstat(_run("ip", "netns", "exec", ns, "cat", "/proc/net/netstat"))


class NodeLoop:
    """An asyncio loop on a thread that lives in network namespace `ns`: ExaBGP, which Sessions
    spawns from that thread, runs there, and Sessions reads that namespace's counters."""

    def __init__(self, ns: str) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.error: BaseException | None = None

        def main() -> None:
            try:
                fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {ns}")
                finally:
                    os.close(fd)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                self.error = exc
                ready.set()
                return
            asyncio.set_event_loop(self.loop)
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name=f"loop-{ns}", daemon=True)
        self.thread.start()
        ready.wait(10)
        if self.error:
            raise self.error

    def call(self, fn, *args, timeout: float = 30):
        """Run fn(*args) (a coroutine function or a plain one) on the loop; its result."""
        async def wrapper():
            out = fn(*args)
            return await out if asyncio.iscoroutine(out) else out
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class Node:
    """Sessions (the real ExaBGP) in a namespace; what it reported, kept for the test."""

    def __init__(self, topo: Topo, ns: str, **kw) -> None:
        self.ns = ns
        self.runtime = os.path.join(topo.dir, f"{ns}-run")
        self.loop = NodeLoop(ns)
        self.changed: list[set] = []
        self.converged: list[str] = []
        exabgp = os.path.join(os.path.dirname(sys.executable), "exabgp")

        def make():
            return Sessions(self.runtime, exabgp, kw.get("graceful_restart", 120), 60,
                            self.changed.append, self.converged.append)
        self.sessions: Sessions = self.loop.call(make)

    def configure(self, peers: list[PeerConfig]) -> None:
        self.loop.call(self.sessions.configure, peers)

    def announce(self, *prefixes: str) -> None:
        self.loop.call(self.sessions.announce, frozenset(Announcement(ia.ip_network(p)) for p in prefixes))

    def state(self, peer: str) -> tuple[SessionState | None, float | None, str]:
        def read():
            st = self.sessions.peer(peer)
            return (None, None, "") if st is None else (st.state, st.since, st.reason)
        return self.loop.call(read)

    def up(self, peer: str) -> bool:
        return self.state(peer)[0] == SessionState.UP

    def paths(self) -> set[tuple[str, str]]:
        """(peer, prefix) of every path in the RIB."""
        return self.loop.call(lambda: {(p.peer, str(p.prefix)) for p in self.sessions.paths()})

    def close(self) -> None:
        try:
            self.loop.call(self.sessions.stop)
        finally:
            self.loop.close()


def peer_config(addr: str, local: str, asn: int = 65000, **kw) -> PeerConfig:
    return PeerConfig(address=A(addr), asn=asn, local_address=A(local), local_asn=65001,
                      router_id=A("10.77.0.1"), **kw)


@pytest.fixture
def topo():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.access(f"{FRR_DIR}/bgpd", os.X_OK):
        pytest.skip("FRR is not installed")
    t = Topo()
    try:
        yield t
    finally:
        t.close()


# ---- the tests -------------------------------------------------------------------------------

class Watch:
    """Samples one FRR session's counters as the test goes on: any reset shows as a new
    connection or an uptime that went down."""

    def __init__(self, frr: Frr, addr: str) -> None:
        self.frr, self.addr = frr, addr
        self.samples: list[tuple[int, int, int, str]] = []

    def sample(self) -> tuple[int, int, int, str]:
        nb = self.frr.neighbor(self.addr)
        s = (nb["connectionsEstablished"], nb.get("bgpTimerUpMsec", -1), nb["messageStats"]["updatesRecv"],
             nb.get("bgpState", ""))
        self.samples.append(s)
        return s

    def untouched(self) -> None:
        established = {s[0] for s in self.samples}
        updates = {s[2] for s in self.samples}
        uptimes = [s[1] for s in self.samples]
        assert {s[3] for s in self.samples} == {"Established"}, self.samples
        assert len(established) == 1 and len(updates) == 1, f"the session was reset or got UPDATEs: {self.samples}"
        assert uptimes == sorted(uptimes) and uptimes[0] >= 0, f"uptime went back: {uptimes}"


def _ready(node: Node, frrs: dict, addrs: dict, prefixes: dict) -> bool:
    return all(node.up(addrs[k]) and OUR_ROUTE in frrs[k].routes() and (addrs[k], prefixes[k]) in node.paths()
               for k in frrs)


def test_peer_list_changes_reload_exabgp_and_leave_the_other_sessions_alone(topo):
    n = topo.ns("node")
    frrs, cfg, addr, prefix = {}, {}, {}, {}
    for k in (1, 2, 3):
        p = topo.ns(f"p{k}")
        topo.link(n, f"10.77.{k}.2/24", p, f"10.77.{k}.1/24")
        addr[k], prefix[k] = f"10.77.{k}.1", f"10.99.{k}.0/24"
        frrs[k] = topo.frr(p, frr_conf(addr[k], 65000, f"10.77.{k}.2", 65001, originate=prefix[k]))
        cfg[k] = peer_config(addr[k], f"10.77.{k}.2")
    node = Node(topo, n)
    try:
        node.configure([cfg[1], cfg[2]])
        node.announce(OUR_ROUTE)
        wait_for(lambda: _ready(node, {k: frrs[k] for k in (1, 2)}, addr, prefix), 30, "sessions 1 and 2 with routes")
        exa = node.sessions.exabgp
        pid = exa.pid
        state1, since1, _ = node.state(addr[1])
        watch = Watch(frrs[1], "10.77.1.2")
        watch.sample()
        withdraws_before = frrs[1].log().count("withdrawn")

        # a third peer: a reload; it comes up and gets our route and End-of-RIB
        node.configure([cfg[1], cfg[2], cfg[3]])
        wait_for(lambda: (watch.sample() and _ready(node, {3: frrs[3]}, addr, prefix)), 30, "session 3")
        wait_for(lambda: (watch.sample() and "rcvd End-of-RIB for IPv4 Unicast from 10.77.3.2" in frrs[3].log()),
                 10, "our End-of-RIB at peer 3")

        # peer 2 removed: its session closes and its path leaves the RIB at once, stale or not
        node.configure([cfg[1], cfg[3]])
        assert (addr[2], prefix[2]) not in node.paths() and node.state(addr[2]) == (None, None, "")
        wait_for(lambda: watch.sample() and not frrs[2].established("10.77.2.2"), 20, "peer 2 closed")
        for _ in range(10):  # a second more of watching peer 1
            watch.sample()
            time.sleep(0.1)

        assert exa.pid == pid and exa.restarts == 0 and exa.reloads == 2
        assert node.state(addr[1])[:2] == (state1, since1), "podbgp saw peer 1's session change"
        watch.untouched()
        assert frrs[1].log().count("withdrawn") == withdraws_before == 0
        assert OUR_ROUTE in frrs[1].routes() and (addr[1], prefix[1]) in node.paths()
        assert frrs[3].established("10.77.3.2") and node.up(addr[3])
    finally:
        node.close()


def test_a_changed_peer_is_reestablished_and_the_others_are_not(topo):
    n = topo.ns("node")
    frrs, cfg = {}, {}
    for k in (1, 2):
        p = topo.ns(f"p{k}")
        topo.link(n, f"10.77.{k}.2/24", p, f"10.77.{k}.1/24")
        frrs[k] = topo.frr(p, frr_conf(f"10.77.{k}.1", 65000, f"10.77.{k}.2", 65001))
        cfg[k] = peer_config(f"10.77.{k}.1", f"10.77.{k}.2")
    node = Node(topo, n)
    try:
        node.configure([cfg[1], cfg[2]])
        node.announce(OUR_ROUTE)
        wait_for(lambda: all(OUR_ROUTE in frrs[k].routes() for k in (1, 2)), 30, "our route at both peers")
        watch = Watch(frrs[1], "10.77.1.2")
        watch.sample()
        before = frrs[2].neighbor("10.77.2.2")["connectionsEstablished"]
        node.configure([cfg[1], dataclasses.replace(cfg[2], hold_time=30)])
        wait_for(lambda: watch.sample() and frrs[2].neighbor("10.77.2.2").get("connectionsEstablished") == before + 1
                 and frrs[2].established("10.77.2.2"), 30, "peer 2 re-established")
        nb = frrs[2].neighbor("10.77.2.2")
        assert nb["bgpTimerHoldTimeMsecs"] == 30000 and OUR_ROUTE in frrs[2].routes()
        watch.untouched()
        assert node.sessions.exabgp.restarts == 0
    finally:
        node.close()
