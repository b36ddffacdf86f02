"""The speaker's configuration: a typed, validated model from YAML, environment and flags.

Every refusal is a ConfigError with one line naming the field.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import netaddr
import yaml

from bgp.types import IPAddress, IPNetwork

from . import selector
from .selector import Selector


class SpeakerError(Exception):
    """Base of the speaker package's errors."""


class ConfigError(SpeakerError):
    """The configuration is refused; the message is one line naming the field."""


@dataclass(frozen=True, slots=True)
class Peer:
    """A BGP peer from the config or a Node's podbgp.io/peers annotation. The password itself
    is never here: `password_key` names a file in the mounted Secret (Config.secrets_dir)."""

    address: IPAddress
    asn: int
    hold_time: int = 9
    keepalive_time: int = 3  # holdTime/3 unless set; always < hold_time (0 when hold_time is 0)
    port: int = 179
    password_key: str | None = None
    multihop: int | None = None
    ttl_security: int | None = None
    families: frozenset[str] = frozenset()  # empty: the family of the address
    node_selector: Selector = selector.EVERYTHING  # the nodes this peer applies to


@dataclass(frozen=True, slots=True)
class PodCIDRConfig:
    node_local: tuple[IPNetwork, ...] = ()
    kubelet_config: str = "/var/lib/kubelet/config.yaml"
    k3s_file: str = "/var/lib/rancher/k3s/agent/pod-cidr"
    derive: bool = False
    node_mask_v4: int = 24
    node_mask_v6: int = 64


@dataclass(frozen=True, slots=True)
class CNIConfig:
    """The node's CNI conflist that podbgp writes from its PodCIDR(s) (speaker.cni)."""

    enabled: bool = True
    conf_path: str = "/etc/cni/net.d/10-podbgp.conflist"
    bridge: str = "cni0"
    mtu: int = 0  # 0: not set (the bridge plugin's default)
    hairpin_mode: bool = True
    ip_masq: bool = False
    portmap: bool = True
    data_dir: str = ""  # host-local's dataDir; empty: the plugin's default


MODES = ("bgp", "direct")


@dataclass(frozen=True, slots=True)
class Config:
    node_name: str
    asn: int | None  # None: only from the Node's podbgp.io/asn annotation
    peers: tuple[Peer, ...]
    cluster_cidrs: tuple[IPNetwork, ...]
    service_cidrs: tuple[IPNetwork, ...]
    node_addresses: tuple[IPAddress, ...] = ()  # empty: the Node's InternalIP of each family
    pod_cidr: PodCIDRConfig = field(default_factory=PodCIDRConfig)
    cni: CNIConfig = field(default_factory=CNIConfig)
    kubeconfig: str | None = None  # None: in-cluster configuration
    graceful_restart: int = 120
    convergence_timeout: float = 60.0
    strict_next_hop: bool = True
    route_protocol: int = 80
    route_metric: int = 20
    route_table: int = 254
    resync_interval: float = 30.0
    api_backoff_max: float = 5.0
    status_address: str = "127.0.0.1:9469"
    runtime_dir: str = "/run/podbgp"
    exabgp: str = "exabgp"
    mode: str = "bgp"  # "direct": no BGP, routes from the Node objects
    mesh: bool = False  # iBGP full mesh between the nodes in mesh_node_selector, AS = asn
    mesh_node_selector: Selector = selector.EVERYTHING
    secrets_dir: str = "/etc/podbgp/secrets"  # the Secret podbgp-bgp-passwords, one file per passwordKey
    router_id: ipaddress.IPv4Address | None = None  # None: the Node's annotation, else its IPv4 address


def _net(value: Any, where: str) -> IPNetwork:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a CIDR string, got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ConfigError(f"{where}: {value} has host bits set (did you mean "
                              f"{ipaddress.ip_network(value, strict=False)}?)") from None
        raise ConfigError(f"{where}: {value!r} is not a valid CIDR") from None


def _ip(value: Any, where: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a valid IP address") from None


def _address(value: Any, where: str) -> str:
    try:
        parse_address(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return str(value)


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not an integer") from None
    if isinstance(value, bool) or not lo <= n <= hi:
        raise ConfigError(f"{where}: {value!r} is out of range {lo}..{hi}")
    return n


def _list(raw: dict, key: str) -> list:
    value = raw.get(key) or []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list")
    return value


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{where}: {value!r} is not true or false")


def _mapping(raw: dict, key: str) -> dict:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping")
    return value


def _known_keys(raw: Mapping, known: Iterable[str], where: str = "") -> None:
    """Refuse the first unknown key (sorted), naming it with its place and the nearest known one."""
    known = sorted(known)
    for key in sorted(map(str, raw)):
        if key in known:
            continue
        near = [k for k in known if k.lower() == key.lower()] or difflib.get_close_matches(key, known, n=1, cutoff=0.7)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{where}{'.' if where else ''}{key}: unknown setting{hint}")


_KNOWN = {"nodeName", "asn", "peers", "clusterCIDRs", "serviceCIDRs", "nodeAddresses", "podCIDR", "cni",
          "kubeconfig", "gracefulRestart", "convergenceTimeout", "strictNextHop", "routeProtocol",
          "routeMetric", "routeTable", "resyncInterval", "apiBackoffMax", "statusAddress", "runtimeDir", "exabgp",
          "mode", "mesh", "meshNodeSelector", "secretsDir", "routerId"}
# the keys of a peer in a Node's podbgp.io/peers annotation; the config adds families and nodeSelector
ANNOTATION_PEER_KEYS = {"address", "asn", "port", "holdTime", "keepaliveTime", "multihop", "ttlSecurity", "passwordKey"}
_PEER_KEYS = ANNOTATION_PEER_KEYS | {"families", "nodeSelector"}
_POD_CIDR_KEYS = {"nodeLocal", "kubeletConfig", "k3sFile", "deriveFromClusterCIDR", "nodeMaskV4", "nodeMaskV6"}
_CNI_KEYS = {"enabled", "confPath", "bridge", "mtu", "hairpinMode", "ipMasq", "portmap", "dataDir"}


def parse(raw: dict) -> Config:
    """Build and validate a Config from a plain mapping (camelCase keys, as in the YAML file)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping")
    _known_keys(raw, _KNOWN)
    name = raw.get("nodeName") or ""
    if not name:
        raise ConfigError("nodeName: required (set NODE_NAME, as a DaemonSet's downward API does)")
    peers = raw.get("peers") or []
    if not isinstance(peers, list):
        raise ConfigError("peers: expected a list")
    asn = raw.get("asn")
    mode = str(raw.get("mode", "bgp")).strip().lower()
    if mode not in MODES:
        raise ConfigError(f"mode: {raw.get('mode')!r} is not one of {', '.join(MODES)}")
    cfg = Config(
        node_name=str(name),
        asn=None if asn is None or asn == "" else _int(asn, "asn", 1, 4294967295),
        peers=tuple(parse_peer(p, f"peers[{i}]") for i, p in enumerate(peers)),
        cluster_cidrs=tuple(_net(c, f"clusterCIDRs[{i}]") for i, c in enumerate(_list(raw, "clusterCIDRs"))),
        service_cidrs=tuple(_net(c, f"serviceCIDRs[{i}]") for i, c in enumerate(_list(raw, "serviceCIDRs"))),
        node_addresses=tuple(_ip(a, f"nodeAddresses[{i}]") for i, a in enumerate(_list(raw, "nodeAddresses"))),
        pod_cidr=_pod_cidr(_mapping(raw, "podCIDR")),
        cni=_cni(_mapping(raw, "cni")),
        kubeconfig=raw.get("kubeconfig") or None,
        graceful_restart=_int(raw.get("gracefulRestart", 120), "gracefulRestart", 0, 4095),
        convergence_timeout=float(raw.get("convergenceTimeout", 60.0)),
        strict_next_hop=_bool(raw.get("strictNextHop", True), "strictNextHop"),
        route_protocol=_int(raw.get("routeProtocol", 80), "routeProtocol", 5, 255),
        route_metric=_int(raw.get("routeMetric", 20), "routeMetric", 0, 2**32 - 1),
        route_table=_int(raw.get("routeTable", 254), "routeTable", 1, 2**32 - 1),
        resync_interval=float(raw.get("resyncInterval", 30.0)),
        api_backoff_max=float(raw.get("apiBackoffMax", 5.0)),
        status_address=_address(raw.get("statusAddress", "127.0.0.1:9469"), "statusAddress"),
        runtime_dir=str(raw.get("runtimeDir", "/run/podbgp")),
        exabgp=str(raw.get("exabgp", "exabgp")),
        mode=mode,
        mesh=_bool(raw.get("mesh", False), "mesh"),
        mesh_node_selector=_selector(raw.get("meshNodeSelector"), "meshNodeSelector"),
        secrets_dir=_abspath(raw.get("secretsDir", "/etc/podbgp/secrets"), "secretsDir"),
        router_id=None if raw.get("routerId") in (None, "") else _ipv4(raw["routerId"], "routerId"),
    )
    validate(cfg)
    return cfg


def _pod_cidr(pc: dict) -> PodCIDRConfig:
    _known_keys(pc, _POD_CIDR_KEYS, "podCIDR")
    dflt = PodCIDRConfig()
    return PodCIDRConfig(
        node_local=tuple(_net(c, f"podCIDR.nodeLocal[{i}]") for i, c in enumerate(_list(pc, "nodeLocal"))),
        kubelet_config=str(pc.get("kubeletConfig", dflt.kubelet_config)),
        k3s_file=str(pc.get("k3sFile", dflt.k3s_file)),
        derive=_bool(pc.get("deriveFromClusterCIDR", False), "podCIDR.deriveFromClusterCIDR"),
        node_mask_v4=_int(pc.get("nodeMaskV4", 24), "podCIDR.nodeMaskV4", 1, 32),
        node_mask_v6=_int(pc.get("nodeMaskV6", 64), "podCIDR.nodeMaskV6", 1, 128),
    )


def _cni(raw: dict) -> CNIConfig:
    _known_keys(raw, _CNI_KEYS, "cni")
    d = CNIConfig()
    path = str(raw.get("confPath", d.conf_path))
    if not os.path.isabs(path) or not path.endswith(".conflist"):
        raise ConfigError(f"cni.confPath: {path!r} must be an absolute path ending in .conflist "
                          "(container runtimes read a plugin list only from such a file)")
    bridge = str(raw.get("bridge", d.bridge))
    if not 1 <= len(bridge) <= 15 or any(c in bridge for c in "/: \t\n") or bridge in (".", ".."):
        raise ConfigError(f"cni.bridge: {bridge!r} is not an interface name (1..15 characters, no '/', ':' or spaces)")
    mtu = _int(raw.get("mtu", 0), "cni.mtu", 0, 65535)
    if 0 < mtu < 576:
        raise ConfigError(f"cni.mtu: {mtu} is too small (0 for the plugin's default, else at least 576)")
    data_dir = str(raw.get("dataDir") or "")
    if data_dir and not os.path.isabs(data_dir):
        raise ConfigError(f"cni.dataDir: {data_dir!r} must be an absolute path")
    return CNIConfig(
        enabled=_bool(raw.get("enabled", d.enabled), "cni.enabled"), conf_path=path, bridge=bridge, mtu=mtu,
        hairpin_mode=_bool(raw.get("hairpinMode", d.hairpin_mode), "cni.hairpinMode"),
        ip_masq=_bool(raw.get("ipMasq", d.ip_masq), "cni.ipMasq"),
        portmap=_bool(raw.get("portmap", d.portmap), "cni.portmap"), data_dir=data_dir)


def parse_peer(raw: Any, where: str, keys: Iterable[str] = _PEER_KEYS) -> Peer:
    """One peer from the config (`keys` all of them) or from a Node's podbgp.io/peers annotation
    (`keys` ANNOTATION_PEER_KEYS); ConfigError naming `where` and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with address and asn")
    if "password" in raw:  # before the unknown-key check, which would suggest passwordKey less clearly
        raise ConfigError(f"{where}.password: a password must not sit in a ConfigMap or annotation; put it in "
                          "the Secret podbgp-bgp-passwords and name its key with passwordKey")
    _known_keys(raw, keys, where)
    fams = frozenset(_list(raw, "families"))
    bad = sorted(fams - {"ipv4", "ipv6"})
    if bad:
        raise ConfigError(f"{where}.families: unknown family {bad[0]!r} (ipv4, ipv6)")
    hold = _hold(raw.get("holdTime", 9), f"{where}.holdTime")
    if raw.get("multihop") and raw.get("ttlSecurity"):
        raise ConfigError(f"{where}.ttlSecurity: multihop and ttlSecurity exclude each other (GTSM sends with "
                          "TTL 255; give ttlSecurity the hop count instead)")
    return Peer(
        address=_ip(raw.get("address"), f"{where}.address"),
        asn=_int(raw.get("asn"), f"{where}.asn", 1, 4294967295),
        hold_time=hold,
        keepalive_time=_keepalive(raw.get("keepaliveTime"), hold, f"{where}.keepaliveTime"),
        port=_int(raw.get("port", 179), f"{where}.port", 1, 65535),
        password_key=_secret_key(raw.get("passwordKey"), f"{where}.passwordKey"),
        multihop=_int(raw["multihop"], f"{where}.multihop", 1, 255) if raw.get("multihop") else None,
        ttl_security=_int(raw["ttlSecurity"], f"{where}.ttlSecurity", 1, 254) if raw.get("ttlSecurity") else None,
        families=fams,
        node_selector=_selector(raw.get("nodeSelector"), f"{where}.nodeSelector"),
    )


def _keepalive(value: Any, hold: int, where: str) -> int:
    if value is None or value == "":
        return hold // 3
    n = _int(value, where, 0, 65535)
    if hold == 0 and n != 0:
        raise ConfigError(f"{where}: {n} with holdTime 0 (no keepalives without a hold time); leave it unset or 0")
    if hold and not 1 <= n < hold:
        raise ConfigError(f"{where}: {n} must be at least 1 and less than holdTime {hold}")
    if n != hold // 3:
        raise ConfigError(f"{where}: {n} cannot be honoured: ExaBGP sends a keepalive every holdTime/3 "
                          f"({hold // 3} with holdTime {hold}); leave it unset or set holdTime to {3 * n}")
    return n


_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


def _secret_key(value: Any, where: str) -> str | None:
    """A Secret's data key (what kubectl create secret accepts): also a plain file name."""
    if value is None or value == "":
        return None
    text = str(value)
    if not _SECRET_KEY_RE.match(text) or text in (".", ".."):
        raise ConfigError(f"{where}: {text!r} is not a Secret key (letters, digits, '-', '_', '.')")
    return text


def _selector(value: Any, where: str) -> Selector:
    try:
        return selector.parse(value, where)
    except selector.SelectorError as exc:
        raise ConfigError(str(exc)) from None


def _ipv4(value: Any, where: str) -> ipaddress.IPv4Address:
    try:
        rid = ipaddress.IPv4Address(str(value).strip())
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IPv4 address in dotted-quad form") from None
    if int(rid) == 0:
        raise ConfigError(f"{where}: 0.0.0.0 is not a router ID (it must be non-zero)")
    return rid


def _abspath(value: Any, where: str) -> str:
    text = str(value)
    if not os.path.isabs(text):
        raise ConfigError(f"{where}: {text!r} must be an absolute path")
    return text


def _hold(value: Any, where: str) -> int:
    n = _int(value, where, 0, 65535)
    if n in (1, 2):
        raise ConfigError(f"{where}: {n} is not allowed (0 or at least 3 seconds, RFC 4271)")
    return n


def validate(cfg: Config) -> None:
    """Cross-field checks: families, duplicates, overlaps between the Pod and Service ranges."""
    if cfg.mode == "bgp" and not cfg.peers and not cfg.mesh:
        raise ConfigError("peers: at least one BGP peer is required (or mesh: true, or mode: direct)")
    if cfg.mode == "bgp" and cfg.mesh and cfg.asn is None:
        raise ConfigError("asn: required with mesh: true (the one AS of every node in the mesh)")
    if cfg.mesh and cfg.mode == "direct":
        raise ConfigError("mesh: true needs mode: bgp (mode: direct runs no BGP at all)")
    if cfg.mesh and cfg.router_id is not None:
        raise ConfigError(f"routerId: {cfg.router_id} would be every node's router ID, and two ends of a mesh "
                          "session must differ; leave it unset or set podbgp.io/router-id on each Node")
    if not cfg.cluster_cidrs:
        raise ConfigError("clusterCIDRs: at least one cluster (Pod) CIDR is required")
    for what, nets in (("clusterCIDRs", cfg.cluster_cidrs), ("serviceCIDRs", cfg.service_cidrs),
                       ("podCIDR.nodeLocal", cfg.pod_cidr.node_local)):
        _one_per_family(what, nets)
    _disjoint("clusterCIDRs", cfg.cluster_cidrs, "serviceCIDRs", cfg.service_cidrs,
              "Pod and Service ranges must be disjoint")
    for i, c in enumerate(cfg.pod_cidr.node_local):
        check_pod_cidr(cfg, c, f"podCIDR.nodeLocal[{i}]")
    seen: dict[IPAddress, int] = {}
    for i, p in enumerate(cfg.peers):
        j = seen.get(p.address)
        if j is not None and p.node_selector.everything and cfg.peers[j].node_selector.everything:
            raise ConfigError(f"peers[{i}].address: {p.address} is also peers[{j}]; one session per address "
                              "(unless nodeSelectors split the nodes between them)")
        seen.setdefault(p.address, i)
        for fam in p.families:
            if fam == "ipv6" and p.address.version == 4 or fam == "ipv4" and p.address.version == 6:
                raise ConfigError(f"peers[{i}].families: {fam} over an IPv{p.address.version} session is not "
                                  "supported; configure a peer of each family")
    versions = {c.version for c in cfg.cluster_cidrs}
    for i, a in enumerate(cfg.node_addresses):
        if a.version not in versions:
            raise ConfigError(f"nodeAddresses[{i}]: {a} is IPv{a.version} but no cluster CIDR of that family")


def _one_per_family(what: str, nets: Sequence[IPNetwork]) -> None:
    for i, n in enumerate(nets):
        for j, m in enumerate(nets[:i]):
            if m == n:
                raise ConfigError(f"{what}[{i}]: {n} is listed twice (also {what}[{j}])")
            if m.version == n.version:
                raise ConfigError(f"{what}: at most one CIDR per IP family ({what}[{i}] {n} is a second "
                                  f"IPv{n.version} one after {what}[{j}] {m})")


def _disjoint(a_name: str, a: Sequence[IPNetwork], b_name: str, b: Sequence[IPNetwork], why: str) -> None:
    """No address in both lists: one set intersection over every entry, then name the first clash."""
    common = netaddr.IPSet(str(n) for n in a) & netaddr.IPSet(str(n) for n in b)
    if not common:
        return
    for j, y in enumerate(b):
        inside = common & netaddr.IPSet([str(y)])
        if inside:
            i = next(i for i, x in enumerate(a) if netaddr.IPSet([str(x)]) & inside)
            raise ConfigError(f"{b_name}[{j}]: {y} overlaps {a_name}[{i}] {a[i]}; {why}")


def check_pod_cidr(cfg: Config, net: IPNetwork, where: str) -> None:
    """A PodCIDR must sit inside the cluster CIDR of its family and outside every Service CIDR."""
    for s in cfg.service_cidrs:
        if s.version == net.version and s.overlaps(net):
            raise ConfigError(f"{where}: {net} overlaps the Service CIDR {s}")
    cluster = [c for c in cfg.cluster_cidrs if c.version == net.version]
    if not cluster:
        raise ConfigError(f"{where}: {net} is IPv{net.version} but clusterCIDRs has no such family")
    if not any(net.subnet_of(c) for c in cluster):
        raise ConfigError(f"{where}: {net} is outside the cluster CIDR {cluster[0]}")


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` (`[::]:PORT`: every IPv6 address) or `0.0.0.0:PORT` -> (host,
    port). An IPv6 address needs its brackets; port 0 asks for any free port."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            sep = ""
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            sep = ""
    if not sep or not host:
        raise ValueError(f"status address {text!r}: expected HOST:PORT, [V6]:PORT or 0.0.0.0:PORT")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"status address {text!r}: port {port!r} is not a number from 0 to 65535")
    return host, int(port)


ENV_KEYS = {
    "NODE_NAME": "nodeName", "PODBGP_ASN": "asn", "PODBGP_KUBECONFIG": "kubeconfig",
    "PODBGP_CLUSTER_CIDRS": "clusterCIDRs", "PODBGP_SERVICE_CIDRS": "serviceCIDRs",
    "PODBGP_NODE_ADDRESSES": "nodeAddresses", "PODBGP_STATUS_ADDRESS": "statusAddress",
    "PODBGP_RUNTIME_DIR": "runtimeDir", "PODBGP_GRACEFUL_RESTART": "gracefulRestart",
}


def load(path: str | None, env: dict[str, str] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """File, then environment, then flags (each later one wins)."""
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config: {path} must hold a mapping")
    env = os.environ if env is None else env
    for var, key in ENV_KEYS.items():
        if env.get(var):
            raw[key] = env[var]
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return parse(raw)

