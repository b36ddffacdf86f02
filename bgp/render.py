"""Render the ExaBGP configuration from typed peers. Pure and deterministic."""
from __future__ import annotations

import re
import shlex

from .types import ConfigError, PeerConfig

PROCESS = "podbgp"
_SAFE_PASSWORD = re.compile(r"^[^\"\\\n;{}]{1,80}$")


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


def _neighbor(p: PeerConfig) -> list[str]:
    if p.address.version != p.local_address.version:
        raise ConfigError(f"peer {p.address}: local address {p.local_address} is of another family")
    lines = [
        f"neighbor {p.address} {{",
        f"    router-id {p.router_id};",
        f"    local-address {p.local_address};",
        f"    local-as {p.local_asn};",
        f"    peer-as {p.asn};",
        f"    hold-time {p.hold_time};",
        # ExaBGP keeps an Adj-RIB-In by default, which nothing here reads (podbgp keeps its own
        # RIB): about 2 KiB per learned route, 23 MiB at 10k routes.
        "    adj-rib-in false;",
    ]
    if p.passive:
        lines.append("    passive true;")
    if p.password is not None:
        if not _SAFE_PASSWORD.match(p.password):
            raise ConfigError(f"peer {p.address}: password has characters ExaBGP cannot take")
        lines.append(f'    md5-password "{p.password}";')
    if p.multihop is not None:
        lines.append(f"    outgoing-ttl {p.multihop};")
    if p.ttl_security is not None:
        lines.append(f"    incoming-ttl {p.ttl_security};")
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
