"""The speaker's own Node: its AS from the podbgp.io/asn annotation, the conflist written from its
PodCIDR, then the announcement, then NetworkUnavailable=False; and what status says about them."""
import asyncio
import json
import logging
import os

from speaker import config as cfgmod
from speaker import status
from speaker.app import Speaker
from speaker.cni import ConflistWriter
from tests.unit.test_app import NODES, FakeExaBGP, FakeKernel, NodeEvent, Snapshot, node, settle


class Exa(FakeExaBGP):
    def reconfigure(self, text):
        self.config = text


class RecordingClient:
    """Records each status patch with what was true when it came: conflist on disk, prefixes announced."""

    def __init__(self, sp_ref):
        self.sp_ref = sp_ref
        self.calls = []

    def patch_node_status(self, name, body):
        sp = self.sp_ref[0]
        self.calls.append({"name": name, "type": body["status"]["conditions"][0]["type"],
                           "status": body["status"]["conditions"][0]["status"],
                           "conflist": os.path.exists(sp.cfg.cni.conf_path),
                           "announced": sorted(str(a.prefix) for a in sp.announced)})


def make(tmp_path, **kw):
    raw = {"nodeName": "node1", "asn": 65001, "peers": [{"address": "192.168.50.1", "asn": 65000}],
           "clusterCIDRs": ["10.42.0.0/16"], "serviceCIDRs": ["10.43.0.0/16"], "runtimeDir": str(tmp_path),
           "convergenceTimeout": 30, "cni": {"confPath": str(tmp_path / "net.d/10-podbgp.conflist")}, **kw}
    cfg = cfgmod.parse({k: v for k, v in raw.items() if v is not None})
    ref = []
    fake = RecordingClient(ref)
    sp = Speaker(cfg, FakeKernel(), lambda emit: (lambda: None), env={}, bgp_factory=Exa,
                 cni=ConflistWriter(cfg.cni), node_client=fake)
    ref.append(sp)
    return sp, fake


def annotated(asn, cidr="10.42.1.0/24"):
    raw = node("node1", [cidr], ["192.168.50.11"])
    raw["metadata"]["annotations"] = {"podbgp.io/asn": asn, "other.io/x": "y"}
    return raw


async def until(pred, timeout=2.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_conflist_then_announce_then_condition_and_again_after_a_podcidr_change(tmp_path):
    async def body():
        sp, fake = make(tmp_path)
        sp.on_watch(NodeEvent("ADDED", NODES[0]))
        await settle()
        assert not os.path.exists(sp.cfg.cni.conf_path) and fake.calls == []  # nothing before the full list
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await until(lambda: sp.condition.patched)
        assert fake.calls == [{"name": "node1", "type": "NetworkUnavailable", "status": "False", "conflist": True,
                               "announced": ["10.42.1.0/24"]}]
        with open(sp.cfg.cni.conf_path) as f:
            assert json.load(f)["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.42.1.0/24"}]]
        doc = status.status_doc(sp)
        assert doc["cniConf"] == {"path": sp.cfg.cni.conf_path, "written": True, "error": None}
        assert doc["networkCondition"]["patched"] and doc["networkCondition"]["error"] is None
        sp.on_watch(NodeEvent("ADDED", NODES[1]))  # another Node: nothing of ours changes
        await settle()
        assert len(fake.calls) == 1
        # the Node is recreated with another PodCIDR (the API allows no change in place)
        sp.on_watch(NodeEvent("DELETED", NODES[0]))
        sp.on_watch(NodeEvent("ADDED", node("node1", ["10.42.9.0/24"], ["192.168.50.11"])))
        await until(lambda: len(fake.calls) == 2)
        assert fake.calls[1]["announced"] == ["10.42.9.0/24"]
        with open(sp.cfg.cni.conf_path) as f:
            assert json.load(f)["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.42.9.0/24"}]]
        sp.condition.close()
    asyncio.run(body())


def test_the_nodes_as_comes_from_its_annotation_and_follows_it(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        sp.on_watch(Snapshot((annotated("65101"),) + tuple(NODES[1:]), "10"))
        await settle()
        assert "local-as 65101;" in sp.bgp.exabgp.config
        assert sp.bgp.configured[0].local_asn == 65101
        sp.on_watch(NodeEvent("MODIFIED", annotated("65102")))
        await settle()
        assert "local-as 65102;" in sp.bgp.exabgp.config
        sp.condition.close()
    asyncio.run(body())


def test_a_bad_annotation_falls_back_to_the_config_asn_and_says_so(tmp_path, caplog):
    async def body():
        sp, _ = make(tmp_path)
        sp.on_watch(Snapshot((annotated("65x"),) + tuple(NODES[1:]), "10"))
        await settle()
        assert "local-as 65001;" in sp.bgp.exabgp.config
        err = status.status_doc(sp)["nodeErrors"]["asn:node1"]
        assert err == ("node node1: annotation podbgp.io/asn='65x' is not an AS number (1..4294967295); "
                       "using the config asn 65001")
        sp.on_watch(NodeEvent("MODIFIED", annotated("4294967296")))
        await settle()
        assert "4294967296" in sp.node_errors["asn:node1"]
        sp.on_watch(NodeEvent("MODIFIED", annotated("65005")))
        await settle()
        assert "asn:node1" not in sp.node_errors and "local-as 65005;" in sp.bgp.exabgp.config
        sp.condition.close()
    asyncio.run(body())
    assert len([m for m in caplog.messages if m.startswith("node.asn ")]) == 2


def test_without_any_as_number_nothing_starts_until_one_appears(tmp_path, caplog):
    async def body():
        sp, fake = make(tmp_path, asn=None)
        assert sp.cfg.asn is None
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        for n in (NODES[1], NODES[2], NODES[0]):  # more events, own and others: no crash, no second log line
            sp.on_watch(NodeEvent("MODIFIED", {**n, "metadata": {**n["metadata"], "labels": {"x": "y"}}}))
        await settle()
        assert sp.bgp.exabgp is None and not sp._stop.is_set() and fake.calls == []
        assert status.status_doc(sp)["nodeErrors"]["bgp:node1"] == (
            "node node1: no AS number: the Node has no podbgp.io/asn annotation and the config sets no asn; "
            "no BGP session until one of them is set")
        assert os.path.exists(sp.cfg.cni.conf_path)  # Pods on this node can still be wired
        sp.on_watch(NodeEvent("MODIFIED", annotated("65101")))
        await until(lambda: sp.condition.patched)
        assert "local-as 65101;" in sp.bgp.exabgp.config and "bgp:node1" not in sp.node_errors
        sp.condition.close()
    caplog.set_level(logging.INFO)
    asyncio.run(body())
    assert [m for m in caplog.messages if m.startswith("bgp.waiting")] == [
        "bgp.waiting node node1: no AS number: the Node has no podbgp.io/asn annotation and the config sets no asn; "
        "no BGP session until one of them is set"]


def test_a_foreign_conflist_is_kept_and_reported(tmp_path):
    async def body():
        sp, fake = make(tmp_path)
        os.makedirs(os.path.dirname(sp.cfg.cni.conf_path))
        with open(sp.cfg.cni.conf_path, "w") as f:
            f.write('{"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "ptp"}]}\n')
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await until(lambda: sp.condition.patched)
        doc = status.status_doc(sp)
        assert doc["cniConf"]["written"] is False and "not written by podbgp" in doc["cniConf"]["error"]
        assert doc["nodeErrors"][f"cni:{sp.cfg.cni.conf_path}"] == doc["cniConf"]["error"]
        with open(sp.cfg.cni.conf_path) as f:
            assert json.load(f)["name"] == "other"
        sp.condition.close()
    asyncio.run(body())


def test_without_writer_and_client_status_says_nothing_was_written(tmp_path):
    from tests.unit.test_app import make as plain

    async def body():
        sp, _ = plain(tmp_path)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await settle()
        doc = status.status_doc(sp)
        assert doc["cniConf"] == {"path": "/etc/cni/net.d/10-podbgp.conflist", "written": False, "error": None}
        assert doc["networkCondition"]["patched"] is False and "no API client" in doc["networkCondition"]["error"]
    asyncio.run(body())


def test_network_unavailable_false_writes_no_node_status(tmp_path):
    async def body():
        sp, fake = make(tmp_path, networkUnavailable=False)
        sp.on_watch(Snapshot(tuple(NODES), "10"))
        await settle()
        await asyncio.sleep(0.05)
        assert os.path.exists(sp.cfg.cni.conf_path) and sp.announced  # the node is up and announces
        assert fake.calls == []  # but its Node's status is never written
        assert status.status_doc(sp)["networkCondition"] == {"patched": False, "at": None, "error": None,
                                                             "enabled": False}
    asyncio.run(body())
