"""HTTP requests at a steady rate from a lab namespace, each on a new TCP connection (so the
ToR's L4 ECMP hash spreads them), every answer recorded; bounded in count and time.

    ip netns exec WS python -m tests.lab.httpload URL --rate 20 --seconds 60 [--count N] --out FILE

Each line of FILE: {"t": unix time sent, "ok": bool, "body": answer or error, "ms": duration}.
Stops at --count requests, after --seconds, or on SIGTERM/SIGINT, whichever comes first.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import threading
import time
import urllib.parse

TIMEOUT = 2.0  # seconds per request: a Pod that stops answering is a failure, not a hang


def request(url: str, timeout: float = TIMEOUT) -> tuple[bool, str]:
    """One GET on a fresh connection; (ok, body or the error)."""
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname or "", u.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {u.path or '/'} HTTP/1.0\r\nHost: {u.netloc}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in f"{status} ":
        return False, f"status {status!r}"
    return True, body.decode(errors="replace").strip()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lock = threading.Lock()
    threads: list[threading.Thread] = []
    with open(a.out, "w", buffering=1) as out:
        def one(t: float) -> None:
            ok, body = request(a.url)
            line = json.dumps({"t": t, "ok": ok, "body": body, "ms": round((time.time() - t) * 1000, 1)})
            with lock:
                out.write(line + "\n")

        start = time.monotonic()
        n = 0
        while not stop.is_set() and time.monotonic() - start < a.seconds and (not a.count or n < a.count):
            th = threading.Thread(target=one, args=(time.time(),), daemon=True)
            th.start()
            threads.append(th)
            n += 1
            stop.wait(max(0.0, start + n / a.rate - time.monotonic()))
        for th in threads:
            th.join(TIMEOUT + 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
