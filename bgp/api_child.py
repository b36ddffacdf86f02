"""The API process ExaBGP spawns: hands ExaBGP's pipes to the speaker, then waits to die with ExaBGP.

ExaBGP writes its JSON lines to this process's stdin and reads commands from its stdout. Copying
them through a Python relay cost a second copy of every line and a ~11 MiB process, so instead
the child passes both pipe ends to the speaker over its unix socket (SCM_RIGHTS), drops its own
copies and execs `sleep infinity` with PR_SET_PDEATHSIG: ExaBGP still sees a live helper (it
respawns a dead one, and the new one hands over again), the speaker reads and writes ExaBGP's
pipes directly, and the sleeper dies with ExaBGP.

Kept to the standard library so it starts in a few tens of milliseconds.
Usage (in the rendered ExaBGP config): python -m bgp.api_child /run/podbgp/NODE/api.sock
"""
import ctypes
import os
import signal
import socket
import sys
import time

HELLO = b"podbgp-api 1\n"
PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """SIGKILL when ExaBGP dies (kept across exec); gone at once if it already has."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                sys.stderr.write(f"api_child: cannot connect to {path}\n")
                os._exit(1)
            time.sleep(0.05)


def sleep_forever() -> None:
    """Live exactly as long as ExaBGP (die_with), or until it ends us with SIGTERM."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # keep none of ExaBGP's pipes (its stderr is the supervisor's log pipe)
        os.dup2(devnull, fd)
    try:
        os.execvp("sleep", ["sleep", "infinity"])  # ~1 MiB instead of an idle interpreter
    except OSError:
        while True:
            signal.pause()


def main() -> None:
    die_with(os.getppid())
    sock = connect(sys.argv[1])
    socket.send_fds(sock, [HELLO], [0, 1])
    sock.close()
    sleep_forever()


if __name__ == "__main__":
    main()
