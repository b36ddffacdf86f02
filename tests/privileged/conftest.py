import os
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
        with IPRoute(netns=name, flags=0, groups=0) as ipr:
            ipr.link("add", ifname="eth0", kind="veth", peer="eth0p")
            for ifname in ("lo", "eth0", "eth0p"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
            (eth0,) = ipr.link_lookup(ifname="eth0")
            ipr.addr("add", index=eth0, address="192.168.77.1", prefixlen=24)
            ipr.addr("add", index=eth0, address="fd00:77::1", prefixlen=64, flags=IFA_F_NODAD)
        yield name
    finally:
        pyroute2_netns.remove(name)


@pytest.fixture
def ipr(netns):
    """pyroute2 in the test's namespace, for the links and addresses a test changes."""
    with IPRoute(netns=netns, flags=0, groups=0) as handle:
        yield handle
