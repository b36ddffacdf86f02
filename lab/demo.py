"""`make demo`: the lab up, every node's podbgp routes, a Pod-to-Pod ping matrix, the lab down."""
from __future__ import annotations

import itertools
import json
import subprocess
import time

import click

from . import runner


def wait_routes(state: runner.State, timeout: float = 60.0) -> float:
    """Wait until every node holds a podbgp route to every other node's PodCIDRs; return seconds."""
    start = time.monotonic()
    want = {n: {c for m, i in state.nodes.items() if i["role"] == "node" and m != n for c in i["pod_cidrs"].split(",")}
            for n, info in state.nodes.items() if info["role"] == "node"}

    def done() -> bool:
        return all(want[n] <= installed(state, n) for n in want)

    runner._wait(done, timeout, "podbgp routes on every node", interval=0.1)
    return time.monotonic() - start


def installed(state: runner.State, node: str, protocol: int = 80) -> set[str]:
    out = set()
    for fam in ("-4", "-6"):
        res = runner.run(["ip", "-j", fam, "route", "show", "proto", str(protocol)], netns=state.nodes[node]["netns"])
        out |= {r["dst"] for r in json.loads(res.stdout or "[]")}
    return out


def ping(state: runner.State, src: dict, dst_ip: str, count: int = 2) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", src["netns"], "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
                           "-W", "1", dst_ip], capture_output=True, text=True, timeout=15)
    return proc.returncode == 0


def matrix(state: runner.State) -> tuple[int, int, list[str]]:
    ok = total = 0
    lines = []
    for src, dst in itertools.permutations(state.pods, 2):
        if src["node"] == dst["node"]:
            continue
        for fam in ("ipv4", "ipv6"):
            total += 1
            good = ping(state, src, dst[fam])
            ok += good
            lines.append(f"  {src['name']:<10} -> {dst['name']:<10} {fam} {dst[fam]:<16} {'ok' if good else 'FAIL'}")
    return ok, total, lines


def run_demo(topology: str, name: str | None, keep: bool) -> int:
    click.echo(f"== bringing the lab up from {topology} (lab API, podbgp on every node, CNI Pods)")
    state = runner.up(topology, name=name)
    rc = 1
    try:
        secs = wait_routes(state)
        click.echo(f"== every node has every other node's PodCIDRs after {secs:.1f}s")
        for node in (n for n, i in state.nodes.items() if i["role"] == "node"):
            click.echo(f"-- {node}: routes podbgp installed (proto 80)")
            for fam in ("-4", "-6"):
                out = runner.run(["ip", fam, "route", "show", "proto", "80"], netns=state.nodes[node]["netns"]).stdout
                click.echo("".join(f"   {line}\n" for line in out.splitlines()), nl=False)
        for router in (n for n, i in state.nodes.items() if i.get("frr")):
            click.echo(f"-- {router}: " + runner.vtysh(state, router, "show bgp summary").strip().replace("\n", "\n   "))
        for node in (n for n, i in state.nodes.items() if i["role"] == "node"):
            obj = json.loads(runner.kubectl(state, "get", "node", node, "-o", "json").stdout)
            cond = next((c for c in obj["status"].get("conditions", []) if c["type"] == "NetworkUnavailable"), {})
            with open(runner.cni_conf_path(state, node)) as f:
                ranges = [r[0]["subnet"] for r in json.load(f)["plugins"][0]["ipam"]["ranges"]]
            click.echo(f"-- {node}: Node condition NetworkUnavailable={cond.get('status')} ({cond.get('reason')}); "
                       f"CNI config from its speaker: {' '.join(ranges)}")
        click.echo("== Pod-to-Pod ping matrix (every Pod to every Pod on another node)")
        ok, total, lines = matrix(state)
        click.echo("\n".join(lines))
        click.echo(f"== {ok}/{total} reachable")
        rc = 0 if ok == total and total > 0 else 1
    finally:
        if keep:
            click.echo(f"lab left up: podbgp lab down --name {state.name}")
        else:
            runner.down(state.name)
            click.echo("== lab torn down")
    return rc
