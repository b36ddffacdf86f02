"""Issue: announce, learn, install. Real ExaBGP, a real FRR ToR, CNI pods, the lab API, pings."""
import base64
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from lab import daemonset, demo, runner
from tests.lab.conftest import poll

NODES = ("node1", "node2", "node3")


def installed(state, node):
    return demo.installed(state, node)


def test_every_pod_reaches_every_pod_on_other_nodes_v4_and_v6(lab):
    ok, total, lines = demo.matrix(lab)
    assert total == 48 and ok == total, "\n".join(lines)


def test_kernel_routes_carry_our_protocol_and_point_at_the_owning_node(lab):
    out = runner.run(["ip", "-j", "-4", "route", "show", "proto", "80"], netns=lab.nodes["node1"]["netns"]).stdout
    by_dst = {r["dst"]: r["gateway"] for r in json.loads(out)}
    assert by_dst == {"10.42.2.0/24": "192.168.50.12", "10.42.3.0/24": "192.168.50.13"}
    out = runner.run(["ip", "-j", "-6", "route", "show", "proto", "80"], netns=lab.nodes["node1"]["netns"]).stdout
    assert {r["dst"]: r["gateway"] for r in json.loads(out)} == {"fd00:42:0:2::/64": "fd00:50::12",
                                                                 "fd00:42:0:3::/64": "fd00:50::13"}


def test_lab_commands_status_exec_kubectl(lab):
    cli = [sys.executable, "-m", "speaker.cli", "lab"]
    env = runner.tool_env({"PODBGP_LAB": lab.name})
    doc = json.loads(subprocess.run(cli + ["status", "--json"], capture_output=True, text=True, env=env, check=True).stdout)
    assert sorted(n["name"] for n in doc["nodes"]) == ["node1", "node2", "node3", "tor", "workstation"]
    assert "192.168.50.11" in next(n for n in doc["nodes"] if n["name"] == "node1")["addresses"]
    pods = {p["name"]: p for p in doc["pods"]}
    assert len(pods) == 6 and pods["node2-pod1"]["ipv4"].startswith("10.42.2.") and pods["node2-pod1"]["ipv6"]
    summary = subprocess.run(cli + ["exec", "tor", "--", "vtysh", "-c", "show bgp summary json"], capture_output=True,
                             text=True, env=env, check=True).stdout
    peers = json.loads(summary)["ipv4Unicast"]["peers"]
    assert {p: v["state"] for p, v in peers.items()} == {f"192.168.50.1{i}": "Established" for i in (1, 2, 3)}
    routes = subprocess.run(cli + ["exec", "node1-pod1", "--", "ip", "route"], capture_output=True, text=True,
                            env=env, check=True).stdout
    assert "default via 10.42.1.1" in routes
    kc = subprocess.run(cli + ["kubeconfig"], capture_output=True, text=True, env=env, check=True).stdout.strip()
    wide = runner.kubectl(lab, "get", "nodes", "-o", "wide").stdout
    assert kc == lab.kubeconfig and all(n in wide for n in NODES) and "192.168.50.12" in wide


def test_podbgp_status_reports_peers_routes_and_rejections(lab):
    doc = runner.speaker_status(lab, "node1")
    assert {p["address"]: p["state"] for p in doc["peers"]} == {"192.168.50.1": "up", "fd00:50::1": "up"}
    assert doc["announced"] == ["10.42.1.0/24", "fd00:42:0:1::/64"]
    assert [r["prefix"] for r in doc["installed"]] == ["10.42.2.0/24", "10.42.3.0/24", "fd00:42:0:2::/64",
                                                       "fd00:42:0:3::/64"]
    assert doc["rejectedByReason"] == {"own-cidr": 2} and doc["converged"]
    text = subprocess.run(runner.exec_argv(lab, "node1", ["podbgp", "status"]), capture_output=True, text=True,
                          env=runner.tool_env(), check=True).stdout
    assert "192.168.50.1" in text and "INSTALLED" in text and "own-cidr" in text


def test_deleting_a_node_withdraws_its_routes_everywhere_and_recreating_restores_them(lab):
    node3 = json.loads(runner.kubectl(lab, "get", "node", "node3", "-o", "json").stdout)
    cidrs = {"10.42.3.0/24", "fd00:42:0:3::/64"}
    runner.kubectl(lab, "delete", "node", "node3", "--wait=false")
    gone = poll(lambda: all(not (cidrs & installed(lab, n)) for n in ("node1", "node2")), timeout=2)
    for key in ("resourceVersion", "uid", "creationTimestamp"):
        node3["metadata"].pop(key, None)
    runner.kubectl(lab, "create", "-f", "-", input=json.dumps(node3))
    back = poll(lambda: all(cidrs <= installed(lab, n) for n in ("node1", "node2")), timeout=2)
    ok, total, lines = demo.matrix(lab)
    assert ok == total, "\n".join(lines)
    print(f"node3 routes gone in {gone:.3f}s, back in {back:.3f}s")


def tor_config(lab, *lines):
    args = ["configure terminal", "router bgp 65000", *lines]
    cmd = []
    for a in args:
        cmd += ["-c", a]
    d = runner.frr_dir(lab, "tor")
    runner.run(["vtysh", "--vty_socket", d, "--config_dir", d, *cmd], netns=lab.nodes["tor"]["netns"])


HOSTILE_V4 = ["0.0.0.0/0", "172.16.99.0/24", "10.43.7.0/24", "10.42.1.0/24"]
HOSTILE_V6 = ["::/0", "fd00:99::/64", "fd00:43::/112"]


def test_hostile_tor_routes_never_reach_a_kernel_and_foreign_routes_stay(lab):
    n1 = lab.nodes["node1"]["netns"]
    runner.run(["ip", "route", "add", "10.42.200.0/24", "via", "192.168.50.1", "proto", "static"], netns=n1)
    runner.run(["ip", "route", "add", "default", "via", "192.168.50.1", "proto", "static"], netns=n1)
    before = runner.run(["ip", "-4", "route", "show", "proto", "static"], netns=n1).stdout
    v4 = ["no bgp network import-check", "address-family ipv4 unicast"] + [f"network {p}" for p in HOSTILE_V4]
    v6 = ["address-family ipv6 unicast"] + [f"network {p}" for p in HOSTILE_V6]
    try:
        tor_config(lab, *v4)
        tor_config(lab, *v6)
        expected = {"default-route", "outside-cluster-cidr", "service-range"}

        def seen_everywhere():
            docs = {n: runner.speaker_status(lab, n) for n in NODES}
            # refused whatever the Nodes say: counted per peer, not stored (refusedNotStored)
            return all(expected <= set(d["refusedNotStored"]) and not expected & set(d["rejectedByReason"])
                       for d in docs.values()) and docs

        poll(seen_everywhere, timeout=15, interval=0.2)
        docs = {n: runner.speaker_status(lab, n) for n in NODES}
        assert docs["node1"]["rejectedByReason"]["own-cidr"] >= 1
        assert docs["node2"]["rejectedByReason"]["next-hop-mismatch"] == 1  # node1's CIDR via the ToR
        for n in NODES:
            routes = installed(lab, n)
            assert not routes & set(HOSTILE_V4 + HOSTILE_V6 + ["default"]), (n, routes)
            assert "10.42.1.0/24" not in routes
        assert runner.run(["ip", "-4", "route", "show", "proto", "static"], netns=n1).stdout == before
    finally:
        tor_config(lab, "address-family ipv4 unicast", *[f"no network {p}" for p in HOSTILE_V4])
        tor_config(lab, "address-family ipv6 unicast", *[f"no network {p}" for p in HOSTILE_V6])
    poll(lambda: {"10.42.1.0/24", "fd00:42:0:1::/64"} <= installed(lab, "node2"), timeout=10)
    assert runner.run(["ip", "-4", "route", "show", "proto", "static"], netns=n1).stdout == before
    runner.run(["ip", "route", "del", "10.42.200.0/24", "proto", "static"], netns=n1)
    runner.run(["ip", "route", "del", "default", "proto", "static"], netns=n1)


CAPS = {0: "chown", 10: "net_bind_service", 12: "net_admin", 13: "net_raw", 21: "sys_admin"}


def _caps(mask_hex: str) -> set[str]:
    mask = int(mask_hex, 16)
    return {CAPS.get(bit, str(bit)) for bit in range(64) if mask >> bit & 1}


def test_speakers_run_as_the_daemonset_in_deploy_says(lab):
    objs = runner.load_manifests(lab)
    ds = daemonset.find(objs, "DaemonSet")
    ctr = ds["spec"]["template"]["spec"]["containers"][0]
    pid = lab.pids["speaker:node1"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().rstrip(b"\0").split(b"\0")
    argv = [a.decode() for a in cmdline]  # [interpreter,] .../podbgp speaker --config ...
    n = len(ctr["command"]) + len(ctr["args"])
    assert argv[-n + 1:] == ctr["command"][1:] + ctr["args"]
    assert os.path.basename(argv[-n]) == ctr["command"][0]
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split("=", 1) for kv in f.read().decode().split("\0") if "=" in kv)
    assert env["NODE_NAME"] == "node1" and env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert not any("KUBECONFIG" in k for k in env)  # the in-cluster way in, as a Pod
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    want = {c.lower() for c in ctr["securityContext"]["capabilities"]["add"]}
    assert _caps(status["CapEff"]) == want and _caps(status["CapBnd"]) == want
    assert status["NoNewPrivs"].strip() == "1"
    with open(f"/proc/{pid}/mountinfo") as f:
        mounts = {line.split()[4]: line.split()[5] for line in f}
    assert mounts["/"].startswith("ro") and mounts["/etc/podbgp"].startswith("ro")
    assert mounts["/etc/cni/net.d"].startswith("rw") and mounts["/run/podbgp"].startswith("rw")
    # what differs per node comes from the Node: its AS is the podbgp.io/asn annotation
    doc = runner.speaker_status(lab, "node1")
    assert {p["localAsn"] for p in doc["peers"]} == {65001}
    assert "asn" not in yaml.safe_load(daemonset.find(objs, "ConfigMap")["data"]["config.yaml"])
    # its token is its own, bound to its Pod and node, of the service account: the lab API allows it
    # what deploy/'s ClusterRole grants
    with open(os.path.join(lab.pki_dir, "serviceaccount-node1", "token")) as f:
        token = f.read()
    ctx = ssl.create_default_context(cafile=os.path.join(lab.pki_dir, "ca.crt"))
    review = urllib.request.Request(f"https://127.0.0.1:{lab.api_port}/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                    data=b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}',
                                    method="POST", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(review, context=ctx, timeout=5) as r:
        who = json.load(r)["status"]["userInfo"]
    assert who["username"] == "system:serviceaccount:kube-system:podbgp"
    assert who["extra"]["authentication.kubernetes.io/node-name"] == ["node1"]
    url = f"https://127.0.0.1:{lab.api_port}/api/v1/nodes/node3"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}),
                                context=ctx, timeout=5) as r:
        assert json.load(r)["metadata"]["name"] == "node3"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE", headers={"Authorization": f"Bearer {token}"}),
                               context=ctx, timeout=5)
    assert err.value.code == 403 and "cannot delete resource" in json.load(err.value)["message"]


def test_node_condition_network_unavailable_is_false_once_announced(lab):
    for node in NODES:
        obj = json.loads(runner.kubectl(lab, "get", "node", node, "-o", "json").stdout)
        conds = {c["type"]: c for c in obj["status"]["conditions"]}
        assert conds["NetworkUnavailable"]["status"] == "False", conds
        assert conds["NetworkUnavailable"]["reason"] == "PodbgpIsUp"
        assert conds["Ready"]["status"] == "True"  # merged by type, the kubelet's condition kept


def test_pods_are_attached_with_the_conflist_their_node_speaker_wrote(lab):
    env = runner.tool_env({"PODBGP_LAB": lab.name})
    doc = json.loads(subprocess.run([sys.executable, "-m", "speaker.cli", "lab", "status", "--json"],
                                    capture_output=True, text=True, env=env, check=True).stdout)
    nodes = [n for n in doc["nodes"] if n["role"] == "node"]
    assert sorted(n["name"] for n in nodes) == list(NODES), doc["nodes"]  # no node, no check: fail instead
    for node in nodes:
        with open(node["cniConf"]) as f:
            conf = json.load(f)
        types = [p["type"] for p in conf["plugins"]]
        assert types[:1] == ["bridge"] and "portmap" in types
        ranges = [ipaddress.ip_network(r[0]["subnet"]) for r in conf["plugins"][0]["ipam"]["ranges"]]
        assert [str(r) for r in ranges] == lab.nodes[node["name"]]["pod_cidrs"].split(",")
        pods = [p for p in doc["pods"] if p["node"] == node["name"]]
        assert len(pods) == 2
        for pod in pods:
            assert ipaddress.ip_address(pod["ipv4"]) in ranges[0] and ipaddress.ip_address(pod["ipv6"]) in ranges[1]


def test_tor_sessions_are_md5_signed_and_ttl_secured(lab):
    """lab/podbgp.yaml names the Secret's key (passwordKey: tor-md5) and GTSM one hop; the ToR
    (lab/frr/tor.conf) has the same password and `ttl-security hops 1`."""
    for node in NODES:
        out = runner.run(["ss", "-tnie", "state", "established", "( dport = :179 )"], netns=lab.nodes[node]["netns"]).stdout
        sockets = [line for line in out.splitlines() if "rtt:" in line]
        assert len(sockets) == 2 and all("md5keys:" in s for s in sockets), node  # IPv4 and IPv6, both signed
        for addr in (f"192.168.50.1{node[-1]}", f"fd00:50::1{node[-1]}"):
            nbr = json.loads(runner.vtysh(lab, "tor", f"show bgp neighbors {addr} json"))[addr]
            assert nbr["bgpState"] == "Established" and nbr["authenticationEnabled"] == 1
            assert nbr["externalBgpNbrMaxHopsAway"] == 1  # GTSM on the ToR's side
        conf = os.path.join(runner.speaker_runtime_dir(lab, node), "exabgp.conf")
        assert os.stat(conf).st_mode & 0o077 == 0  # the rendered config holds the password: root only
    doc = runner.speaker_status(lab, "node1")
    with open(os.path.join(lab.dir, "manifests.yaml")) as f:
        secret = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "Secret")
    password = base64.b64decode(secret["data"]["tor-md5"]).decode()
    assert password not in json.dumps(doc)  # never in status
    with open(os.path.join(lab.dir, "node1", "speaker.log")) as f:
        assert password not in f.read()  # never logged


def _peers(lab, node):
    return {p["address"]: p for p in runner.speaker_status(lab, node)["peers"]}


def _annotate_peers(lab, node, peers_yaml):
    if peers_yaml is None:
        runner.kubectl(lab, "annotate", "node", node, "podbgp.io/peers-")
    else:
        runner.kubectl(lab, "annotate", "--overwrite", "node", node, f"podbgp.io/peers={peers_yaml}")


def _all_up(lab):
    return all(all(p["state"] == "up" for p in _peers(lab, n).values()) for n in NODES)


def test_an_annotation_changing_node2s_peer_resets_only_that_session(lab):
    poll(lambda: _all_up(lab), timeout=30)
    before = {n: {a: p["since"] for a, p in _peers(lab, n).items()} for n in NODES}
    pids = {n: runner.speaker_status(lab, n)["exabgpPid"] for n in NODES}
    # node2's IPv4 session to the ToR gets its own hold time from the Node's podbgp.io/peers
    override = "[{address: 192.168.50.1, asn: 65000, holdTime: 30, passwordKey: tor-md5, ttlSecurity: 1}]"
    _annotate_peers(lab, "node2", override)
    try:
        poll(lambda: _peers(lab, "node2")["192.168.50.1"]["since"] != before["node2"]["192.168.50.1"]
             and _peers(lab, "node2")["192.168.50.1"]["state"] == "up", timeout=30)
        after = {n: {a: p["since"] for a, p in _peers(lab, n).items()} for n in NODES}
        assert after["node2"]["fd00:50::1"] == before["node2"]["fd00:50::1"]  # its other session untouched
        assert after["node1"] == before["node1"] and after["node3"] == before["node3"]  # other nodes untouched
        assert {n: runner.speaker_status(lab, n)["exabgpPid"] for n in NODES} == pids  # reloaded, not restarted
        nbr = json.loads(runner.vtysh(lab, "tor", "show bgp neighbors 192.168.50.12 json"))["192.168.50.12"]
        assert nbr["bgpState"] == "Established" and nbr["bgpTimerConfiguredHoldTimeMsecs"] == 9000
        assert runner.speaker_status(lab, "node2")["nodeErrors"].get("peers:node2") is None
    finally:
        _annotate_peers(lab, "node2", None)
    poll(lambda: _all_up(lab), timeout=30)


def test_a_wrong_md5_password_never_establishes_and_status_says_why(lab):
    poll(lambda: _all_up(lab), timeout=30)
    wrong = "[{address: 192.168.50.1, asn: 65000, holdTime: 9, passwordKey: wrong-md5, ttlSecurity: 1}]"
    _annotate_peers(lab, "node3", wrong)
    try:
        poll(lambda: _peers(lab, "node3")["192.168.50.1"]["state"] != "up", timeout=30)
        # ExaBGP keeps trying; the ToR's kernel drops every segment with the wrong signature
        poll(lambda: "MD5" in _peers(lab, "node3")["192.168.50.1"]["reason"], timeout=30)
        peer = _peers(lab, "node3")["192.168.50.1"]
        assert peer["state"] != "up", peer
        print("node3 192.168.50.1:", peer["state"], "-", peer["reason"])
        nbr = json.loads(runner.vtysh(lab, "tor", "show bgp summary json"))["ipv4Unicast"]["peers"]
        assert "192.168.50.13" not in nbr or nbr["192.168.50.13"]["state"] != "Established"
        assert _peers(lab, "node3")["fd00:50::1"]["state"] == "up"  # the IPv6 session keeps its right password
    finally:
        _annotate_peers(lab, "node3", None)
    poll(lambda: _all_up(lab), timeout=60)
    poll(lambda: {"10.42.3.0/24"} <= installed(lab, "node1"), timeout=30)
