import os
import time
import uuid

import pytest


@pytest.fixture(scope="module")
def lab():
    """The default topology up under a name unique to this run; torn down on every path."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from lab import demo, runner

    name = f"pbt{uuid.uuid4().hex[:6]}"
    state = runner.up(runner.DEFAULT_TOPOLOGY, name=name)
    try:
        demo.wait_routes(state, timeout=60)
        yield state
    finally:
        runner.down(name)


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
