"""Polling with a deadline, for tests that wait on the kernel or a process: never sleep and hope."""
import time


def poll(pred, timeout: float, what: str, interval: float = 0.02) -> None:
    """Return as soon as pred() is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
