import os
import subprocess
import time
import uuid

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

IFA_F_NODAD = 0x02


@pytest.fixture
def netns():
    """A fresh network namespace with a veth pair (eth0 up, 192.168.77.1/24, fd00:77::1/64); removed on every path."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"pbt-{uuid.uuid4().hex[:8]}"
    pyroute2_netns.create(name)
    try:
        # no duplicate-address detection on the links to come: its end would be an address event later
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0"], check=True)
        with IPRoute(netns=name, flags=0, groups=0) as ipr:
            ipr.link("add", ifname="eth0", kind="veth", peer="eth0p")
            for ifname in ("lo", "eth0", "eth0p"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
            (eth0,) = ipr.link_lookup(ifname="eth0")
            ipr.addr("add", index=eth0, address="192.168.77.1", prefixlen=24)
            ipr.addr("add", index=eth0, address="fd00:77::1", prefixlen=64, flags=IFA_F_NODAD)
            _settle(ipr, eth0)
        yield name
    finally:
        pyroute2_netns.remove(name)


def _settle(ipr, index: int, timeout: float = 5.0) -> None:
    """Wait until the kernel has finished with the new link (operstate UP, carrier seen by the link
    watcher), so that no late link event reaches a test's monitor."""
    deadline = time.monotonic() + timeout
    while ipr.get_links(index)[0].get_attr("IFLA_OPERSTATE") != "UP":
        if time.monotonic() > deadline:
            raise AssertionError(f"link {index} not up within {timeout}s")
        time.sleep(0.02)


@pytest.fixture
def ipr(netns):
    """pyroute2 in the test's namespace, for the links and addresses a test changes."""
    with IPRoute(netns=netns, flags=0, groups=0) as handle:
        yield handle
