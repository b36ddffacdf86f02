"""Realizes a containerlab topology in network namespaces, without Docker.

Each node is a namespace `<lab>-<node>`; links are veth pairs created straight into the two
namespaces; a node's `exec` commands run inside it; an FRR node gets zebra and bgpd with private
runtime paths (as in a container); a Kubernetes node gets its Pods (namespaces attached by the
real CNI plugins, configured by the conflist that node's speaker wrote), a Node object in the lab
API server, and podbgp started from the DaemonSet and ConfigMap of `deploy/` (rendered through the
lab's kustomization, lab/kustomization.yaml): the same command, args, environment, volumes and
capabilities, its in-cluster way in to the API (HTTPS, the lab's CA, a service-account token).
Each node has its own "host filesystem" under <lab dir>/<node>/host for the DaemonSet's hostPath
volumes (its CNI config directory, podbgp's runtime directory, /var/lib/cni).
Everything the lab made is recorded in <run dir>/<lab>/state.json so `down` removes exactly that.
"""
from __future__ import annotations

import ipaddress
import json
import os
import select
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import yaml

from . import daemonset, pki
from . import topology as topo_mod

RUN_DIR = os.environ.get("PODBGP_LAB_RUN_DIR", "/run/podbgp-lab")
DEFAULT_TOPOLOGY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "topology.clab.yml")
DEFAULT_SPEAKER_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "podbgp.yaml")
DEFAULT_MANIFESTS = os.path.dirname(os.path.abspath(__file__))  # lab/kustomization.yaml over deploy/
CONFIG_MAP, CONFIG_KEY = "podbgp-config", "config.yaml"
CNI_PATH = os.environ.get("CNI_PATH", "/usr/lib/cni")
FRR_DIR = "/usr/lib/frr"
BIRD = "bird"  # BIRD 2 (Debian's bird2), on PATH
API_PORT_IN_NODE = 6443


class LabError(Exception):
    pass


@dataclass
class State:
    name: str
    topology: str
    dir: str
    namespaces: list[str] = field(default_factory=list)
    nodes: dict[str, dict] = field(default_factory=dict)  # name -> {netns, role, asn, pod_cidrs}
    pods: list[dict] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # "speaker:node1", "apiserver", "frr:tor:bgpd", "bird:tor2", "proxy", "podhttp:POD"
    api_port: int = 0
    speaker_config: str | None = None  # None: the ConfigMap's config.yaml as rendered
    manifests: str = ""  # the rendered DaemonSet and ConfigMap the speakers start from
    speaker_images: dict[str, str] = field(default_factory=dict)  # node -> image its speaker runs from

    def save(self) -> None:
        tmp = os.path.join(self.dir, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(self.dir, "state.json"))

    @classmethod
    def load(cls, name: str | None) -> "State":
        name = name or current_lab()
        path = os.path.join(RUN_DIR, name, "state.json")
        try:
            with open(path) as f:
                return cls(**json.load(f))
        except FileNotFoundError:
            raise LabError(f"no lab {name!r} is up (no {path})") from None

    @property
    def kubeconfig(self) -> str:
        return os.path.join(self.dir, "kubeconfig")

    @property
    def pki_dir(self) -> str:
        return os.path.join(self.dir, "pki")

    def netns(self, target: str) -> str:
        if target in self.nodes:
            return self.nodes[target]["netns"]
        for pod in self.pods:
            if pod["name"] == target:
                return pod["netns"]
        raise LabError(f"no node or pod {target!r} in lab {self.name}")


def current_lab() -> str:
    if os.environ.get("PODBGP_LAB"):
        return os.environ["PODBGP_LAB"]
    labs = sorted(d for d in os.listdir(RUN_DIR) if os.path.exists(os.path.join(RUN_DIR, d, "state.json"))) \
        if os.path.isdir(RUN_DIR) else []
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is up (podbgp lab up)")
    raise LabError(f"several labs are up ({', '.join(labs)}): name one with --name or PODBGP_LAB")


# ---- small helpers --------------------------------------------------------------------------

def run(argv: list[str], netns: str | None = None, check: bool = True, input: str | None = None,
        env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", netns] if netns else []) + argv
    proc = subprocess.run(full, input=input, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(full)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[:400]}")
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = pred()
        if result:
            return result
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tool_env(extra: dict | None = None) -> dict:
    """Environment for commands run in the lab: this interpreter's bin dir first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(extra or {})
    return env


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop one process we started: the signal, then SIGKILL after the timeout; reap if ours."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not pid_alive(pid):
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


# ---- up --------------------------------------------------------------------------------------

def check_host() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veth, FRR)")
    missing = [p for p in (f"{FRR_DIR}/zebra", f"{FRR_DIR}/bgpd", f"{CNI_PATH}/bridge", f"{CNI_PATH}/host-local")
               if not os.path.exists(p)]
    if missing:
        raise LabError(f"missing {', '.join(missing)}: install frr and containernetworking-plugins (make setup)")
    import grp
    try:
        grp.getgrnam("frrvty")
    except KeyError:
        raise LabError("group frrvty does not exist: FRR's package is half-configured; run `dpkg --configure -a`") from None


def up(topology: str = DEFAULT_TOPOLOGY, name: str | None = None, speakers: bool = True,
       speaker_config: str | None = None, manifests: str = DEFAULT_MANIFESTS,
       speaker_images: dict[str, str] | None = None) -> State:
    """Bring a lab up. The speakers start from the DaemonSet and ConfigMap that `kubectl kustomize
    manifests` renders; speaker_config replaces the ConfigMap's config.yaml; speaker_images runs
    the named nodes' speakers from a container image (lab.image) instead of this checkout."""
    check_host()
    topo = topo_mod.load(topology)
    name = name or topo.name
    lab_dir = os.path.join(RUN_DIR, name)
    if os.path.exists(os.path.join(lab_dir, "state.json")):
        raise LabError(f"lab {name!r} is already up (podbgp lab down --name {name})")
    speaker_config = speaker_config or topology_config(topo)
    objects = _render(manifests, speaker_config)  # a broken manifest fails here, before anything is made
    os.makedirs(lab_dir, exist_ok=True)
    state = State(name=name, topology=topo.path, dir=lab_dir,
                  speaker_config=os.path.abspath(speaker_config) if speaker_config else None,
                  manifests=os.path.join(lab_dir, "manifests.yaml"), speaker_images=dict(speaker_images or {}))
    with open(state.manifests, "w") as f:
        yaml.safe_dump_all(objects, f, sort_keys=True)
    state.save()
    try:
        _create(state, topo)
        _service_routes(state)
        _start_frr(state, topo)
        _start_bird(state, topo)
        _start_apiserver(state)
        _register_nodes(state, topo)
        start_proxy(state)
        if speakers:
            for node in state.nodes.values():
                if node["role"] == "node":
                    start_speaker(state, node["name"])
            _start_pods(state, topo)
        state.save()
    except BaseException:
        down(name)
        raise
    return state


def _create(state: State, topo: topo_mod.Topology) -> None:
    for node in topo.nodes:
        ns = f"{state.name}-{node.name}"
        run(["ip", "netns", "add", ns])
        state.namespaces.append(ns)
        state.save()
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        state.nodes[node.name] = {"name": node.name, "netns": ns, "role": node.role, "frr": node.is_frr,
                                  "bird": node.is_bird,
                                  "asn": node.label("podbgp.io/asn"), "pod_cidrs": node.label("podbgp.io/pod-cidrs"),
                                  "dir": os.path.join(state.dir, node.name)}
        os.makedirs(os.path.join(state.dir, node.name), exist_ok=True)
    for link in topo.links:
        (na, ia), (nb, ib) = link.a, link.b
        run(["ip", "-n", state.nodes[na]["netns"], "link", "add", ia, "type", "veth",
             "peer", "name", ib, "netns", state.nodes[nb]["netns"]])
    for node in topo.nodes:
        for cmd in node.exec:
            run(["sh", "-c", cmd], netns=state.nodes[node.name]["netns"])
    state.save()


def frr_dir(state: State, node: str) -> str:
    return os.path.join(state.dir, node, "frr")


def _start_frr(state: State, topo: topo_mod.Topology) -> None:
    for node in topo.nodes:
        if node.is_frr:
            start_frr(state, node.name, frr_daemons(node))


def frr_daemons(node: topo_mod.LabNode) -> tuple[str, ...]:
    """The FRR daemons a node runs: label podbgp.io/frr-daemons (comma-separated, in start order,
    e.g. zebra,bgpd,bfdd), else zebra and bgpd."""
    named = tuple(d.strip() for d in node.label("podbgp.io/frr-daemons").split(",") if d.strip())
    return named or ("zebra", "bgpd")


def start_frr(state: State, node_name: str, daemons: tuple[str, ...] = ("zebra", "bgpd")) -> None:
    """Start FRR daemons of a node: bgpd reads the bound frr.conf, the others a bare config of their
    own (bfdd's sessions come from bgpd's `neighbor ... bfd`); bfdd's control socket is private."""
    node = topo_mod.load(state.topology).node(node_name)
    ns = state.nodes[node_name]["netns"]
    d = frr_dir(state, node_name)
    os.makedirs(d, exist_ok=True)
    src = node.bind_for("/etc/frr/frr.conf")
    if not src:
        raise LabError(f"FRR node {node_name} binds no /etc/frr/frr.conf")
    shutil.copyfile(src, os.path.join(d, "bgpd.conf"))
    for daemon in daemons:
        if daemon != "bgpd":
            with open(os.path.join(d, f"{daemon}.conf"), "w") as f:
                f.write(f"hostname {node_name}\n")
    with open(os.path.join(d, "vtysh.conf"), "w") as f:
        f.write("username root nopassword\n")
    for path in [d] + [os.path.join(d, f) for f in os.listdir(d)]:
        shutil.chown(path, "frr", "frr")  # the daemons drop to the frr user, as in FRR's own packages
    for daemon in daemons:
        pidfile = os.path.join(d, f"{daemon}.pid")
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        extra = ["--bfdctl", os.path.join(d, "bfdd.sock")] if daemon == "bfdd" else []
        run([f"{FRR_DIR}/{daemon}", "-d", "-u", "frr", "-g", "frr", "-f", os.path.join(d, f"{daemon}.conf"),
             "-i", pidfile, "-z", os.path.join(d, "zserv.api"), "--vty_socket", d,
             "--log", f"file:{os.path.join(d, daemon + '.log')}", "-A", "127.0.0.1", *extra], netns=ns)
        pid = int(_wait(lambda path=pidfile: _read(path), 10, f"{daemon} pid file in {d}"))
        state.pids[f"frr:{node_name}:{daemon}"] = pid
        state.save()


def stop_frr(state: State, node_name: str, daemons: tuple[str, ...] = ("bgpd", "zebra"), sig: int = signal.SIGTERM) -> None:
    for daemon in daemons:
        pid = state.pids.pop(f"frr:{node_name}:{daemon}", None)
        if pid:
            stop_pid(pid, sig=sig)
    state.save()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def vtysh(state: State, node_name: str, command: str) -> str:
    d = frr_dir(state, node_name)
    return run(["vtysh", "--vty_socket", d, "--config_dir", d, "-c", command], netns=state.nodes[node_name]["netns"]).stdout


def bird_dir(state: State, node: str) -> str:
    return os.path.join(state.dir, node, "bird")


def _start_bird(state: State, topo: topo_mod.Topology) -> None:
    for node in topo.nodes:
        if node.is_bird:
            start_bird(state, node.name)


def start_bird(state: State, node_name: str) -> int:
    """Start a BIRD node's bird in the foreground (our child, stopped by its PID) on a copy of the
    bound /etc/bird/bird.conf in its private dir (where the config's relative includes and the
    control socket live), its log on stderr to bird.log there; wait until birdc answers."""
    if shutil.which(BIRD) is None:
        raise LabError(f"{BIRD} is missing: install bird2 (make setup)")
    node = topo_mod.load(state.topology).node(node_name)
    src = node.bind_for("/etc/bird/bird.conf")
    if not src:
        raise LabError(f"BIRD node {node_name} binds no /etc/bird/bird.conf")
    d = bird_dir(state, node_name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "bird.conf")
    shutil.copyfile(src, conf)
    log = open(os.path.join(d, "bird.log"), "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", state.nodes[node_name]["netns"], BIRD, "-f", "-c", conf,
                             "-s", os.path.join(d, "bird.ctl")],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, cwd="/")
    log.close()
    state.pids[f"bird:{node_name}"] = proc.pid
    state.save()

    def answers() -> bool:
        if proc.poll() is not None:
            raise LabError(f"bird of {node_name} exited ({proc.returncode}); see {os.path.join(d, 'bird.log')}")
        return run(["birdc", "-s", os.path.join(d, "bird.ctl"), "show", "status"], check=False).returncode == 0
    _wait(answers, 10, f"bird of {node_name} to answer on {d}/bird.ctl", interval=0.1)
    return proc.pid


def stop_bird(state: State, node_name: str, sig: int = signal.SIGTERM) -> None:
    pid = state.pids.pop(f"bird:{node_name}", None)
    if pid:
        stop_pid(pid, sig=sig)
    state.save()


def birdc(state: State, node_name: str, *args: str, check: bool = True) -> str:
    """birdc on a BIRD node's control socket: `birdc(state, "tor2", "show", "protocols")`."""
    return run(["birdc", "-s", os.path.join(bird_dir(state, node_name), "bird.ctl"), *args], check=check).stdout


# ---- the lab API server -----------------------------------------------------------------------

def _start_child(argv: list[str], log_path: str, what: str, timeout: float = 20) -> int:
    """Start one of the lab's own processes (its own session, stderr to log_path) and wait for the
    `ready` line it prints on stdout; stopped (by its PID) when it does not come."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    log.close()
    line = b""
    if select.select([proc.stdout], [], [], timeout)[0]:
        line = proc.stdout.readline()
    proc.stdout.close()
    if line.strip() != b"ready":
        stop_pid(proc.pid, timeout=5)
        raise LabError(f"{what} did not start within {timeout:.0f}s; see {log_path}")
    return proc.pid


def _start_apiserver(state: State) -> None:
    """The lab's CA, serving certificate, one bound service-account token per node's speaker, two
    kubeconfigs (this host's, and one for clients inside the lab's namespaces), then the server itself."""
    state.api_port = _free_port()
    creds = pki.make(state.pki_dir)
    objects = load_manifests(state)
    ds = daemonset.find(objects, "DaemonSet")
    namespace = ds["metadata"].get("namespace", "default")
    account = ds["spec"]["template"]["spec"].get("serviceAccountName", "default")
    for name, node in state.nodes.items():
        if node["role"] == "node":  # the speaker Pod's name as a DaemonSet names it: NAME-xxxxx
            pki.bound_account(state.pki_dir, name, namespace, account,
                              f"{ds['metadata']['name']}-{secrets.token_hex(3)[:5]}")
    with open(state.kubeconfig, "w") as f:
        f.write(pki.kubeconfig(f"https://127.0.0.1:{state.api_port}", creds["ca"], creds["token"]))
    with open(os.path.join(state.dir, "node-kubeconfig"), "w") as f:
        f.write(pki.kubeconfig(f"https://127.0.0.1:{API_PORT_IN_NODE}", creds["ca"], creds["token"]))
    os.chmod(state.kubeconfig, 0o600)
    os.chmod(os.path.join(state.dir, "node-kubeconfig"), 0o600)
    start_apiserver(state)


def start_apiserver(state: State) -> None:
    listen = [f"127.0.0.1:{state.api_port}"] + [
        f"127.0.0.1:{API_PORT_IN_NODE}@{n['netns']}" for n in state.nodes.values() if n["role"] in ("node", "host")]
    args = [sys.executable, "-m", "lab.apiserver", "--state", os.path.join(state.dir, "nodes.json"),
            "--tls-cert", os.path.join(state.pki_dir, "server.crt"), "--tls-key", os.path.join(state.pki_dir, "server.key"),
            "--token-file", os.path.join(state.pki_dir, "admin-token")] + _account_args(state)
    for spec in listen:
        args += ["--listen", spec]
    for cidr in node_config(state).get("serviceCIDRs") or []:  # cluster IPs as kube-apiserver allocates them
        args += ["--service-cidr", str(cidr)]
    log = open(os.path.join(state.dir, "apiserver.log"), "ab")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    log.close()
    line = proc.stdout.readline() if proc.stdout else b""
    if line.strip() != b"ready":
        stop_pid(proc.pid)
        raise LabError(f"lab API server did not start; see {state.dir}/apiserver.log")
    state.pids["apiserver"] = proc.pid
    state.save()


def _account_args(state: State) -> list[str]:
    """--account for each node's bound token (what deploy/'s RBAC grants the speakers' service account,
    with the token's own identity) and --admission with the ValidatingAdmissionPolicies and bindings the
    manifests hold, as kube-apiserver enforces the ones applied to it."""
    objects = load_manifests(state)
    user, rules = daemonset.rbac(objects)
    args = []
    accounts = os.path.join(state.pki_dir, "accounts")
    for name in sorted(os.listdir(accounts)) if os.path.isdir(accounts) else []:
        node = name.removesuffix(".json")
        with open(os.path.join(accounts, name)) as f:
            identity = json.load(f)
        if identity["user"] != user:
            raise LabError(f"the token of {node} names {identity['user']}, the manifests' DaemonSet runs as {user}")
        rules_file = os.path.join(state.pki_dir, f"serviceaccount-{node}-rules.json")
        with open(rules_file, "w") as f:
            json.dump({**identity, "rules": rules}, f)
        args += ["--account", f"{os.path.join(state.pki_dir, f'serviceaccount-{node}', 'token')}={rules_file}"]
    policies = admission_objects(objects)
    if policies:
        path = os.path.join(state.dir, "admission.yaml")
        with open(path, "w") as f:
            yaml.safe_dump_all(policies, f, sort_keys=False)
        args += ["--admission", path]
    return args


def admission_objects(objects: list[dict]) -> list[dict]:
    """The ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding objects among the manifests."""
    kinds = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    return [o for o in objects if o.get("kind") in kinds and o.get("apiVersion") == "admissionregistration.k8s.io/v1"]


def stop_apiserver(state: State) -> None:
    pid = state.pids.pop("apiserver", None)
    if pid:
        stop_pid(pid)
    state.save()


def delete_from_store(state: State, node: str) -> None:
    """Remove a Node straight from the stopped API server's store (as if etcd changed meanwhile)."""
    if "apiserver" in state.pids:
        raise LabError("stop the lab API server before editing its store")
    path = os.path.join(state.dir, "nodes.json")
    with open(path) as f:
        data = json.load(f)
    if data["nodes"].pop(node, None) is None:
        raise LabError(f"no node {node!r} in the store")
    data["resourceVersion"] = str(int(data["resourceVersion"]) + 1)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def kubectl(state: State, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = tool_env({"KUBECACHEDIR": os.path.join(state.dir, "kubecache")})
    return run(["kubectl", "--kubeconfig", state.kubeconfig, *args], input=input, env=env, check=check)


def node_addresses(state: State, node: str) -> list[str]:
    out = run(["ip", "-j", "addr", "show"], netns=state.nodes[node]["netns"]).stdout
    addrs = []
    for link in json.loads(out):
        for a in link.get("addr_info", []):
            ip = ipaddress.ip_address(a["local"])
            if not (ip.is_loopback or ip.is_link_local):
                addrs.append(str(ip))
    return sorted(addrs, key=lambda s: (ipaddress.ip_address(s).version, ipaddress.ip_address(s)))


def node_object(state: State, node: str) -> dict:
    info = state.nodes[node]
    cidrs = [c for c in info["pod_cidrs"].split(",") if c]
    addresses = [{"type": "InternalIP", "address": a} for a in node_addresses(state, node)]
    addresses.append({"type": "Hostname", "address": node})
    annotations = {"podbgp.io/asn": str(info["asn"])} if info.get("asn") else {}
    obj = {"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node, "kubernetes.io/os": "linux"},
                        "annotations": annotations},
           "spec": {"podCIDR": cidrs[0] if cidrs else "", "podCIDRs": cidrs},
           "status": {"addresses": addresses,
                      "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                      "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "podbgp lab netns",
                                   "kernelVersion": os.uname().release, "containerRuntimeVersion": "netns://lab"}}}
    return obj


def _register_nodes(state: State, topo: topo_mod.Topology) -> None:
    for node in topo.nodes:
        if node.role == "node":
            kubectl(state, "create", "-f", "-", input=json.dumps(node_object(state, node.name)))


# ---- manifests and the nodes' own filesystems ------------------------------------------------

def topology_config(topo: topo_mod.Topology) -> str | None:
    """The speaker config a topology asks for (label podbgp.io/speaker-config on its Kubernetes
    nodes, a path relative to the topology file): one design per lab, so one ConfigMap."""
    named = {n.label("podbgp.io/speaker-config") for n in topo.nodes if n.role == "node"} - {""}
    if len(named) > 1:
        raise LabError(f"{topo.path}: the nodes name different speaker configs ({', '.join(sorted(named))})")
    if not named:
        return None
    path = os.path.join(os.path.dirname(topo.path), named.pop())
    if not os.path.isfile(path):
        raise LabError(f"{topo.path}: speaker config {path} does not exist")
    return path


def _render(manifests: str, speaker_config: str | None) -> list[dict]:
    try:
        objects = daemonset.render(manifests)
        daemonset.find(objects, "DaemonSet")
        cm = daemonset.find(objects, "ConfigMap", CONFIG_MAP)
    except daemonset.ManifestError as exc:
        raise LabError(str(exc)) from None
    if speaker_config:
        with open(speaker_config) as f:
            cm.setdefault("data", {})[CONFIG_KEY] = f.read()
    if CONFIG_KEY not in (cm.get("data") or {}):
        raise LabError(f"ConfigMap {CONFIG_MAP} has no {CONFIG_KEY}")
    return objects


def load_manifests(state: State) -> list[dict]:
    with open(state.manifests) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def node_config(state: State) -> dict:
    """The speaker's configuration as the nodes read it (the rendered ConfigMap's config.yaml)."""
    cm = daemonset.find(load_manifests(state), "ConfigMap", CONFIG_MAP)
    return yaml.safe_load(cm["data"][CONFIG_KEY]) or {}


def host_path(state: State, node: str, path: str) -> str:
    """Where a path of a node's own filesystem (what a hostPath volume names) lives on this machine."""
    return os.path.join(state.dir, node, "host", path.lstrip("/"))


def cni_conf_path(state: State, node: str) -> str:
    conf = (node_config(state).get("cni") or {}).get("confPath") or "/etc/cni/net.d/10-podbgp.conflist"
    return host_path(state, node, conf)


def speaker_runtime_dir(state: State, node: str) -> str:
    return host_path(state, node, node_config(state).get("runtimeDir") or "/run/podbgp")


# ---- pods ------------------------------------------------------------------------------------

def _start_pods(state: State, topo: topo_mod.Topology) -> None:
    for node in topo.nodes:
        count = int(node.label("podbgp.io/pods", "0") or 0)
        if count:
            path = cni_conf_path(state, node.name)
            _wait(lambda p=path: os.path.exists(p), 60, f"{node.name}'s speaker to write its CNI config {path}")
        for k in range(1, count + 1):
            add_pod(state, node.name, f"{node.name}-pod{k}")


def read_conflist(state: State, node: str) -> dict:
    path = cni_conf_path(state, node)
    try:
        with open(path) as f:
            conf = json.load(f)
    except (OSError, ValueError) as exc:
        raise LabError(f"{node}: no usable CNI config at {path}: {exc}") from None
    if not conf.get("plugins"):
        raise LabError(f"{node}: {path} is not a conflist (no plugins)")
    return conf


def add_pod(state: State, node: str, pod: str) -> dict:
    """A Pod's namespace, attached as a container runtime would: every plugin of the conflist the
    node's speaker wrote, in order, each given the previous one's result (CNI 1.0 ADD)."""
    conf = read_conflist(state, node)
    ns = f"{state.name}-{pod}"
    run(["ip", "netns", "add", ns])
    state.namespaces.append(ns)
    state.save()
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"], netns=ns)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": ns, "CNI_NETNS": f"/run/netns/{ns}", "CNI_IFNAME": "eth0",
           "CNI_PATH": CNI_PATH, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    var_lib_cni = host_path(state, node, "/var/lib/cni")  # host-local's leases: this node's own disk
    os.makedirs(var_lib_cni, exist_ok=True)
    os.makedirs("/var/lib/cni", exist_ok=True)  # the mount point
    result = None
    for plugin in conf["plugins"]:
        net = {"cniVersion": conf["cniVersion"], "name": conf["name"], **plugin}
        if result is not None:
            net["prevResult"] = result
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec",
                f"mount --bind {var_lib_cni} /var/lib/cni; exec {CNI_PATH}/{plugin['type']}"]
        proc = run(argv, netns=state.nodes[node]["netns"], input=json.dumps(net), env=env, check=False)
        if proc.returncode != 0:
            raise LabError(f"CNI {plugin['type']} ADD for {pod} on {node} failed: {(proc.stdout or proc.stderr).strip()[:400]}")
        result = json.loads(proc.stdout)
    entry = {"name": pod, "node": node, "netns": ns, "ipv4": None, "ipv6": None}
    for ip in (result or {}).get("ips", []):
        addr = ipaddress.ip_interface(ip["address"]).ip
        entry["ipv4" if addr.version == 4 else "ipv6"] = str(addr)
    state.pods.append(entry)
    state.save()
    start_pod_server(state, pod)
    return entry


# ---- speakers --------------------------------------------------------------------------------

def node_facts(state: State, node: str) -> daemonset.NodeFacts:
    v4 = [a for a in node_addresses(state, node) if ipaddress.ip_address(a).version == 4]
    return daemonset.NodeFacts(
        name=node, host_dir=os.path.join(state.dir, node, "host"), pod_dir=os.path.join(state.dir, node, "pod"),
        host_ip=(v4 or node_addresses(state, node) or ["127.0.0.1"])[0],
        serviceaccount_dir=os.path.join(state.pki_dir, f"serviceaccount-{node}"),  # its own bound token
        api_host="127.0.0.1", api_port=API_PORT_IN_NODE,
        path=os.path.dirname(sys.executable) + os.pathsep + daemonset.BASE_PATH)


def speaker_launch(state: State, node: str) -> daemonset.Launch:
    try:
        return daemonset.plan(load_manifests(state), node_facts(state, node))
    except daemonset.ManifestError as exc:
        raise LabError(str(exc)) from None


def start_speaker(state: State, node: str) -> int:
    """Start node's speaker as its DaemonSet Pod: from this checkout, or from an image."""
    info = state.nodes[node]
    key = f"speaker:{node}"
    if key in state.pids and pid_alive(state.pids[key]):
        raise LabError(f"the speaker of {node} is already running (pid {state.pids[key]})")
    launch = speaker_launch(state, node)
    daemonset.prepare(launch)
    image = state.speaker_images.get(node)
    if image:
        from . import image as image_mod

        ctr = f"{state.name}-{node}-podbgp"
        image_mod.remove_container(ctr)
        env = {k: v for k, v in launch.env if k != "PATH"}  # the image's own PATH, as a runtime leaves it
        setup, argv = image_mod.container_argv(image, ctr, [(m.source, m.target, m.read_only) for m in launch.mounts],
                                               env, list(launch.argv), capabilities=launch.capabilities)
        run(setup, timeout=120)
        argv = ["ip", "netns", "exec", info["netns"], *argv]
    else:  # this checkout's podbgp: keep it (and its interpreter) visible under the Pod's volumes
        keep = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), sys.prefix, sys.base_prefix)
        staging = os.path.join(state.dir, node, "pod", "keep")
        daemonset.prepare_keep(launch, keep, staging)
        argv = daemonset.shell_argv(launch, info["netns"], keep=keep, staging=staging)
    log = open(os.path.join(state.dir, node, "speaker.log"), "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                            cwd="/")
    log.close()
    state.pids[key] = proc.pid
    state.save()
    return proc.pid


def _service_routes(state: State) -> None:
    """A route for each Service CIDR on every Kubernetes node, through its uplink (the interface with
    its first address), as a node's default route would give: the node's own connections to a
    cluster IP need one before the proxy's output rules translate them (the speakers never touch
    routes of proto static)."""
    cidrs = node_config(state).get("serviceCIDRs") or []
    for node in state.nodes.values():
        if node["role"] != "node":
            continue
        links = json.loads(run(["ip", "-j", "addr", "show"], netns=node["netns"]).stdout)
        uplink = next((link["ifname"] for link in links for a in link.get("addr_info", [])
                       if a.get("scope") == "global"), None)
        if not uplink:
            continue
        for cidr in cidrs:
            run(["ip", "route", "replace", str(cidr), "dev", uplink, "proto", "static"], netns=node["netns"])


# ---- the lab's kube-proxy and the Pods' HTTP servers ---------------------------------------------

def start_proxy(state: State) -> int:
    """lab.proxy for every Kubernetes node: Services and EndpointSlices as nftables rules."""
    if "proxy" in state.pids and pid_alive(state.pids["proxy"]):
        raise LabError(f"the lab's proxy is already running (pid {state.pids['proxy']})")
    if not shutil.which("nft"):
        raise LabError("nft is missing: install nftables (make setup)")
    args = [sys.executable, "-m", "lab.proxy", "--server", f"https://127.0.0.1:{state.api_port}",
            "--ca", os.path.join(state.pki_dir, "ca.crt"), "--token-file", os.path.join(state.pki_dir, "admin-token")]
    for node in state.nodes.values():
        if node["role"] == "node":
            args += ["--node", f"{node['name']}={node['netns']}"]
    for cidr in node_config(state).get("clusterCIDRs") or []:
        args += ["--cluster-cidr", str(cidr)]
    pid = _start_child(args, os.path.join(state.dir, "proxy.log"), "the lab's proxy (lab.proxy)")
    state.pids["proxy"] = pid
    state.save()
    return pid


def stop_proxy(state: State) -> None:
    pid = state.pids.pop("proxy", None)
    if pid:
        stop_pid(pid, timeout=5)
    state.save()


def start_pod_server(state: State, pod: str) -> int:
    """The Pod's HTTP server on port 8080 (lab.podhttp, answering with the Pod's name), in its netns."""
    key = f"podhttp:{pod}"
    if key in state.pids and pid_alive(state.pids[key]):
        raise LabError(f"the HTTP server of {pod} is already running (pid {state.pids[key]})")
    entry = next((p for p in state.pods if p["name"] == pod), None)
    if entry is None:
        raise LabError(f"no pod {pod!r} in lab {state.name}")
    argv = ["ip", "netns", "exec", entry["netns"], sys.executable, "-m", "lab.podhttp", "--name", pod]
    pid = _start_child(argv, os.path.join(state.dir, entry["node"], f"{pod}.http.log"), f"{pod}'s HTTP server")
    state.pids[key] = pid
    state.save()
    return pid


def stop_pod_server(state: State, pod: str) -> None:
    """Stop the Pod's HTTP server (a rolling update's old Pod going away); idempotent."""
    pid = state.pids.pop(f"podhttp:{pod}", None)
    if pid:
        stop_pid(pid, timeout=5)
    state.save()


def stop_speaker(state: State, node: str, sig: int = signal.SIGTERM) -> None:
    pid = state.pids.pop(f"speaker:{node}", None)
    if state.speaker_images.get(node):
        from . import image as image_mod

        if pid:  # the signal to the command inside, as a kubelet stops a container
            image_mod.stop(pid, sig=sig)
            _reap(pid)
        image_mod.remove_container(f"{state.name}-{node}-podbgp")
    elif pid:
        stop_pid(pid, sig=sig)
    _stop_leftover_exabgp(state, node)
    state.save()


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _stop_leftover_exabgp(state: State, node: str) -> None:
    pid = _read(os.path.join(speaker_runtime_dir(state, node), "exabgp.pid"))
    if pid and pid.isdigit() and pid_alive(int(pid)) and _is_exabgp(int(pid)):
        stop_pid(int(pid))


def _is_exabgp(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"exabgp" in f.read()
    except OSError:
        return False


def speaker_socket(state: State, node: str) -> str:
    """The node's speaker's Unix socket (/status, /explain): in its runtime dir, a hostPath."""
    return os.path.join(speaker_runtime_dir(state, node), "status.sock")


def speaker_status(state: State, node: str) -> dict:
    """`podbgp status --json` on the node, through the speaker's socket."""
    out = run([sys.executable, "-m", "speaker.cli", "status", "--json", "--socket", speaker_socket(state, node)],
              netns=state.nodes[node]["netns"], env=tool_env(), check=True, timeout=10).stdout
    return json.loads(out)


# ---- down ------------------------------------------------------------------------------------

def down(name: str | None = None) -> None:
    state = State.load(name)
    stop_proxy(state)
    for key in sorted(k for k in state.pids if k.startswith("podhttp:")):
        stop_pod_server(state, key.split(":", 1)[1])
    for key in sorted(k for k in state.pids if k.startswith("speaker:")):
        stop_speaker(state, key.split(":", 1)[1])
    for node in state.nodes.values():
        _stop_leftover_exabgp(state, node["name"])
    for key in sorted(k for k in state.pids if k.startswith(("frr:", "bird:"))):
        stop_pid(state.pids.pop(key))
    stop_apiserver(state)
    for ns in reversed(state.namespaces):
        run(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(state.dir, ignore_errors=True)


def status(name: str | None = None) -> dict:
    state = State.load(name)
    nodes = []
    for n in state.nodes.values():
        entry = {"name": n["name"], "netns": n["netns"], "role": n["role"],
                 "addresses": node_addresses(state, n["name"]),
                 "speakerPid": state.pids.get(f"speaker:{n['name']}")}
        if n["role"] == "node":
            entry["cniConf"] = cni_conf_path(state, n["name"])
            entry["speakerImage"] = state.speaker_images.get(n["name"])
        nodes.append(entry)
    return {"name": state.name, "topology": state.topology, "kubeconfig": state.kubeconfig,
            "apiserver": {"port": state.api_port, "pid": state.pids.get("apiserver")},
            "proxy": {"pid": state.pids.get("proxy")},
            "nodes": nodes, "pods": [{**p, "httpPid": state.pids.get(f"podhttp:{p['name']}")} for p in state.pods]}


def exec_argv(state: State, target: str, argv: list[str]) -> list[str]:
    """The full command that runs argv inside a node or pod (vtysh pointed at that FRR's paths,
    birdc at that BIRD's socket, podbgp status and explain at that speaker's)."""
    ns = state.netns(target)
    if argv and argv[0] == "vtysh" and state.nodes.get(target, {}).get("frr"):
        d = frr_dir(state, target)
        argv = ["vtysh", "--vty_socket", d, "--config_dir", d, *argv[1:]]
    if argv and argv[0] == "birdc" and state.nodes.get(target, {}).get("bird"):
        argv = ["birdc", "-s", os.path.join(bird_dir(state, target), "bird.ctl"), *argv[1:]]
    if argv[:2] in (["podbgp", "status"], ["podbgp", "explain"]) and state.nodes.get(target, {}).get("role") == "node" \
            and "--socket" not in argv:
        argv = [*argv[:2], "--socket", speaker_socket(state, target), *argv[2:]]
    return ["ip", "netns", "exec", ns, *argv]
