"""Service announcements at scale: one node of a cluster with 10,000 LoadBalancer Services and
50,000 endpoints in EndpointSlices, measured on the real speaker (issue 13, "What must be shown" 6).

    sudo .venv/bin/python -m bench.services [--json] [--services 10000] [--endpoints 50000]
                                            [--rate 50] [--seconds 60] [--changes 30] [--nodes 100] [--keep]

The world (bench._services_world has the layout and its reasons): Nodes node0..node{N-1} in the
lab API server (HTTPS; the speaker runs in-cluster as deploy/'s DaemonSet Pod with the service
account's token, as bench.scale runs it), the Services (type LoadBalancer, status ingress IPs
from the pool 100.64.0.0/16, half externalTrafficPolicy Local, half Cluster) and one
EndpointSlice per Service, all created through the API before the speaker starts. The speaker is
node0 in its own namespace; its one BGP peer is a raw BGP receiver of the bench's own in the
ToR's namespace that reads UPDATEs and prints every prefix with the monotonic time at which the
bytes were read from its socket ("on the wire": when the receiver reads it).

Measured:
- memory: the speaker started twice in the same cluster, first without a `services:` block in
  its configuration, then with one; RSS (/proc/PID/statm) of the speaker and of ExaBGP, 3 s
  after each has announced everything it will; the difference of the speaker's is what the
  Services add (target <= 30 MiB).
- start -> all announcements: speaker process start -> the receiver holding every expected
  Service prefix (the time the last one was read).
- one endpoint change -> UPDATE on the wire: --changes writes that change node0's announcement
  (the last local ready endpoint of a Local Service, or the only endpoint of a Cluster Service,
  set terminating, then ready again), one at a time with nothing else going on: API response ->
  the receiver reading the prefix's withdraw/announce (target <= 100 ms). The same is reported
  for the flips inside the churn.
- CPU under churn: --rate EndpointSlice PUTs per second for --seconds, each flipping one
  endpoint's conditions (about 10% change node0's announcements); utime+stime from
  /proc/PID/stat of the speaker and of ExaBGP separately, as % of one core (target <= 5%).
- at the end the receiver's Service prefixes are compared with what the endpoints' states say.
Progress goes to stderr; the summary (or one JSON object with --json) to stdout.
--py-spy PATH samples the speaker through the churn (a pointer to where its CPU goes).

Seen 2026-12-03 at the defaults, after SliceInfo.ready became "a ready endpoint in this slice" and
watch lines are decoded with orjson (3 runs, load average 1.4-2.9 on 2 cores): speaker CPU under
50 changes/s 3.45-3.85% (asyncio loop 0.42-0.50, list/watch threads 3.0-3.34; target 5%: PASS),
ExaBGP 2.7-3.0%; change -> wire median 2.3-3.6 ms, p95 4.1-9.7, max 4.6-13.3 (under churn p95
5.3-8.1, max 25-40); start -> all 5,297 prefixes 5.8-7.0 s (ExaBGP takes one `announce route`
command at a time: 5,297 of them alone take it 4.9-5.1 s to put on the wire, `announce attributes
... nlri` batches 2.1-2.6 s); speaker RSS +20.7-21.9 MiB (36.3-37.8 -> 58.2-58.5), ExaBGP +10.3.
Before those two changes: CPU 6.4-6.8% (FAIL), json.loads of each 22 KB slice event the largest part.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from lab import daemonset

from . import _scale_world as sw
from . import _services_world as sv
from .scale import Api, BenchError, _role, _tail, cpu_ticks, vm_hwm

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
OWN_CIDR = "10.128.0.0/24"  # node0's IPv4 PodCIDR (bench._scale_world.nodes)


def say(msg: str) -> None:
    print(f"services: {msg}", file=sys.stderr, flush=True)


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return round(int(f.read().split()[1]) * PAGE / 2**20, 1)
    except (OSError, IndexError, ValueError):
        return None


def thread_ticks(pid: int) -> dict[int, int]:
    """utime+stime of each thread of pid."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            out[int(tid)] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return out


# ---- the receiver's output -------------------------------------------------------------------

class Wire:
    """What the receiver has read: every event (time, kind, prefix) and the prefixes it holds."""

    def __init__(self, stream) -> None:
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.events: list[tuple[float, str, str]] = []
        self.held: dict[str, float] = {}  # prefix -> when announced
        self.up = False
        self.downs = 0
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.q.put(line.decode(errors="replace").rstrip("\n"))
        self.q.put(None)

    def pump(self, timeout: float = 0.0) -> bool:
        """Take what has come (waiting up to timeout for the first line); False at the end of the stream."""
        try:
            line = self.q.get(timeout=timeout) if timeout > 0 else self.q.get_nowait()
        except queue.Empty:
            return True
        while True:
            if line is None:
                return False
            self._line(line)
            try:
                line = self.q.get_nowait()
            except queue.Empty:
                return True

    def _line(self, line: str) -> None:
        parts = line.split(" ", 3)
        if len(parts) < 3:
            return
        t, kind, arg = float(parts[0]), parts[1], parts[2]
        if kind in ("A", "W"):
            self.events.append((t, kind, arg))
            if kind == "A":
                self.held[arg] = t
            else:
                self.held.pop(arg, None)
        elif kind == "UP":
            self.up = True
        elif kind == "DOWN":
            self.up = False
            self.downs += 1
            self.held.clear()

    def wait(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            got = pred()
            if got:
                return got
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
            if not self.pump(0.05):
                raise BenchError("the BGP receiver exited")

    def pool_held(self) -> set[str]:
        return {p for p in self.held if p.startswith("100.64.")}


# ---- the bench ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args) -> None:
        self.args = args
        rid = uuid.uuid4().hex[:6]
        self.run = sw.Run(rid, os.path.join(sw.RUN_ROOT, f"pbsv-{rid}"), keep=args.keep)
        self.run.ns = lambda role: f"pbsv-{rid}-{role}"  # names unique to this run
        self.svcs = sv.layout(args.services, args.endpoints, args.nodes)
        self.model = sv.Model(self.svcs)
        self.api: Api | None = None
        self.wire: Wire | None = None
        self.result: dict = {
            "run_id": rid, "services": args.services, "endpoints": args.endpoints, "nodes": args.nodes,
            "slices": sum(1 for s in self.svcs if s.nodes), "pool": str(sv.POOL),
            "layout": ("LoadBalancer Services (allocateLoadBalancerNodePorts false), ingress IPs from the pool, "
                       "even indexes eTP=Local, odd Cluster; one "
                       "IPv4 EndpointSlice each: 1 endpoint per Service, the rest in full slices of 100 from the "
                       "first Service on; endpoint j of Service i on node (i+j) % nodes"),
            "receiver": "the bench's own raw BGP listener in the ToR's namespace; times are when it read the bytes",
            "api_tcp_nodelay": not args.api_nagle, "node_port_range": list(sv.NODE_PORTS),
            "targets": dict(sv.TARGETS)}

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        run = self.run
        os.makedirs(run.dir, exist_ok=True)
        say(f"run {run.id} in {run.dir}")
        self.tor, self.pod_ns = run.ns("tor"), run.ns("pod")
        for ns in (self.tor, self.pod_ns):
            run.sh(["ip", "netns", "add", ns])
            run.namespaces.append(ns)
            run.sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            run.sh(["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"], netns=ns)
        run.sh(["ip", "-n", self.tor, "link", "add", "p-pod", "type", "veth", "peer", "name", "eth0", "netns", self.pod_ns])
        for ns, dev, (a4, a6) in ((self.tor, "p-pod", sw.TOR), (self.pod_ns, "eth0", sw.POD_RX)):
            run.sh(["ip", "-n", ns, "link", "set", dev, "up"])
            run.sh(["ip", "-n", ns, "addr", "add", f"{a4}/{sw.L2_V4.prefixlen}", "dev", dev])
            run.sh(["ip", "-n", ns, "addr", "add", f"{a6}/{sw.L2_V6.prefixlen}", "dev", dev, "nodad"])
        sw.write_store(run.path("nodes.json"), sw.nodes(self.args.nodes))
        self.start_api()
        self.load_services()
        self.start_receiver()

    def start_api(self) -> None:
        run = self.run
        port = sw.free_port()
        self.deploy = sw.deploy_objects()
        self.creds = creds = sw.api_credentials(run, self.deploy)
        # kube-apiserver (Go) writes with TCP_NODELAY; lab.apiserver's handler writes headers and body
        # apart and, with Nagle on, the body waits for the client's delayed ACK: +40 ms on every
        # response (and on watch events that follow a write). --api-nagle keeps the lab's default.
        # The node port range widened as kube-apiserver's --service-node-port-range does: 5,000
        # eTP=Local LoadBalancer Services need a health check node port each (30000-32767 holds 2,768).
        boot = (f"import sys, lab.apiserver as a, lab.kinds as k; k.NODE_PORTS = {sv.NODE_PORTS!r}; "
                f"a.Handler.disable_nagle_algorithm = {not self.args.api_nagle}; raise SystemExit(a.main(sys.argv[1:]))")
        argv = [sys.executable, "-c", boot, "--state", run.path("nodes.json"),
                "--tls-cert", creds["cert"], "--tls-key", creds["key"], "--token-file", creds["token_file"],
                "--account", f"{creds['sa_token_file']}={creds['rules_file']}",
                "--listen", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{sw.API_PORT_IN_POD}@{self.pod_ns}"]
        helptext = subprocess.run([sys.executable, "-m", "lab.apiserver", "--help"], capture_output=True, text=True,
                                  check=False, cwd=sw.REPO, timeout=30).stdout
        if "--service-cidr" in helptext:
            argv += ["--service-cidr", sw.SERVICE[0], "--service-cidr", sw.SERVICE[1]]
        if "--service-node-port-range" in helptext:
            argv += ["--service-node-port-range", f"{sv.NODE_PORTS[0]}-{sv.NODE_PORTS[1]}"]
        proc = run.spawn("apiserver", argv, run.path("apiserver.log"), stdout=subprocess.PIPE)
        if proc.popen.stdout.readline().strip() != b"ready":
            raise BenchError(f"the API server did not start; see {run.path('apiserver.log')}")
        self.port = port
        self.api = Api(port, creds["ca"], creds["token"])

    def load_services(self) -> None:
        """Every Service (then its status: the ingress IP) and its slice, over 4 connections."""
        t = time.monotonic()
        local = threading.local()

        def api() -> Api:
            if not hasattr(local, "api"):
                local.api = Api(self.port, self.creds["ca"], self.creds["token"])
            return local.api

        def one(s: sv.Svc) -> None:
            a = api()
            got = a.call("POST", f"/api/v1/namespaces/{s.namespace}/services", sv.service_object(s))
            if not (got.get("status", {}).get("loadBalancer", {}).get("ingress")):
                a.call("PATCH", s.path() + "/status", sv.status_patch(s), ctype="application/merge-patch+json")
            if s.nodes:
                a.call("POST", f"/apis/discovery.k8s.io/v1/namespaces/{s.namespace}/endpointslices",
                       sv.slice_object(s, self.model.states[s.index]))

        with ThreadPoolExecutor(4) as ex:
            for k, _ in enumerate(ex.map(one, self.svcs)):
                if k and k % 2000 == 0:
                    say(f"{k} Services and slices created ({time.monotonic() - t:.0f}s)")
        took = time.monotonic() - t
        self.result["load_s"] = round(took, 1)
        say(f"{len(self.svcs)} Services, {self.result['slices']} EndpointSlices, {self.args.endpoints} endpoints "
            f"created in {took:.1f}s; node0 must announce {len(self.model.expected())} prefixes")

    def start_receiver(self) -> None:
        argv = [sys.executable, "-u", "-m", "bench._services_world", "receive", str(sw.TOR[0]), str(sw.TOR_ASN)]
        self.rx = self.run.spawn("receiver", argv, self.run.path("receiver.log"), netns=self.tor, stdout=subprocess.PIPE)
        self.wire = Wire(self.rx.popen.stdout)

    # -- the speaker -------------------------------------------------------------------------
    def config(self, rt: str, services: bool) -> str:
        text = (f"peers:\n  - {{address: {sw.TOR[0]}, asn: {sw.TOR_ASN}, holdTime: 9}}\n"
                f"clusterCIDRs: [{sw.CLUSTER[0]}, \"{sw.CLUSTER[1]}\"]\n"
                f"serviceCIDRs: [{sw.SERVICE[0]}, \"{sw.SERVICE[1]}\"]\n"
                "gracefulRestart: 120\nconvergenceTimeout: 30\n"
                f"runtimeDir: {rt}/run\nstatusAddress: 127.0.0.1:{sw.free_port()}\n")
        if services:
            text += f"services:\n  loadBalancer:\n    pools:\n      - {{name: bench, cidrs: [\"{sv.POOL}\"]}}\n"
        return text

    def start_speaker(self, tag: str, services: bool) -> tuple[sw.Proc, float, str]:
        rt = self.run.path(f"speaker-{tag}")
        os.makedirs(rt, exist_ok=True)
        conf, log = os.path.join(rt, "podbgp.yaml"), os.path.join(rt, "speaker.log")
        with open(conf, "w") as f:
            f.write(self.config(rt, services))
        argv = [sys.executable, "-m", "speaker.cli", "speaker", "--config", conf, "--node-name", "node0",
                "--asn", str(sw.POD_ASN), "--log-level", "info"]
        launch = sw.pod_launch(self.deploy, argv, self.creds["serviceaccount"], "node0", str(sw.POD_RX[0]))
        daemonset.prepare(launch)
        t0 = time.monotonic()
        sp = self.run.spawn("speaker", daemonset.shell_argv(launch, self.pod_ns), log)
        return sp, t0, log

    def pids(self, sp: sw.Proc) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for pid in sw.descendants(sp.pid):
            role = _role(pid, sp.pid)
            out.setdefault(role, []).append(pid)
            if role != "speaker":
                self.run.adopt(role, pid)
        return out

    def stop_speaker(self, sp: sw.Proc) -> None:
        for pid in sw.descendants(sp.pid):
            self.run.adopt(_role(pid, sp.pid), pid)
        self.run.stop(sp)
        for p in [p for p in self.run.procs if p.name in ("exabgp", "api_child", "other")]:
            self.run.stop(p)
        self.wire.wait(lambda: not self.wire.up, 30, "the session to close")

    def memory(self, sp: sw.Proc) -> dict:
        roles = self.pids(sp)
        return {"speaker_rss_mib": rss_mib(sp.pid), "speaker_vmhwm_mib": vm_hwm(sp.pid),
                "exabgp_rss_mib": round(sum(rss_mib(p) or 0 for p in roles.get("exabgp", [])), 1),
                "api_child_rss_mib": round(sum(rss_mib(p) or 0 for p in roles.get("api_child", [])), 1)}

    def baseline(self) -> dict:
        """The same cluster, a speaker with no services block: its memory, nothing of the pool announced."""
        sp, t0, log = self.start_speaker("plain", services=False)
        try:
            self.wire.wait(lambda: OWN_CIDR in self.wire.held, 120, "node0's PodCIDR at the receiver")
            t_own = self.wire.held[OWN_CIDR] - t0
            self.settle(3.0)
            res = self.memory(sp) | {"start_to_own_cidr_s": round(t_own, 2), "pool_prefixes": len(self.wire.pool_held())}
            say(f"without services: speaker RSS {res['speaker_rss_mib']} MiB, ExaBGP {res['exabgp_rss_mib']} MiB "
                f"(own PodCIDR at the receiver {t_own:.2f}s after start; pool prefixes {res['pool_prefixes']})")
            self.stop_speaker(sp)
            return res
        except BaseException:
            say(f"speaker log: {log}")
            _tail(log)
            raise

    def settle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.wire.pump(0.05)

    # -- with services ---------------------------------------------------------------------------
    def measure(self) -> dict:
        r = self.result
        r["memory_plain"] = self.baseline()
        expected = self.model.expected()
        sp, t0, log = self.start_speaker("services", services=True)
        try:
            n0 = len(self.wire.events)
            self.wire.wait(lambda: expected <= self.wire.pool_held(), 120 + len(self.svcs) / 100,
                           f"{len(expected)} Service prefixes at the receiver")
            last = max(self.wire.held[p] for p in expected)
            pool_events = [e for e in self.wire.events[n0:] if e[2].startswith("100.64.")]
            r["start"] = {"expected": len(expected), "announced": len(expected & self.wire.pool_held()),
                          "complete": True, "start_to_all_announced_s": round(last - t0, 2),
                          "first_service_prefix_s": round(min(e[0] for e in pool_events) - t0, 2),
                          "unexpected": len(self.wire.pool_held() - expected)}
            say(f"start -> all {len(expected)} Service prefixes at the receiver: {last - t0:.2f}s "
                f"(first after {r['start']['first_service_prefix_s']:.2f}s)")
            self.settle(3.0)
            mem = self.memory(sp)
            plain = r["memory_plain"]
            mem["speaker_added_mib"] = round(mem["speaker_rss_mib"] - plain["speaker_rss_mib"], 1)
            mem["exabgp_added_mib"] = round(mem["exabgp_rss_mib"] - plain["exabgp_rss_mib"], 1)
            r["memory"] = mem
            say(f"with services: speaker RSS {mem['speaker_rss_mib']} MiB (+{mem['speaker_added_mib']}), "
                f"ExaBGP {mem['exabgp_rss_mib']} MiB (+{mem['exabgp_added_mib']})")
            r["idle_cpu"] = self.cpu(sp, 5.0, None)
            self.latency()
            spy = self.start_py_spy(sp)
            r["churn"] = self.cpu(sp, self.args.seconds, self.churn)
            if spy is not None:
                r["churn_profile"] = self.read_py_spy(spy)
            r["after"] = self.check_final()
            r["memory_after_churn"] = self.memory(sp)
            self.stop_speaker(sp)
        except BaseException:
            say(f"speaker log: {log}")
            _tail(log)
            raise
        r["verdicts"] = sv.verdicts(r)
        return r

    def cpu(self, sp: sw.Proc, seconds: float, during) -> dict:
        roles = self.pids(sp)
        every = [p for pids in roles.values() for p in pids]
        t0, c0, th0 = time.monotonic(), cpu_ticks(every), thread_ticks(sp.pid)
        extra = during(seconds) if during else self.settle(seconds)
        t1, c1, th1 = time.monotonic(), cpu_ticks(every), thread_ticks(sp.pid)
        out = {}
        # the speaker's own split: its asyncio loop (the main thread) and the other threads (list/watch)
        main = (th1.get(sp.pid, 0) - th0.get(sp.pid, 0)) / CLK_TCK
        rest = sum(th1[t] - th0[t] for t in th1 if t in th0 and t != sp.pid) / CLK_TCK
        out["speaker_main_thread_cpu_pct"] = round(100 * main / (t1 - t0), 2)
        out["speaker_other_threads_cpu_pct"] = round(100 * rest / (t1 - t0), 2)
        for role, pids in roles.items():
            used = sum(c1[p] - c0[p] for p in pids if p in c0 and p in c1) / CLK_TCK
            out[f"{role}_cpu_pct"] = round(100 * used / (t1 - t0), 2)
        out["seconds"] = round(t1 - t0, 1)
        if extra:
            out.update(extra)
        say("CPU (% of a core) " + ("under churn" if during else "idle") + ": "
            + ", ".join(f"{k} {v}" for k, v in out.items()))
        return out

    def start_py_spy(self, sp: sw.Proc) -> sw.Proc | None:
        """With --py-spy: sample the speaker (all threads) through the churn."""
        if not self.args.py_spy:
            return None
        out = self.run.path("churn.spy")
        argv = [self.args.py_spy, "record", "--pid", str(sp.pid), "--duration", str(int(self.args.seconds)),
                "--rate", "200", "--nonblocking", "--format", "raw", "--output", out]
        return self.run.spawn("py-spy", argv, self.run.path("py-spy.log"))

    def read_py_spy(self, spy: sw.Proc) -> dict:
        deadline = time.monotonic() + 30
        while spy.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            with open(self.run.path("churn.spy")) as f:
                prof = sv.profile_top(f)
        except OSError as exc:
            return {"error": str(exc)}
        say("speaker under churn, py-spy samples (all threads): total " + str(prof["samples"]))
        for name, n in prof["inclusive"][:25]:
            say(f"  incl {100 * n / max(1, prof['samples']):5.1f}%  {name}")
        for name, n in prof["self"][:15]:
            say(f"  self {100 * n / max(1, prof['samples']):5.1f}%  {name}")
        return prof

    def write(self, ch: sv.Change) -> tuple[float, float]:
        """PUT the Service's slice as the model has it now: (time sent, time the response was read)."""
        s = self.svcs[ch.svc]
        body = sv.slice_object(s, self.model.states[ch.svc])
        t = time.monotonic()
        self.api.call("PUT", s.slice_path(), body)
        return t, time.monotonic()

    def latency(self) -> None:
        """--changes flips of node0's announcement, one at a time, each waited for at the receiver."""
        churn = sv.Churn(self.model, seed=11)
        writes: list[tuple[str, str, float]] = []
        sends: list[tuple[str, str, float]] = []
        n0 = len(self.wire.events)
        lists = churn.deciders
        for k in range(self.args.changes):
            i = lists[k % len(lists)][(k // len(lists)) % len(lists[k % len(lists)])]
            prefix = self.svcs[i].prefix
            for _ in range(2):  # away, then back
                ch = churn.flip_decider(i)
                n = sum(1 for e in self.wire.events if e[2] == prefix)
                t_send, t = self.write(ch)
                writes.append((prefix, ch.flips, t))
                sends.append((prefix, ch.flips, t_send))
                self.wire.wait(lambda p=prefix, n=n: sum(1 for e in self.wire.events if e[2] == p) > n, 10,
                               f"the UPDATE for {prefix}")
                self.settle(0.05)
        lat = sv.match(writes, self.wire.events[n0:])
        got = [x for x in lat if x is not None]
        from_send = [x for x in sv.match(sends, self.wire.events[n0:]) if x is not None]
        self.result["change_to_wire_ms"] = sv.stats(got) | {
            "from_request_sent": sv.stats(from_send),
            "missing": len(lat) - len(got), "withdraw": sv.stats([x for x, w in zip(lat, writes) if x is not None and w[1] == "W"]),
            "announce": sv.stats([x for x, w in zip(lat, writes) if x is not None and w[1] == "A"]),
            "samples": got}
        st = self.result["change_to_wire_ms"]
        say(f"one change -> UPDATE read: {st['n']} samples, median {st['median']} ms, p95 {st['p95']} ms, max {st['max']} ms")

    def churn(self, seconds: float) -> dict:
        churn = sv.Churn(self.model, seed=7)
        writes: list[tuple[str, str, float]] = []
        n0 = len(self.wire.events)
        t0 = time.monotonic()
        sent = changed = 0
        rate = self.args.rate
        while True:
            due = t0 + sent / rate
            if due >= t0 + seconds:
                break
            while time.monotonic() < due:
                self.wire.pump(min(0.01, max(0.0, due - time.monotonic())))
            ch = churn.next(time.monotonic())
            _, t = self.write(ch)
            sent += 1
            if ch.flips:
                changed += 1
                writes.append((self.svcs[ch.svc].prefix, ch.flips, t))
        wall = max(time.monotonic(), t0 + seconds) - t0
        self.settle(2.0)
        lat = sv.match(writes, self.wire.events[n0:])
        got = [x for x in lat if x is not None]
        return {"writes": sent, "rate_per_s": round(sent / wall, 1), "announcement_changes": changed,
                "change_to_wire_ms_under_churn": sv.stats(got) | {"missing": len(lat) - len(got)}}

    def check_final(self) -> dict:
        expected = self.model.expected()
        try:
            self.wire.wait(lambda: self.wire.pool_held() == expected, 15, "the receiver to match the endpoints' states")
        except BenchError:
            pass
        held = self.wire.pool_held()
        res = {"expected": len(expected), "held": len(held), "missing": len(expected - held),
               "unexpected": len(held - expected), "match": held == expected, "session_downs": self.wire.downs}
        say(f"after the churn: {res}")
        return res


# ---- output ------------------------------------------------------------------------------------

def summary(r: dict) -> str:
    v = r.get("verdicts", {})
    lines = [(f"bench.services: {r['services']} Services, {r['endpoints']} endpoints in {r['slices']} EndpointSlices, "
              f"{r['nodes']} Nodes (node0 measured); API load {r.get('load_s')}s"),
             f"  layout: {r['layout']}",
             f"  receiver: {r['receiver']}"]
    st = r.get("start", {})
    lines.append(f"  start -> all {st.get('expected')} Service prefixes announced: {st.get('start_to_all_announced_s')} s")
    for name, x in v.items():
        lines.append(f"  {name}: {x['value']} (target {x['target']}) {'PASS' if x['pass'] else 'FAIL'}")
    ch = r.get("churn", {})
    lines.append(f"  speaker threads under churn: asyncio loop {ch.get('speaker_main_thread_cpu_pct')}%, list/watch threads "
                 f"{ch.get('speaker_other_threads_cpu_pct')}% of a core")
    lines.append(f"  churn: {ch.get('writes')} writes at {ch.get('rate_per_s')}/s, {ch.get('announcement_changes')} "
                 f"changed node0's announcements; speaker {ch.get('speaker_cpu_pct')}%, ExaBGP {ch.get('exabgp_cpu_pct')}%, "
                 f"API child {ch.get('api_child_cpu_pct')}% of a core; change -> wire under churn "
                 f"{ch.get('change_to_wire_ms_under_churn')}")
    m, p = r.get("memory", {}), r.get("memory_plain", {})
    lines.append(f"  RSS speaker {p.get('speaker_rss_mib')} -> {m.get('speaker_rss_mib')} MiB, ExaBGP "
                 f"{p.get('exabgp_rss_mib')} -> {m.get('exabgp_rss_mib')} MiB (no services block -> services)")
    lines.append(f"  after the churn: {r.get('after')}")
    return "\n".join(lines)


def _raise_interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.services", description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=50000)
    ap.add_argument("--nodes", type=int, default=100, help="Nodes in the cluster (endpoints spread over them)")
    ap.add_argument("--rate", type=float, default=50.0, help="EndpointSlice writes per second in the churn")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the churn")
    ap.add_argument("--changes", type=int, default=30, help="announcement flips timed one at a time (x2: away and back)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="leave the run directory for inspection")
    ap.add_argument("--py-spy", metavar="PATH", help="sample the speaker with this py-spy through the churn "
                    "(its own CPU load then shares the machine: not for the CPU figure)")
    ap.add_argument("--api-nagle", action="store_true",
                    help="run the lab API server as it is (Nagle on: +40 ms per response) instead of with TCP_NODELAY")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("services: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "openssl", "setpriv", "unshare"):
        if not shutil.which(tool):
            print(f"services: {tool} not found", file=sys.stderr)
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
    except (BenchError, RuntimeError, TimeoutError, OSError, ValueError) as exc:
        say(f"FAILED: {exc}")
        say(f"run directory: {bench.run.dir}" + ("" if args.keep else " (removed; --keep leaves it)"))
        return 1
    finally:
        if bench.api:
            bench.api.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bench.run.teardown()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print(json.dumps(result, sort_keys=True) if args.json else summary(result))
    if args.json:
        print(summary(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
