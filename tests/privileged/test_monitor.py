"""The kernel monitor on real netlink: which events wake the reconciler, and with what."""
import subprocess
import time

import pytest

from reconciler.monitor import KernelMonitor

pytestmark = pytest.mark.privileged


def ip(ns, *args):
    subprocess.run(["ip", "-n", ns, *args], check=True)


def drain_until(mon, pred, timeout=5.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = mon.drain()
        seen.append(ev)
        if pred(seen):
            return seen
        time.sleep(0.01)
    raise AssertionError(f"not seen in {timeout}s: {seen}")


def routes(seen):
    return [r for ev in seen for r in ev.routes]


def test_route_events_carry_the_key_and_whose_route_it_is(netns):
    mon = KernelMonitor(protocol=80, netns=netns)
    try:
        ip(netns, "route", "add", "10.42.2.0/24", "via", "192.168.77.12", "proto", "80", "metric", "20")
        ip(netns, "route", "add", "10.42.3.0/24", "via", "192.168.77.13", "proto", "static", "metric", "20")
        ip(netns, "-6", "route", "add", "fd00:42:0:3::/64", "via", "fd00:77::13", "proto", "static", "metric", "20")
        ip(netns, "route", "del", "10.42.2.0/24", "proto", "80", "metric", "20")
        ip(netns, "route", "add", "10.42.4.0/24", "via", "192.168.77.14", "table", "100")  # another table
        seen = drain_until(mon, lambda s: len(routes(s)) >= 3)
        time.sleep(0.05)
        seen.append(mon.drain())
        assert routes(seen) == [
            ((4, 0x0A2A0300, 24, 20), False, False),  # a foreign route appears
            ((6, 0xFD000042000000030000000000000000, 64, 20), False, False),
            ((4, 0x0A2A0200, 24, 20), True, True),  # ours deleted (our own add is not reported)
        ]
        assert not any(ev.full for ev in seen)
    finally:
        mon.close()


def test_link_and_address_changes_ask_for_a_full_pass(netns, ipr):
    mon = KernelMonitor(protocol=80, netns=netns)
    (eth0,), (eth0p,) = ipr.link_lookup(ifname="eth0"), ipr.link_lookup(ifname="eth0p")
    try:
        ipr.link("set", index=eth0, state="down")
        assert any(ev.full == "link" for ev in drain_until(mon, lambda s: any(ev.full for ev in s)))
        ipr.link("set", index=eth0, state="up")
        ipr.addr("add", index=eth0p, address="192.168.78.1", prefixlen=24)
        assert drain_until(mon, lambda s: any(ev.full for ev in s))
    finally:
        mon.close()
