"""What this node announces and to whom: pure functions of the config and the node's facts."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from bgp.types import Announcement, IPAddress, IPNetwork, PeerConfig

from .config import Config, ConfigError
from .nodes import NodeInfo


ASN_ANNOTATION = "podbgp.io/asn"
ASN_MAX = 4294967295


@dataclass(frozen=True, slots=True)
class LocalAS:
    """This node's own AS and where it came from; `error` is one line for status when it is wrong."""

    asn: int | None
    source: str  # "annotation podbgp.io/asn", "config asn" or "" (none)
    error: str = ""


def local_as(cfg: Config, node: NodeInfo | None) -> LocalAS:
    """The Node's podbgp.io/asn annotation if it is a valid AS number, else the config's asn."""
    text = dict(node.annotations).get(ASN_ANNOTATION) if node is not None else None
    error = ""
    if text is not None:
        digits = text.strip()
        if digits.isascii() and digits.isdigit() and 1 <= int(digits) <= ASN_MAX:
            return LocalAS(int(digits), f"annotation {ASN_ANNOTATION}")
        error = (f"node {cfg.node_name}: annotation {ASN_ANNOTATION}={text!r} is not an AS number (1..{ASN_MAX}); "
                 + (f"using the config asn {cfg.asn}" if cfg.asn is not None
                    else "the config sets no asn either; no BGP session until one of them is set"))
    if cfg.asn is not None:
        return LocalAS(cfg.asn, "config asn", error)
    if not error:
        error = (f"node {cfg.node_name}: no AS number: the Node has no {ASN_ANNOTATION} annotation and the config "
                 "sets no asn; no BGP session until one of them is set")
    return LocalAS(None, "", error)


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
    """The sessions of this node; ConfigError while it has no AS number or no address to speak from."""
    own = local_as(cfg, node)
    if own.asn is None:
        raise ConfigError(own.error)
    rid = router_id(cfg, node)
    out = []
    for i, p in enumerate(cfg.peers):
        local = local_address(cfg, node, p.address.version)
        if local is None:
            raise ConfigError(f"peers[{i}].address: {p.address} is IPv{p.address.version} but node "
                              f"{cfg.node_name} has no address of that family")
        fams = p.families or frozenset({"ipv4" if p.address.version == 4 else "ipv6"})
        out.append(PeerConfig(
            address=p.address, asn=p.asn, local_address=local, local_asn=own.asn, router_id=rid,
            hold_time=p.hold_time, families=fams, graceful_restart=cfg.graceful_restart,
            password=_password(cfg, p.password_key), multihop=p.multihop, ttl_security=p.ttl_security,
        ))
    return out


def _password(cfg: Config, key: str | None) -> str | None:
    if key is None:
        return None
    try:
        with open(os.path.join(cfg.secrets_dir, key)) as f:
            text = f.read()
    except OSError:
        raise ConfigError(f"passwordKey: {key} is not in {cfg.secrets_dir} (the Secret podbgp-bgp-passwords); "
                          "no session without its password") from None
    return text[:-1] if text.endswith("\n") else text


def announcements(cidrs: tuple[IPNetwork, ...]) -> frozenset[Announcement]:
    return frozenset(Announcement(prefix=c) for c in cidrs)
