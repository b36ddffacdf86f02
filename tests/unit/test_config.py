"""Config: the cni section, an optional asn, nested keys checked like top-level ones, CIDR lists,
mode, mesh and the per-peer session keys."""
import pytest

from speaker import config as cfgmod
from speaker.config import CNIConfig, ConfigError

BASE = {"nodeName": "node1", "asn": 65001, "peers": [{"address": "192.168.50.1", "asn": 65000}],
        "clusterCIDRs": ["10.42.0.0/16", "fd00:42::/48"], "serviceCIDRs": ["10.43.0.0/16", "fd00:43::/108"]}


def cfg(**kw):
    return cfgmod.parse({**BASE, **kw})


def refused(**kw) -> str:
    with pytest.raises(ConfigError) as err:
        cfg(**kw)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_cni_defaults():
    c = cfg().cni
    assert c == CNIConfig(enabled=True, conf_path="/etc/cni/net.d/10-podbgp.conflist", bridge="cni0", mtu=0,
                          hairpin_mode=True, ip_masq=False, portmap=True, data_dir="")


def test_cni_settings():
    c = cfg(cni={"enabled": False, "confPath": "/etc/cni/net.d/05-x.conflist", "bridge": "br-pods", "mtu": 9000,
                 "hairpinMode": "false", "ipMasq": True, "portmap": False, "dataDir": "/var/lib/cni/podbgp"}).cni
    assert c == CNIConfig(False, "/etc/cni/net.d/05-x.conflist", "br-pods", 9000, False, True, False, "/var/lib/cni/podbgp")
    assert cfg(cni=None).cni == CNIConfig()


def test_asn_is_optional():
    assert cfg(asn=None).asn is None
    assert cfgmod.parse({k: v for k, v in BASE.items() if k != "asn"}).asn is None
    assert cfg(asn="65010").asn == 65010


@pytest.mark.parametrize("change,message", [
    ({"peers": [{"address": "192.168.50.1", "asn": 65000, "holdtime": 9}]},
     "peers[0].holdtime: unknown setting (did you mean holdTime?)"),
    ({"peers": [{"address": "192.168.50.1", "asn": 65000}, {"adress": "fd00::1", "asn": 65000}]},
     "peers[1].adress: unknown setting (did you mean address?)"),
    ({"podCIDR": {"nodeLocals": ["10.42.1.0/24"]}}, "podCIDR.nodeLocals: unknown setting (did you mean nodeLocal?)"),
    ({"podCIDR": {"zzz": 1}}, "podCIDR.zzz: unknown setting"),
    ({"cni": {"confpath": "/etc/cni/net.d/x.conflist"}}, "cni.confpath: unknown setting (did you mean confPath?)"),
    ({"cni": {"mtus": 1500}}, "cni.mtus: unknown setting (did you mean mtu?)"),
    ({"peer": []}, "peer: unknown setting (did you mean peers?)"),
    ({"bogus": 1}, "bogus: unknown setting"),
])
def test_unknown_keys_at_any_depth_are_named_with_a_suggestion(change, message):
    assert refused(**change) == message


@pytest.mark.parametrize("change,field", [
    ({"cni": {"confPath": "net.d/10-podbgp.conflist"}}, "cni.confPath"),
    ({"cni": {"confPath": "/etc/cni/net.d/10-podbgp.conf"}}, "cni.confPath"),
    ({"cni": {"bridge": "a-bridge-name-too-long"}}, "cni.bridge"),
    ({"cni": {"bridge": "br/0"}}, "cni.bridge"),
    ({"cni": {"bridge": ""}}, "cni.bridge"),
    ({"cni": {"mtu": 100}}, "cni.mtu"),
    ({"cni": {"mtu": "big"}}, "cni.mtu"),
    ({"cni": {"hairpinMode": "yes"}}, "cni.hairpinMode"),
    ({"cni": {"enabled": 1}}, "cni.enabled"),
    ({"cni": {"dataDir": "relative"}}, "cni.dataDir"),
    ({"cni": ["x"]}, "cni"),
    ({"podCIDR": "10.42.1.0/24"}, "podCIDR"),
    ({"podCIDR": {"deriveFromClusterCIDR": "no"}}, "podCIDR.deriveFromClusterCIDR"),
    ({"strictNextHop": "maybe"}, "strictNextHop"),
    ({"asn": 0}, "asn"),
    ({"asn": 4294967296}, "asn"),
    ({"peers": {"address": "192.168.50.1"}}, "peers"),
    ({"convergenceTimeout": "soon"}, "convergenceTimeout"),
    ({"convergenceTimeout": 0}, "convergenceTimeout"),
    ({"resyncInterval": -5}, "resyncInterval"),
    ({"resyncInterval": True}, "resyncInterval"),
    ({"apiBackoffMax": [1]}, "apiBackoffMax"),
])
def test_refusals_name_the_field(change, field):
    assert refused(**change).startswith(field + ":")


@pytest.mark.parametrize("change,message", [
    # every cluster entry against every service entry, both families
    ({"serviceCIDRs": ["10.43.0.0/16", "fd00:42:0:1::/112"]},
     "serviceCIDRs[1]: fd00:42:0:1::/112 overlaps clusterCIDRs[1] fd00:42::/48; Pod and Service ranges must be disjoint"),
    ({"serviceCIDRs": ["10.0.0.0/8"]},
     "serviceCIDRs[0]: 10.0.0.0/8 overlaps clusterCIDRs[0] 10.42.0.0/16; Pod and Service ranges must be disjoint"),
    ({"clusterCIDRs": ["10.42.0.0/16", "10.42.0.0/16"]},
     "clusterCIDRs[1]: 10.42.0.0/16 is listed twice (also clusterCIDRs[0])"),
    ({"serviceCIDRs": ["fd00:43::/108", "fd00:43::/108"]},
     "serviceCIDRs[1]: fd00:43::/108 is listed twice (also serviceCIDRs[0])"),
    ({"podCIDR": {"nodeLocal": ["10.42.1.0/24", "10.42.2.0/24"]}},
     "podCIDR.nodeLocal: at most one CIDR per IP family (podCIDR.nodeLocal[1] 10.42.2.0/24 is a second IPv4 one "
     "after podCIDR.nodeLocal[0] 10.42.1.0/24)"),
    ({"podCIDR": {"nodeLocal": ["10.42.1.0/24", "fd00:43::/112"]}},
     "podCIDR.nodeLocal[1]: fd00:43::/112 overlaps the Service CIDR fd00:43::/108"),
    ({"peers": [{"address": "192.168.50.1", "asn": 65000}, {"address": "192.168.50.1", "asn": 65001}]},
     "peers[1].address: 192.168.50.1 is also peers[0]; one session per address (unless nodeSelectors split the "
     "nodes between them)"),
])
def test_cidr_lists_checked_across_entries(change, message):
    assert refused(**change) == message


def test_disjoint_lists_pass():
    c = cfg(serviceCIDRs=["10.43.0.0/16", "fd00:43::/108"], podCIDR={"nodeLocal": ["10.42.1.0/24", "fd00:42:0:1::/64"]})
    assert [str(n) for n in c.pod_cidr.node_local] == ["10.42.1.0/24", "fd00:42:0:1::/64"]


def test_a_status_address_that_cannot_be_served_is_refused_at_load():
    base = {"nodeName": "n1", "asn": 65001, "peers": [{"address": "192.168.50.1", "asn": 65000}],
            "clusterCIDRs": ["10.42.0.0/16"]}
    assert cfgmod.parse({**base, "statusAddress": "[::]:9469"}).status_address == "[::]:9469"
    with pytest.raises(ConfigError, match=r"^statusAddress: .*expected HOST:PORT"):
        cfgmod.parse({**base, "statusAddress": "::1:9469"})
    with pytest.raises(ConfigError, match=r"^statusAddress: .*port '99999'"):
        cfgmod.parse({**base, "statusAddress": "0.0.0.0:99999"})


# ---- mode, mesh, the peers' session keys -------------------------------------------------------

def test_defaults_of_mode_mesh_and_peer_keys():
    c = cfg()
    assert (c.mode, c.mesh, c.mesh_node_selector.everything, c.secrets_dir, c.router_id) == \
        ("bgp", False, True, "/etc/podbgp/secrets", None)
    p = c.peers[0]
    assert (p.port, p.hold_time, p.keepalive_time, p.password_key, p.node_selector.everything) == (179, 9, 3, None, True)


def test_peer_session_keys():
    c = cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "port": 1179, "holdTime": 15, "keepaliveTime": 5,
                    "passwordKey": "tor-a", "nodeSelector": "rack in (r1, r2),!edge", "multihop": 2}],
            routerId="10.0.0.7", secretsDir="/run/secrets/bgp")
    p = c.peers[0]
    assert (p.port, p.hold_time, p.keepalive_time, p.password_key, p.multihop) == (1179, 15, 5, "tor-a", 2)
    assert p.node_selector.matches({"rack": "r2"}) and not p.node_selector.matches({"rack": "r2", "edge": ""})
    assert str(c.router_id) == "10.0.0.7" and c.secrets_dir == "/run/secrets/bgp"


@pytest.mark.parametrize("hold,keepalive", [(90, 30), (3, 1), (4, 1), (0, 0), (10, 3)])
def test_keepalive_defaults_to_a_third_of_hold(hold, keepalive):
    assert cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "holdTime": hold}]).peers[0].keepalive_time == keepalive


def test_a_password_in_the_config_is_refused_in_one_line_pointing_at_the_secret():
    msg = refused(peers=[{"address": "192.168.50.1", "asn": 65000, "password": "s3cret"}])
    assert msg.startswith("peers[0].password: ") and "passwordKey" in msg and "Secret" in msg
    assert "s3cret" not in msg


@pytest.mark.parametrize("peer,message", [
    ({"keepaliveTime": 9}, "peers[0].keepaliveTime: 9 must be at least 1 and less than holdTime 9"),
    ({"keepaliveTime": 0}, "peers[0].keepaliveTime: 0 must be at least 1 and less than holdTime 9"),
    ({"holdTime": 0, "keepaliveTime": 3}, "peers[0].keepaliveTime: 3 with holdTime 0 (no keepalives without a hold "
                                          "time); leave it unset or 0"),
    ({"keepaliveTime": 2}, "peers[0].keepaliveTime: 2 cannot be honoured: ExaBGP sends a keepalive every holdTime/3 "
                           "(3 with holdTime 9); leave it unset or set holdTime to 6"),
    ({"multihop": 2, "ttlSecurity": 1}, "peers[0].ttlSecurity: multihop and ttlSecurity exclude each other (GTSM "
                                        "sends with TTL 255; give ttlSecurity the hop count instead)"),
    ({"port": 0}, "peers[0].port: 0 is out of range 1..65535"),
    ({"port": "bgp"}, "peers[0].port: 'bgp' is not an integer"),
    ({"passwordKey": "../etc/shadow"}, "peers[0].passwordKey: '../etc/shadow' is not a Secret key (letters, digits, "
                                       "'-', '_', '.')"),
    ({"nodeSelector": "rack in (r1"}, "peers[0].nodeSelector: 'rack in (r1' has a '(' without its ')'"),
    ({"nodeselector": "a=b"}, "peers[0].nodeselector: unknown setting (did you mean nodeSelector?)"),
    ({"keepalive": 3}, "peers[0].keepalive: unknown setting (did you mean keepaliveTime?)"),
])
def test_peer_key_refusals(peer, message):
    assert refused(peers=[{"address": "192.168.50.1", "asn": 65000, **peer}]) == message


@pytest.mark.parametrize("change,message", [
    ({"mode": "host-gw"}, "mode: 'host-gw' is not one of bgp, direct"),
    ({"mesh": "yes"}, "mesh: 'yes' is not true or false"),
    ({"meshNodeSelector": "a in ()"}, "meshNodeSelector: 'a in ()': 'in' needs at least one value"),
    ({"meshNodeSelector": ["a=b"]}, "meshNodeSelector: expected a label selector string such as 'rack=r1', "
                                    "got ['a=b']"),
    ({"routerId": "fd00::1"}, "routerId: 'fd00::1' is not an IPv4 address in dotted-quad form"),
    ({"routerId": "1.2.3"}, "routerId: '1.2.3' is not an IPv4 address in dotted-quad form"),
    ({"secretsDir": "secrets"}, "secretsDir: 'secrets' must be an absolute path"),
    ({"peers": []}, "peers: at least one BGP peer is required (or mesh: true, or mode: direct)"),
    ({"peers": [], "mesh": True, "asn": None}, "asn: required with mesh: true (the one AS of every node in the mesh)"),
    ({"mesh": True, "mode": "direct"}, "mesh: true needs mode: bgp (mode: direct runs no BGP at all)"),
    ({"mesh": True, "routerId": "10.0.0.1"}, "routerId: 10.0.0.1 would be every node's router ID, and two ends of a "
                                             "mesh session must differ; leave it unset or set podbgp.io/router-id on "
                                             "each Node"),
    ({"routerId": "0.0.0.0"}, "routerId: 0.0.0.0 is not a router ID (it must be non-zero)"),
    ({"meshSelector": "a"}, "meshSelector: unknown setting (did you mean meshNodeSelector?)"),
])
def test_mode_and_mesh_refusals(change, message):
    assert refused(**change) == message


def test_direct_mode_needs_no_peers_and_no_asn():
    c = cfg(mode="direct", peers=[], asn=None)
    assert (c.mode, c.peers, c.asn) == ("direct", (), None)


def test_mesh_needs_no_peers():
    c = cfg(mesh=True, peers=[], meshNodeSelector="podbgp.io/mesh=yes")
    assert c.mesh and c.mesh_node_selector.matches({"podbgp.io/mesh": "yes"})
    assert not c.mesh_node_selector.matches({})


def test_one_address_twice_only_with_node_selectors():
    c = cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "nodeSelector": "rack=r1"},
                   {"address": "192.168.50.1", "asn": 65001, "nodeSelector": "rack=r2"}])
    assert [p.asn for p in c.peers] == [65000, 65001]


def test_log_format_is_text_by_default_json_when_asked_and_nothing_else():
    assert cfg().log_format == "text"
    assert cfg(logFormat="json").log_format == "json"
    assert cfg(logFormat=" JSON ").log_format == "json"  # spelled as mode may be
    assert cfg(logFormat="text").log_format == "text"
    assert refused(logFormat="xml") == "logFormat: 'xml' is not one of text, json"
    assert refused(logFormat=None) == "logFormat: None is not one of text, json"
    assert refused(logformat="json") == "logformat: unknown setting (did you mean logFormat?)"


def test_a_peer_keeps_alive_every_third_of_its_hold_time_unless_told():
    peers = cfg(peers=[{"address": "192.168.50.1", "asn": 65000, "holdTime": 90},
                       {"address": "192.168.50.2", "asn": 65000},
                       {"address": "192.168.50.3", "asn": 65000, "holdTime": 0}]).peers
    assert [(p.hold_time, p.keepalive_time, p.port) for p in peers] == [(90, 30, 179), (9, 3, 179), (0, 0, 179)]
    assert cfgmod.Peer(peers[0].address, 65000, hold_time=30).keepalive_time == 10


def test_durations_are_refused_in_one_line_not_a_traceback():
    assert refused(convergenceTimeout="soon") == "convergenceTimeout: 'soon' is not a number of seconds"
    assert refused(resyncInterval=0) == "resyncInterval: 0 is out of range (0, 86400] seconds"
