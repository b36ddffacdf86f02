"""ExaBGP's receive path: from the ToR's UPDATEs to podbgp's decoded events.

    sudo .venv/bin/python -m bench.exabgp_recv [--routes N] [--runs 3] [--mode MODE ...]

A BIRD 2 ToR in a namespace of its own holds N static routes (10.x.y.0/24), each via its own
address of the shared subnet, and exports them over eBGP: BIRD sends each gateway as a
third-party next hop, so every route travels in an UPDATE of its own, as a real ToR relays one
node's PodCIDR. The receiver runs in a second namespace. Modes:

  counter   ExaBGP (rendered by bgp.render) with an API process that only counts lines itself
  relay     ExaBGP supervised by bgp.process.ExaBGP, lines relayed to this process, counted
  decode    the same, every line through bgp.decode.decode_line, paths counted
  bird      a BIRD 2 receiver into the kernel (the reference), until N routes are in its table

The clock starts when the ToR's kernel shows the TCP session established on port 179
(/proc/<bird>/net/tcp of the ToR's namespace) and stops when N paths are counted. Printed:
medians of --runs runs of that time, ExaBGP's and the API child's RSS after the load, and the
time from ExaBGP's `state up` line. --profile FILE writes a cProfile of this process (the
speaker side) for the last decode run; --pyspy FILE records ExaBGP with py-spy if it is on PATH.
--env k=v passes extra ExaBGP environment settings; --neighbor 'stmt;' adds a statement to
every rendered neighbor block (to try settings without changing the renderer); --read-pause
overrides ExaBGP.read_pause. PODBGP_BENCH_TRACE=FILE makes the counter write every line it gets,
with its arrival time, to FILE (a capture for decoder micro-benchmarks).

Measured here (2 shared cores, medians of 3) at 10k routes: see the commit messages of bgp/.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import ipaddress
import json
import logging
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from bgp import process, render
from bgp.decode import decode_line
from bgp.types import PeerConfig, UpdateEvent

TOR, NODE, PREFIXLEN = "172.20.0.1", "172.20.0.2", 16
TOR_AS, NODE_AS = 65000, 65001
PR_SET_PDEATHSIG = 1

COUNTER = r'''
import os, sys, time
n, out = int(sys.argv[1]), sys.argv[2]
count, up, done, lines = 0, None, None, 0
trace = open(os.environ["PODBGP_BENCH_TRACE"], "w") if os.environ.get("PODBGP_BENCH_TRACE") else None
for line in sys.stdin.buffer:
    lines += 1
    if trace:
        trace.write(f"{time.monotonic():.4f} {line.decode()}")
    if up is None and b'"state": "up"' in line:
        up = time.monotonic()
    elif b'"announce"' in line:
        count += line.count(b'"nlri"')
    elif b'"type": "update"' in line and b'"body"' in line:  # `receive { packets; }`: one route each
        count += 1
    if done is None and count >= n:
        done = time.monotonic()
        with open(out + ".tmp", "w") as f:
            f.write(f"{up} {done} {lines}\n")
        os.replace(out + ".tmp", out)
        if trace:
            trace.flush()
'''


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def rss_mib(pid: int | None) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB, or (nan, nan) when the process is gone."""
    if pid is None:
        return float("nan"), float("nan")
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f)
    except OSError:
        return float("nan"), float("nan")
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def children(pid: int | None) -> list[int]:
    if pid is None:
        return []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@dataclass
class Lab:
    """Two namespaces joined by a veth pair, and a BIRD ToR exporting N routes."""

    n: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    tmp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="pbrecv-"))
    procs: list[subprocess.Popen] = field(default_factory=list)
    made: list[str] = field(default_factory=list)

    @property
    def tor(self) -> str:
        return f"pbrecv-{self.tag}-tor"

    @property
    def node(self) -> str:
        return f"pbrecv-{self.tag}-node"

    def up(self) -> None:
        for ns in (self.tor, self.node):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.tor, "link", "add", "t0", "type", "veth", "peer", "name", "eth0", "netns", self.node)
        sh("ip", "-n", self.tor, "addr", "add", f"{TOR}/{PREFIXLEN}", "dev", "t0")
        sh("ip", "-n", self.node, "addr", "add", f"{NODE}/{PREFIXLEN}", "dev", "eth0")
        sh("ip", "-n", self.tor, "link", "set", "t0", "up")
        sh("ip", "-n", self.node, "link", "set", "eth0", "up")

    def prefixes(self) -> list[tuple[str, str]]:
        if self.n > 65000:
            raise SystemExit("at most 65000 routes")
        return [(str(ipaddress.IPv4Network((0x0A000000 + i * 256, 24))), f"172.20.{1 + i // 250}.{1 + i % 250}")
                for i in range(self.n)]

    def bird(self, name: str, ns: str, text: str) -> tuple[subprocess.Popen, str]:
        conf, sock = os.path.join(self.tmp, f"{name}.conf"), os.path.join(self.tmp, f"{name}.ctl")
        with open(conf, "w") as f:
            f.write(text)
        p = subprocess.Popen(["ip", "netns", "exec", ns, "bird", "-f", "-c", conf, "-s", sock],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.procs.append(p)
        return p, sock

    def start_tor(self) -> tuple[subprocess.Popen, int]:
        """A fresh ToR for every run: no session state, timers or stale routes carried over."""
        routes = "\n".join(f"  route {p} via {gw};" for p, gw in self.prefixes())
        proc, sock = self.bird(f"tor-{uuid.uuid4().hex[:4]}", self.tor, f"""router id {TOR};
log stderr {{ error, fatal, bug }};
protocol device {{ scan time 10; }}
protocol static pods {{
  ipv4;
{routes}
}}
protocol bgp node {{
  local {TOR} as {TOR_AS};
  neighbor {NODE} as {NODE_AS};
  hold time 9;
  ipv4 {{ import none; export all; }};
}}
""")
        deadline = time.monotonic() + 60
        want = f"{self.n} of {self.n} routes"
        while time.monotonic() < deadline:
            out = subprocess.run(["birdc", "-s", sock, "show", "route", "count"], capture_output=True, text=True)
            if want in out.stdout:
                return proc, self._bird_pid(sock)
            time.sleep(0.1)
        raise SystemExit(f"the ToR did not load its {self.n} routes: {out.stdout.strip()} {out.stderr.strip()}")

    def _bird_pid(self, sock: str) -> int:
        """birdc does not print the pid: find the bird whose command line names this socket."""
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if argv and argv[0].endswith(b"bird") and sock.encode() in argv:
                    return int(pid)
        raise SystemExit("cannot find the ToR's bird process")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Established:
    """Polls the ToR's TCP table (its own namespace, through /proc/PID/net) for port 179 up."""

    def __init__(self, pid: int) -> None:
        self.pid, self.at = pid, None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        files = [f"/proc/{self.pid}/net/tcp", f"/proc/{self.pid}/net/tcp6"]
        while not self._stop.is_set():
            for path in files:
                with open(path) as f:
                    next(f)
                    for line in f:
                        cols = line.split()
                        if cols[3] == "01" and (cols[1].endswith(":00B3") or cols[2].endswith(":00B3")):
                            self.at = time.monotonic()
                            return
            time.sleep(0.0005)

    def stop(self) -> None:
        self._stop.set()


def peer_config() -> PeerConfig:
    return PeerConfig(address=ipaddress.ip_address(TOR), asn=TOR_AS, local_address=ipaddress.ip_address(NODE),
                      local_asn=NODE_AS, router_id=ipaddress.ip_address(NODE))


def config_text(api: list[str], neighbor_extra: list[str]) -> str:
    text = render.render([peer_config()], api)
    if neighbor_extra:
        extra = "".join(f"    {s.rstrip(';')};\n" for s in neighbor_extra)
        text = text.replace(f"    router-id {NODE};\n", f"    router-id {NODE};\n{extra}", 1)
    return text


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    seconds: float
    from_up: float
    exabgp_rss: float
    exabgp_hwm: float
    child_rss: float
    lines: int
    exabgp_cpu: float = float("nan")  # ExaBGP's CPU seconds from its start to the last route (wall
    speaker_cpu: float = float("nan")  # time is noisy on a shared machine; CPU time much less)


def run_exabgp(lab: Lab, tor_pid: int, mode: str, args: argparse.Namespace, profile: cProfile.Profile | None) -> Result:
    rdir = os.path.join(lab.tmp, f"run-{uuid.uuid4().hex[:6]}")
    os.makedirs(rdir)
    done_file = os.path.join(rdir, "counted")
    if mode == "counter":
        script = os.path.join(rdir, "count.py")
        with open(script, "w") as f:
            f.write(COUNTER)
        api = [sys.executable, script, str(lab.n), done_file]
    else:
        api = process.api_command(os.path.join(rdir, "api.sock"))
    text = config_text(api, args.neighbor)
    for swap in args.conf_replace:
        old, new = swap.split("=", 1)
        assert old in text, f"{old!r} is not in the rendered configuration"
        text = text.replace(old, new)
    if args.receive_packets:
        text = text.replace("            parsed;\n", "            packets;\n")
    return asyncio.run(_run_exabgp(lab, tor_pid, mode, args, rdir, done_file, text, profile))


async def _run_exabgp(lab: Lab, tor_pid: int, mode: str, args: argparse.Namespace, rdir: str, done_file: str,
                      text: str, profile: cProfile.Profile | None) -> Result:
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    state = {"paths": 0, "lines": 0, "up": None, "done": None}

    arrivals: list[float] = []

    def on_line(line: str) -> None:
        state["lines"] += 1
        if args.hist:
            arrivals.append(time.monotonic())
        if mode == "decode":
            ev = decode_line(line)
            if isinstance(ev, UpdateEvent):
                state["paths"] += len(ev.announced)
            elif state["up"] is None and getattr(ev, "state", None) == "up":
                state["up"] = time.monotonic()
        else:
            if '"announce"' in line:
                state["paths"] += line.count('"nlri"')
            elif state["up"] is None and '"state": "up"' in line:
                state["up"] = time.monotonic()
        if state["done"] is None and state["paths"] >= lab.n:
            state["done"] = time.monotonic()
            finished.set()

    extra = dict(kv.split("=", 1) for kv in args.env)
    base_env = process.exabgp_env
    process.exabgp_env = lambda: {**base_env(), **extra}  # type: ignore[assignment]
    # run ExaBGP inside the node's namespace: the supervisor execs `exabgp`, so wrap it
    wrapper = os.path.join(rdir, "exabgp-in-ns")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec ip netns exec {lab.node} {process.find_exabgp('exabgp')} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    bgp = process.ExaBGP(rdir, wrapper, on_line, lambda: None, lambda rc: None)
    if args.read_pause is not None:
        bgp.read_pause = args.read_pause
    est = Established(tor_pid)
    if profile:
        profile.enable()
    cpu0 = time.process_time()
    try:
        await bgp.start(text)
        deadline = loop.time() + args.timeout
        while loop.time() < deadline:
            if mode == "counter":
                if os.path.exists(done_file):
                    with open(done_file) as f:
                        up, done, lines = f.read().split()
                    state.update(up=float(up) if up != "None" else None, done=float(done), lines=int(lines))
                    break
                await asyncio.sleep(0.01)
            else:
                try:
                    await asyncio.wait_for(finished.wait(), 0.5)
                    break
                except asyncio.TimeoutError:
                    pass
        if profile:
            profile.disable()
        if state["done"] is None:
            raise SystemExit(f"{mode}: only {state['paths']} of {lab.n} paths after {args.timeout}s")
        speaker_cpu = time.process_time() - cpu0
        exabgp_cpu = cpu_seconds(_exabgp_pid(bgp.pid))
        await asyncio.sleep(0.3)  # let ExaBGP finish the tail before sampling memory
        exa_pid = _exabgp_pid(bgp.pid)
        kids = children(exa_pid)
        exa_rss, exa_hwm = rss_mib(exa_pid)
        child_rss = sum(rss_mib(k)[0] for k in kids) if kids else 0.0
        assert est.at is not None, "the ToR never showed the session established"
        if args.hist:
            buckets: dict[int, int] = {}
            for t in arrivals:
                buckets[int((t - est.at) * 10)] = buckets.get(int((t - est.at) * 10), 0) + 1
            print("    lines per 100 ms:", " ".join(f"{k / 10:.1f}:{v}" for k, v in sorted(buckets.items())))
        return Result(state["done"] - est.at, state["done"] - state["up"] if state["up"] else float("nan"),
                      exa_rss, exa_hwm, child_rss, state["lines"], exabgp_cpu, speaker_cpu)
    finally:
        est.stop()
        await bgp.stop()
        process.exabgp_env = base_env  # type: ignore[assignment]


def _exabgp_pid(pid: int | None) -> int | None:
    """`ip netns exec` execs, so the supervisor's pid is ExaBGP's own; follow a shell if there is one."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/comm") as f:
        comm = f.read().strip()
    if comm in ("ip", "sh"):
        kids = children(pid)
        return kids[0] if kids else None
    return pid


def run_bird(lab: Lab, tor_pid: int) -> Result:
    _, sock = lab.bird(f"rx-{uuid.uuid4().hex[:4]}", lab.node, f"""router id {NODE};
log stderr {{ error, fatal, bug }};
protocol device {{ scan time 10; }}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol bgp tor {{
  local {NODE} as {NODE_AS};
  neighbor {TOR} as {TOR_AS};
  hold time 9;
  ipv4 {{ import all; export none; }};
}}
""")
    proc = lab.procs[-1]
    est = Established(tor_pid)
    try:
        deadline = time.monotonic() + 120
        route_file = None
        while time.monotonic() < deadline:
            if route_file is None:
                pid = lab._bird_pid(sock) if os.path.exists(sock) else None
                route_file = f"/proc/{pid}/net/route" if pid else None
                time.sleep(0.005)
                continue
            with open(route_file) as f:
                count = sum(1 for _ in f) - 2  # the header and the connected /16
            if count >= lab.n:
                done = time.monotonic()
                break
            time.sleep(0.01)
        else:
            raise SystemExit("bird receiver did not converge")
        rss, hwm = rss_mib(pid)
        return Result(done - est.at, float("nan"), rss, hwm, 0.0, 0)  # type: ignore[operator]
    finally:
        est.stop()
        proc.terminate()
        proc.wait(5)
        subprocess.run(["ip", "-n", lab.node, "route", "flush", "proto", "bird"], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mode", nargs="+", default=["counter", "relay", "decode"],
                    choices=["counter", "relay", "decode", "bird"])
    ap.add_argument("--env", action="append", default=[], help="extra ExaBGP environment, k=v")
    ap.add_argument("--neighbor", action="append", default=[], help="extra statement in the neighbor block")
    ap.add_argument("--profile", help="cProfile of this process during the last decode run, to FILE")
    ap.add_argument("--pyspy", help="py-spy record ExaBGP during the last run of each mode, to FILE-MODE.txt")
    ap.add_argument("--conf-replace", action="append", default=[], metavar="OLD=NEW",
                    help="replace text in the rendered configuration (e.g. to undo a setting)")
    ap.add_argument("--receive-packets", action="store_true",
                    help="counter mode: ExaBGP sends raw UPDATEs (hex) instead of parsed JSON")
    ap.add_argument("--read-pause", type=float, help="override ExaBGP.read_pause (seconds; 0 = off)")
    ap.add_argument("--hist", action="store_true", help="print lines received per 100 ms (relay, decode)")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--json", help="append the results as JSON lines to FILE")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the speaker side only decodes and counts
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    if not shutil.which("bird"):
        raise SystemExit("needs BIRD 2: apt-get install -y bird2")
    lab = Lab(args.routes)

    def on_term(signum, frame):
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        lab.up()
        print(f"# N={args.routes} env={args.env} neighbor={args.neighbor} read_pause={args.read_pause}", flush=True)
        for mode in args.mode:
            results = []
            for i in range(args.runs):
                last = i == args.runs - 1
                prof = cProfile.Profile() if (args.profile and mode == "decode" and last) else None
                tor, tor_pid = lab.start_tor()
                try:
                    if mode == "bird":
                        results.append(run_bird(lab, tor_pid))
                    elif args.pyspy and last:
                        results.append(_PySpy(f"{args.pyspy}-{mode}.txt").around(
                            lambda: run_exabgp(lab, tor_pid, mode, args, prof)))
                    else:
                        results.append(run_exabgp(lab, tor_pid, mode, args, prof))
                finally:
                    tor.terminate()
                    tor.wait(10)
                r = results[-1]
                print(f"  {mode:8} run {i + 1}: {r.seconds:6.3f}s (from up {r.from_up:6.3f}s) "
                      f"exabgp {r.exabgp_rss:5.1f} MiB (peak {r.exabgp_hwm:5.1f}) child {r.child_rss:5.1f} MiB "
                      f"lines {r.lines} cpu exabgp {r.exabgp_cpu:5.2f}s speaker {r.speaker_cpu:5.2f}s", flush=True)
                if prof:
                    prof.dump_stats(args.profile)
                    pstats.Stats(prof).sort_stats("tottime").print_stats(15)
            med = {k: statistics.median(getattr(r, k) for r in results)
                   for k in ("seconds", "from_up", "exabgp_rss", "exabgp_hwm", "child_rss", "exabgp_cpu",
                             "speaker_cpu")}
            print(f"{mode:8} N={args.routes} median {med['seconds']:6.3f}s  exabgp {med['exabgp_rss']:5.1f} MiB "
                  f"(peak {med['exabgp_hwm']:5.1f})  child {med['child_rss']:5.1f} MiB  cpu exabgp "
                  f"{med['exabgp_cpu']:5.2f}s speaker {med['speaker_cpu']:5.2f}s", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"mode": mode, "n": args.routes, "env": args.env, "neighbor": args.neighbor,
                                        "read_pause": args.read_pause, "runs": [r.__dict__ for r in results], **med}) + "\n")
    finally:
        lab.close()


class _PySpy:
    """py-spy record of ExaBGP from the moment it exists until the run ends (if py-spy is there)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def around(self, fn):
        exe = shutil.which("py-spy")
        if exe is None:
            print("# py-spy not on PATH, not recording", flush=True)
            return fn()
        stop = threading.Event()
        holder: dict[str, subprocess.Popen] = {}

        def watch() -> None:
            # the newest `exabgp server` process is the one this run starts
            before = set(os.listdir("/proc"))
            while not stop.is_set():
                for pid in set(os.listdir("/proc")) - before:
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            argv = f.read().split(b"\0")
                    except OSError:
                        continue
                    if any(a.endswith(b"exabgp") for a in argv) and b"server" in argv and argv[0] != b"ip" \
                            and b"/bin/sh" not in argv[0]:
                        holder["p"] = subprocess.Popen([exe, "record", "-p", pid, "-r", "250", "-f", "raw",
                                                        "-o", self.out], stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL)
                        return
                time.sleep(0.01)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        try:
            return fn()
        finally:
            stop.set()
            if "p" in holder:
                holder["p"].send_signal(signal.SIGINT)
                holder["p"].wait(20)


if __name__ == "__main__":
    main()
