"""Route programming against the kernel's own speed (`ip -batch`), in the same run.

    sudo .venv/bin/python -m bench.netlink_apply [N ...] [--runs 3] [--phases]   (default: 10000 100000)

For each N: `ip -batch` adds N routes into a fresh namespace and deletes them; then podbgp's
reconciler installs the same N routes (snapshot, plan, apply) and prunes them (snapshot: a dump
of the table; plan; apply: the deletes). Prints the medians of --runs runs and the ratio to
`ip -batch` (targets: install at most 1.5x, removal at most 1.0x). --phases adds the medians of
the removal's three steps.
"""
from __future__ import annotations

import argparse
import ipaddress
import statistics
import subprocess
import time
import uuid

from reconciler.kernel import KernelTable
from reconciler.plan import plan
from reconciler.types import Route


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[10000, 100000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--phases", action="store_true", help="also print the removal's snapshot/plan/apply")
    args = ap.parse_args()
    import logging
    logging.disable(logging.INFO)
    ns = _ns()
    try:
        for n in args.sizes:
            base, ours = [], []
            for _ in range(args.runs):  # alternated, so that a change of load falls on both
                base.append(ip_batch(ns, n))
                ours.append(podbgp(ns, n))
            for i, what in enumerate(("install", "remove")):
                b = statistics.median(x[i] for x in base)
                o = statistics.median(x[i] for x in ours)
                print(f"{what:7} N={n:<6} ip -batch {b:7.3f}s  podbgp {o:7.3f}s  ratio {o / b:4.2f}x")
            if args.phases:
                snap, plan_, write = (statistics.median(x[2][i] for x in ours) for i in range(3))
                print(f"  removal N={n:<6} snapshot {snap:.3f}s  plan {plan_:.3f}s  apply {write:.3f}s")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
