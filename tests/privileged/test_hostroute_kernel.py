"""`podbgp host-route` against the real kernel in a fresh network namespace: its own protocol,
foreign routes never touched, exactly its own removed on SIGTERM and SIGINT, EPERM in one line."""
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from pyroute2 import IPRoute

from hostroute.routes import HostRoute, HostRouter, LinuxBackend, RouteExists
from tests.waiting import poll

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = 81


def R(dst, via):
    return HostRoute(ipaddress.ip_network(dst), ipaddress.ip_address(via))


def ip(ns, *args):
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True, timeout=10).stdout


def routes(ns, proto=None):
    """{(dst, gateway, protocol)} of the main table, both families."""
    out = set()
    for fam in ("-4", "-6"):
        extra = ["proto", str(proto)] if proto is not None else []
        for r in json.loads(ip(ns, "-j", fam, "route", "show", "table", "main", *extra) or "[]"):
            out.add((r["dst"], r.get("gateway"), r.get("protocol", str(proto))))
    return out


FOREIGN = [("10.42.3.0/24", "192.168.77.3", "static", []),
           ("fd00:42:0:3::/64", "fd00:77::3", "static", []),
           ("10.42.4.0/24", "192.168.77.4", "boot", ["metric", "100"]),  # another metric: EXCL alone would add
           ("10.42.5.0/24", "192.168.77.5", "80", [])]  # the speaker's protocol


@pytest.fixture
def foreign(netns):
    for dst, gw, proto, extra in FOREIGN:
        ip(netns, "route", "add", dst, "via", gw, "proto", proto, *extra)
    return netns


def foreign_routes(ns):
    return {r for r in routes(ns) if r[2] != str(PROTO)}


def test_backend_adds_with_its_protocol_never_touches_foreign_routes_removes_only_its_own(foreign):
    ns = foreign
    before = foreign_routes(ns)
    want = [R("10.42.1.0/24", "192.168.77.11"), R("fd00:42:0:1::/64", "fd00:77::11"),
            R("10.42.3.0/24", "192.168.77.13"), R("fd00:42:0:3::/64", "fd00:77::13"),
            R("10.42.4.0/24", "192.168.77.14"), R("10.42.5.0/24", "192.168.77.15")]
    ipr = IPRoute(netns=ns)
    backend = LinuxBackend(ipr)
    try:
        router = HostRouter(backend)
        for _ in range(2):  # twice: the second pass writes nothing
            out = router.apply(want)
        assert routes(ns, PROTO) == {("10.42.1.0/24", "192.168.77.11", str(PROTO)),
                                     ("fd00:42:0:1::/64", "fd00:77::11", str(PROTO))}
        assert sorted(str(r.dst) for r, _ in out.skipped) == ["10.42.3.0/24", "10.42.4.0/24", "10.42.5.0/24",
                                                              "fd00:42:0:3::/64"]
        assert foreign_routes(ns) == before
        # the kernel's own refusal (NLM_F_EXCL), below the dump check: EEXIST, no replace
        for route in (R("10.42.3.0/24", "192.168.77.13"), R("fd00:42:0:3::/64", "fd00:77::13")):
            with pytest.raises(RouteExists):
                backend.add(route)
        # a delete names our protocol: the kernel will not delete the foreign route, same gateway or not
        assert backend.delete(R("10.42.3.0/24", "192.168.77.3")) is False
        assert foreign_routes(ns) == before
        out = router.remove_added()
        assert sorted(map(str, out.removed)) == ["10.42.1.0/24 via 192.168.77.11", "fd00:42:0:1::/64 via fd00:77::11"]
        assert routes(ns, PROTO) == set() and foreign_routes(ns) == before
    finally:
        backend.close()


def test_remove_takes_only_routes_with_its_protocol_among_the_given_destinations(foreign):
    ns = foreign
    ip(ns, "route", "add", "10.42.1.0/24", "via", "192.168.77.11", "proto", str(PROTO))
    ip(ns, "route", "add", "10.42.2.0/24", "via", "192.168.77.12", "proto", str(PROTO))
    ip(ns, "route", "add", "10.42.6.0/24", "via", "192.168.77.16", "proto", "99")
    before = foreign_routes(ns)
    backend = LinuxBackend(IPRoute(netns=ns))
    try:
        out = HostRouter(backend).remove_matching([R("10.42.1.0/24", "192.168.77.99"),
                                                   R("10.42.3.0/24", "192.168.77.3"),
                                                   R("10.42.6.0/24", "192.168.77.16")])
    finally:
        backend.close()
    assert [str(r) for r in out.removed] == ["10.42.1.0/24 via 192.168.77.11"]
    assert routes(ns, PROTO) == {("10.42.2.0/24", "192.168.77.12", str(PROTO))} and foreign_routes(ns) == before


def cli(ns, *args, prefix=()):
    return ["ip", "netns", "exec", ns, *prefix, sys.executable, "-m", "speaker.cli", "host-route", *args]


def stop(proc):
    """Stop the process this test started, by its PID, on every path."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_in_the_foreground_removes_its_routes_on_a_signal(foreign, sig):
    ns = foreign
    before = foreign_routes(ns)
    mine = {("10.42.1.0/24", "192.168.77.11", str(PROTO)), ("fd00:42:0:1::/64", "fd00:77::11", str(PROTO))}
    # `ip netns exec` execs the command: the PID is the speaker.cli process itself
    proc = subprocess.Popen(cli(ns, "--via", "192.168.77.11", "--via", "fd00:77::11", "10.42.1.0/24",
                                "fd00:42:0:1::/64", "10.42.3.0/24"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: routes(ns, PROTO) == mine or proc.poll() is not None, 15, "host-route's routes")
        assert proc.poll() is None, proc.communicate()
        assert foreign_routes(ns) == before
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        poll(lambda: routes(ns, PROTO) == set(), 5, "host-route's routes to be gone")
        assert foreign_routes(ns) == before
        assert "hostroute.skipped dst=10.42.3.0/24" in err and "hostroute.stopped removed=2 failed=0" in err
    finally:
        stop(proc)


def test_cli_once_then_remove(foreign):
    ns = foreign
    run = lambda *a: subprocess.run(cli(ns, *a), cwd=ROOT, capture_output=True, text=True, timeout=30)  # noqa: E731
    res = run("--via", "192.168.77.11", "--once", "10.42.1.0/24", "10.42.2.0/24")
    assert res.returncode == 0, res.stderr
    assert routes(ns, PROTO) == {("10.42.1.0/24", "192.168.77.11", str(PROTO)),
                                 ("10.42.2.0/24", "192.168.77.11", str(PROTO))}
    res = run("--via", "192.168.77.11", "--remove", "10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24")
    assert res.returncode == 0, res.stderr
    assert routes(ns, PROTO) == set() and ("10.42.3.0/24", "192.168.77.3", "static") in routes(ns)


CAP_NET_ADMIN = 12
# root without CAP_NET_ADMIN: out of the bounding set, so no exec gives it back, and out of the
# inheritable (hence ambient) set; root's permitted and effective sets after exec are made of those two.
# Still uid 0, so a checkout only root can read (a clone under a 0700 directory) stays readable.
DROP_NET_ADMIN = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--ambient-caps=-net_admin")
CAP_PROBE = "import os; print(os.getuid(), open('/proc/self/status').read())"


def _caps_without(status: str, bit: int) -> dict[str, bool]:
    """{set name: True if `bit` is absent} for each Cap* line of a /proc/PID/status."""
    sets = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
    return {name: not int(mask, 16) >> bit & 1 for name, mask in sets.items()}


def test_cli_without_cap_net_admin_says_so_in_one_line(netns):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run(["ip", "netns", "exec", netns, *DROP_NET_ADMIN, sys.executable, "-c", CAP_PROBE],
                           cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout
    uid, status = probe.split(" ", 1)
    # the same interpreter under the same setpriv: root, and CAP_NET_ADMIN in none of its sets
    assert uid == "0"
    assert _caps_without(status, CAP_NET_ADMIN) == {"CapInh": True, "CapPrm": True, "CapEff": True,
                                                    "CapBnd": True, "CapAmb": True}, status
    res = subprocess.run(cli(netns, "--via", "192.168.77.11", "--once", "10.42.1.0/24", prefix=DROP_NET_ADMIN),
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1, res.stderr
    assert res.stderr == "podbgp host-route: needs CAP_NET_ADMIN (run as root)\n"
    assert routes(netns, PROTO) == set()
