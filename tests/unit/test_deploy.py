"""deploy/, the kustomize base: what `kubectl kustomize deploy` renders, checked against the
Kubernetes 1.32 schemas (offline, kubernetes-validate) and against the contract the lab and the
image rely on. The contract checks are a function returning violations, so a test can show that
breaking the manifest breaks them.
"""
import copy
import os
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from speaker import config as cfgmod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S_VERSION = "1.32.0"  # kubernetes-validate ships v1.32.0-local-strict; no network needed
EXPECTED = {("ServiceAccount", "podbgp"), ("ClusterRole", "podbgp"), ("ClusterRoleBinding", "podbgp"),
            ("Role", "podbgp"), ("RoleBinding", "podbgp"), ("ConfigMap", "podbgp-config"), ("DaemonSet", "podbgp")} | {
            (kind, name) for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
            for name in ("podbgp-node-status", "podbgp-allocator-lease", "podbgp-service-status")}
NAMESPACED = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "DaemonSet"}
# What each part of the speaker needs (test_helm.py grants the same per values).
NODE_RULES = [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
              {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}]
SERVICE_READ_RULES = [{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
                      {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                       "verbs": ["get", "list", "watch"]}]
ALLOCATOR_RULES = [{"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch"]},
                   {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
LEASE_RULES = [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
               {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["podbgp-allocator"],
                "verbs": ["get", "update"]}]
RULES = NODE_RULES + SERVICE_READ_RULES + ALLOCATOR_RULES


def needed_rules(cfg: cfgmod.Config) -> tuple[list[dict], list[dict]]:
    """(ClusterRole rules, Role rules in podbgp's namespace) a speaker with this config uses:
    Services and EndpointSlices are watched when anything about Services is configured (the
    speaker's services_enabled), the allocator writes status and Events and holds its Lease."""
    sc = cfg.services
    reads = bool(sc.pools or sc.external_ip_cidrs or sc.cluster_ip_mode != "off" or sc.allocate)
    cluster = NODE_RULES + (SERVICE_READ_RULES if reads else []) + (ALLOCATOR_RULES if sc.allocate else [])
    return cluster, (LEASE_RULES if sc.allocate else [])


def kustomize(path: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize base")
    out = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path}: {out.stderr.strip()}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def base() -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in kustomize(os.path.join(ROOT, "deploy"))}


def _get(obj, path: str):
    """`a.b[0].c` in a nested dict; None when absent."""
    for part in path.replace("[", ".[").split("."):
        if obj is None:
            return None
        if part.startswith("["):
            i = int(part[1:-1])
            obj = obj[i] if isinstance(obj, list) and i < len(obj) else None
        else:
            obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


POD = "spec.template.spec"
C = POD + ".containers[0]"
SC = C + ".securityContext"
CONTRACT = {
    "spec.updateStrategy.type": "RollingUpdate",
    "spec.updateStrategy.rollingUpdate.maxUnavailable": 1,
    POD + ".hostNetwork": True,
    POD + ".dnsPolicy": "ClusterFirstWithHostNet",
    POD + ".priorityClassName": "system-node-critical",
    POD + ".tolerations": [{"operator": "Exists"}],
    POD + ".nodeSelector": {"kubernetes.io/os": "linux"},
    POD + ".terminationGracePeriodSeconds": 30,
    POD + ".serviceAccountName": "podbgp",
    POD + ".automountServiceAccountToken": True,
    POD + ".hostPID": None,
    POD + ".hostIPC": None,
    C + ".name": "podbgp",
    C + ".image": "localhost/podbgp:dev",
    C + ".command": ["podbgp", "speaker"],
    C + ".args": ["--config", "/etc/podbgp/config.yaml", "--log-level", "info"],
    C + ".env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                 {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
    C + ".ports": [{"name": "metrics", "containerPort": 9469, "protocol": "TCP"}],
    C + ".livenessProbe.httpGet": {"path": "/healthz", "port": 9469},
    C + ".readinessProbe.httpGet": {"path": "/readyz", "port": 9469},
    C + ".resources": {"requests": {"cpu": "50m", "memory": "160Mi"}, "limits": {"memory": "320Mi"}},
    SC + ".privileged": False,
    SC + ".allowPrivilegeEscalation": False,
    SC + ".readOnlyRootFilesystem": True,
    SC + ".runAsUser": 0,
    SC + ".capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]},
    SC + ".seccompProfile": {"type": "RuntimeDefault"},
    "spec.template.metadata.annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9469",
                                           "prometheus.io/path": "/metrics"},
}
# mount path -> (read-only, volume source), and nothing else from the host
MOUNTS = {
    "/etc/podbgp": (True, {"configMap": {"name": "podbgp-config"}}),
    "/etc/podbgp/secrets": (True, {"secret": {"secretName": "podbgp-bgp-passwords", "optional": True}}),
    "/etc/cni/net.d": (False, {"hostPath": {"path": "/etc/cni/net.d", "type": "DirectoryOrCreate"}}),
    "/run/podbgp": (False, {"hostPath": {"path": "/run/podbgp", "type": "DirectoryOrCreate"}}),
    "/tmp": (False, {"emptyDir": {}}),
}


def _volume_source(vol: dict) -> dict:
    src = {k: v for k, v in vol.items() if k != "name"}
    for kind in ("secret", "configMap"):
        if kind in src:  # defaultMode is the manifest's business, not the contract's
            src[kind] = {k: v for k, v in src[kind].items() if k != "defaultMode"}
    return src


def contract_violations(ds: dict) -> list[str]:
    """Every way the DaemonSet departs from the contract, one line each."""
    bad = [f"{path}: {_get(ds, path)!r}, want {want!r}" for path, want in CONTRACT.items() if _get(ds, path) != want]
    pod = _get(ds, POD) or {}
    if len(pod.get("containers") or []) != 1 or pod.get("initContainers"):
        bad.append("containers: want exactly one (podbgp) and no init containers")
    c = _get(ds, C) or {}
    if "cpu" in (c.get("resources", {}).get("limits") or {}):
        bad.append("resources.limits.cpu: must not be set (throttling delays keepalives)")
    for probe in ("livenessProbe", "readinessProbe"):
        p = c.get(probe) or {}
        if not (p.get("periodSeconds") and p.get("failureThreshold") and p.get("timeoutSeconds")):
            bad.append(f"{probe}: periodSeconds, timeoutSeconds and failureThreshold must be set")
    volumes = {v["name"]: _volume_source(v) for v in pod.get("volumes") or []}
    mounts = {m["mountPath"]: (bool(m.get("readOnly")), volumes.get(m["name"])) for m in c.get("volumeMounts") or []}
    if mounts != MOUNTS:
        bad.append(f"volumeMounts: {mounts!r}, want {MOUNTS!r}")
    if len(volumes) != len(MOUNTS):
        bad.append(f"volumes: {sorted(volumes)} are not exactly the {len(MOUNTS)} mounted ones")
    return bad


def test_the_objects_in_kube_system_and_the_cluster_scoped_ones(base):
    assert set(base) == EXPECTED
    for (kind, name), obj in base.items():
        assert obj["metadata"].get("namespace") == ("kube-system" if kind in NAMESPACED else None), (kind, name)
    for binding, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        assert base[binding, "podbgp"]["subjects"] == [
            {"kind": "ServiceAccount", "name": "podbgp", "namespace": "kube-system"}]
        assert base[binding, "podbgp"]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role,
                                                     "name": "podbgp"}


def test_schema_version_is_shipped_offline():
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_valid_against_kubernetes_schema(base, key):
    assert kubernetes_validate.validate(base[key], K8S_VERSION, strict=True) == "1.32"


def test_strict_schema_refuses_a_misspelt_field(base):
    ds = copy.deepcopy(base["DaemonSet", "podbgp"])
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def test_rbac_grants_nodes_services_and_the_allocator_only(base):
    assert base["ClusterRole", "podbgp"]["rules"] == RULES
    assert "aggregationRule" not in base["ClusterRole", "podbgp"]
    # the Lease only in podbgp's namespace, and only podbgp-allocator beyond create
    assert base["Role", "podbgp"]["rules"] == LEASE_RULES


def test_rbac_grants_no_write_beyond_the_allocators():
    writes = {(g, r, v) for rule in RULES + LEASE_RULES for g in rule["apiGroups"] for r in rule["resources"]
              for v in rule["verbs"] if v not in ("get", "list", "watch")}
    assert writes == {("", "nodes/status", "patch"), ("", "services/status", "patch"), ("", "events", "create"),
                      ("coordination.k8s.io", "leases", "create"), ("coordination.k8s.io", "leases", "update")}
    assert not any("*" in str(rule) for rule in RULES + LEASE_RULES)


def _granted(rules: list[dict], want: dict) -> bool:
    return any(set(want["apiGroups"]) <= set(r["apiGroups"]) and set(want["resources"]) <= set(r["resources"])
               and set(want["verbs"]) <= set(r["verbs"]) and r.get("resourceNames") == want.get("resourceNames")
               for r in rules)


def test_base_rbac_covers_the_config_as_shipped_and_with_services_uncommented(base):
    """The decision (deploy/README.md): the base's config leaves services commented out, and its
    RBAC already grants what uncommenting the whole block (allocator included) needs, because an
    overlay replaces the config and not the RBAC."""
    shipped = cfgmod.parse({**yaml.safe_load(base["ConfigMap", "podbgp-config"]["data"]["config.yaml"]),
                            "nodeName": "node1"})
    assert needed_rules(shipped) == (NODE_RULES, [])
    raw = _uncommented_block("services")
    raw["services"]["loadBalancer"]["allocate"] = True
    full = cfgmod.parse({**raw, "nodeName": "node1"})
    cluster, namespaced = needed_rules(full)
    assert cluster == RULES and namespaced == LEASE_RULES
    for want in cluster:
        assert _granted(base["ClusterRole", "podbgp"]["rules"], want), want
    for want in namespaced:
        assert _granted(base["Role", "podbgp"]["rules"], want), want
    assert not _granted(base["Role", "podbgp"]["rules"], {**LEASE_RULES[1], "resourceNames": None})


def test_daemonset_keeps_the_contract(base):
    assert contract_violations(base["DaemonSet", "podbgp"]) == []


def _set(obj, path, value):
    parts = path.replace("[", ".[").split(".")
    for part in parts[:-1]:
        obj = obj[int(part[1:-1])] if part.startswith("[") else obj.setdefault(part, {})
    obj[parts[-1]] = value


@pytest.mark.parametrize("path,value", [
    (SC + ".privileged", True),
    (SC + ".allowPrivilegeEscalation", True),
    (SC + ".readOnlyRootFilesystem", False),
    (SC + ".capabilities", {"add": ["NET_ADMIN", "NET_BIND_SERVICE", "SYS_ADMIN"], "drop": ["ALL"]}),
    (SC + ".capabilities", {"add": ["NET_ADMIN"], "drop": ["ALL"]}),  # no :179 for the mesh
    (SC + ".capabilities", {"add": ["NET_ADMIN", "NET_BIND_SERVICE"]}),
    (SC + ".seccompProfile", {"type": "Unconfined"}),
    (POD + ".hostPID", True),
    (POD + ".hostNetwork", False),
    (POD + ".tolerations", [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]),
    (C + ".resources.limits.cpu", "500m"),
    (C + ".env", [{"name": "NODE_NAME", "value": "node1"}]),
    (C + ".readinessProbe.httpGet.path", "/healthz"),
    (POD + ".volumes[1].secret.optional", False),
    (C + ".volumeMounts[0].readOnly", False),
    (POD + ".volumes[3].hostPath.path", "/run"),
])
def test_a_broken_manifest_breaks_the_contract(base, path, value):
    ds = copy.deepcopy(base["DaemonSet", "podbgp"])
    assert _get(ds, path) != value
    _set(ds, path, value)
    assert contract_violations(ds)


def test_an_extra_host_mount_breaks_the_contract(base):
    ds = copy.deepcopy(base["DaemonSet", "podbgp"])
    pod = ds["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "root", "hostPath": {"path": "/"}})
    assert contract_violations(ds)
    pod["containers"][0]["volumeMounts"].append({"name": "root", "mountPath": "/host"})
    assert contract_violations(ds)


def test_config_example_is_accepted_by_the_speaker(base):
    cm = base["ConfigMap", "podbgp-config"]
    assert set(cm["data"]) == {"config.yaml"}
    raw = yaml.safe_load(cm["data"]["config.yaml"])
    cfg = cfgmod.parse({**raw, "nodeName": "node1"})
    assert cfg.status_address == "0.0.0.0:9469" and cfg.runtime_dir == "/run/podbgp"
    assert cfg.asn == 64512 and cfg.graceful_restart == 120
    assert [(str(p.address), p.asn, p.hold_time) for p in cfg.peers] == [("10.0.0.1", 65000, 9)]
    assert [str(n) for n in cfg.cluster_cidrs] == ["10.42.0.0/16"]
    assert [str(n) for n in cfg.service_cidrs] == ["10.43.0.0/16"]
    assert cfg.cni.conf_path.startswith("/etc/cni/net.d/")  # the one host directory mounted


def test_config_example_gets_no_node_name_from_the_file(base):
    raw = yaml.safe_load(base["ConfigMap", "podbgp-config"]["data"]["config.yaml"])
    assert "nodeName" not in raw
    with pytest.raises(cfgmod.ConfigError, match="nodeName"):
        cfgmod.parse(raw)


def _uncommented(keys: set[str]) -> dict:
    """deploy/config.yaml with the commented `# key: value` lines of `keys` made live."""
    with open(os.path.join(ROOT, "deploy", "config.yaml")) as f:
        lines = f.read().splitlines()
    out, found = [], set()
    for line in lines:
        head, sep, rest = line.partition("# ")
        key = rest.split(":", 1)[0]
        if sep and not head.strip() and key in keys:
            line, found = head + rest, found | {key}
        out.append(line)
    assert found == keys, f"not commented in deploy/config.yaml: {sorted(keys - found)}"
    return yaml.safe_load("\n".join(out))


def test_config_example_commented_peer_options_are_accepted():
    raw = _uncommented({"mode", "port", "keepaliveTime", "multihop", "passwordKey", "nodeSelector", "routerId",
                        "secretsDir"})
    cfg = cfgmod.parse({**raw, "nodeName": "node1"})
    (p,) = cfg.peers
    assert (p.port, p.keepalive_time, p.multihop, p.password_key) == (179, 3, 2, "tor-md5")
    assert p.node_selector.matches({"topology.kubernetes.io/zone": "rack1"}) and not p.node_selector.matches({})
    assert (cfg.mode, str(cfg.router_id), cfg.secrets_dir) == ("bgp", "192.0.2.1", "/etc/podbgp/secrets")


def test_config_example_commented_mesh_is_accepted():
    cfg = cfgmod.parse({**_uncommented({"mesh", "meshNodeSelector"}), "nodeName": "node1"})
    assert cfg.mesh and cfg.asn == 64512
    assert cfg.mesh_node_selector.matches({}) and not cfg.mesh_node_selector.matches({"podbgp.io/mesh": "false"})


def test_config_example_holds_no_password():
    with open(os.path.join(ROOT, "deploy", "config.yaml")) as f:
        text = f.read()
    assert "password:" not in text.replace("passwordKey:", "")
    raw = _uncommented({"passwordKey"})
    raw["peers"][0]["password"] = raw["peers"][0].pop("passwordKey")
    with pytest.raises(cfgmod.ConfigError, match=r"peers\[0\]\.password: .*passwordKey"):
        cfgmod.parse({**raw, "nodeName": "node1"})


def _uncommented_block(key: str) -> dict:
    """deploy/config.yaml with the commented top-level block `# key:` made live: that line and
    the indented commented lines under it (a commented comment among them stays a comment)."""
    with open(os.path.join(ROOT, "deploy", "config.yaml")) as f:
        lines = f.read().splitlines()
    start = lines.index(f"# {key}:")
    out, i = lines[:start] + [f"{key}:"], start + 1
    while i < len(lines) and lines[i].startswith("#   "):
        out.append(lines[i][2:])
        i += 1
    assert i > start + 1, f"no commented block under # {key}: in deploy/config.yaml"
    return yaml.safe_load("\n".join(out + lines[i:]))


def test_config_example_commented_services_block_is_accepted():
    raw = _uncommented_block("services")
    assert set(raw["services"]) == {"loadBalancerClass", "loadBalancer", "externalIPs", "clusterIP"}
    sc = cfgmod.parse({**raw, "nodeName": "node1"}).services
    (pool,) = sc.pools
    assert (pool.name, [str(n) for n in pool.cidrs], pool.communities, pool.local_preference) == (
        "default", ["203.0.113.0/24", "fd00:113::/112"], ("65000:100",), 200)
    assert pool.service_selector.matches({"team": "web"}) and not pool.service_selector.matches({})
    assert [str(n) for n in sc.external_ip_cidrs] == ["198.51.100.0/24"]
    assert (sc.load_balancer_class, sc.allocate, sc.cluster_ip_mode) == ("podbgp.io/bgp", False, "off")


def test_config_example_commented_export_services_are_accepted():
    cfg = cfgmod.parse({**_uncommented({"exportServices", "meshExportServices", "mesh"}), "nodeName": "node1"})
    assert (cfg.mesh, cfg.mesh_export_services, cfg.peers[0].export_services) == (True, False, True)
    raw = _uncommented({"exportServices", "meshExportServices"})
    raw["peers"][0]["exportServices"], raw["meshExportServices"] = False, True
    cfg = cfgmod.parse({**raw, "nodeName": "node1"})
    assert (cfg.mesh_export_services, cfg.peers[0].export_services) == (True, False)


def test_readme_overlay_drops_the_service_rules(tmp_path):
    """deploy/README.md's overlay for a cluster that never announces a Service renders, and leaves
    the Node rules only: no Service reads, no allocator writes, no Role."""
    with open(os.path.join(ROOT, "deploy", "README.md")) as f:
        text = f.read()
    marker = "# my-cluster/kustomization.yaml, a cluster that never announces a Service\n"
    overlay = text[text.index(marker):].split("```", 1)[0]
    shutil.copytree(os.path.join(ROOT, "deploy"), tmp_path / "deploy", ignore=shutil.ignore_patterns("helm"))
    (tmp_path / "my-cluster").mkdir()
    (tmp_path / "my-cluster" / "kustomization.yaml").write_text("resources:\n  - ../deploy\n" + overlay)
    objs = {(o["kind"], o["metadata"]["name"]): o for o in kustomize(str(tmp_path / "my-cluster"))}
    assert set(objs) == EXPECTED - {("Role", "podbgp"), ("RoleBinding", "podbgp")}
    assert objs["ClusterRole", "podbgp"]["rules"] == NODE_RULES
