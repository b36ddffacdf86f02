"""The kernel monitor on real netlink: which events wake the reconciler, and with what."""
import json
import subprocess
import time

import pytest

from reconciler.monitor import KernelMonitor
from tests.waiting import poll

pytestmark = pytest.mark.privileged


def ip(ns, *args):
    subprocess.run(["ip", "-n", ns, *args], check=True)


def ip_json(ns, *args):
    out = subprocess.run(["ip", "-j", "-n", ns, *args], check=True, capture_output=True, text=True, timeout=10).stdout
    return json.loads(out or "[]")


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


VETH = ("eth0", "eth0p")


def settled(ns):
    """The kernel has nothing left to say about the fixture's links: both ends of the veth
    operationally up, every IPv6 address (the link-locals that carrier brings, ours) past DAD, and
    each end's fe80::/64 route in place. Each of these is announced from work that holds the RTNL
    (linkwatch, the DAD worker), so once it shows here its event has been sent or will be before the
    next RTNL writer's: a route added afterwards is a barrier behind it."""
    links = {link["ifname"]: link for link in ip_json(ns, "addr", "show")}
    for name in VETH:
        link = links.get(name, {})
        v6 = [a for a in link.get("addr_info", []) if a.get("family") == "inet6"]
        if link.get("operstate") != "UP" or any(a.get("tentative") for a in v6) \
                or not any(a.get("scope") == "link" for a in v6):
            return False
    local = {r["dev"] for r in ip_json(ns, "-6", "route", "show", "table", "main", "fe80::/64")}
    return local >= set(VETH)


def barrier(mon, ns, octet):
    """Add a foreign IPv4 route 10.42.<octet>.0/24 (metric <octet>) and drain the monitor until it
    is seen: every event the kernel sent before it is then in the returned drains, the route
    events up to and including the sentinel's. IPv4 route changes take the RTNL, so whatever
    another RTNL holder announces is queued before the sentinel or after it, never across."""
    ip(ns, "route", "add", f"10.42.{octet}.0/24", "via", "192.168.77.99", "proto", "static", "metric", str(octet))
    sentinel = ((4, 0x0A2A0000 | octet << 8, 24, octet), False, False)
    return drain_until(mon, lambda s: sentinel in routes(s))


def test_route_events_carry_the_key_and_whose_route_it_is(netns):
    mon = KernelMonitor(protocol=80, netns=netns)
    try:
        # the quiet window opens only once the setup's late link and address events are behind us
        poll(lambda: settled(netns), 10, f"the links of {netns} to settle")
        barrier(mon, netns, 98)
        ip(netns, "route", "add", "10.42.2.0/24", "via", "192.168.77.12", "proto", "80", "metric", "20")
        ip(netns, "route", "add", "10.42.3.0/24", "via", "192.168.77.13", "proto", "static", "metric", "20")
        ip(netns, "-6", "route", "add", "fd00:42:0:3::/64", "via", "fd00:77::13", "proto", "static", "metric", "20")
        ip(netns, "route", "del", "10.42.2.0/24", "proto", "80", "metric", "20")
        ip(netns, "route", "add", "10.42.4.0/24", "via", "192.168.77.14", "table", "100")  # another table
        seen = barrier(mon, netns, 99)  # everything the changes above caused is before this one
        assert routes(seen) == [
            ((4, 0x0A2A0300, 24, 20), False, False),  # a foreign route appears
            ((6, 0xFD000042000000030000000000000000, 64, 20), False, False),
            ((4, 0x0A2A0200, 24, 20), True, True),  # ours deleted (our own add is not reported)
            ((4, 0x0A2A6300, 24, 99), False, False),  # the closing sentinel, and nothing else
        ]
        assert not any(ev.full for ev in seen), seen
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
