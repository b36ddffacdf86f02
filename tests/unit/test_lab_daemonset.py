"""The lab starts each node's speaker from deploy/'s DaemonSet and ConfigMap: the launch it derives
follows the manifests, and a manifest the lab cannot honour as a kubelet would stops it."""
import copy
import os
import shutil

import pytest

from lab import daemonset
from lab.daemonset import ManifestError, NodeFacts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def objects():
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    return daemonset.render(os.path.join(ROOT, "lab"))


def facts(tmp_path):
    return NodeFacts(name="node1", host_dir=str(tmp_path / "host"), pod_dir=str(tmp_path / "pod"),
                     host_ip="192.168.50.11", serviceaccount_dir=str(tmp_path / "sa"), api_host="127.0.0.1",
                     api_port=6443)


def daemonset_of(objs):
    return next(o for o in objs if o["kind"] == "DaemonSet")


def test_the_launch_is_what_the_daemonset_and_configmap_say(objects, tmp_path):
    launch = daemonset.plan(objects, facts(tmp_path))
    ctr = daemonset_of(objects)["spec"]["template"]["spec"]["containers"][0]
    assert launch.argv == tuple(ctr["command"] + ctr["args"])
    env = dict(launch.env)
    assert env["NODE_NAME"] == "node1"  # fieldRef spec.nodeName
    assert env["POD_NAMESPACE"] == "kube-system"  # fieldRef metadata.namespace: the allocator's Lease
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("127.0.0.1", "6443")
    targets = {m.target: m for m in launch.mounts}
    assert targets[daemonset.SA_MOUNT].source == str(tmp_path / "sa") and targets[daemonset.SA_MOUNT].read_only
    assert targets["/etc/cni/net.d"].source == str(tmp_path / "host" / "etc" / "cni" / "net.d")
    assert not targets["/etc/cni/net.d"].read_only
    config_mount = next(m for m in launch.mounts if m.target == "/etc/podbgp")
    assert config_mount.read_only
    files = dict(launch.files)
    cm = next(o for o in objects if o["kind"] == "ConfigMap")
    assert files[os.path.join(config_mount.source, "config.yaml")] == cm["data"]["config.yaml"]
    caps = ctr["securityContext"]["capabilities"]["add"]
    assert launch.capabilities == tuple(sorted(c.lower() for c in caps))
    assert launch.read_only_root and launch.no_new_privs and launch.uid == 0
    assert launch.probes["liveness"] == ("/healthz", 9469) and launch.probes["readiness"] == ("/readyz", 9469)


def test_the_shell_command_binds_the_volumes_and_drops_capabilities(objects, tmp_path):
    launch = daemonset.plan(objects, facts(tmp_path))
    argv = daemonset.shell_argv(launch, "lab-node1")
    assert argv[:4] == ["ip", "netns", "exec", "lab-node1"]
    script = argv[-1]
    assert f"mount --bind {tmp_path / 'host' / 'etc' / 'cni' / 'net.d'} /etc/cni/net.d" in script
    assert "mount -o remount,bind,ro /;" in script or "mount -o remount,bind,ro / " in script
    assert "--bounding-set=-all,+" + ",+".join(launch.capabilities) in script
    assert "--no-new-privs" in script and script.rstrip().endswith(" ".join(launch.argv))
    # nested mounts after their parents; the secrets mount point is made inside the config volume
    order = [m.target for m in launch.mounts]
    assert order.index("/etc/podbgp") < order.index("/etc/podbgp/secrets")
    daemonset.prepare(launch)
    parent = next(m for m in launch.mounts if m.target == "/etc/podbgp")
    assert os.path.isdir(os.path.join(parent.source, "secrets"))


@pytest.mark.parametrize("breakage,message", [
    (lambda ds: ds["spec"]["template"]["spec"].pop("hostNetwork"), "hostNetwork"),
    (lambda ds: ds["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    (lambda ds: ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
     "drop ALL"),
    (lambda ds: ds["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["fieldRef"].update(
        fieldPath="spec.nodeNam"), "spec.nodeNam"),
    (lambda ds: ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0].update(name="nope"), "nope"),
    (lambda ds: ds["spec"]["template"]["spec"]["volumes"][0].update(configMap={"name": "podbgp-cfg"}), "podbgp-cfg"),
])
def test_a_manifest_the_lab_cannot_honour_is_refused(objects, tmp_path, breakage, message):
    broken = copy.deepcopy(objects)
    ds = daemonset_of(broken)
    vols = ds["spec"]["template"]["spec"]["volumes"]
    vols.sort(key=lambda v: "configMap" not in v)  # the ConfigMap volume first, for the last case
    breakage(ds)
    with pytest.raises(ManifestError, match=message):
        daemonset.plan(broken, facts(tmp_path))


def test_a_checkout_under_a_volume_stays_visible_to_the_speaker(objects, tmp_path):
    """A checkout in /tmp, where the DaemonSet mounts an emptyDir: bound aside, then back over it."""
    launch = daemonset.plan(objects, facts(tmp_path))
    tmp_vol = next(m for m in launch.mounts if m.target == "/tmp")
    keep = ("/tmp/ci1", "/tmp/ci1/.venv", "/root/.pyenv/versions/3.11.7")
    assert [(p, m.target) for p, m in daemonset.covered(launch, keep)] == [("/tmp/ci1", "/tmp")]
    staging = str(tmp_path / "keep")
    daemonset.prepare_keep(launch, keep, staging)
    assert os.path.isdir(os.path.join(tmp_vol.source, "ci1")) and os.path.isdir(os.path.join(staging, "0"))
    steps = daemonset.shell_argv(launch, "lab-node1", keep=keep, staging=staging)[-1].split("; ")
    aside = steps.index(f"mount --bind /tmp/ci1 {staging}/0")
    over = steps.index(f"mount --bind {tmp_vol.source} /tmp")
    back = steps.index(f"mount --bind {staging}/0 /tmp/ci1")
    assert aside < over < back < steps.index("mount -o remount,bind,ro /")


def test_the_lab_api_grants_the_speakers_what_the_bound_roles_do(objects):
    user, rules = daemonset.rbac(objects)
    assert user == "system:serviceaccount:kube-system:podbgp"
    cluster_role = next(o for o in objects if o["kind"] == "ClusterRole")
    role = next(o for o in objects if o["kind"] == "Role")
    cluster_rules = [r for r in rules if "namespace" not in r]
    assert cluster_rules == cluster_role["rules"]  # everywhere: no namespace key
    # the Role's rules, each limited to the RoleBinding's namespace; the manifests' own untouched
    assert [r for r in rules if "namespace" in r] == [{**r, "namespace": "kube-system"} for r in role["rules"]]
    assert all("namespace" not in r for r in role["rules"])
    assert len(rules) == len(cluster_role["rules"]) + len(role["rules"])
    other = copy.deepcopy(objects)
    daemonset_of(other)["spec"]["template"]["spec"]["serviceAccountName"] = "someone-else"
    assert daemonset.rbac(other) == ("system:serviceaccount:kube-system:someone-else", [])
    unbound = [o for o in copy.deepcopy(objects) if o["kind"] != "ClusterRole"]
    with pytest.raises(ManifestError, match="no ClusterRole"):
        daemonset.rbac(unbound)
    no_role = [o for o in copy.deepcopy(objects) if o["kind"] != "Role"]
    with pytest.raises(ManifestError, match="RoleBinding podbgp: no Role podbgp in namespace kube-system"):
        daemonset.rbac(no_role)


def test_a_role_counts_only_in_its_own_namespace_and_a_rolebinding_may_bind_a_clusterrole(objects):
    moved = copy.deepcopy(objects)
    next(o for o in moved if o["kind"] == "Role")["metadata"]["namespace"] = "elsewhere"
    with pytest.raises(ManifestError, match="no Role podbgp in namespace kube-system"):
        daemonset.rbac(moved)
    # a RoleBinding in another namespace naming the account, bound to a ClusterRole: its rules
    # there only
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "podbgp-reads", "namespace": "team-a"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "podbgp"},
               "subjects": [{"kind": "ServiceAccount", "name": "podbgp", "namespace": "kube-system"}]}
    _, rules = daemonset.rbac([*objects, binding])
    cluster_role = next(o for o in objects if o["kind"] == "ClusterRole")
    assert [r for r in rules if r.get("namespace") == "team-a"] == [{**r, "namespace": "team-a"}
                                                                    for r in cluster_role["rules"]]
    stranger = copy.deepcopy(binding)
    stranger["subjects"][0]["namespace"] = "default"  # another namespace's account of the same name
    assert daemonset.rbac([*objects, stranger]) == daemonset.rbac(objects)
    bad = copy.deepcopy(objects)
    next(o for o in bad if o["kind"] == "ClusterRoleBinding")["roleRef"]["kind"] = "Role"
    with pytest.raises(ManifestError, match="roleRef kind 'Role' cannot be bound"):
        daemonset.rbac(bad)


def test_a_secret_in_the_manifests_becomes_the_mounted_files(objects, tmp_path):
    import base64

    vol = next(v for v in daemonset_of(objects)["spec"]["template"]["spec"]["volumes"] if "secret" in v)
    name = vol["secret"]["secretName"]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "kube-system"},
              "data": {"tor-md5": base64.b64encode(b"s3cret").decode()}}
    launch = daemonset.plan([*(o for o in objects if o.get("kind") != "Secret"), secret], facts(tmp_path))
    mount = next(m for m in launch.mounts if m.target == "/etc/podbgp/secrets")
    assert dict(launch.files)[os.path.join(mount.source, "tor-md5")] == "s3cret" and mount.read_only
    daemonset.prepare(launch)
    assert os.stat(os.path.join(mount.source, "tor-md5")).st_mode & 0o077 == 0  # not readable by others
    without = daemonset.plan([o for o in objects if o.get("kind") != "Secret"], facts(tmp_path))
    assert not any("secrets" in p for p, _ in without.files)  # optional and absent: an empty directory
    broken = copy.deepcopy([o for o in objects if o.get("kind") != "Secret"])
    next(v for v in daemonset_of(broken)["spec"]["template"]["spec"]["volumes"] if "secret" in v)["secret"]["optional"] = False
    with pytest.raises(ManifestError, match=name):
        daemonset.plan(broken, facts(tmp_path))
