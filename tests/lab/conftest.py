import os
import time
import uuid

import pytest


def topology_lab(topology: str | None = None, prefix: str = "pbt"):
    """A lab of topology (a file in lab/, default the default topology) up under a name unique to
    this run, every node routing to every other; torn down on every path. For module fixtures."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from lab import demo, runner

    path = os.path.join(os.path.dirname(runner.DEFAULT_TOPOLOGY), topology) if topology else runner.DEFAULT_TOPOLOGY
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    state = runner.up(path, name=name)
    try:
        demo.wait_routes(state, timeout=60)
        yield state
    finally:
        runner.down(name)


@pytest.fixture(scope="module")
def lab():
    """The default topology, shared by a module's tests."""
    yield from topology_lab()


def poll(pred, timeout, interval=0.02):
    """Poll pred until it is truthy; return seconds taken; fail at the deadline."""
    start = time.monotonic()
    while True:
        value = pred()
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
