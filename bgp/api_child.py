"""The API process ExaBGP spawns: relays its JSON lines to the speaker and commands back.

Kept to the standard library so it starts in a few tens of milliseconds.
Usage (in the rendered ExaBGP config): python -m bgp.api_child /run/podbgp/NODE/api.sock
"""
import os
import socket
import sys
import threading
import time


def main() -> None:
    path = sys.argv[1]
    deadline = time.monotonic() + 10
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            sock.connect(path)
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.stderr.write(f"api_child: cannot connect to {path}\n")
                os._exit(1)
            time.sleep(0.05)

    def upstream() -> None:
        try:
            for line in sys.stdin.buffer:
                sock.sendall(line)
        finally:
            os._exit(0)

    threading.Thread(target=upstream, daemon=True).start()
    out = sys.stdout.buffer
    for line in sock.makefile("rb"):
        out.write(line)
        out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
