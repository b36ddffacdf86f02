"""One node of an N-node dual-stack cluster: podbgp against BIRD 2, same ToR, same run.

    sudo .venv/bin/python -m bench.scale --nodes 5000 [--json] [--repeat 3] [--bird-repeat 5] [--keep] [--skip-bird]
                                          [--kubeconfig] [--bfd] [--relist] [--relist-repeat 2] [--api-down 2]

The world: N Node objects of ~6 KB (30 images, 4 conditions, 10 labels) in the lab API server;
a BIRD 2 ToR in its own namespace with every other node's two PodCIDRs as static routes whose
gateway is that node's address, exported over eBGP (one IPv4 and one IPv6 session per receiver),
so the ToR sends each node's address as a third-party next hop: one UPDATE per node and family.
The ToR and both receivers share one L2 (a bridge in the ToR's namespace), so every node address
is on-link for the receivers. Receiver 1 is `podbgp speaker` as node0; receiver 2 is BIRD 2
exporting into the kernel. They run one after the other, never together.

The speaker runs as deploy/'s DaemonSet Pod does (lab.daemonset): in-cluster configuration from
KUBERNETES_SERVICE_HOST/PORT and the service-account token and CA bound at their mount in a
private mount namespace, the DaemonSet's capabilities; the API serves HTTPS and allows that token
only what deploy/'s RBAC grants. --kubeconfig runs it the developer's way instead (an
administrator's kubeconfig: the loader imports more, about +13 MiB).

Measured (medians over --repeat runs where repeated):
- established_to_kernel_s: both of the receiver's sessions established, as the ToR's kernel sees
  them (TCP ESTABLISHED on port 179, read with sock_diag as `ss -tn state established` does; the
  later of the IPv4 and IPv6 sessions counts) -> the last of the 2*(N-1) routes present in the
  receiver's kernel (routes of the receiver's protocol: 80 for podbgp, 12 for BIRD), read from a
  netlink route monitor opened before the receiver starts. BIRD opens its two sessions up to
  ~0.2 s apart and its first family's routes flow meanwhile, so the same measure is also given
  family by family (each family from its own session), with the ratio of both. In about one BIRD
  run in three, one family stalls ~2 s: the ToR stops sending to that session (its socket idle,
  the window open, nothing unsent), a BIRD-to-BIRD effect not seen towards podbgp; hence
  --bird-repeat 5, the medians and every run listed.
- podbgp.list_s: speaker process start -> its `nodes.synced` log line seen.
- rss: after convergence, the speaker and every descendant (ExaBGP, its API child), from /proc;
  speaker_vmhwm_mib: the speaker's peak RSS up to then (VmHWM).
- churn_cpu_pct: Node status patches at N/300 per second (every Node once per 5 minutes, only
  heartbeats change) for --churn-seconds; CPU time of the speaker and descendants / wall time.
- node_delete_to_kernel_ms: DELETE a Node -> both its routes gone (RTM_DELROUTE events).
- withdraw_to_kernel_ms: `birdc disable` of a one-route static protocol at the ToR -> the route
  gone from the receiver's kernel (the time includes starting birdc).
- relist (--relist, and always with --bfd), after convergence, --relist-repeat times: the API
  server stopped, its state moved one resourceVersion on, started again after --api-down s; the
  speaker's Node watch gets 410 and re-lists every Node (--relist-touch: each Node annotated
  podbgp.io/bench-relist meanwhile, so the re-list finds every one changed) (relist_cause, relist_via, relist_count,
  relist_changed; relist_logged_s: the speaker's own `seconds=`; api_ready_to_relisted_s). From the
  stop to --settle s after the re-list: cpu_s of the speaker and each descendant, and how long the
  speaker's asyncio loop took to answer /healthz, probed every 50 ms from its namespace
  (loop_at_rest; loop_during_relist, from the API ready to 2 s after the list was logged;
  loop_whole_window: p50, p99, max, probes over 100/300/900 ms).
- --bfd: BFD on the speaker's two ToR sessions, 300 ms x 3 on both ends (the speaker's peers get
  `bfd: {minRx: 300, minTx: 300, multiplier: 3}`; the ToR runs BIRD's protocol bfd with `bfd on` in
  pod_4 and pod_6 and traces its BFD state changes to tor-bfd.log). Each run waits until both
  sessions are up on both ends (speaker status bfd.state "up", `birdc show bfd sessions` Up). Per
  re-list and over the whole last run (bfd_whole_run): bfd_downs_speaker (its status' `downs`,
  after - before), bfd_downs_tor (BIRD's traced Up -> not Up), session_resets_speaker (`since`
  changed or not up), session_resets_tor (`birdc show protocols` pod_4/pod_6 changed), and
  bfd_engine_left_after_speaker_stop. The speaker runs with the DaemonSet's capabilities; RSS
  includes the BFD engine (bgp.bfd_engine, ~14 MiB).
Progress goes to stderr; the table (or one JSON object with --json) to stdout.

Measured 2026-12-03 19:24 (2 shared cores, load 0.7 before, 0.4 after), --nodes 5000 --bfd
--relist-touch --repeat 1 --skip-bird, two re-lists of 5,000 changed Nodes: BFD up on both ends
4.0 s after the speaker started (0.45 s after convergence); each re-list 0.52 / 0.43 s as the
speaker logs it, the loop's longest /healthz answer 748 / 789 ms (one stretch each), speaker CPU
1.47 / 1.49 s and the BFD engine's 0.05 s over ~12 s; 0 BFD downs at the speaker and at the ToR, 0
BGP downs traced at the ToR, 0 session resets, over the re-lists and the whole run. RSS 113 MiB
(speaker 68, ExaBGP 30, BFD engine 14, API child 2). Earlier runs with FRR's bfdd as the engine
(four runs, eight re-lists, loop stalls up to 925 ms): the same 0 downs.
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
import uuid

from lab import daemonset

from . import _bfd
from . import _scale_nl as nl
from . import _scale_world as w

POD_PROTO, BIRD_PROTO = 80, 12  # podbgp's rtm_protocol; RTPROT_BIRD
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    pass


def say(msg: str) -> None:
    print(f"scale: {msg}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# ---- /proc -------------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _role(pid: int, root: int) -> str:
    """speaker (the root), exabgp, api_child (what ExaBGP runs: the API process, whatever it
    has exec'd into), bfd_engine (the speaker's BFD engine, bgp.bfd_engine), or other."""
    if pid == root:
        return "speaker"
    cmd = _cmdline(pid)
    if "bgp.bfd_engine" in cmd:
        return "bfd_engine"
    if "api_child" in cmd:
        return "api_child"
    if "exabgp" in cmd:
        return "exabgp"
    parent = _ppid(pid)
    if parent and parent != root and "exabgp" in _cmdline(parent):
        return "api_child"
    return "other"


def rss_split(root: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid in w.descendants(root):
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss = int(f.read().split()[1]) * PAGE / 2**20
        except (OSError, IndexError, ValueError):
            continue
        role = _role(pid, root)
        out[role] = round(out.get(role, 0.0) + rss, 1)
    return out


def vm_hwm(pid: int) -> float | None:
    """The process's peak RSS (VmHWM) in MiB: what a memory limit must leave room for."""
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(ln for ln in f if ln.startswith("VmHWM:"))
        return round(int(line.split()[1]) / 1024, 1)
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            out[pid] = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return out


def cpu_pct(root: int, seconds: float, during=None) -> tuple[float, float]:
    """% of one core used by root and its descendants over `seconds` (running `during` meanwhile)."""
    pids = w.descendants(root)
    t0, c0 = time.monotonic(), cpu_ticks(pids)
    extra = during(seconds) if during else time.sleep(seconds)
    t1, c1 = time.monotonic(), cpu_ticks(pids)
    used = sum(c1[p] - c0[p] for p in c1 if p in c0) / CLK_TCK
    return 100.0 * used / (t1 - t0), extra


# ---- the API over HTTP (keep-alive) --------------------------------------------------------------

class Api:
    def __init__(self, port: int, ca: str, token: str) -> None:
        self.port = port
        self.token = token
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30,
                                                context=ssl.create_default_context(cafile=ca))

    def call(self, method: str, path: str, body: dict | None = None, ctype: str = "application/json") -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if data:
            headers["Content-Type"] = ctype
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()  # a dropped keep-alive connection: reconnect once
                if attempt == 2:
                    raise
        if resp.status >= 300:
            raise BenchError(f"{method} {path}: HTTP {resp.status} {raw[:200]!r}")
        return json.loads(raw)

    def close(self) -> None:
        self.conn.close()


# ---- one receiver's convergence -------------------------------------------------------------------

class Converge:
    """Watches one receiver from its start: sessions at the ToR, routes in its kernel.

    `established` is the moment the later of the receiver's two sessions (IPv4, IPv6) is seen
    established at the ToR; `done` the moment the last expected route appeared. Per family,
    `up_at` and `done_at` allow the same measure family by family (a receiver whose sessions
    come up apart gets part of its routes before `established`)."""

    def __init__(self, tor_ns: str, rx_ns: str, protocol: int, peers: tuple, expected: set) -> None:
        self.mon = nl.RouteMonitor(rx_ns, protocol)
        self.diag = nl.EstablishedWatch(tor_ns)
        self.rx_ns, self.protocol = rx_ns, protocol
        self.family = {str(a): nl.route_key(ipaddress.ip_network(a))[0] for a in peers}  # peer -> AF_*
        self.expected = expected
        self.missing = {f: {k for k in expected if k[0] == f} for f in self.family.values()}
        self.established: float | None = None
        self.up_at: dict[int, float] = {}  # family -> its session first seen established
        self.done_at: dict[int, float] = {}  # family -> its last route seen
        self.done: float | None = None
        self.flaps = 0
        self.own_cpu = 0.0

    def close(self) -> None:
        self.mon.close()
        self.diag.close()

    def _apply(self, added, deleted, overrun: bool, now: float) -> None:
        if overrun:  # events were lost: the table itself is the truth
            present = nl.dump_routes(self.rx_ns, self.protocol).keys()
            for f in self.missing:
                self.missing[f] = {k for k in self.expected if k[0] == f} - present
        for k in added:
            self.missing.get(k[0], set()).discard(k)
        for k in deleted:
            if k in self.expected:
                self.missing[k[0]].add(k)
                self.done_at.pop(k[0], None)
                self.done = None
        for f, left in self.missing.items():
            if not left and f not in self.done_at:
                self.done_at[f] = now
        if len(self.done_at) == len(self.missing) and self.done is None:
            self.done = now

    def run(self, alive, timeout: float, on_tick=None) -> None:
        start = time.monotonic()
        c0 = sum(os.times()[:2])
        next_diag = 0.0
        while True:
            now = time.monotonic()
            if self.established is None or now >= next_diag:
                # every 2 ms until both sessions are up; then every 100 ms, only to notice a flap
                next_diag = now + 0.1
                self._sessions(now)
            if on_tick:
                on_tick(now)
            added, deleted, overrun = self.mon.read(0.002 if self.established is None else 0.02)
            self._apply(added, deleted, overrun, time.monotonic())
            if self.done is not None and self.established is not None:
                self.own_cpu = sum(os.times()[:2]) - c0  # what watching cost this process
                return
            if not alive():
                raise BenchError("the receiver exited before converging")
            if time.monotonic() - start > timeout:
                raise BenchError(f"timed out after {timeout:.0f}s: {self._progress()}")

    def _sessions(self, now: float) -> None:
        seen = {self.family[a] for a in self.diag.peers() if a in self.family}
        for f in seen:
            self.up_at.setdefault(f, now)
        up = len(seen) == len(self.family)
        if up and self.established is None:
            self.established = now  # the later of the two sessions
        elif not up and self.established is not None and self.done is None:
            self.flaps += 1
            say("a session went down before convergence; timing from its re-establishment")
            self.established = None
            self.up_at = {f: t for f, t in self.up_at.items() if f in seen}

    def _progress(self) -> str:
        present = nl.dump_routes(self.rx_ns, self.protocol).keys()
        missing = sorted(self.expected - present)
        eg = ", ".join(f"{ipaddress.ip_address(k[1])}/{k[2]}" for k in missing[:6])
        return (f"sessions {'up' if self.established else 'not up'}, {len(self.expected) - len(missing)} of "
                f"{len(self.expected)} routes in the kernel" + (f" (missing e.g. {eg})" if missing else ""))

    def spread(self) -> float:
        """Seconds between the first and the second session coming up (timing starts at the second)."""
        return max(self.up_at.values()) - min(self.up_at.values()) if self.up_at else 0.0

    def per_family(self) -> float:
        """The slower family's own session-established -> its last route."""
        return max(self.done_at[f] - self.up_at[f] for f in self.done_at)

    def wait_deleted(self, keys: set, timeout: float = 30.0) -> float:
        """Block until every key got an RTM_DELROUTE; returns the time of the last one."""
        left = set(keys)
        deadline = time.monotonic() + timeout
        while left:
            added, deleted, overrun = self.mon.read(0.05)
            now = time.monotonic()
            if overrun:
                left &= nl.dump_routes(self.rx_ns, self.protocol).keys()
            left -= set(deleted)
            if now > deadline:
                raise BenchError(f"timed out waiting for {len(left)} route(s) to leave the kernel")
        return now

    def drain(self) -> None:
        while any(self.mon.read(0.0)[:2]):
            pass


# ---- the bench ------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args) -> None:
        self.args = args
        rid = uuid.uuid4().hex[:6]
        self.run = w.Run(rid, os.path.join(w.RUN_ROOT, f"pbsc-{rid}"), keep=args.keep)
        self.nodes = w.nodes(args.nodes)
        self.others = [n for n in self.nodes if n.index != 0]
        rnd = random.Random(42)
        picks = rnd.sample(self.others, min(len(self.others), 2 * args.samples))
        self.withdraw_nodes = sorted(picks[: args.samples], key=lambda n: n.index)
        self.delete_nodes = sorted(picks[args.samples:], key=lambda n: n.index)
        self.expected = {nl.route_key(c) for n in self.others for c in (n.cidr4, n.cidr6)}
        self.nexthop = {nl.route_key(n.cidr4): n.v4.packed for n in self.others}
        self.nexthop.update({nl.route_key(n.cidr6): n.v6.packed for n in self.others})
        self.api: Api | None = None
        # more keys of each peer in the speaker's config (bench.leak's maxPrefixes; --bfd)
        self.peer_extra = w.speaker_bfd_extra() if args.bfd else ""
        self.bfd: _bfd.Observer | None = None  # with --bfd, once the speaker runs
        self.graceful_restart = 120  # the speaker's gracefulRestart (bench.leak --graceful-restart)
        self.result: dict = {"nodes": args.nodes, "routes": len(self.expected), "repeat": args.repeat,
                             "bird_repeat": 0 if args.skip_bird else args.bird_repeat,
                             "run_id": rid, "podbgp": {}, "bird": {},
                             "speaker_api_config": "kubeconfig" if args.kubeconfig else "in-cluster",
                             "bfd": bool(args.bfd)}

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        run = self.run
        os.makedirs(run.dir, exist_ok=True)
        say(f"run {run.id} in {run.dir}")
        self.tor, self.pod_ns, self.bird_ns = w.build_l2(run)
        t = time.monotonic()
        size = w.write_store(run.path("nodes.json"), self.nodes)
        self.result["node_object_bytes"] = size
        say(f"{len(self.nodes)} Node objects of ~{size} bytes written in {time.monotonic() - t:.1f}s")
        self.start_api()
        self.start_tor()

    def start_api(self) -> None:
        """The lab API server over HTTPS, as a cluster's: the bench's client holds an
        administrator's token; the speaker the service account's, allowed what deploy/ grants."""
        run = self.run
        port = w.free_port()
        self.deploy = w.deploy_objects()
        self.creds = creds = w.api_credentials(run, self.deploy)
        with open(run.path("kubeconfig"), "w") as f:  # as the speaker sees the API in its namespace
            f.write(w.kubeconfig(f"https://127.0.0.1:{w.API_PORT_IN_POD}", creds["ca"], creds["token"]))
        self.api_argv = [sys.executable, "-m", "lab.apiserver", "--state", run.path("nodes.json"),
                         "--tls-cert", creds["cert"], "--tls-key", creds["key"], "--token-file", creds["token_file"],
                         "--account", f"{creds['sa_token_file']}={creds['rules_file']}",
                         "--listen", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{w.API_PORT_IN_POD}@{self.pod_ns}"]
        self.spawn_api()
        self.api = Api(port, creds["ca"], creds["token"])
        t = time.monotonic()
        n = len(self.api.call("GET", "/api/v1/nodes")["items"])
        say(f"API server up ({n} Nodes, a list over HTTP takes {time.monotonic() - t:.2f}s)")

    def spawn_api(self) -> None:
        proc = self.run.spawn("apiserver", self.api_argv, self.run.path("apiserver.log"), stdout=subprocess.PIPE)
        line = proc.popen.stdout.readline()
        if line.strip() != b"ready":
            raise BenchError(f"the API server did not start; see {self.run.path('apiserver.log')}")

    def restart_api(self, down: float) -> tuple[float, float]:
        """Stop the API server, leave it down `down` seconds, start it again on its state moved one
        resourceVersion on (w.bump_resource_version): it has no history after a restart, so the
        speaker's watch, resumed from an older version, gets 410 and re-lists every Node. (Without
        the bump a watcher that is up to date resumes without 410, as against a real API server.)
        Returns (monotonic time stopped, monotonic time ready again)."""
        old = next(p for p in self.run.procs if p.name == "apiserver")
        t_stop = time.monotonic()
        self.run.stop(old)
        t_bump = time.monotonic()
        if self.args.relist_touch:  # every Node changed in a way the speaker keeps
            self.relists = getattr(self, "relists", 0) + 1
            w.annotate_nodes(self.run.path("nodes.json"), "podbgp.io/bench-relist", str(self.relists))
        else:
            w.bump_resource_version(self.run.path("nodes.json"))
        time.sleep(max(0.0, down - (time.monotonic() - t_bump)))
        self.spawn_api()
        if self.api is not None:
            self.api.close()  # its keep-alive connection went with the old server: the next call reconnects
        return t_stop, time.monotonic()

    def birdc(self, sock: str, *cmd: str, check: bool = True) -> str:
        p = subprocess.run(["birdc", "-s", sock, *cmd], capture_output=True, text=True, timeout=30)
        if check and p.returncode != 0:
            raise BenchError(f"birdc {' '.join(cmd)}: {(p.stderr or p.stdout).strip()[:300]}")
        return p.stdout

    def tor_config(self) -> str:
        return w.tor_config(self.nodes, self.withdraw_nodes, self.run.path("tor.log"),
                            bfd_log=self.run.path("tor-bfd.log") if self.args.bfd else None)

    def start_tor(self) -> None:
        run = self.run
        conf = run.path("tor.conf")
        with open(conf, "w") as f:
            f.write(self.tor_config())
        self.tor_sock = run.path("tor.ctl")
        run.spawn("bird-tor", ["bird", "-f", "-c", conf, "-s", self.tor_sock, "-P", run.path("tor.pid")],
                  run.path("tor.out"), netns=self.tor)
        want = len(self.expected)

        def counted() -> int | None:
            if not os.path.exists(self.tor_sock):
                return None
            m = re.search(r"Total: (\d+) of (\d+) routes", self.birdc(self.tor_sock, "show", "route", "count", check=False))
            return int(m.group(1)) if m and int(m.group(1)) >= want else None

        t = time.monotonic()
        try:
            nl.wait_for(counted, 60 + len(self.nodes) / 100, "the ToR's routes", interval=0.1)
        except TimeoutError:
            raise BenchError(f"the ToR did not load {want} routes; see {run.path('tor.log')}, {run.path('tor.out')}") from None
        out = self.birdc(self.tor_sock, "show", "route", "count").strip().splitlines()[-1]
        say(f"BIRD ToR up in {time.monotonic() - t:.1f}s: `birdc show route count`: {out}")
        self.result["tor_routes"] = want

    # -- helpers ----------------------------------------------------------------------------
    def flush(self, ns: str, proto: int) -> None:
        for fam in ("-4", "-6"):
            self.run.sh(["ip", "-n", ns, fam, "route", "flush", "proto", str(proto)], check=False)

    def wait_sessions_gone(self, peers: tuple) -> None:
        diag = nl.EstablishedWatch(self.tor)
        try:
            nl.wait_for(lambda: not ({str(a) for a in peers} & diag.peers()), 30, "the old sessions to close")
        finally:
            diag.close()

    def check_nexthops(self, ns: str, proto: int) -> bool:
        """Every route present, each via its node's own address (not the ToR's)."""
        present = nl.dump_routes(ns, proto)
        bad = [k for k in self.expected if present.get(k) != self.nexthop[k]]
        if bad:
            k = bad[0]
            gw = present.get(k)
            say(f"WARNING: {len(bad)} route(s) without their node's next hop, e.g. "
                f"{ipaddress.ip_address(k[1])}/{k[2]} via {ipaddress.ip_address(gw) if gw else gw}")
        return not bad

    def measure_withdraws(self, conv: Converge, what: str) -> list[float]:
        out = []
        for n in self.withdraw_nodes:
            conv.drain()
            t0 = time.monotonic()
            out_text = self.birdc(self.tor_sock, "disable", f"wd{n.index}")
            if "disabled" not in out_text:
                raise BenchError(f"birdc disable wd{n.index}: {out_text.strip()[-200:]}")
            out.append((conv.wait_deleted({nl.route_key(n.cidr4)}) - t0) * 1000)
            time.sleep(0.2)
        say(f"{what}: withdraw -> kernel " + ", ".join(f"{x:.0f}" for x in out) + " ms")
        for n in self.withdraw_nodes:  # restore the ToR for whoever comes next
            self.birdc(self.tor_sock, "enable", f"wd{n.index}")
        keys = {nl.route_key(n.cidr4) for n in self.withdraw_nodes}
        nl.wait_for(lambda: keys <= nl.dump_routes(conv.rx_ns, conv.protocol).keys(), 30,
                    "withdrawn routes to come back", interval=0.05)
        return out

    # -- podbgp -----------------------------------------------------------------------------
    def podbgp_once(self, k: int, extra: bool) -> dict:
        run = self.run
        self.flush(self.pod_ns, POD_PROTO)
        self.wait_sessions_gone(w.POD_RX)
        rt = run.path(f"podbgp-{k}")
        os.makedirs(rt, exist_ok=True)
        conf, log = os.path.join(rt, "podbgp.yaml"), os.path.join(rt, "speaker.log")
        with open(conf, "w") as f:
            self.status_address = f"127.0.0.1:{w.free_port()}"  # /healthz (LoopProbe); /status: the socket
            self.status_socket = os.path.join(rt, "run", "status.sock")
            f.write(w.speaker_config(os.path.join(rt, "run"), self.status_address,
                                     kubeconfig=run.path("kubeconfig") if self.args.kubeconfig else None,
                                     peer_extra=self.peer_extra, graceful_restart=self.graceful_restart))
        self.speaker_log = log
        conv = Converge(self.tor, self.pod_ns, POD_PROTO, w.POD_RX, self.expected)
        synced: list[float] = []
        synced_own: list[float | None] = []
        logf = open(log, "w+b")
        pos = [0]
        sp = None

        def tail(now: float) -> None:
            if synced:
                return
            logf.seek(pos[0])
            data = logf.read()
            nl_at = data.rfind(b"\n")
            if nl_at >= 0:
                pos[0] += nl_at + 1
                m = re.search(rb"nodes\.synced[^\n]*", data[: nl_at + 1])
                if m:
                    synced.append(now)
                    own = re.search(rb"seconds=([0-9.]+)", m.group(0))  # the speaker's own figure, if it logs one
                    synced_own.append(float(own.group(1)) if own else None)

        try:
            argv = [sys.executable, "-m", "speaker.cli", "speaker", "--config", conf, "--node-name", "node0",
                    "--asn", str(w.POD_ASN), "--log-level", "info"]
            t0 = time.monotonic()
            if self.args.kubeconfig:
                sp = run.spawn("speaker", argv, log, netns=self.pod_ns)
            else:  # in-cluster, as the DaemonSet's Pod: token and CA mounted, KUBERNETES_SERVICE_*
                launch = w.pod_launch(self.deploy, argv, self.creds["serviceaccount"], "node0", str(w.POD_RX[0]))
                self.result["speaker_capabilities"] = list(launch.capabilities)
                daemonset.prepare(launch)
                sp = run.spawn("speaker", daemonset.shell_argv(launch, self.pod_ns), log)
            conv.run(sp.alive, timeout=120 + len(self.nodes) / 50, on_tick=tail)
            while not synced and time.monotonic() < conv.done + 5:
                tail(time.monotonic())
                time.sleep(0.005)
            for pid in w.descendants(sp.pid):
                run.adopt(_role(pid, sp.pid), pid)
            res = {"established_to_kernel_s": conv.done - conv.established,
                   "session_spread_s": conv.spread(),
                   "established_to_kernel_per_family_s": conv.per_family(),
                   "start_to_kernel_s": conv.done - t0,
                   "list_s": synced[0] - t0 if synced else None,
                   "list_s_logged": synced_own[0] if synced_own else None,
                   "nexthops_ok": self.check_nexthops(self.pod_ns, POD_PROTO),
                   "monitor_overruns": conv.mon.overruns,
                   "bench_cpu_pct_while_converging": round(100 * conv.own_cpu / (conv.done - t0), 1)}
            say(f"podbgp run {k + 1}: Established -> {len(self.expected)} routes {res['established_to_kernel_s']:.2f}s "
                f"(start -> kernel {res['start_to_kernel_s']:.2f}s, list {res['list_s'] or float('nan'):.2f}s)")
            if self.args.bfd:
                res.update(self.bfd_up(t0))
            if extra:
                res.update(self.podbgp_extras(sp, conv))
            run.stop(sp)
            if self.args.bfd:
                res["bfd_engine_left_after_speaker_stop"] = self.bfd_engine_left()
            for p in [p for p in run.procs if p.name in ("exabgp", "api_child", "bfd_engine", "other")]:
                run.stop(p)
            return res
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                say(f"speaker log: {log}" + ("" if self.args.keep else " (removed with the run dir; --keep leaves it)"))
                _tail(log)
            raise
        finally:
            if sp is not None and sp.alive():
                for pid in w.descendants(sp.pid):  # so that teardown stops ExaBGP and its child too
                    run.adopt(_role(pid, sp.pid), pid)
            logf.close()
            conv.close()

    # -- BFD (--bfd) ------------------------------------------------------------------------
    def bfd_up(self, t0: float) -> dict:
        """Until the speaker's two BFD sessions are up on both ends (its status, the ToR's birdc)."""
        self.bfd = _bfd.Observer(self.status_socket, lambda *cmd: self.birdc(self.tor_sock, *cmd),
                                 self.run.path("tor-bfd.log"), tuple(str(a) for a in w.TOR),
                                 tuple(str(a) for a in w.POD_RX))
        try:
            self.bfd_first, waited = self.bfd.wait_up(30)
        except TimeoutError as exc:
            raise BenchError(str(exc)) from None
        up = time.monotonic() - t0
        say(f"BFD up on both ends {up:.2f}s after the speaker started ({waited:.2f}s after convergence): "
            + ", ".join(f"{a} {b.state} since {b.since}" for a, b in sorted(self.bfd_first.tor_bfd.items())))
        return {"bfd_up_after_start_s": round(up, 2)}

    def bfd_since_up(self) -> dict:
        """BFD downs and session resets on both ends since BFD first came up in this run."""
        d = _bfd.delta(self.bfd_first, self.bfd.snapshot())
        say(f"BFD over the whole run: downs speaker {d['bfd_downs_speaker']}, ToR {d['bfd_downs_tor']}; " + _resets(d))
        return d

    def bfd_engine_left(self, grace: float = 3.0) -> int:
        """The speaker has been stopped: how many of its BFD engines still run `grace` s later (the
        speaker is meant to stop its child; teardown stops any left, by PID)."""
        left = [p for p in self.run.procs if p.name == "bfd_engine"]
        deadline = time.monotonic() + grace
        while any(p.alive() for p in left) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [p.pid for p in left if p.alive()]
        if alive:
            say(f"WARNING: the BFD engine still running {grace:.0f}s after the speaker stopped: pid(s) {alive}")
        return len(alive)

    def relist(self, sp) -> dict:
        """The API server restarted (down --api-down s): the speaker's watch gets 410 and it re-lists
        every Node. Measured from the stop to --settle s after the re-list: the re-list's time
        (the speaker's own `seconds=` and the bench's view), the CPU of the speaker and its
        descendants, how long its loop took to answer /healthz, and with --bfd the BFD downs and
        session resets on both ends."""
        before = self.bfd.snapshot() if self.bfd else None
        log_at = os.path.getsize(self.speaker_log)
        probe = _bfd.LoopProbe(self.pod_ns, self.status_address)
        probe.start()
        try:
            time.sleep(1.0)  # the loop's answer time at rest, for comparison
            pids = w.descendants(sp.pid)
            c0 = cpu_ticks(pids)
            t_stop, t_ready = self.restart_api(self.args.api_down)
            say(f"API server stopped, down {self.args.api_down:.1f}s, ready again after {t_ready - t_stop:.1f}s; "
                "waiting for the speaker's re-list ...")
            listed, t_listed, text = self.wait_log(_bfd.LIST_LINE, log_at, 60 + len(self.nodes) / 50)
            time.sleep(self.args.settle)
            c1, t_end = cpu_ticks(pids), time.monotonic()
        finally:
            probe.stop()
        cpu = {r: sum(c1[p] - c0[p] for p in c1 if p in c0 and _role(p, sp.pid) == r) / CLK_TCK
               for r in {_role(p, sp.pid) for p in c1}}
        res = {"api_down_s": round(t_ready - t_stop, 2), "relist_via": listed["via"],
               "relist_count": listed["count"], "relist_changed": listed["changed"], "relist_deleted": listed["deleted"],
               "relist_logged_s": listed["seconds"], "api_ready_to_relisted_s": round(t_listed - t_ready, 2),
               "relist_cause": _bfd.relist_cause(text.decode(errors="replace")),
               "window_s": round(t_end - t_stop, 2), "cpu_s": {r: round(v, 2) for r, v in sorted(cpu.items())},
               "loop_at_rest": _bfd.lag_summary(probe.samples, end=t_stop),
               # the loop takes the list's changes after the watch thread has logged it: 2 s more
               "loop_during_relist": _bfd.lag_summary(probe.samples, t_ready, t_listed + 2.0),
               "loop_whole_window": _bfd.lag_summary(probe.samples, t_stop, t_end), "probe_failures": probe.failures}
        if self.bfd:
            res.update(_bfd.delta(before, self.bfd.snapshot()))
        say(f"re-list via {res['relist_via']}: {res['relist_count']} Nodes ({res['relist_changed']} changed) in "
            f"{res['relist_logged_s']:.2f}s as logged, {res['api_ready_to_relisted_s']:.2f}s after the API was ready; "
            f"CPU {res['cpu_s']} over {res['window_s']:.1f}s; loop /healthz during it: {res['loop_during_relist']}"
            + (f"; BFD downs speaker {res['bfd_downs_speaker']}, ToR {res['bfd_downs_tor']}; " + _resets(res) if self.bfd else ""))
        return res

    def wait_log(self, pattern: bytes, offset: int, timeout: float) -> tuple[dict, float, bytes]:
        """Until the speaker's log has a line matching pattern after offset: (its named groups,
        the moment seen, the log text from offset to that line)."""
        deadline = time.monotonic() + timeout
        with open(self.speaker_log, "rb") as f:
            while True:
                f.seek(offset)
                text = f.read()
                m = re.search(pattern, text)
                if m:
                    return _bfd.list_fields(m), time.monotonic(), text[: m.end()]
                if time.monotonic() > deadline:
                    raise BenchError(f"no {pattern!r} in the speaker's log within {timeout:.0f}s")
                time.sleep(0.02)

    def speaker_counters(self) -> dict:
        """The speaker's own counters, from its /status (its Unix socket)."""
        out = subprocess.run(["ip", "netns", "exec", self.pod_ns, sys.executable, "-m", "speaker.cli", "status", "--json",
                              "--socket", self.status_socket], capture_output=True, text=True, timeout=10)
        return json.loads(out.stdout).get("counters", {}) if out.returncode == 0 else {}

    def podbgp_extras(self, sp, conv: Converge) -> dict:
        time.sleep(2.0)  # let the post-convergence work (End-of-RIB, first prune) settle
        res: dict = {}
        if self.args.bfd or self.args.relist:
            runs = [self.relist(sp) for _ in range(self.args.relist_repeat)]
            res["relist"] = runs
            time.sleep(1.0)
        split = rss_split(sp.pid)
        res["rss_split_mib"] = split
        res["rss_mib"] = round(sum(split.values()), 1)
        res["speaker_vmhwm_mib"] = vm_hwm(sp.pid)
        say(f"podbgp RSS {res['rss_mib']:.0f} MiB ({', '.join(f'{k} {v:.0f}' for k, v in sorted(split.items()))}; "
            f"speaker peak {res['speaker_vmhwm_mib']} MiB)")
        before = self.speaker_counters()
        res["passes_to_converge"] = {k: before.get(k, 0) for k in ("reconciles", "full_passes")}
        idle, _ = cpu_pct(sp.pid, self.args.idle_seconds)
        res["idle_cpu_pct"] = round(idle, 1)
        say(f"podbgp idle CPU {idle:.1f}% over {self.args.idle_seconds:.0f}s; churn for {self.args.churn_seconds:.0f}s ...")
        churn, (sent, wall, target) = cpu_pct(sp.pid, self.args.churn_seconds, self.churn)
        res.update({"churn_cpu_pct": round(churn, 1), "churn_patches": sent,
                    "churn_patch_rate_per_s": round(sent / wall, 2), "churn_target_rate_per_s": round(target, 2)})
        after = self.speaker_counters()
        res["passes_during_idle_and_churn"] = {k: after.get(k, 0) - before.get(k, 0) for k in ("reconciles", "full_passes")}
        say(f"podbgp churn CPU {churn:.0f}% at {sent / wall:.1f} patches/s (target {target:.1f}); reconcile passes "
            f"to converge {res['passes_to_converge']}, during idle and churn {res['passes_during_idle_and_churn']} "
            "(full passes are the periodic resync)")
        time.sleep(1.0)
        dels = []
        for n in self.delete_nodes:
            conv.drain()
            t0 = time.monotonic()
            self.api.call("DELETE", f"/api/v1/nodes/{n.name}")
            dels.append((conv.wait_deleted({nl.route_key(n.cidr4), nl.route_key(n.cidr6)}) - t0) * 1000)
            time.sleep(0.3)
        say("podbgp: Node delete -> kernel " + ", ".join(f"{x:.0f}" for x in dels) + " ms")
        res.update({"node_delete_to_kernel_ms": med(dels), "node_delete_to_kernel_ms_max": max(dels),
                    "node_delete_to_kernel_ms_runs": [round(x, 1) for x in dels]})
        wd = self.measure_withdraws(conv, "podbgp")
        res.update({"withdraw_to_kernel_ms": med(wd), "withdraw_to_kernel_ms_max": max(wd),
                    "withdraw_to_kernel_ms_runs": [round(x, 1) for x in wd]})
        if self.bfd:
            res["bfd_whole_run"] = self.bfd_since_up()
        return res

    def churn(self, seconds: float) -> tuple[int, float, float]:
        """Status patches at N/300 per second, each to another Node, heartbeats only."""
        rate = len(self.nodes) / 300.0
        skip = {n.name for n in self.delete_nodes} | {"node0"}
        names = [n.name for n in self.nodes if n.name not in skip]
        random.Random(7).shuffle(names)
        created = time.time() - 86400
        t0 = time.monotonic()
        sent = 0
        while True:
            due = t0 + sent / rate
            if due >= t0 + seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            patch = {"status": {"conditions": w.conditions(time.time(), created)}}
            self.api.call("PATCH", f"/api/v1/nodes/{names[sent % len(names)]}/status", patch,
                          ctype="application/merge-patch+json")
            sent += 1
        end = max(time.monotonic(), t0 + seconds)
        return sent, end - t0, rate

    # -- BIRD -------------------------------------------------------------------------------
    def bird_once(self, k: int, extra: bool) -> dict:
        run = self.run
        self.flush(self.bird_ns, BIRD_PROTO)
        self.wait_sessions_gone(w.BIRD_RX)
        conf, sock = run.path(f"bird-{k}.conf"), run.path(f"bird-{k}.ctl")
        with open(conf, "w") as f:
            f.write(w.bird_rx_config(run.path(f"bird-{k}.log")))
        conv = Converge(self.tor, self.bird_ns, BIRD_PROTO, w.BIRD_RX, self.expected)
        try:
            t0 = time.monotonic()
            b = run.spawn("bird-rx", ["bird", "-f", "-c", conf, "-s", sock, "-P", run.path(f"bird-{k}.pid")],
                          run.path(f"bird-{k}.out"), netns=self.bird_ns)
            conv.run(b.alive, timeout=60 + len(self.nodes) / 100)
            res = {"established_to_kernel_s": conv.done - conv.established,
                   "session_spread_s": conv.spread(),
                   "established_to_kernel_per_family_s": conv.per_family(),
                   "start_to_kernel_s": conv.done - t0,
                   "nexthops_ok": self.check_nexthops(self.bird_ns, BIRD_PROTO),
                   "monitor_overruns": conv.mon.overruns,
                   "bench_cpu_pct_while_converging": round(100 * conv.own_cpu / (conv.done - t0), 1)}
            say(f"BIRD run {k + 1}: Established -> {len(self.expected)} routes {res['established_to_kernel_s']:.2f}s")
            if extra:
                time.sleep(1.0)
                res["rss_mib"] = round(sum(rss_split(b.pid).values()), 1)
                wd = self.measure_withdraws(conv, "BIRD")
                res.update({"withdraw_to_kernel_ms": med(wd), "withdraw_to_kernel_ms_max": max(wd)})
            run.stop(b)
            return res
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                say(f"BIRD receiver logs: {run.path(f'bird-{k}.log')}, {run.path(f'bird-{k}.out')}")
                _tail(run.path(f"bird-{k}.out"))
            raise
        finally:
            conv.close()

    # -- the whole ---------------------------------------------------------------------------
    def measure(self) -> dict:
        n = self.args.repeat
        runs = [self.podbgp_once(k, extra=(k == n - 1)) for k in range(n)]
        self.result["podbgp"] = summarize(runs)
        if not self.args.skip_bird:
            nb = self.args.bird_repeat
            runs = [self.bird_once(k, extra=(k == nb - 1)) for k in range(nb)]
            self.result["bird"] = summarize(runs)
            p, b = self.result["podbgp"], self.result["bird"]
            self.result["ratio"] = round(p["established_to_kernel_s"] / b["established_to_kernel_s"], 2)
            self.result["ratio_per_family"] = round(p["established_to_kernel_per_family_s"]
                                                    / b["established_to_kernel_per_family_s"], 2)
        return self.result


def _tail(path: str, lines: int = 25) -> None:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 65536))
            text = [ln for ln in f.read().decode(errors="replace").splitlines()
                    if "route.replace prefix=" not in ln and "route.delete prefix=" not in ln][-lines:]
    except OSError:
        return
    for line in text:
        print(f"  | {line}", file=sys.stderr)


def summarize(runs: list[dict]) -> dict:
    out = dict(runs[-1])
    for key in ("established_to_kernel_s", "established_to_kernel_per_family_s", "session_spread_s",
                "start_to_kernel_s", "list_s", "list_s_logged"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            out[key] = round(med(vals), 3)
            out[key + "_runs"] = [round(v, 3) for v in vals]
    out["nexthops_ok"] = all(r["nexthops_ok"] for r in runs)
    out["monitor_overruns"] = sum(r["monitor_overruns"] for r in runs)
    out["bench_cpu_pct_while_converging"] = max(r["bench_cpu_pct_while_converging"] for r in runs)
    for key in ("node_delete_to_kernel_ms", "node_delete_to_kernel_ms_max", "withdraw_to_kernel_ms",
                "withdraw_to_kernel_ms_max"):
        if out.get(key) is not None:
            out[key] = round(out[key], 1)
    return out


def table(r: dict) -> str:
    p, b = r["podbgp"], r.get("bird") or {}

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = [
        ("Established -> all routes (s, median)", f(p.get("established_to_kernel_s"), ".2f"), f(b.get("established_to_kernel_s"), ".2f")),
        ("  runs", " ".join(f"{x:.2f}" for x in p.get("established_to_kernel_s_runs", [])),
         " ".join(f"{x:.2f}" for x in b.get("established_to_kernel_s_runs", []))),
        ("  each family from its own session (s)", f(p.get("established_to_kernel_per_family_s"), ".2f"),
         f(b.get("established_to_kernel_per_family_s"), ".2f")),
        ("  IPv4/IPv6 sessions up apart by (s)", f(p.get("session_spread_s"), ".2f"), f(b.get("session_spread_s"), ".2f")),
        ("process start -> all routes (s)", f(p.get("start_to_kernel_s"), ".2f"), f(b.get("start_to_kernel_s"), ".2f")),
        ("start -> all Nodes listed (s)", f(p.get("list_s"), ".2f"), "-"),
        ("  as the speaker logs it (seconds=)", f(p.get("list_s_logged"), ".2f"), "-"),
        ("next hops = node addresses", str(p.get("nexthops_ok")), str(b.get("nexthops_ok", "-"))),
        ("RSS (MiB)", f(p.get("rss_mib"), ".0f"), f(b.get("rss_mib"), ".0f")),
        ("  speaker's peak RSS, VmHWM (MiB)", f(p.get("speaker_vmhwm_mib"), ".0f"), "-"),
        ("idle CPU (% of a core)", f(p.get("idle_cpu_pct"), ".1f"), "-"),
        ("CPU under status churn (% of a core)", f(p.get("churn_cpu_pct"), ".0f"), "-"),
        ("  patches/s achieved (target)", f"{p.get('churn_patch_rate_per_s', 0):.1f} ({p.get('churn_target_rate_per_s', 0):.1f})", ""),
        ("Node delete -> kernel (ms, median/max)", f"{f(p.get('node_delete_to_kernel_ms'), '.0f')}/{f(p.get('node_delete_to_kernel_ms_max'), '.0f')}", "-"),
        ("withdraw at ToR -> kernel (ms, median/max)", f"{f(p.get('withdraw_to_kernel_ms'), '.0f')}/{f(p.get('withdraw_to_kernel_ms_max'), '.0f')}",
         f"{f(b.get('withdraw_to_kernel_ms'), '.0f')}/{f(b.get('withdraw_to_kernel_ms_max'), '.0f')}" if b else "-"),
    ]
    head = (f"One node of a {r['nodes']}-node dual-stack cluster: {r['routes']} routes, "
            f"Node objects ~{r.get('node_object_bytes', 0)} B, {r['repeat']} podbgp and {r['bird_repeat']} BIRD run(s)")
    w1 = max(len(x[0]) for x in rows)
    w2 = max(len(x[1]) for x in rows + [("", "podbgp", "")])
    lines = [head, f"{'':{w1}}  {'podbgp':>{w2}}  BIRD 2"]
    lines += [f"{a:{w1}}  {b_:>{w2}}  {c}" for a, b_, c in rows]
    if p.get("rss_split_mib"):
        lines.append("podbgp RSS split (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(p["rss_split_mib"].items())))
    lines += relist_lines(p)
    if r.get("ratio") is not None:
        lines.append(f"ratio podbgp/BIRD (Established -> all routes): {r['ratio']:.2f}x "
                     f"(family by family: {r['ratio_per_family']:.2f}x)")
    return "\n".join(lines)


def _resets(d: dict) -> str:
    """Session resets as both ends saw them, with what changed."""
    out = (f"session resets speaker {d['session_resets_speaker']}, ToR {d['session_resets_tor']} "
           f"(BGP downs traced at the ToR {sum(d.get('tor_bgp_downs_traced', {}).values())})")
    changed = {**d.get("sessions_changed_speaker", {}), **d.get("sessions_changed_tor", {})}
    return out + "".join(f"; {k}: {a} -> {b}" for k, (a, b) in changed.items())


def relist_lines(p: dict) -> list[str]:
    """The re-list scenario and BFD (--relist, --bfd) under the table."""
    out = []
    for i, x in enumerate(p.get("relist") or []):
        lag = x["loop_during_relist"]
        out.append(f"re-list {i + 1} ({x['relist_cause'] or '?'}, via {x['relist_via']}): {x['relist_count']} Nodes, "
                   f"{x['relist_changed']} changed, {x['relist_logged_s']:.2f}s as logged, "
                   f"{x['api_ready_to_relisted_s']:.2f}s from the API ready; CPU s "
                   + ", ".join(f"{k} {v:.2f}" for k, v in x["cpu_s"].items()) + f" over {x['window_s']:.1f}s; "
                   f"loop /healthz max {lag.get('max_ms', '-')} ms, p99 {lag.get('p99_ms', '-')} ms")
        if "bfd_downs_speaker" in x:
            out.append(f"  BFD downs: speaker {x['bfd_downs_speaker']}, ToR {x['bfd_downs_tor']}; " + _resets(x))
    if (b := p.get("bfd_whole_run")) is not None:
        out.append(f"BFD from up to the end of the run: downs speaker {b['bfd_downs_speaker']}, ToR {b['bfd_downs_tor']}; "
                   + _resets(b) + f"; BFD engines left after the speaker stopped: {p.get('bfd_engine_left_after_speaker_stop')}")
    return out


def _preflight(args) -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (network namespaces): sudo .venv/bin/python -m bench.scale")
    for tool in ("bird", "birdc", "ip", "kubectl", "openssl", "setpriv", "unshare"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found: install bird2, iproute2, util-linux, openssl and kubectl (make bench does)")
    if not 20 <= args.nodes <= w.MAX_NODES:
        raise BenchError(f"--nodes must be within 20..{w.MAX_NODES}")


def add_bfd_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--bfd", action="store_true",
                    help="BFD on the speaker's ToR sessions (300 ms x 3; BIRD's protocol bfd at the ToR); count BFD "
                         "downs and session resets on both ends")


def _raise_interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each receiver (medians)")
    ap.add_argument("--bird-repeat", type=int, default=5,
                    help="runs of the BIRD receiver (cheap; about one in three stalls ~2 s in one family)")
    ap.add_argument("--samples", type=int, default=5, help="Node deletes and withdraws measured")
    ap.add_argument("--churn-seconds", type=float, default=25.0)
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--skip-bird", action="store_true")
    ap.add_argument("--keep", action="store_true", help="leave the run directory for inspection")
    ap.add_argument("--kubeconfig", action="store_true",
                    help="run the speaker with --kubeconfig (a developer's way) instead of in-cluster as the DaemonSet")
    add_bfd_args(ap)
    ap.add_argument("--relist", action="store_true",
                    help="the re-list scenario without --bfd (API server restarted: 410, every Node listed again)")
    ap.add_argument("--relist-repeat", type=int, default=2, help="API restarts in the re-list scenario")
    ap.add_argument("--relist-touch", action="store_true",
                    help="while the API is down, annotate every Node (podbgp.io/bench-relist): the re-list finds all changed")
    ap.add_argument("--api-down", type=float, default=2.0, help="seconds the API server stays down in the re-list scenario")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds watched after the re-list (a BFD down shows within 0.9 s at 300 ms x 3)")
    args = ap.parse_args(argv)
    try:
        _preflight(args)
    except BenchError as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    bench = Bench(args)
    try:
        bench.setup()
        result = bench.measure()
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130
    except (BenchError, RuntimeError, TimeoutError, OSError) as exc:
        say(f"FAILED: {exc}")
        say(f"run directory: {bench.run.dir}" + ("" if args.keep else " (removed; --keep leaves it)"))
        return 1
    finally:
        if bench.api:
            bench.api.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        bench.run.teardown()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep:
            say(f"kept {bench.run.dir}")
    print(json.dumps(result, sort_keys=True) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
