"""A continuous ping between two lab Pods, stopped by PID, with what it counted."""
from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass
class PingResult:
    sent: int
    received: int
    replies: list[float]  # reply timestamps (ping -D)

    @property
    def lost(self) -> int:
        return self.sent - self.received


class Pinger:
    """ping -i 0.01 (100 packets/s) from a Pod namespace; bounded by -w so it always ends."""

    def __init__(self, netns: str, dst: str, interval: float = 0.01, bound_s: int = 240) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-n", "-D", "-i", str(interval), "-W", "1", "-w", str(bound_s), dst],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started = time.time()

    def stop(self) -> PingResult:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
        if not m:
            raise AssertionError(f"no ping summary in: {out[-500:]}")
        replies = [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
        return PingResult(int(m.group(1)), int(m.group(2)), replies)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pod(lab, name: str) -> dict:
    return next(p for p in lab.pods if p["name"] == name)


@contextlib.contextmanager
def traffic(lab, results: dict, src: str = "node1-pod1", dst: str = "node2-pod1", interval: float = 0.01):
    """Ping src -> dst (IPv4 and IPv6) around the body: a baseline of replies before, some after;
    results[family] gets each PingResult."""
    from tests.lab.conftest import poll

    s, d = pod(lab, src), pod(lab, dst)
    pingers = {fam: Pinger(s["netns"], d[fam], interval=interval) for fam in ("ipv4", "ipv6")}
    try:
        poll(lambda: all(p.proc.poll() is None for p in pingers.values()), timeout=1)
        time.sleep(0.5)  # a baseline of replies before the event (the event must not start first)
        yield
        time.sleep(1.0)  # and some after it
    finally:
        for fam, p in pingers.items():
            results[fam] = p.stop()
        for p in pingers.values():
            p.kill()
    print("  ".join(f"{fam}: sent {r.sent} lost {r.lost}" for fam, r in results.items()))
