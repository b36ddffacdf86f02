"""The node's own addresses, from an rtnetlink address dump. Thin I/O shell, off the bulk route path.

Read once per full pass. The dump is packed and parsed by hand (rtnl.pack_addr_dump,
rtnl.parse_addr_dump), as the routes are: pyroute2 did it before, but importing it and opening its
IPRoute (a worker thread running an asyncio loop of its own) cost the speaker 11 MiB of RSS for
this one read. The socket is a plain blocking one; a dump of a few hundred addresses takes well
under a millisecond.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from bgp.types import IPNetwork

from .rtnl import CHUNK, open_socket, pack_addr_dump, parse_addr_dump
from .types import NetlinkError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
_IFACE = {socket.AF_INET: ipaddress.IPv4Interface, socket.AF_INET6: ipaddress.IPv6Interface}


class Links:
    """One rtnetlink socket in network namespace `netns` (None: ours); a namespace that does
    not exist is an error (FileNotFoundError), not created."""

    def __init__(self, netns: str | None = None) -> None:
        self._sock = open_socket(netns)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def addresses(self) -> list[IPInterface]:
        """Every IPv4 and IPv6 address configured on a link, with its prefix length."""
        self._seq += 1
        self._sock.send(pack_addr_dump(self._seq))
        found: list[tuple[int, bytes, int]] = []
        err = None
        while err is None:
            err = parse_addr_dump(self._sock.recv(CHUNK), found, self._seq)  # a dump's datagrams are <= 32 KiB
        if err:
            raise NetlinkError(err, "address dump")
        return [_IFACE[family]((raw, prefixlen)) for family, raw, prefixlen in found]


def connected_subnets(addresses: Iterable[IPInterface]) -> frozenset[IPNetwork]:
    """The subnets of these addresses, link-local and loopback left out. Pure."""
    return frozenset(a.network for a in addresses if not (a.ip.is_link_local or a.ip.is_loopback))
