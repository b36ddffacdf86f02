"""Run a DaemonSet's Pod on a lab node the way a kubelet would, from the rendered manifests.

The lab renders a kustomization (`kubectl kustomize`), takes the DaemonSet and the ConfigMaps it
refers to, and turns the Pod template into a launch for one node: the container's command, args
and environment (the downward API's `spec.nodeName` and friends resolved for that node, the
in-cluster Service variables of the lab API), its volumes (a ConfigMap's keys as files, hostPath
as a directory of that node's own "host" filesystem, emptyDir, the service-account token and CA),
and its securityContext (capabilities as the bounding set, no_new_privs, a read-only root). A
manifest the lab cannot honour is an error, so a broken manifest breaks the lab.

`plan()` is pure; `shell_argv()` gives the command that realizes a launch with unshare, mount and
setpriv inside the node's network namespace.
"""
from __future__ import annotations

import base64
import os
import shlex
import subprocess
from dataclasses import dataclass, field

import yaml

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DOWNWARD = ("spec.nodeName", "spec.serviceAccountName", "metadata.name", "metadata.namespace",
            "status.hostIP", "status.podIP")


class ManifestError(Exception):
    """The manifests ask for something the lab cannot do as a kubelet would, or are malformed."""


@dataclass(frozen=True, slots=True)
class Mount:
    source: str  # a directory or file on this machine
    target: str  # the path the container sees
    read_only: bool


@dataclass(frozen=True, slots=True)
class Launch:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...]
    files: tuple[tuple[str, str], ...]  # (path on this machine, content) to write before starting
    dirs: tuple[str, ...]  # directories on this machine to create before starting
    capabilities: tuple[str, ...]  # the bounding set, lower case without CAP_
    no_new_privs: bool
    read_only_root: bool
    uid: int
    image: str
    probes: dict = field(default_factory=dict)  # "liveness"/"readiness" -> (path, port)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    name: str
    host_dir: str  # this node's "host filesystem": hostPath volumes live under it
    pod_dir: str  # this Pod's volumes (emptyDir, ConfigMap files)
    host_ip: str
    serviceaccount_dir: str  # token, ca.crt, namespace
    api_host: str
    api_port: int
    path: str = BASE_PATH


def render(kustomization_dir: str) -> list[dict]:
    proc = subprocess.run(["kubectl", "kustomize", kustomization_dir], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ManifestError(f"kubectl kustomize {kustomization_dir}: {proc.stderr.strip()[:400]}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [o for o in objects if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]
    if len(hits) != 1:
        raise ManifestError(f"expected one {kind}{' ' + name if name else ''} in the rendered manifests, found {len(hits)}")
    return hits[0]


def plan(objects: list[dict], node: NodeFacts, container: str | None = None) -> Launch:
    ds = find(objects, "DaemonSet")
    namespace = ds["metadata"].get("namespace", "default")
    pod = ds["spec"]["template"]["spec"]
    if not pod.get("hostNetwork"):
        raise ManifestError("DaemonSet: the lab runs Pods on the node's network only (hostNetwork: true)")
    ctrs = pod.get("containers") or []
    ctr = next((c for c in ctrs if container in (None, c.get("name"))), None)
    if ctr is None or (container is None and len(ctrs) != 1):
        raise ManifestError(f"DaemonSet: expected one container{' named ' + container if container else ''}")
    pod_name = f"{ds['metadata']['name']}-{node.name}"
    where = f"DaemonSet {ds['metadata']['name']} container {ctr['name']}"
    argv = tuple(str(a) for a in (ctr.get("command") or []) + (ctr.get("args") or []))
    if not argv:
        raise ManifestError(f"{where}: no command (the lab has no image entrypoint to fall back on)")
    downward = {"spec.nodeName": node.name, "spec.serviceAccountName": pod.get("serviceAccountName", "default"),
                "metadata.name": pod_name, "metadata.namespace": namespace,
                "status.hostIP": node.host_ip, "status.podIP": node.host_ip}
    env = {"PATH": node.path, "HOSTNAME": node.name, "HOME": "/root",
           "KUBERNETES_SERVICE_HOST": node.api_host, "KUBERNETES_SERVICE_PORT": str(node.api_port),
           "KUBERNETES_SERVICE_PORT_HTTPS": str(node.api_port)}
    for i, e in enumerate(ctr.get("env") or []):
        env[e["name"]] = _env_value(objects, namespace, e, f"{where} env[{i}]", downward)
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts, files, dirs = [], [], []
    for i, vm in enumerate(ctr.get("volumeMounts") or []):
        vol = volumes.get(vm["name"])
        if vol is None:
            raise ManifestError(f"{where} volumeMounts[{i}]: no volume named {vm['name']!r}")
        src = _volume_source(objects, namespace, vol, node, files, dirs, f"volume {vol['name']}")
        if vm.get("subPath"):
            src = os.path.join(src, vm["subPath"])
        mounts.append(Mount(src, vm["mountPath"], bool(vm.get("readOnly"))))
    if pod.get("automountServiceAccountToken", True) and not any(m.target == SA_MOUNT for m in mounts):
        mounts.append(Mount(node.serviceaccount_dir, SA_MOUNT, True))
    sc = {**(pod.get("securityContext") or {}), **(ctr.get("securityContext") or {})}
    return Launch(argv=argv, env=tuple(sorted(env.items())),
                  mounts=tuple(sorted(mounts, key=lambda m: (m.target.count("/"), m.target))),
                  files=tuple(files), dirs=tuple(dirs), capabilities=_capabilities(sc, where),
                  no_new_privs=sc.get("allowPrivilegeEscalation") is False,
                  read_only_root=bool(sc.get("readOnlyRootFilesystem")), uid=int(sc.get("runAsUser", 0)),
                  image=str(ctr.get("image", "")), probes=_probes(ctr))


def rbac(objects: list[dict]) -> tuple[str, list[dict]]:
    """The DaemonSet's service account as kube-apiserver names it, and every rule the roles bound
    to it grant: a ClusterRoleBinding's ClusterRole everywhere (cluster-scoped resources need one);
    a RoleBinding's Role, or ClusterRole, only in the binding's namespace, which each of its rules
    carries as the key "namespace" (a copy of the rule) for the lab API server to enforce."""
    ds = find(objects, "DaemonSet")
    namespace = ds["metadata"].get("namespace", "default")
    account = ds["spec"]["template"]["spec"].get("serviceAccountName", "default")
    rules = []
    for b in objects:
        if b.get("kind") not in ("ClusterRoleBinding", "RoleBinding") or not any(
                s.get("kind") == "ServiceAccount" and s.get("name") == account and s.get("namespace") == namespace
                for s in b.get("subjects") or []):
            continue
        if b["kind"] == "ClusterRoleBinding":
            rules += _bound_rules(objects, b, None)
        else:
            rules += [{**r, "namespace": b["metadata"].get("namespace", "default")}
                      for r in _bound_rules(objects, b, b["metadata"].get("namespace", "default"))]
    return f"system:serviceaccount:{namespace}:{account}", rules


def _bound_rules(objects: list[dict], binding: dict, namespace: str | None) -> list[dict]:
    """The rules of the role a binding refers to: a ClusterRole, or (a RoleBinding's) a Role of its
    own namespace."""
    kind, name = binding["roleRef"].get("kind"), binding["roleRef"].get("name")
    if kind not in ("ClusterRole", "Role") or (kind == "Role" and namespace is None):
        raise ManifestError(f"{binding['kind']} {binding['metadata']['name']}: roleRef kind {kind!r} cannot be bound here")
    for o in objects:
        if o.get("kind") == kind and o["metadata"]["name"] == name \
                and (kind == "ClusterRole" or o["metadata"].get("namespace", "default") == namespace):
            return list(o.get("rules") or [])
    where = f" in namespace {namespace}" if kind == "Role" else ""
    raise ManifestError(f"{binding['kind']} {binding['metadata']['name']}: no {kind} {name}{where}")


def _env_value(objects, namespace, e, where, downward) -> str:
    if "value" in e:
        return str(e["value"])
    src = e.get("valueFrom") or {}
    if "fieldRef" in src:
        path = src["fieldRef"].get("fieldPath", "")
        if path not in downward:
            raise ManifestError(f"{where}: fieldRef {path!r} is not one the lab resolves ({', '.join(DOWNWARD)})")
        return downward[path]
    if "configMapKeyRef" in src:
        ref = src["configMapKeyRef"]
        data = _configmap(objects, namespace, ref["name"], ref.get("optional", False), where) or {}
        if ref["key"] not in data and not ref.get("optional"):
            raise ManifestError(f"{where}: ConfigMap {ref['name']} has no key {ref['key']!r}")
        return str(data.get(ref["key"], ""))
    raise ManifestError(f"{where}: only value, fieldRef and configMapKeyRef are resolved in the lab")


def _configmap(objects, namespace, name, optional, where) -> dict | None:
    for o in objects:
        if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == name \
                and o["metadata"].get("namespace", "default") == namespace:
            return dict(o.get("data") or {})
    if optional:
        return None
    raise ManifestError(f"{where}: ConfigMap {namespace}/{name} is not in the rendered manifests")


def _volume_source(objects, namespace, vol, node: NodeFacts, files, dirs, where) -> str:
    name = vol["name"]
    if "hostPath" in vol:
        hp = vol["hostPath"]
        path = os.path.join(node.host_dir, hp["path"].lstrip("/"))
        kind = hp.get("type", "")
        if kind in ("", "DirectoryOrCreate"):
            dirs.append(path)
        elif kind != "Directory":
            raise ManifestError(f"{where}: hostPath type {kind!r} is not one the lab makes (Directory, DirectoryOrCreate)")
        return path
    if "emptyDir" in vol:
        path = os.path.join(node.pod_dir, "volumes", name)
        dirs.append(path)
        return path
    if "configMap" in vol:
        ref = vol["configMap"]
        data = _configmap(objects, namespace, ref["name"], ref.get("optional", False), where) or {}
        path = os.path.join(node.pod_dir, "volumes", name)
        dirs.append(path)
        items = ref.get("items") or [{"key": k, "path": k} for k in sorted(data)]
        for item in items:
            if item["key"] not in data:
                raise ManifestError(f"{where}: ConfigMap {ref['name']} has no key {item['key']!r}")
            files.append((os.path.join(path, item["path"]), data[item["key"]]))
        return path
    if "secret" in vol:
        ref = vol["secret"]
        path = os.path.join(node.pod_dir, "volumes", name)
        dirs.append(path)
        data = _secret(objects, namespace, ref.get("secretName", ""))
        if data is None:
            if not ref.get("optional"):
                raise ManifestError(f"{where}: Secret {ref.get('secretName')} is not in the rendered manifests")
            return path  # an optional Secret that does not exist: an empty directory, as the kubelet mounts
        for item in ref.get("items") or [{"key": k, "path": k} for k in sorted(data)]:
            files.append((os.path.join(path, item["path"]), data[item["key"]]))
        return path
    raise ManifestError(f"{where}: only hostPath, emptyDir, configMap and secret volumes are made in the lab")


def _secret(objects, namespace, name) -> dict[str, str] | None:
    """A Secret's keys as text (data is base64, stringData plain), or None when there is none."""
    for o in objects:
        if o.get("kind") == "Secret" and o["metadata"]["name"] == name \
                and o["metadata"].get("namespace", "default") == namespace:
            out = {k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()}
            out.update(o.get("stringData") or {})
            return out
    return None


def _capabilities(sc: dict, where: str) -> tuple[str, ...]:
    if sc.get("privileged"):
        raise ManifestError(f"{where}: privileged containers are not what podbgp ships; name the capabilities")
    caps = sc.get("capabilities") or {}
    drop = {c.upper().removeprefix("CAP_") for c in caps.get("drop") or []}
    if "ALL" not in drop:
        raise ManifestError(f"{where}: capabilities must drop ALL and add back what is needed")
    return tuple(sorted(c.lower().removeprefix("cap_") for c in caps.get("add") or []))


def _probes(ctr: dict) -> dict:
    out = {}
    for kind in ("liveness", "readiness"):
        get = (ctr.get(f"{kind}Probe") or {}).get("httpGet")
        if get:
            port = get.get("port")
            if isinstance(port, str):
                port = next((p["containerPort"] for p in ctr.get("ports") or [] if p.get("name") == port), port)
            out[kind] = (get.get("path", "/"), int(port))
    return out


def prepare(launch: Launch) -> None:
    """Write the Pod's volumes to disk (ConfigMap files, empty dirs) before it starts."""
    for d in launch.dirs:
        os.makedirs(d, exist_ok=True)
    for path, content in launch.files:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # Secret files too: not world-readable
        with os.fdopen(fd, "w") as f:
            f.write(content)
    for m in launch.mounts:  # a mount point nested in another mount is made inside that mount's source
        parent = next((p for p in launch.mounts if p is not m and m.target.startswith(p.target.rstrip("/") + "/")), None)
        if parent is not None:
            os.makedirs(os.path.join(parent.source, os.path.relpath(m.target, parent.target)), exist_ok=True)
        elif not os.path.exists(m.target):
            os.makedirs(m.target, exist_ok=True)  # an empty mount point on this machine, used only as such


def covered(launch: Launch, keep: tuple[str, ...]) -> list[tuple[str, Mount]]:
    """The paths of keep (where the lab's podbgp runs from: this checkout, its interpreter) that a
    volume would hide, e.g. a checkout under /tmp with an emptyDir at /tmp; each with the deepest
    mount that covers it."""
    out = []
    keep = tuple(p for p in dict.fromkeys(keep) if not any(q != p and p.startswith(q.rstrip("/") + "/") for q in keep))
    for path in keep:
        over = [m for m in launch.mounts if path == m.target or path.startswith(m.target.rstrip("/") + "/")]
        if over:
            out.append((path, max(over, key=lambda m: len(m.target))))
    return out


def prepare_keep(launch: Launch, keep: tuple[str, ...], staging: str) -> None:
    """Mount points for shell_argv's keep: a staging directory per path, and the path itself
    inside the source of the volume that covers it."""
    for i, (path, m) in enumerate(covered(launch, keep)):
        os.makedirs(os.path.join(staging, str(i)), exist_ok=True)
        os.makedirs(os.path.join(m.source, os.path.relpath(path, m.target)), exist_ok=True)


def shell_argv(launch: Launch, netns: str, keep: tuple[str, ...] = (), staging: str = "") -> list[str]:
    """The command that starts the container's process in the node's namespace, as its own PID.
    The paths of keep stay visible where they are (bound aside through staging, then back over
    the volume that covers them); prepare_keep makes their mount points."""
    steps = []
    kept = covered(launch, keep)
    for i, (path, _) in enumerate(kept):
        steps.append(f"mount --bind {shlex.quote(path)} {shlex.quote(os.path.join(staging, str(i)))}")
    for m in launch.mounts:
        steps.append(f"mount --bind {shlex.quote(m.source)} {shlex.quote(m.target)}")
        if m.read_only:
            steps.append(f"mount -o remount,bind,ro {shlex.quote(m.target)}")
    for i, (path, _) in enumerate(kept):
        steps.append(f"mount --bind {shlex.quote(os.path.join(staging, str(i)))} {shlex.quote(path)}")
    if launch.read_only_root:
        steps.append("mount -o remount,bind,ro /")
    setpriv = ["setpriv", f"--bounding-set=-all{''.join(',+' + c for c in launch.capabilities)}",
               "--inh-caps=-all"]
    if launch.uid != 0:
        setpriv += [f"--reuid={launch.uid}", f"--regid={launch.uid}", "--clear-groups"]
    if launch.no_new_privs:
        setpriv.append("--no-new-privs")
    env = ["env", "-i", *(f"{k}={v}" for k, v in launch.env)]
    steps.append("exec " + " ".join(shlex.quote(a) for a in [*setpriv, "--", *env, *launch.argv]))
    return ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-ec", "; ".join(steps)]
