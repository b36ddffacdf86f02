"""The node's own addresses, read with pyroute2. Thin I/O shell, off the bulk route path.

Routes are dumped and written by hand-packed netlink (`rtnl`): pyroute2 spends about 0.25 ms on
each route it installs or removes, 20x `ip -batch` (bench.netlink_apply). The addresses are read
once per full pass, so here the library does the work (17 ms for 400 addresses, against 8 ms
hand-packed). pyroute2 0.9's synchronous IPRoute runs an asyncio loop of its own, and
one loop cannot run inside another: the socket lives in one worker thread and each read is handed
to it (the speaker's loop waits, as it does for a route dump).
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from pyroute2 import IPRoute

from bgp.types import IPNetwork

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class Links:
    """One rtnetlink socket (pyroute2 IPRoute) in network namespace `netns` (None: ours)."""

    def __init__(self, netns: str | None = None) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="links")
        try:  # flags=0: a namespace that does not exist is an error, not created
            self._ipr = self._worker.submit(IPRoute, netns=netns, flags=0, groups=0).result()
        except BaseException:
            self._worker.shutdown()
            raise

    def close(self) -> None:
        try:
            self._worker.submit(self._ipr.close).result()
        finally:
            self._worker.shutdown()

    def addresses(self) -> list[IPInterface]:
        """Every IPv4 and IPv6 address configured on a link, with its prefix length."""
        return self._worker.submit(self._addresses).result()

    def _addresses(self) -> list[IPInterface]:
        out = []
        for msg in self._ipr.addr("dump"):
            raw = msg.get("local") or msg.get("address")  # IFA_LOCAL: our end of a point-to-point link
            if raw is not None and msg["family"] in (socket.AF_INET, socket.AF_INET6):
                out.append(ipaddress.ip_interface((raw, msg["prefixlen"])))
        return out


def connected_subnets(addresses: Iterable[IPInterface]) -> frozenset[IPNetwork]:
    """The subnets of these addresses, link-local and loopback left out. Pure."""
    return frozenset(a.network for a in addresses if not (a.ip.is_link_local or a.ip.is_loopback))
