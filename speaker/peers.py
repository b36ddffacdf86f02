"""Who this node peers with: a pure function of the config, its own Node, the mesh and the Secret.

    global peers (config, nodeSelector matching the own Node's labels)
  + the own Node's podbgp.io/peers annotation
  + the iBGP mesh: every other Node in meshNodeSelector's scope, one session per shared family
  = PeerConfigs, one per address, each with its password read from the mounted Secret.

A problem with one source or one peer is reported under its own key (status nodeErrors) and
leaves that source or peer out; the rest are kept. Only a node without an AS number or a router
ID cannot peer at all (`Plan.waiting`). Passwords never appear in a message.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import yaml

from bgp.types import IPAddress, PeerConfig

from . import announce
from .config import ANNOTATION_PEER_KEYS, Config, ConfigError, Peer, parse_peer
from .nodes import NodeInfo
from .selector import Selector

PEERS_ANNOTATION = "podbgp.io/peers"
ROUTER_ID_ANNOTATION = "podbgp.io/router-id"
MD5_MAX = 80  # Linux TCP_MD5SIG_MAXKEYLEN

SecretReader = Callable[[str], "str | None"]  # a passwordKey -> the file's text, None if absent


def secret_files(directory: str) -> SecretReader:
    """The reader of the mounted Secret: one file per key (the shell side of `plan`)."""
    def read(key: str) -> str | None:
        try:
            with open(os.path.join(directory, key)) as f:
                return f.read()
        except OSError:
            return None
    return read


# the log event of each kind of problem (the part of its key before the colon)
_EVENTS = {"asn": "node.asn", "peers": "bgp.peers.invalid", "router-id": "bgp.router_id.invalid",
           "peer": "bgp.peer.left_out"}


def event_of(key: str) -> str:
    return _EVENTS.get(key.partition(":")[0], "bgp.peer")


@dataclass(frozen=True, slots=True)
class Plan:
    """The sessions this node should run, and its peering problems keyed for status nodeErrors."""

    peers: tuple[PeerConfig, ...]  # sorted by address
    errors: tuple[tuple[str, str], ...] = ()  # (key, one line), sorted
    waiting: str = ""  # set: no session is possible (no AS, no router ID, no peer); keep what runs


# ---- the mesh's members, kept per Node event ---------------------------------------------------

class Mesh:
    """The Nodes in meshNodeSelector's scope with an InternalIP: name -> (first InternalIP per
    family). `put`/`remove` say whether the membership or an address changed, so a status
    heartbeat or another Node's PodCIDR change costs one dict lookup and configures nothing."""

    def __init__(self, scope: Selector, enabled: bool = True) -> None:
        self.scope, self.enabled = scope, enabled
        self.members: dict[str, tuple[IPAddress, ...]] = {}

    def put(self, info: NodeInfo) -> bool:
        if not self.enabled:
            return False
        addrs = mesh_addresses(info, self.scope)
        if not addrs:
            return self.remove(info.name)
        if self.members.get(info.name) == addrs:
            return False
        self.members[info.name] = addrs
        return True

    def remove(self, name: str) -> bool:
        return self.members.pop(name, None) is not None


def mesh_addresses(info: NodeInfo, scope: Selector) -> tuple[IPAddress, ...]:
    """The Node's mesh addresses (first InternalIP per family), or () when it is out of scope."""
    if not scope.matches(dict(info.labels)):
        return ()
    return tuple(a for a in (info.address(4), info.address(6)) if a is not None)


# ---- the plan --------------------------------------------------------------------------------
MESH_WHERE = "mesh node "


def plan(cfg: Config, me: NodeInfo | None, mesh: Mapping[str, tuple[IPAddress, ...]],
         read_secret: SecretReader) -> Plan:
    """The sessions of this node from the config, its Node, the mesh members and the Secret."""
    if cfg.mode != "bgp":
        return Plan(())
    name = cfg.node_name
    errors: dict[str, str] = {}
    own = announce.local_as(cfg, me)
    if own.asn is None:
        return Plan((), (), own.error)
    if own.error:
        errors[f"asn:{name}"] = own.error
    try:
        rid = _router_id(cfg, me, errors)
    except ConfigError as exc:
        return Plan((), tuple(sorted(errors.items())), str(exc))
    out: dict[IPAddress, PeerConfig] = {}
    for where, peer in _candidates(cfg, me, mesh, errors):
        key = f"peer:{peer.address}"
        if peer.address in out:
            errors.setdefault(key, f"node {name}: {where}: {peer.address} is already a peer of this node "
                                   f"(one session per address); this one is left out")
            continue
        try:
            out[peer.address] = _session(cfg, me, peer, where, own.asn, rid, read_secret)
        except ConfigError as exc:
            errors[key] = str(exc)
    waiting = "" if out else (
        f"node {name}: no BGP peer for this node (no global peer whose nodeSelector matches its labels, no usable "
        f"{PEERS_ANNOTATION} annotation" + (", no other node in the mesh" if cfg.mesh else "") + "); BGP waits for one")
    return Plan(tuple(out[a] for a in sorted(out, key=lambda a: (a.version, int(a)))), tuple(sorted(errors.items())),
                waiting)


def _candidates(cfg: Config, me: NodeInfo | None, mesh: Mapping[str, tuple[IPAddress, ...]],
                errors: dict[str, str]) -> Iterator[tuple[str, Peer]]:
    """(where, peer) in order of precedence: the Node's annotation, the config, the mesh."""
    labels = dict(me.labels) if me is not None else {}
    yield from _annotation_peers(cfg, me, errors)
    for i, p in enumerate(cfg.peers):
        if p.node_selector.matches(labels):
            yield f"peers[{i}]", p
    if cfg.mesh and me is not None and mesh_addresses(me, cfg.mesh_node_selector):
        assert cfg.asn is not None  # config.validate: mesh needs asn
        for other in sorted(mesh):
            if other == me.name:
                continue
            for addr in mesh[other]:
                if announce.local_address(cfg, me, addr.version) is not None:
                    yield f"{MESH_WHERE}{other}", Peer(address=addr, asn=cfg.asn,
                                                       export_services=cfg.mesh_export_services)


def _annotation_peers(cfg: Config, me: NodeInfo | None, errors: dict[str, str]) -> list[tuple[str, Peer]]:
    text = dict(me.annotations).get(PEERS_ANNOTATION) if me is not None else None
    if text is None or me is None:
        return []
    where = f"node {me.name}: annotation {PEERS_ANNOTATION}"
    try:
        raw = yaml.safe_load(text)
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ConfigError(f"{where}: expected a YAML list of peers ({{address, asn, ...}})")
        found = [(f"{where}[{i}]", parse_peer(p, f"{where}[{i}]", ANNOTATION_PEER_KEYS)) for i, p in enumerate(raw)]
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        errors[f"peers:{me.name}"] = f"{where}: not valid YAML ({first}); its peers are left out"
        return []
    except ConfigError as exc:
        errors[f"peers:{me.name}"] = f"{exc}; the annotation's peers are left out"
        return []
    return found


def _router_id(cfg: Config, me: NodeInfo | None, errors: dict[str, str]) -> ipaddress.IPv4Address:
    """The Node's podbgp.io/router-id, else the config's routerId, else from its address."""
    text = dict(me.annotations).get(ROUTER_ID_ANNOTATION) if me is not None else None
    fallback = cfg.router_id
    if text is not None:
        try:
            rid = ipaddress.IPv4Address(text.strip())
            if int(rid) == 0:
                raise ValueError("0.0.0.0")
            return rid
        except ValueError:
            rid = fallback or announce.router_id(cfg, me)
            errors[f"router-id:{cfg.node_name}"] = (
                f"node {cfg.node_name}: annotation {ROUTER_ID_ANNOTATION}={text!r} is not a non-zero IPv4 address "
                f"(dotted quad); using {rid}")
            return rid
    return fallback or announce.router_id(cfg, me)


def _session(cfg: Config, me: NodeInfo | None, p: Peer, where: str, local_asn: int,
             rid: ipaddress.IPv4Address, read_secret: SecretReader) -> PeerConfig:
    name = cfg.node_name
    local = announce.local_address_for(cfg, me, p.address)
    if local is None:
        raise ConfigError(f"node {name}: {where}: {p.address} is IPv{p.address.version} but the node has no "
                          "address of that family; this peer is left out")
    return PeerConfig(
        address=p.address, asn=p.asn, local_address=local, local_asn=local_asn, router_id=rid,
        hold_time=p.hold_time, families=p.families or frozenset({"ipv4" if p.address.version == 4 else "ipv6"}),
        graceful_restart=cfg.graceful_restart, password=_password(cfg, p, where, read_secret),
        multihop=p.multihop, ttl_security=p.ttl_security, port=p.port, keepalive=p.keepalive_time,
        listen=where.startswith(MESH_WHERE),  # mesh members connect both ways
        export_services=p.export_services,  # mesh members: meshExportServices
        max_prefixes=p.max_prefixes, max_prefixes_action=p.max_prefixes_action, restart_after=p.restart_after,
        bfd=p.bfd)


def _password(cfg: Config, p: Peer, where: str, read_secret: SecretReader) -> str | None:
    """The peer's TCP MD5 password from the Secret; ConfigError (never naming the value) if unusable."""
    if p.password_key is None:
        return None
    text = read_secret(p.password_key)
    problem = ""
    if text is None:
        problem = f"passwordKey {p.password_key!r} is not in {cfg.secrets_dir} (the Secret podbgp-bgp-passwords)"
    else:
        text = text[:-1] if text.endswith("\n") else text
        if not text:
            problem = f"passwordKey {p.password_key!r} in {cfg.secrets_dir} is empty"
        elif len(text.encode()) > MD5_MAX:
            problem = f"passwordKey {p.password_key!r}: the password is longer than {MD5_MAX} bytes (TCP MD5's limit)"
    if problem:
        raise ConfigError(f"node {cfg.node_name}: {where} {p.address}: {problem}; no session without its password")
    return text
