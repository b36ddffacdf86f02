"""The CNI conflist: a pure render, and a writer that replaces only a file podbgp wrote."""
import ipaddress as ia
import json
import logging
import os
import stat

import pytest

from speaker import cni
from speaker.config import CNIConfig

N = ia.ip_network
DUAL = (N("fd00:42:0:1::/64"), N("10.42.1.0/24"))  # as a Node may list them: IPv6 first


def test_render_dual_stack_with_defaults():
    assert json.loads(cni.render(DUAL, CNIConfig())) == {
        "cniVersion": "1.0.0", "name": "podbgp", "podbgp": {"managed": True},
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True, "ipMasq": False,
             "hairpinMode": True,
             # the bridge plugin adds a default route per family itself (isDefaultGateway): no ipam routes
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.42.1.0/24"}], [{"subnet": "fd00:42:0:1::/64"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ]}


def test_render_options():
    c = CNIConfig(bridge="br-pods", mtu=9000, hairpin_mode=False, ip_masq=True, portmap=False, data_dir="/var/lib/cni/x")
    doc = json.loads(cni.render((N("10.42.1.0/24"),), c))
    assert doc["plugins"] == [{
        "type": "bridge", "bridge": "br-pods", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
        "hairpinMode": False, "mtu": 9000,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.42.1.0/24"}]], "dataDir": "/var/lib/cni/x"}}]


def test_render_is_deterministic_and_owned():
    text = cni.render(DUAL, CNIConfig())
    assert text == cni.render(tuple(reversed(DUAL)), CNIConfig()) and text.endswith("}\n")
    assert cni.owned(text)
    with pytest.raises(ValueError):
        cni.render((), CNIConfig())


@pytest.mark.parametrize("text,mine", [
    ('{"name": "podbgp", "podbgp": {"managed": true}}', True),
    ('{"name": "flannel", "plugins": []}', False),
    ('{"podbgp": {"managed": "yes"}}', False),
    ('{"podbgp": true}', False),
    ("not json", False),
    ("[1]", False),
    ("", False),
])
def test_owned(text, mine):
    assert cni.owned(text) is mine


def writer(tmp_path, **kw):
    return cni.ConflistWriter(CNIConfig(conf_path=str(tmp_path / "etc/cni/net.d/10-podbgp.conflist"), **kw))


def test_writes_into_a_missing_directory_atomically_with_mode_0644(tmp_path):
    w = writer(tmp_path)
    w.sync(DUAL)
    path = w.cfg.conf_path
    with open(path) as f:
        assert f.read() == cni.render(DUAL, w.cfg)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(os.path.dirname(path)) == ["10-podbgp.conflist"]  # no temp file left behind
    assert w.status() == {"path": path, "written": True, "error": None}


def test_identical_is_skipped_a_new_podcidr_rewrites_and_nothing_is_deleted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, "speaker.cni")
    w = writer(tmp_path)
    w.sync(DUAL)
    inode = os.stat(w.cfg.conf_path).st_ino
    for check in (False, True):  # twice: the second pass reads the file and still writes nothing
        w.sync(DUAL, check=check)
        assert os.stat(w.cfg.conf_path).st_ino == inode
    assert [r.message for r in caplog.records if r.levelno == logging.INFO] == [
        f"cni.write path={w.cfg.conf_path} podCIDRs=fd00:42:0:1::/64,10.42.1.0/24"]
    w.sync((N("10.42.7.0/24"),))
    with open(w.cfg.conf_path) as f:
        assert json.load(f)["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.42.7.0/24"}]]
    assert os.stat(w.cfg.conf_path).st_ino != inode  # replaced by rename, not rewritten in place
    w.sync(())  # no PodCIDR any more: the file stays
    assert os.path.exists(w.cfg.conf_path)


def test_a_removed_file_is_put_back_by_the_periodic_check(tmp_path):
    w = writer(tmp_path)
    w.sync(DUAL)
    os.unlink(w.cfg.conf_path)
    w.sync(DUAL)  # same PodCIDRs, no check: nothing read
    assert not os.path.exists(w.cfg.conf_path)
    w.sync(DUAL, check=True)
    assert cni.owned(open(w.cfg.conf_path).read())


@pytest.mark.parametrize("foreign", ['{"cniVersion": "1.0.0", "name": "mine", "plugins": [{"type": "ptp"}]}\n',
                                     "# hand-written\n", ""])
def test_a_foreign_file_is_left_alone_and_logged_once(tmp_path, caplog, foreign):
    w = writer(tmp_path)
    os.makedirs(os.path.dirname(w.cfg.conf_path))
    with open(w.cfg.conf_path, "w") as f:
        f.write(foreign)
    for _ in range(3):
        w.sync(DUAL, check=True)
    assert open(w.cfg.conf_path).read() == foreign
    assert [r.message for r in caplog.records] == [f"cni.foreign path={w.cfg.conf_path} left alone"]
    assert not w.written and "was not written by podbgp" in w.error and "\n" not in w.error
    os.unlink(w.cfg.conf_path)  # the operator removes it: ours from now on
    w.sync(DUAL, check=True)
    assert w.written and w.error is None and cni.owned(open(w.cfg.conf_path).read())


def test_disabled_writes_nothing(tmp_path):
    w = writer(tmp_path, enabled=False)
    w.sync(DUAL)
    assert not os.path.exists(tmp_path / "etc") and w.status()["written"] is False


def test_an_unwritable_directory_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "etc").write_text("a file where the directory should be")
    w = writer(tmp_path)
    w.sync(DUAL)
    assert not w.written and w.error.startswith(f"cni: cannot write {w.cfg.conf_path}: ")
