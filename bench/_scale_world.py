"""The world bench.scale builds: Node objects, namespaces on one L2, BIRD configs, processes.

Everything made is recorded on a `Run` so that `Run.teardown` removes exactly that, on every path.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from lab import daemonset, pki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_ROOT = os.environ.get("PODBGP_BENCH_RUN_DIR", "/run/podbgp-bench")

CLUSTER = ("10.128.0.0/9", "fd00:42::/48")  # a /24 and a /64 per node: room for 32k nodes
SERVICE = ("10.96.0.0/16", "fd00:43::/108")
L2_V4, L2_V6 = ipaddress.ip_network("172.20.0.0/16"), ipaddress.ip_network("fd00:50::/64")
TOR_ASN, POD_ASN, BIRD_ASN = 65000, 65001, 65002
MAX_NODES = 30000


def _v4(host: int) -> ipaddress.IPv4Address:
    return L2_V4.network_address + host


def _v6(host: int) -> ipaddress.IPv6Address:
    return L2_V6.network_address + host


TOR = (_v4(1), _v6(1))
POD_RX = (_v4(2), _v6(2))  # node0's addresses: the podbgp receiver
BIRD_RX = (_v4(3), _v6(3))  # the BIRD receiver (no Node object: it only receives)


@dataclass(frozen=True, slots=True)
class Node:
    index: int
    name: str
    v4: ipaddress.IPv4Address
    v6: ipaddress.IPv6Address
    cidr4: ipaddress.IPv4Network
    cidr6: ipaddress.IPv6Network


def nodes(n: int) -> list[Node]:
    out = []
    for i in range(n):
        v4, v6 = (POD_RX if i == 0 else (_v4(16 + i), _v6(0x10000 + i)))
        out.append(Node(i, f"node{i}", v4, v6, ipaddress.IPv4Network((0x0A800000 + i * 256, 24)),
                        ipaddress.IPv6Network(f"fd00:42:0:{i:x}::/64")))
    return out


# ---- Node objects of realistic size (~6 KB of JSON each) --------------------------------------

_IMAGES = ["registry.k8s.io/kube-proxy", "docker.io/calico/node", "docker.io/calico/cni",
           "registry.k8s.io/coredns/coredns", "quay.io/prometheus/node-exporter", "docker.io/library/nginx",
           "registry.k8s.io/pause", "quay.io/cilium/cilium", "docker.io/grafana/promtail", "ghcr.io/fluxcd/kustomize-controller",
           "registry.k8s.io/metrics-server/metrics-server", "docker.io/bitnami/redis", "quay.io/jetstack/cert-manager-controller",
           "docker.io/library/postgres", "registry.k8s.io/ingress-nginx/controller", "docker.io/envoyproxy/envoy",
           "quay.io/argoproj/argocd", "docker.io/library/busybox", "registry.k8s.io/csi-node-driver-registrar",
           "docker.io/istio/proxyv2", "quay.io/kiwigrid/k8s-sidecar", "docker.io/library/python",
           "docker.io/library/golang", "registry.k8s.io/kube-state-metrics/kube-state-metrics", "docker.io/otel/opentelemetry-collector",
           "quay.io/brancz/kube-rbac-proxy", "docker.io/library/alpine", "docker.io/fluent/fluent-bit",
           "registry.k8s.io/sig-storage/livenessprobe", "docker.io/library/memcached"]
_CONDITIONS = [("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
               ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
               ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
               ("Ready", "True", "KubeletReady", "kubelet is posting ready status")]


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def conditions(heartbeat: float, transition: float) -> list[dict]:
    return [{"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": _ts(heartbeat),
             "lastTransitionTime": _ts(transition)} for t, s, r, m in _CONDITIONS]


def node_object(node: Node, created: float, rv: int) -> dict:
    rnd = random.Random(node.index)
    zone = f"zone-{node.index % 3}"
    images = []
    for k, img in enumerate(_IMAGES):
        tag = f"v{1 + k % 4}.{rnd.randrange(30)}.{rnd.randrange(10)}"
        names = [f"{img}:{tag}"]
        if k % 3 == 0:  # a third pulled by digest as well
            names.insert(0, f"{img}@sha256:{rnd.getrandbits(256):064x}")
        images.append({"names": names, "sizeBytes": rnd.randrange(700_000, 900_000_000)})
    cap = {"cpu": "16", "ephemeral-storage": "203070420Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
           "memory": "65843380Ki", "pods": "110"}
    alloc = dict(cap, cpu="15800m", memory="64716980Ki", **{"ephemeral-storage": "187149698763"})
    uid = "%08x-%04x-4%03x-8%03x-%012x" % (rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(12),
                                          rnd.getrandbits(12), rnd.getrandbits(48))
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": node.name, "uid": uid, "resourceVersion": str(rv), "creationTimestamp": _ts(created),
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux",
                       "node.kubernetes.io/instance-type": "m6i.4xlarge", "topology.kubernetes.io/region": "eu-west-1",
                       "topology.kubernetes.io/zone": zone, "node-role.kubernetes.io/worker": "",
                       "podbgp.io/rack": f"rack-{node.index // 40}"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": str(node.cidr4), "podCIDRs": [str(node.cidr4), str(node.cidr6)],
                 "providerID": f"aws:///eu-west-1{'abc'[node.index % 3]}/i-{rnd.getrandbits(64):016x}"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": str(node.v4)}, {"type": "InternalIP", "address": str(node.v6)},
                          {"type": "Hostname", "address": node.name}],
            "allocatable": alloc, "capacity": cap,
            "conditions": conditions(created + 600, created),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images,
            "nodeInfo": {"architecture": "amd64", "bootID": str(uid[::-1]), "containerRuntimeVersion": "containerd://1.7.22",
                         "kernelVersion": "6.1.0-26-amd64", "kubeProxyVersion": "v1.32.0", "kubeletVersion": "v1.32.0",
                         "machineID": f"{rnd.getrandbits(128):032x}", "operatingSystem": "linux",
                         "osImage": "Debian GNU/Linux 12 (bookworm)", "systemUUID": f"ec2{rnd.getrandbits(96):024x}"},
        },
    }


def write_store(path: str, all_nodes: list[Node]) -> int:
    """The lab API server's state file (kubestore's format); returns the mean object size in bytes."""
    created = time.time() - 86400
    objs = {n.name: node_object(n, created, n.index + 1) for n in all_nodes}
    with open(path, "w") as f:
        json.dump({"resourceVersion": str(len(all_nodes) + 1), "nodes": objs}, f)
    sample = [len(json.dumps(objs[n.name])) for n in all_nodes[: min(50, len(all_nodes))]]
    return sum(sample) // len(sample)


_STATE_RV = re.compile(rb'^\{"resourceVersion":"(\d+)"')


def bump_resource_version(path: str, by: int = 1) -> int:
    """The stopped lab API server's state file (kubestore's snapshot, which starts with its
    resourceVersion) moved `by` versions on, as if writes the watchers never saw had happened
    meanwhile: started again, the server has no history (a restart drops it) and a version newer
    than any watcher's, so every watch resumed from before gets 410 and re-lists. Returns the
    new resourceVersion."""
    with open(path, "rb") as f:
        data = f.read()
    m = _STATE_RV.match(data)
    if not m:
        raise ValueError(f"{path}: not a lab API server state file (no leading resourceVersion)")
    rv = int(m.group(1)) + by
    tmp = f"{path}.bump"
    with open(tmp, "wb") as f:
        f.write(b'{"resourceVersion":"%d"' % rv + data[m.end():])
    os.replace(tmp, path)
    return rv


def annotate_nodes(path: str, key: str, value: str) -> int:
    """The stopped lab API server's state file with annotation key=value on every Node, each
    Node and the state at one resourceVersion newer: writes the watchers never saw (a rollout
    that annotated every Node while they were away). With a podbgp.io/ key the speaker keeps
    it, so its re-list finds every Node changed. Returns the new resourceVersion."""
    with open(path, "rb") as f:
        state = json.load(f)
    rv = int(state["resourceVersion"]) + 1
    state["resourceVersion"] = str(rv)
    for obj in state.get("nodes", {}).values():
        meta = obj.setdefault("metadata", {})
        meta.setdefault("annotations", {})[key] = value
        meta["resourceVersion"] = str(rv)
    tmp = f"{path}.bump"
    with open(tmp, "w") as f:
        json.dump(state, f, separators=(",", ":"))
    os.replace(tmp, path)
    return rv


# ---- BIRD configurations -------------------------------------------------------------------------

BFD_TIMERS = (300, 300, 3)  # minRx ms, minTx ms, multiplier: on both ends with --bfd


def tor_bfd_config(bfd_log: str) -> list[str]:
    """BIRD's own BFD on the ToR (300 ms x 3 on every interface), its session state changes traced
    to a file of their own with millisecond times (tor_bfd.count_tor_downs reads it)."""
    rx, tx, mult = BFD_TIMERS
    return [f'log "{bfd_log}" {{ trace }};', "timeformat log iso long ms;",
            "protocol bfd tor_bfd {",
            f'  interface "*" {{ min rx interval {rx} ms; min tx interval {tx} ms; multiplier {mult}; }};',
            "  debug { states, events };", "}"]


def speaker_bfd_extra() -> str:
    """The speaker's peers' `bfd:` key (a peer_extra for speaker_config), the ToR's timers."""
    rx, tx, mult = BFD_TIMERS
    return f", bfd: {{minRx: {rx}, minTx: {tx}, multiplier: {mult}}}"


def tor_config(all_nodes: list[Node], withdraw: list[Node], log: str, bfd_log: str | None = None) -> str:
    """The ToR: every node's PodCIDRs except node0's as static routes via that node's address
    (so BGP sends the address as a third-party next hop), one small static protocol per route
    used for the withdraw measurement, and passive eBGP sessions to both receivers. bfd_log: BFD
    on the sessions to the podbgp receiver (BIRD's protocol bfd, `bfd on` in pod_4 and pod_6, whose
    state changes are traced to bfd_log as well)."""
    wd = {n.index for n in withdraw}
    others = [n for n in all_nodes if n.index != 0]
    out = [f"router id {TOR[0]};", f'log "{log}" {{ warning, error, fatal }};']
    out += tor_bfd_config(bfd_log) if bfd_log else []
    out += ["protocol device { scan time 60; }", "protocol static s4 {", "  ipv4;"]
    out += [f"  route {n.cidr4} via {n.v4};" for n in others if n.index not in wd]
    out += ["}", "protocol static s6 {", "  ipv6;"]
    out += [f"  route {n.cidr6} via {n.v6};" for n in others]
    out.append("}")
    for n in withdraw:
        out += [f"protocol static wd{n.index} {{", "  ipv4;", f"  route {n.cidr4} via {n.v4};", "}"]
    for tag, (a4, a6), asn in (("pod", POD_RX, POD_ASN), ("bird", BIRD_RX, BIRD_ASN)):
        for fam, local, peer in (("ipv4", TOR[0], a4), ("ipv6", TOR[1], a6)):
            out += [f"protocol bgp {tag}_{fam[-1]} {{", f"  local {local} as {TOR_ASN};", f"  neighbor {peer} as {asn};",
                    "  passive on;", "  hold time 9;", "  error wait time 1, 2;"]
            out += ["  bfd on;", "  debug { states };"] if bfd_log and tag == "pod" else []
            out += [f"  {fam} {{ import none; export all; }};", "}"]
    return "\n".join(out) + "\n"


def bird_rx_config(log: str) -> str:
    """The BIRD receiver: eBGP to the ToR per family, everything learned exported to the kernel."""
    a4, a6 = BIRD_RX
    out = [f"router id {a4};", f'log "{log}" {{ warning, error, fatal }};', "protocol device { scan time 60; }",
           "protocol kernel k4 { ipv4 { import none; export all; }; }",
           "protocol kernel k6 { ipv6 { import none; export all; }; }"]
    for fam, local, peer in (("ipv4", a4, TOR[0]), ("ipv6", a6, TOR[1])):
        out += [f"protocol bgp tor_{fam[-1]} {{", f"  local {local} as {BIRD_ASN};", f"  neighbor {peer} as {TOR_ASN};",
                "  hold time 9;", "  connect delay time 1;", "  error wait time 1, 2;",
                f"  {fam} {{ import all; export none; }};", "}"]
    return "\n".join(out) + "\n"


def speaker_config(runtime_dir: str, status: str, kubeconfig: str | None = None, peer_extra: str = "",
                   graceful_restart: int = 120) -> str:
    """The speaker's configuration; without kubeconfig it reads the in-cluster one, as in a Pod.
    peer_extra: more keys of each peer's flow mapping (", maxPrefixes: 20000")."""
    return (f"peers:\n  - {{address: {TOR[0]}, asn: {TOR_ASN}, holdTime: 9{peer_extra}}}\n"
            f"  - {{address: \"{TOR[1]}\", asn: {TOR_ASN}, holdTime: 9{peer_extra}}}\n"
            f"clusterCIDRs: [{CLUSTER[0]}, \"{CLUSTER[1]}\"]\n"
            f"serviceCIDRs: [{SERVICE[0]}, \"{SERVICE[1]}\"]\n"
            f"gracefulRestart: {graceful_restart}\nconvergenceTimeout: 30\n"
            + (f"kubeconfig: {kubeconfig}\n" if kubeconfig else "")
            + f"runtimeDir: {runtime_dir}\nstatusAddress: {status}\n")


# ---- the API's credentials and the speaker as its DaemonSet Pod ---------------------------------

API_PORT_IN_POD = 6443  # where the receiver's namespace reaches the API server (KUBERNETES_SERVICE_PORT)


def api_credentials(run: Run, objects: list[dict]) -> dict:
    """The lab's CA, a serving certificate, an administrator's token (the bench's own client) and a
    service-account token the API allows only what deploy/'s RBAC grants the DaemonSet; the rules
    file for the API server is written next to them. Returns lab.pki's paths plus `rules_file`."""
    creds = pki.make(run.path("pki"))
    user, rules = daemonset.rbac(objects)
    creds["rules_file"] = run.path("pki", "serviceaccount-rules.json")
    with open(creds["rules_file"], "w") as f:
        json.dump({"user": user, "rules": rules}, f)
    return creds


def deploy_objects() -> list[dict]:
    """deploy/ rendered as `kubectl apply -k deploy` would send it."""
    return daemonset.render(os.path.join(REPO, "deploy"))


def pod_launch(objects: list[dict], argv: list[str], serviceaccount_dir: str, node: str, host_ip: str) -> daemonset.Launch:
    """The speaker started as deploy/'s DaemonSet Pod is (lab.daemonset.plan): the in-cluster
    Service variables, the service-account token and CA at their mount, the DaemonSet's bounding
    set and no_new_privs; but the bench's own argv (configuration, node name) and a writable root
    (the run directory holds the runtime dir). The environment adds this tree's PYTHONPATH, as
    Run.spawn gives every process."""
    facts = daemonset.NodeFacts(name=node, host_dir="/nonexistent", pod_dir="/nonexistent", host_ip=host_ip,
                                serviceaccount_dir=serviceaccount_dir, api_host="127.0.0.1",
                                api_port=API_PORT_IN_POD, path=os.path.dirname(sys.executable) + os.pathsep + daemonset.BASE_PATH)
    pod = daemonset.plan(objects, facts)
    env = {k: v for k, v in pod.env if k.startswith("KUBERNETES_") or k == "PATH"}
    env["PYTHONPATH"] = REPO
    return daemonset.Launch(argv=tuple(argv), env=tuple(sorted(env.items())),
                            mounts=tuple(m for m in pod.mounts if m.target == daemonset.SA_MOUNT),
                            files=(), dirs=(), capabilities=pod.capabilities,
                            no_new_privs=pod.no_new_privs,
                            read_only_root=False, uid=pod.uid, image="")


def kubeconfig(server: str, ca: str, token: str) -> str:
    return pki.kubeconfig(server, ca, token)


# ---- processes ---------------------------------------------------------------------------------

def proc_start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> list[int]:
    """The root and every live descendant, from /proc (ExaBGP runs in a session of its own)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


@dataclass
class Proc:
    name: str
    pid: int
    start: int | None  # start time in ticks: a PID reused by someone else is never signalled
    popen: subprocess.Popen | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.start is not None and proc_start_ticks(self.pid) == self.start


def stop(p: Proc, timeout: float = 10.0) -> None:
    if not p.alive():
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.alive():
        time.sleep(0.02)
    if p.alive():
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if p.popen is not None:
        try:
            p.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class Run:
    id: str
    dir: str
    keep: bool = False
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"pbsc-{self.id}-{role}"

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def sh(self, argv: list[str], netns: str | None = None, check: bool = True, timeout: float = 60) -> str:
        full = (["ip", "netns", "exec", netns] if netns else []) + argv
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(full)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[:400]}")
        return p.stdout

    def spawn(self, name: str, argv: list[str], log: str, netns: str | None = None, stdout=None) -> Proc:
        full = (["ip", "netns", "exec", netns] if netns else []) + argv
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        # this tree's packages for every descendant too: ExaBGP starts `python -m bgp.api_child` from
        # a directory of its own, where an editable install could otherwise supply another tree's
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        with open(log, "ab") as logf:
            popen = subprocess.Popen(full, stdout=stdout or logf, stderr=logf, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env, cwd=REPO)
        p = Proc(name, popen.pid, proc_start_ticks(popen.pid), popen)
        self.procs.append(p)
        return p

    def adopt(self, name: str, pid: int) -> None:
        """Record a descendant of one of ours (ExaBGP, its API child) so teardown can stop it."""
        if all(p.pid != pid for p in self.procs):
            self.procs.append(Proc(name, pid, proc_start_ticks(pid)))

    def stop(self, p: Proc) -> None:
        stop(p)
        if p in self.procs:
            self.procs.remove(p)

    def teardown(self) -> None:
        for p in reversed(list(self.procs)):
            try:
                stop(p)
            except Exception as exc:  # keep going: the rest must still be cleaned
                print(f"scale: could not stop {p.name} pid {p.pid}: {exc}", file=sys.stderr)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def build_l2(run: Run) -> tuple[str, str, str]:
    """The ToR namespace with a bridge holding both receivers' veths: one L2 for every address."""
    tor, pod, bird = run.ns("tor"), run.ns("pod"), run.ns("bird")
    for ns in (tor, pod, bird):
        run.sh(["ip", "netns", "add", ns])
        run.namespaces.append(ns)
        run.sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        # no DAD: link-local and global addresses usable at once (BIRD wants the link-local at start)
        run.sh(["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"], netns=ns)
    run.sh(["ip", "-n", tor, "link", "add", "br0", "type", "bridge"])
    for port, ns in (("p-pod", pod), ("p-bird", bird)):
        run.sh(["ip", "-n", tor, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run.sh(["ip", "-n", tor, "link", "set", port, "master", "br0", "up"])
        run.sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
    run.sh(["ip", "-n", tor, "link", "set", "br0", "up"])
    for ns, dev, (a4, a6) in ((tor, "br0", TOR), (pod, "eth0", POD_RX), (bird, "eth0", BIRD_RX)):
        run.sh(["ip", "-n", ns, "addr", "add", f"{a4}/{L2_V4.prefixlen}", "dev", dev])
        run.sh(["ip", "-n", ns, "addr", "add", f"{a6}/{L2_V6.prefixlen}", "dev", dev, "nodad"])
    return tor, pod, bird


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
