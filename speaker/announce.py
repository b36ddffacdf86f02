"""What this node announces and to whom: pure functions of the config and the node's facts."""
from __future__ import annotations

import ipaddress

from bgp.types import Announcement, IPAddress, IPNetwork, PeerConfig

from .config import Config, ConfigError
from .nodes import NodeInfo


def local_address(cfg: Config, node: NodeInfo | None, version: int) -> IPAddress | None:
    """The node's own address of a family: configured explicitly, else the Node's InternalIP."""
    explicit = next((a for a in cfg.node_addresses if a.version == version), None)
    if explicit is not None:
        return explicit
    return node.address(version) if node is not None else None


def router_id(cfg: Config, node: NodeInfo | None) -> ipaddress.IPv4Address:
    v4 = local_address(cfg, node, 4)
    if v4 is not None:
        return v4  # type: ignore[return-value]
    v6 = local_address(cfg, node, 6)
    if v6 is None:
        raise ConfigError(f"nodeAddresses: node {cfg.node_name} has no InternalIP and none is configured")
    return ipaddress.IPv4Address(int(v6) & 0xFFFFFFFF)


def peers(cfg: Config, node: NodeInfo | None) -> list[PeerConfig]:
    rid = router_id(cfg, node)
    out = []
    for i, p in enumerate(cfg.peers):
        local = local_address(cfg, node, p.address.version)
        if local is None:
            raise ConfigError(f"peers[{i}].address: {p.address} is IPv{p.address.version} but node "
                              f"{cfg.node_name} has no address of that family")
        fams = p.families or frozenset({"ipv4" if p.address.version == 4 else "ipv6"})
        out.append(PeerConfig(
            address=p.address, asn=p.asn, local_address=local, local_asn=cfg.asn, router_id=rid,
            hold_time=p.hold_time, families=fams, graceful_restart=cfg.graceful_restart,
            password=p.password, multihop=p.multihop, ttl_security=p.ttl_security,
        ))
    return out


def announcements(cidrs: tuple[IPNetwork, ...]) -> frozenset[Announcement]:
    return frozenset(Announcement(prefix=c) for c in cidrs)
