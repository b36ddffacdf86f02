import os
import subprocess
import uuid

import pytest


@pytest.fixture
def netns():
    """A fresh network namespace with a veth pair (eth0 up, 192.168.77.1/24, fd00:77::1/64); removed on every path."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"pbt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                    ["link", "set", "eth0", "up"], ["link", "set", "eth0p", "up"],
                    ["addr", "add", "192.168.77.1/24", "dev", "eth0"],
                    ["addr", "add", "fd00:77::1/64", "dev", "eth0", "nodad"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
