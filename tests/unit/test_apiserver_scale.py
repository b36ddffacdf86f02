"""The lab API server at cluster scale: 5,000 Nodes of ~6 KB, in a server process of its own.

Lists (from the cache, paged) and a watch-list with the official Python client, the server's peak
RSS growth while it answers, and its CPU under kubelet-rate status patches (N/300 per second).
Timings are printed, not asserted finely: the machine is shared.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

N = 5000
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def big_node(i: int) -> dict:
    """A Node shaped like a real one (labels, annotations, conditions, images): about 6 KB of JSON."""
    name = f"node-{i:05d}"
    ts = "2026-11-23T06:00:00Z"
    conditions = [{"type": t, "status": s, "lastHeartbeatTime": ts, "lastTransitionTime": ts, "reason": r,
                   "message": m} for t, s, r, m in (
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"))]
    images = [{"names": [f"registry.k8s.io/team{j}/image-{j}@sha256:{(f'{i:05d}{j:03d}' * 8)[:64]}",
                         f"registry.k8s.io/team{j}/image-{j}:v1.{j}.0"], "sizeBytes": 10_000_000 + j}
              for j in range(21)]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": f"00000000-0000-0000-0000-{i:012d}", "resourceVersion": "1",
                     "creationTimestamp": ts,
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                                "beta.kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": f"zone-{i % 3}",
                                "topology.kubernetes.io/region": "lab", "node.kubernetes.io/instance-type": "m5.large"},
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": f"10.{64 + i // 256}.{i % 256}.0/24", "podCIDRs": [f"10.{64 + i // 256}.{i % 256}.0/24"],
                 "providerID": f"lab://{name}"},
        "status": {"capacity": {"cpu": "2", "memory": "8049436Ki", "pods": "110", "ephemeral-storage": "101430960Ki"},
                   "allocatable": {"cpu": "2", "memory": "7947036Ki", "pods": "110",
                                   "ephemeral-storage": "93478772582"},
                   "conditions": conditions,
                   "addresses": [{"type": "InternalIP", "address": f"10.0.{i // 256}.{i % 256}"},
                                 {"type": "Hostname", "address": name}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                   "nodeInfo": {"machineID": f"{i:032x}", "systemUUID": f"{i:032x}", "bootID": f"{i:032x}",
                                "kernelVersion": "6.1.0-28-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                "containerRuntimeVersion": "containerd://1.7.24", "kubeletVersion": "v1.32.4",
                                "kubeProxyVersion": "v1.32.4", "operatingSystem": "linux", "architecture": "amd64"},
                   "images": images}}


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS
        f.write("5")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    state = tmp / "nodes.json"
    nodes = {f"node-{i:05d}": big_node(i) for i in range(N)}
    state.write_text(json.dumps({"resourceVersion": "1", "nodes": nodes}, separators=(",", ":")))
    size = state.stat().st_size
    del nodes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp / "apiserver.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lab.apiserver", "--state", str(state),
                             "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        kc = tmp / "kubeconfig"
        kc.write_text(f"apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\n"
                      "contexts:\n- name: t\n  context: {cluster: t, user: t}\ncurrent-context: t\nusers:\n- name: t\n  user: {token: t}\n")
        print(f"\nstate file {size / 1e6:.1f} MB ({size / N / 1e3:.1f} KB per Node); "
              f"server RSS after load {rss_kb(proc.pid) / 1e3:.0f} MB")
        yield proc, client.CoreV1Api(config.new_client_from_config(config_file=str(kc))), state
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def measured(proc, what, fn):
    """Run fn, print its wall time and the server's peak RSS growth meanwhile; return (result, growth MB)."""
    reset_peak(proc.pid)
    base = rss_kb(proc.pid)
    t0, c0 = time.monotonic(), cpu_seconds(proc.pid)
    out = fn()
    took, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - c0
    growth = (rss_kb(proc.pid, "VmHWM") - base) / 1e3
    print(f"{what}: {took:.2f}s, server CPU {cpu:.2f}s, server peak RSS +{growth:.1f} MB over {base / 1e3:.0f} MB")
    return out, growth


def test_list_5000_nodes_from_the_cache_and_paged(server):
    proc, v1, _ = server
    body, growth = measured(proc, f"list rv=0 of {N}", lambda: json.loads(
        v1.list_node(resource_version="0", _preload_content=False, _request_timeout=(5, 60)).data))
    assert len(body["items"]) == N and len(body["items"][0]["status"]["images"]) == 21
    assert growth < 50

    def paged():
        names, token = [], None
        while True:
            page = json.loads(v1.list_node(limit=500, _continue=token, _preload_content=False,
                                           _request_timeout=(5, 60)).data)
            names += [n["metadata"]["name"] for n in page["items"]]
            token = page["metadata"].get("continue")
            if not token:
                return names
    names, growth = measured(proc, f"paged list (limit=500) of {N}", paged)
    assert names == sorted(names) and len(names) == N
    assert growth < 50
    typed, _ = measured(proc, f"typed list_node() of {N} (client-side models)",
                        lambda: v1.list_node(_request_timeout=(5, 120)))
    assert len(typed.items) == N


def test_watch_list_of_5000_nodes(server):
    proc, v1, _ = server

    def initial_events():
        resp = v1.list_node(watch=True, send_initial_events=True, resource_version_match="NotOlderThan",
                            allow_watch_bookmarks=True, timeout_seconds=30, _preload_content=False,
                            _request_timeout=(5, 60))
        added = 0
        try:
            for line in iter_resp_lines(resp):
                event = json.loads(line)
                if event["type"] == "BOOKMARK":
                    return added, event["object"]["metadata"]
                added += 1
        finally:
            resp.close()
    (added, meta), growth = measured(proc, f"watch-list of {N} to the initial-events-end bookmark", initial_events)
    assert added == N and meta["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert growth < 50


def test_status_heartbeats_at_kubelet_rate_cost_little_cpu(server):
    proc, v1, state = server
    rate, seconds = N / 300, 10
    stop = threading.Event()

    def beat():
        i, t0 = 0, time.monotonic()
        while not stop.is_set() and time.monotonic() - t0 < seconds:
            ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            order = [{"type": t} for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")]
            v1.patch_node_status(f"node-{i % N:05d}", {"status": {  # as the kubelet sends it
                "$setElementOrder/conditions": order, "conditions": [{**c, "lastHeartbeatTime": ts} for c in order]}})
            i += 1
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        return i

    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    sent = beat()
    cpu, wall = cpu_seconds(proc.pid) - c0, time.monotonic() - t0
    print(f"{sent} status patches in {wall:.1f}s ({sent / wall:.1f}/s): server CPU {100 * cpu / wall:.1f}% of a core, "
          f"RSS {rss_kb(proc.pid) / 1e3:.0f} MB")
    assert sent >= rate * seconds * 0.8
    assert cpu / wall < 0.5  # the old store rewrote 30 MB per patch: several cores' worth
    time.sleep(1.5)  # the change log reaches the disk within the persist interval
    assert os.path.exists(f"{state}.log") and os.path.getsize(f"{state}.log") > 0
