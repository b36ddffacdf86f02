"""Route programming against the kernel's own speed (`ip -batch`), in the same run.

    sudo .venv/bin/python -m bench.netlink_apply [N ...] [--runs 3] [--phases] [--no-pyroute2]
                                                 (default: 10000 100000)

For each N: `ip -batch` adds N routes into a fresh namespace and deletes them; then podbgp's
reconciler installs the same N routes (snapshot, plan, apply) and prunes them (snapshot: a dump
of the table; plan; apply: the deletes); then pyroute2 does the same twice: one
`IPRoute.route("replace")` call per route and one `route("del")` per route (it is told the
routes, it does not dump them), and `IPBatch`, which only encodes the same messages, sent here
1,000 to a sendto with an ACK for each read back. (pyroute2's AsyncIPRoute with many requests in
flight was no faster than one call at a time in a trial: the cost is its encoding and parsing.)
Prints the medians of --runs runs and the ratios to `ip -batch` (podbgp's targets: install at
most 1.5x, removal at most 1.0x). --phases adds the medians of the removal's three steps.
"""
from __future__ import annotations

import argparse
import ipaddress
import statistics
import subprocess
import time
import uuid

from pyroute2 import IPBatch, IPRoute

from reconciler.kernel import KernelTable
from reconciler.plan import plan
from reconciler.rtnl import NLMSG_ERROR, iter_messages, open_socket
from reconciler.types import Route

GATEWAY = "192.168.77.12"


def _ns() -> str:
    name = f"pbbench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], ["link", "set", "eth0", "up"],
                    ["link", "set", "eth0p", "up"], ["addr", "add", "192.168.77.1/24", "dev", "eth0"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], check=False)
        raise
    return name


def _prefixes(n: int) -> list[ipaddress.IPv4Network]:
    return [ipaddress.IPv4Network((0x0A000000 + i * 256, 24)) for i in range(n)]


def ip_batch(ns: str, n: int) -> tuple[float, float]:
    nets = _prefixes(n)
    add = "".join(f"route add {p} via 192.168.77.12 proto 80 metric 20\n" for p in nets)
    dele = "".join(f"route del {p} proto 80 metric 20\n" for p in nets)
    t0 = time.perf_counter()
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=add, text=True, check=True)
    t1 = time.perf_counter()
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=dele, text=True, check=True)
    return t1 - t0, time.perf_counter() - t1


def podbgp(ns: str, n: int) -> tuple[float, float, tuple[float, float, float]]:
    """(install, removal, (snapshot, plan, apply) of the removal) in seconds."""
    gw = (ipaddress.ip_address("192.168.77.12"),)
    desired = {p: Route(p, gw, 20) for p in _prefixes(n)}
    kernel = KernelTable(protocol=80, netns=ns)
    try:
        t0 = time.perf_counter()
        ours, foreign = kernel.snapshot()
        res = kernel.apply(plan(desired, ours, foreign))
        t1 = time.perf_counter()
        assert res.replaced == n and not res.failed, res
        ours, foreign = kernel.snapshot()
        t2 = time.perf_counter()
        p = plan({}, ours, foreign)
        t3 = time.perf_counter()
        res = kernel.apply(p)
        t4 = time.perf_counter()
        assert res.deleted == n and not res.failed, res
        assert kernel.snapshot()[0] == [], "routes left behind"
        return t1 - t0, t4 - t1, (t2 - t1, t3 - t2, t4 - t3)
    finally:
        kernel.close()


def pyroute2_calls(ns: str, n: int) -> tuple[float, float]:
    """One IPRoute call per route: install (replace) and removal (del) in seconds."""
    nets = [str(p) for p in _prefixes(n)]
    with IPRoute(netns=ns, flags=0, groups=0) as ipr:
        t0 = time.perf_counter()
        for p in nets:
            ipr.route("replace", dst=p, gateway=GATEWAY, proto=80, priority=20)
        t1 = time.perf_counter()
        for p in nets:
            ipr.route("del", dst=p, proto=80, priority=20)
        t2 = time.perf_counter()
        assert not ipr.route("dump", proto=80), "routes left behind"
    return t1 - t0, t2 - t1


def pyroute2_batch(ns: str, n: int, chunk: int = 1000) -> tuple[float, float]:
    """IPBatch encodes the messages; they go out `chunk` to a sendto and every ACK is read."""
    nets = [str(p) for p in _prefixes(n)]
    ipb = IPBatch()
    sock = open_socket(ns)
    buf = bytearray(1 << 20)
    try:
        times = []
        for command, extra in (("replace", {"gateway": GATEWAY}), ("del", {})):
            t0 = time.perf_counter()
            for start in range(0, n, chunk):
                ipb.reset()
                for p in nets[start:start + chunk]:
                    ipb.route(command, dst=p, proto=80, priority=20, **extra)
                sock.send(ipb.batch)
                acks = min(chunk, n - start)
                while acks:
                    for kind, _flags, _seq, payload in iter_messages(memoryview(buf)[:sock.recv_into(buf)]):
                        if kind == NLMSG_ERROR:
                            acks -= 1
                            assert bytes(payload[:4]) == b"\0\0\0\0", f"{command}: error {bytes(payload[:4]).hex()}"
            times.append(time.perf_counter() - t0)
    finally:
        sock.close()
        ipb.close()
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[10000, 100000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--phases", action="store_true", help="also print the removal's snapshot/plan/apply")
    ap.add_argument("--no-pyroute2", dest="pyroute2", action="store_false", help="leave pyroute2's columns out")
    args = ap.parse_args()
    import logging
    logging.disable(logging.INFO)
    ns = _ns()
    try:
        for n in args.sizes:
            base, ours, calls, batch = [], [], [], []
            for _ in range(args.runs):  # alternated, so that a change of load falls on all
                base.append(ip_batch(ns, n))
                ours.append(podbgp(ns, n))
                if args.pyroute2:
                    calls.append(pyroute2_calls(ns, n))
                    batch.append(pyroute2_batch(ns, n))
            for i, what in enumerate(("install", "remove")):
                b = statistics.median(x[i] for x in base)
                line = f"{what:7} N={n:<6} ip -batch {b:7.3f}s"
                for name, runs in (("podbgp", ours), ("pyroute2", calls), ("IPBatch", batch)):
                    if runs:
                        t = statistics.median(x[i] for x in runs)
                        line += f"  {name} {t:7.3f}s {t / b:5.2f}x"
                print(line, flush=True)
            if args.phases:
                snap, plan_, write = (statistics.median(x[2][i] for x in ours) for i in range(3))
                print(f"  removal N={n:<6} snapshot {snap:.3f}s  plan {plan_:.3f}s  apply {write:.3f}s")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
