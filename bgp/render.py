"""Render the ExaBGP configuration from typed peers. Pure and deterministic.

The text has two parts. The global part (the `process` section of the API child) is read by
ExaBGP once: a reload (SIGUSR1) keeps a running process of the same name as it is, so a change
there needs a restart. The neighbor sections are what a reload applies peer by peer.
"""
from __future__ import annotations

import base64
import shlex

from .types import ConfigError, PeerConfig

PROCESS = "podbgp"
BGP_PORT = 179
MD5_MAX_KEY = 80  # bytes: TCP_MD5SIG_MAXKEYLEN, and ExaBGP's own limit
GTSM_TTL = 255  # RFC 5082: a GTSM speaker sends with the maximum TTL


def render(peers: list[PeerConfig], api_command: list[str]) -> str:
    if not peers:
        raise ConfigError("no BGP peers configured")
    run = " ".join(shlex.quote(a) for a in api_command)
    out = [
        f"process {PROCESS} {{",
        f"    run {run};",
        "    encoder json;",
        "}",
        "",
    ]
    for peer in sorted(peers, key=lambda p: (p.address.version, p.address)):
        out.extend(_neighbor(peer))
        out.append("")
    return "\n".join(out)


def check(peer: PeerConfig) -> None:
    """ConfigError (one line naming the peer, never its password) if this peer cannot be rendered:
    lets a caller leave out one bad peer instead of having render() refuse the whole list."""
    _neighbor(peer)


def global_part(text: str) -> str:
    """What a reload cannot change: everything before the first neighbor section."""
    head, _, _ = text.partition("\nneighbor ")
    return head


def _neighbor(p: PeerConfig) -> list[str]:
    if p.address.version != p.local_address.version:
        raise ConfigError(f"peer {p.address}: local address {p.local_address} is of another family")
    lines = [
        f"neighbor {p.address} {{",
        f"    router-id {p.router_id};",
        f"    local-address {p.local_address};",
        f"    local-as {p.local_asn};",
        f"    peer-as {p.asn};",
        f"    hold-time {_hold_time(p)};",
        # ExaBGP keeps an Adj-RIB-In by default, which nothing here reads (podbgp keeps its own
        # RIB): about 2 KiB per learned route, 23 MiB at 10k routes.
        "    adj-rib-in false;",
    ]
    if p.port != 179:
        if not 1 <= p.port <= 65535:
            raise ConfigError(f"peer {p.address}: port {p.port} is not a TCP port (1..65535)")
        lines.append(f"    connect {p.port};")
    if p.passive:
        lines.append("    passive true;")
    if p.listen:  # bound on local-address, with this peer's MD5 key and minimum TTL on the socket
        lines.append(f"    listen {BGP_PORT};")
    if p.password is not None:
        lines += _md5(p)
    lines += _ttl(p)
    if p.graceful_restart:
        lines.append("    manual-eor true;")
    lines.append("    family {")
    lines.extend(f"        {fam} unicast;" for fam in sorted(p.families))
    lines.append("    }")
    lines.append("    capability {")
    if p.graceful_restart:
        lines.append(f"        graceful-restart {p.graceful_restart};")
    else:
        lines.append("        graceful-restart disable;")
    lines.append("        route-refresh;")
    lines.append("    }")
    lines += [
        "    api {",
        f"        processes [ {PROCESS} ];",
        "        neighbor-changes;",
        "        receive {",
        "            parsed;",
        "            open;",
        "            update;",
        "        }",
        "    }",
        "}",
    ]
    return lines


def _hold_time(p: PeerConfig) -> int:
    """ExaBGP 5 has hold-time only: it sends a keepalive every negotiated hold time / 3."""
    if p.hold_time != 0 and not 3 <= p.hold_time <= 65535:
        raise ConfigError(f"peer {p.address}: hold time {p.hold_time} must be 0 or 3..65535 seconds")
    if p.keepalive is not None and p.keepalive != p.hold_time // 3:
        raise ConfigError(f"peer {p.address}: keepalive {p.keepalive}s cannot be set: ExaBGP sends a keepalive "
                          f"every negotiated hold time / 3 ({p.hold_time // 3}s with hold time {p.hold_time}s)")
    return p.hold_time


def _md5(p: PeerConfig) -> list[str]:
    """The key goes in base64 (md5-base64 true): any byte survives ExaBGP's config parser, and the
    key never appears in clear in the file. Messages never contain it."""
    assert p.password is not None
    key = p.password.encode()
    if not 1 <= len(key) <= MD5_MAX_KEY:
        raise ConfigError(f"peer {p.address}: the TCP MD5 password must be 1..{MD5_MAX_KEY} bytes "
                          f"(it has {len(key)})")
    return [f'    md5-password "{base64.b64encode(key).decode()}";', "    md5-base64 true;"]


def _ttl(p: PeerConfig) -> list[str]:
    """eBGP multihop: outgoing-ttl is the TTL we send with. GTSM (RFC 5082): send with 255
    (outgoing-ttl) and have the kernel drop what arrives below 256 - hops (incoming-ttl, which
    ExaBGP 5 sets as IP_MINTTL / IPV6_MINHOPCOUNT on the session's socket)."""
    if p.multihop is not None and p.ttl_security is not None:
        raise ConfigError(f"peer {p.address}: multihop and ttl security exclude each other "
                          f"(GTSM always sends with TTL {GTSM_TTL}; give ttl security the hop count instead)")
    if p.multihop is not None:
        if not 1 <= p.multihop <= 255:
            raise ConfigError(f"peer {p.address}: multihop {p.multihop} must be 1..255")
        return [f"    outgoing-ttl {p.multihop};"]
    if p.ttl_security is not None:
        if not 1 <= p.ttl_security <= 254:
            raise ConfigError(f"peer {p.address}: ttl security {p.ttl_security} must be 1..254 hops")
        return [f"    outgoing-ttl {GTSM_TTL};", f"    incoming-ttl {GTSM_TTL + 1 - p.ttl_security};"]
    return []
