"""A ToR that leaks a large table to one node (issue 14, part 1).

    sudo .venv/bin/python -m bench.leak [--routes 1200000] [--nodes 1000] [--json] [--keep]
                                        [--max-prefixes N --action warn|teardown --restart-after S] [--bfd]

The world of bench.scale (N Node objects in the lab API server, a BIRD 2 ToR with every other
node's two PodCIDRs, the speaker run as the DaemonSet's Pod, one IPv4 and one IPv6 session), and
on the ToR two more static protocols, disabled at start: --routes routes outside the cluster,
five sixths IPv4 /24s from 11.0.0.0 up, one sixth IPv6 /48s from 2a00::/16 up, all blackholes
exported with the ToR as next hop (BIRD packs many into one UPDATE, as a real table leak does).
Once the speaker has converged on the Pod routes, `birdc enable` of both is the leak. Measured:

- rss_mib before (after convergence), peak (sampled every 100 ms during the leak) and after (the
  leak digested, 3 s later): speaker, ExaBGP and the API child, from /proc; speaker_vmhwm_mib.
- cpu_s: CPU seconds of the speaker and its descendants from the leak's start until the speaker
  has counted every leaked path (digest_s: that moment, from its status endpoint).
- pod_routes_deleted: RTM_DELROUTE of our protocol during the leak (the deleted Node's excluded).
- session_resets: peers whose `since` changed or that are not up at the end.
- node_delete_to_kernel_ms: one Node deleted --delete-after seconds into the leak -> both its
  routes gone from the kernel.
- loop_at_rest, loop_during_digest: how long the speaker's asyncio loop took to answer /healthz
  (probed every 50 ms from its namespace) in the second before the leak and until digest_s.
- --bfd (as bench.scale --bfd: 300 ms x 3, BIRD's protocol bfd at the ToR): from before the leak
  to 3 s after its digest, bfd_downs_speaker, bfd_downs_tor, session_resets_speaker and
  session_resets_tor (the ToR's view of pod_4/pod_6), with bfd_state_after on both ends.

Measured 2026-12-03 (2 shared cores), 1,000 nodes, 1,200,000 routes (1,000,000 IPv4 /24s +
200,000 IPv6 /48s), no maxPrefixes: speaker RSS 41.5 -> 44.1 MiB (+2.6; peak the same), ExaBGP
29.6 -> 32.0, total 72.7 -> 77.7 MiB (issue 14 saw the speaker alone at 877 MiB); every leaked
path counted 27.1 s after the leak began, 38.1 CPU seconds (speaker + ExaBGP + API child); 0 Pod
routes deleted, 0 session resets; a Node deleted 3 s into the leak left the kernel in 3.4 ms.

The same with --bfd (BFD 300 ms x 3 on both sessions, the ToR's BIRD running BFD too; the
speaker with the DaemonSet's capabilities only; 19:25, load 0.4 before, 1.2 after): every leaked
path counted 26.8 s after the leak began, 39.7 CPU seconds; the speaker's loop answered /healthz in
p50 8.6 ms, p99 196 ms, at worst 439 ms (44 answers over 100 ms); 0 BFD downs at the speaker and
at the ToR, 0 session resets either end, 0 Pod routes deleted; Node delete -> kernel 22.8 ms;
speaker RSS 42.5 -> 44.3 MiB (total with ExaBGP, the API child and the BFD engine, 13.6 MiB, 87.3
-> 91.5 MiB). (An earlier run with FRR's bfdd as the engine, which needed eight more capabilities,
gave the same 0 downs.)

maxPrefixes 50,000 with teardown, restartAfter 15, 100 nodes, a 200,000-route leak (166,667
IPv4: over; 33,333 IPv6: under): the IPv4 session torn down, back 15.5 s (GR off) / 15.7 s (GR
on) after the teardown; its 98 IPv4 Pod routes left the kernel with it (one ToR: nothing else
offers them), the IPv6 session untouched. What the ToR's BIRD saw: with the speaker's
gracefulRestart 0, "Received: Maximum number of prefixes reached" (Cease 1); with graceful
restart negotiated (the default, 120), "Socket: Connection reset by peer": ExaBGP 5.0 closes a
session that negotiated GR without any NOTIFICATION (reactor/peer.py, _main), whatever code the
teardown asked for, so the ToR keeps our routes stale as for a restart.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import subprocess
import sys
import threading
import time

from . import _bfd
from . import _scale_nl as nl
from . import _scale_world as w
from .scale import (CLK_TCK, POD_PROTO, Bench, BenchError, _preflight, _raise_interrupt, _resets, add_bfd_args,
                    cpu_ticks, rss_split, say, vm_hwm)


def leak_config(n4: int, n6: int) -> str:
    """Two disabled static protocols: n4 IPv4 /24s from 11.0.0.0, n6 IPv6 /48s from 2a00::."""
    out = ["protocol static leak4 {", "  ipv4;", "  disabled;"]
    base4 = int(ipaddress.IPv4Address("11.0.0.0"))
    out += [f"  route {ipaddress.IPv4Address(base4 + (i << 8))}/24 blackhole;" for i in range(n4)]
    out += ["}", "protocol static leak6 {", "  ipv6;", "  disabled;"]
    base6 = int(ipaddress.IPv6Address("2a00::"))
    out += [f"  route {ipaddress.IPv6Address(base6 + (i << 80))}/48 blackhole;" for i in range(n6)]
    out.append("}")
    return "\n".join(out) + "\n"


class LeakBench(Bench):
    def __init__(self, args) -> None:
        args.repeat, args.skip_bird, args.samples, args.kubeconfig, args.relist = 1, True, 1, False, False
        super().__init__(args)
        self.n6 = args.routes // 6
        self.n4 = args.routes - self.n6
        self.graceful_restart = args.graceful_restart
        if args.max_prefixes:
            self.peer_extra += (f", maxPrefixes: {{ipv4: {args.max_prefixes}, ipv6: {args.max_prefixes}, "
                               f"action: {args.action}, restartAfter: {args.restart_after}}}")
        self.result = {"nodes": args.nodes, "pod_routes": len(self.expected), "leaked_routes": args.routes,
                       "leaked_ipv4": self.n4, "leaked_ipv6": self.n6, "run_id": self.run.id,
                       "max_prefixes": args.max_prefixes or None, "graceful_restart": args.graceful_restart, "action": args.action if args.max_prefixes else None,
                       "bfd": bool(args.bfd)}

    def tor_config(self) -> str:
        t = time.monotonic()
        text = super().tor_config() + leak_config(self.n4, self.n6)
        say(f"ToR config with {self.n4 + self.n6} leak routes written in {time.monotonic() - t:.1f}s")
        return text

    def status(self) -> dict:
        out = subprocess.run(["ip", "netns", "exec", self.pod_ns, sys.executable, "-m", "speaker.cli", "status", "--json",
                              "--socket", self.status_socket], capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def peers(self) -> dict:
        """The speaker's peers as its status endpoint lists them (without the route lists: a
        status of the whole RIB is not what is measured)."""
        return {p["address"]: p for p in self.status().get("peers", [])}

    def podbgp_extras(self, sp, conv) -> dict:
        time.sleep(2.0)
        res: dict = {}
        before = rss_split(sp.pid)
        res["rss_before_mib"] = {**before, "total": round(sum(before.values()), 1)}
        peers0 = self.peers()
        say(f"before the leak: RSS {res['rss_before_mib']}")
        bfd0 = self.bfd.snapshot() if self.bfd else None
        probe = _bfd.LoopProbe(self.pod_ns, self.status_address)
        probe.start()
        time.sleep(1.0)  # the loop's answer time at rest, for comparison
        peak = dict(before)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                now = rss_split(sp.pid)
                for k, v in now.items():
                    peak[k] = max(peak.get(k, 0.0), v)
                peak["total"] = max(peak.get("total", 0.0), sum(now.values()))

        mon = nl.RouteMonitor(self.pod_ns, POD_PROTO)
        sampler = threading.Thread(target=sample, daemon=True)
        pids = w.descendants(sp.pid)
        c0, t0 = cpu_ticks(pids), time.monotonic()
        sampler.start()
        self.birdc(self.tor_sock, "enable", "leak4")
        self.birdc(self.tor_sock, "enable", "leak6")
        say(f"leak of {self.args.routes} routes enabled at the ToR")
        victim = self.delete_nodes[0]
        gone = {nl.route_key(victim.cidr4), nl.route_key(victim.cidr6)}
        time.sleep(self.args.delete_after)
        conv.drain()
        present = gone & nl.dump_routes(self.pod_ns, POD_PROTO).keys()  # a teardown may have taken them already
        td = time.monotonic()
        self.api.call("DELETE", f"/api/v1/nodes/{victim.name}")
        res["node_delete_to_kernel_ms"] = round((conv.wait_deleted(present) - td) * 1000, 1) if present else None
        res["node_delete_routes"] = len(present)
        say(f"Node delete {self.args.delete_after:.0f}s into the leak -> kernel {res['node_delete_to_kernel_ms']} ms "
            f"({len(present)} of its 2 routes were in the kernel)")
        try:
            res.update(self.wait_digested(sp, t0))
        finally:
            probe.stop()
        res["loop_at_rest"] = _bfd.lag_summary(probe.samples, end=t0)
        res["loop_during_digest"] = _bfd.lag_summary(probe.samples, t0, t0 + res["digest_s"])
        res["probe_failures"] = probe.failures
        say(f"the speaker's loop answering /healthz: at rest {res['loop_at_rest']}, during the digest "
            f"{res['loop_during_digest']}")
        if res["torn_down"]:
            res.update(self.teardown_cycle())
        c1 = cpu_ticks(pids)
        res["cpu_s"] = round(sum(c1[p] - c0[p] for p in c1 if p in c0) / CLK_TCK, 1)
        time.sleep(3.0)
        stop.set()
        sampler.join()
        after = rss_split(sp.pid)
        res["rss_peak_mib"] = {k: round(v, 1) for k, v in peak.items()}
        res["rss_after_mib"] = {**after, "total": round(sum(after.values()), 1)}
        res["speaker_vmhwm_mib"] = vm_hwm(sp.pid)
        res["speaker_rss_growth_mib"] = round(after.get("speaker", 0) - before.get("speaker", 0), 1)
        deleted = set()
        while True:
            _added, dels, overrun = mon.read(0.0)
            if not dels and not overrun:
                break
            deleted |= set(dels)
        mon.close()
        res["pod_routes_deleted"] = len((deleted & self.expected) - gone)
        peers1 = self.peers()
        res["session_resets"] = sum(1 for a, p in peers0.items()
                                    if a not in peers1 or peers1[a]["since"] != p["since"] or peers1[a]["state"] != "up")
        if self.bfd:
            res.update(_bfd.delta(bfd0, self.bfd.snapshot()))
            say(f"BFD from before the leak to 3 s after its digest: downs speaker {res['bfd_downs_speaker']}, ToR "
                f"{res['bfd_downs_tor']}; " + _resets(res))
        res["peers_after"] = {a: {k: p.get(k) for k in ("state", "paths", "refused", "counted", "overLimit", "overBy")}
                              for a, p in peers1.items()}
        say(f"after: RSS {res['rss_after_mib']}, peak {res['rss_peak_mib']}, CPU {res['cpu_s']}s, "
            f"Pod routes deleted {res['pod_routes_deleted']}, session resets {res['session_resets']}")
        return res

    def wait_digested(self, sp, t0: float) -> dict:
        """Until the speaker has counted every leaked path (or a teardown took the sessions down)."""
        deadline = t0 + self.args.timeout
        last = -1
        while time.monotonic() < deadline:
            peers = self.peers()
            refused = sum(sum(p.get("refused", {}).values()) for p in peers.values())
            over = [p for p in peers.values() if p.get("resumeAt")]
            if refused >= self.args.routes or (over and self.args.action == "teardown"):
                return {"digest_s": round(time.monotonic() - t0, 2), "refused_counted": refused,
                        "torn_down": len(over)}
            if refused != last:
                say(f"  {time.monotonic() - t0:.1f}s: {refused} refused paths counted")
                last = refused
            if not sp.alive():
                raise BenchError("the speaker exited during the leak")
            time.sleep(1.0)
        raise BenchError(f"the leak was not digested within {self.args.timeout:.0f}s ({last} counted)")

    def teardown_cycle(self) -> dict:
        """maxPrefixes with teardown: what the ToR's BIRD says it received, and when the
        sessions are Established again (from the moment the speaker suspended the first peer:
        its resumeAt - restartAfter, unix time)."""
        resume = [p["resumeAt"] for p in self.peers().values() if p.get("resumeAt")]
        down_unix = min(resume) - self.args.restart_after
        shown = self.birdc(self.tor_sock, "show", "protocols", "all", "pod_4", check=False)
        last = next((ln.strip() for ln in shown.splitlines() if "Last error" in ln), "")
        say(f"teardown: the ToR's pod_4: {last or shown.strip().splitlines()[-1:]}")
        deadline = down_unix + self.args.restart_after + 60
        while time.time() < deadline:
            peers = self.peers()
            if peers and all(p["state"] == "up" for p in peers.values()):
                back = round(time.time() - down_unix, 1)
                say(f"teardown: sessions up again {back}s after the teardown (restartAfter {self.args.restart_after})")
                return {"tor_last_error": last, "back_after_s": back}
            time.sleep(0.2)
        return {"tor_last_error": last, "back_after_s": None}

    def measure(self) -> dict:
        self.result["podbgp"] = self.podbgp_once(0, extra=True)
        return self.result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.leak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=1_200_000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--delete-after", type=float, default=3.0, help="seconds into the leak a Node is deleted")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--max-prefixes", type=int, default=0, help="each peer's maxPrefixes per family (0: none)")
    ap.add_argument("--action", choices=("warn", "teardown"), default="warn")
    ap.add_argument("--restart-after", type=int, default=60)
    ap.add_argument("--graceful-restart", type=int, default=120,
                    help="the speaker's gracefulRestart (ExaBGP 5.0 closes a GR session without a NOTIFICATION)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true")
    add_bfd_args(ap)
    args = ap.parse_args(argv)
    try:
        _preflight(args)
    except BenchError as exc:
        print(f"leak: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    bench = LeakBench(args)
    try:
        bench.setup()
        result = bench.measure()
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130
    except (BenchError, RuntimeError, TimeoutError, OSError) as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        if bench.api:
            bench.api.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bench.run.teardown()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print(json.dumps(result, sort_keys=True, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
