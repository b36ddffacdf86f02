"""ExaBGP as a supervised child process, and the channel to its API process. asyncio."""
from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from .api_child import HELLO
from .types import BgpError

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the speaker dies, and a group of its own."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setsid()


def exabgp_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("exabgp")}
    env.update({
        "exabgp_daemon_user": "root",
        "exabgp_daemon_drop": "false",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_cli": "false",
        "exabgp_api_ack": "true",
        "exabgp_log_destination": "stdout",
        "exabgp_log_level": "INFO",
        # a "statistics for receive-update counter N" log line per UPDATE: a fifth of ExaBGP's
        # time on a full table, and as many lines through the supervisor
        "exabgp_log_statistics": "false",
        "exabgp_cache_attributes": "true",
    })
    return env


async def _recv_fds(conn: socket.socket) -> tuple[int, int]:
    """The two pipe ends an API child sends right after it connects (see bgp.api_child)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, int]] = loop.create_future()

    def ready() -> None:
        if done.done():
            return
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 64, 2)
        except BlockingIOError:
            return
        except OSError as exc:
            done.set_exception(exc)
            return
        if msg != HELLO or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            done.set_exception(ValueError(f"unexpected handoff {msg[:32]!r} with {len(fds)} fds"))
        else:
            done.set_result((fds[0], fds[1]))

    loop.add_reader(conn.fileno(), ready)
    try:
        return await done
    finally:
        loop.remove_reader(conn.fileno())


def _grow_pipe(fd: int) -> None:
    """Let ExaBGP run ahead of a busy loop by a MiB of lines instead of 64 KiB (best effort)."""
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            size = min(int(f.read()), 1 << 20)
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except (OSError, ValueError):
        pass


def find_exabgp(name: str) -> str:
    """`exabgp` next to this interpreter (the same install) wins over one found on PATH."""
    if os.sep not in name:
        local = os.path.join(os.path.dirname(sys.executable), name)
        if os.access(local, os.X_OK):
            return local
    return name


def api_command(socket_path: str) -> list[str]:
    return [sys.executable, "-m", "bgp.api_child", socket_path]


class ExaBGP:
    """Runs `exabgp server CONF`, restarts it with backoff when it dies, talks to its API pipes.

    ExaBGP's API process (bgp.api_child) hands ExaBGP's two pipes to us over api.sock, so lines
    are read from, and commands written to, ExaBGP directly. on_line(line) gets every line ExaBGP
    writes to its API process; on_connect() fires when a (new) API process hands over its pipes,
    on_exit(rc) when ExaBGP died unexpectedly.
    """

    read_pause = 0.001  # seconds between reads while lines keep coming (see _pause_reading)

    def __init__(self, runtime_dir: str, exabgp: str, on_line: Callable[[str], None],
                 on_connect: Callable[[], None], on_exit: Callable[[int], None]) -> None:
        self.runtime_dir = runtime_dir
        self.exabgp = find_exabgp(exabgp)
        self.on_line, self.on_connect, self.on_exit = on_line, on_connect, on_exit
        self.conf_path = os.path.join(runtime_dir, "exabgp.conf")
        self.sock_path = os.path.join(runtime_dir, "api.sock")
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.WriteTransport | None = None
        self._rtrans: asyncio.ReadTransport | None = None
        self._reading: asyncio.Task | None = None
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._config = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    async def start(self, config_text: str) -> None:
        os.makedirs(self.runtime_dir, exist_ok=True)
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.sock_path)
        self._listener.listen(4)
        self._listener.setblocking(False)
        self._config = config_text
        self._accepting = asyncio.create_task(self._accept_loop(), name="exabgp-api-accept")
        self._task = asyncio.create_task(self._supervise(), name="exabgp-supervisor")

    def reconfigure(self, config_text: str) -> None:
        """Use a new configuration: ExaBGP is restarted with it (the supervisor respawns it)."""
        self._config = config_text
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()

    def _write_config(self) -> None:
        tmp = self.conf_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self._config)
        os.replace(tmp, self.conf_path)

    async def _spawn(self) -> None:
        self._write_config()
        self.proc = await asyncio.create_subprocess_exec(
            self.exabgp, "server", self.conf_path,
            env=exabgp_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        with open(os.path.join(self.runtime_dir, "exabgp.pid"), "w") as f:
            f.write(f"{self.proc.pid}\n")
        log.info("exabgp.start pid=%d config=%s", self.proc.pid, self.conf_path)

    async def _supervise(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                await self._spawn()
            except OSError as exc:
                raise BgpError(f"cannot start {self.exabgp}: {exc}") from exc
            assert self.proc is not None and self.proc.stdout is not None
            started = asyncio.get_running_loop().time()
            async for raw in self.proc.stdout:
                log.debug("exabgp.log %s", raw.decode(errors="replace").rstrip())
            rc = await self.proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.warning("exabgp.exit pid=%d rc=%d restart_in=%.1fs", self.proc.pid, rc, delay)
            self.on_exit(rc)
            if asyncio.get_running_loop().time() - started > 30:
                delay = 0.5
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            try:
                fds = await asyncio.wait_for(_recv_fds(conn), 10)
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                log.warning("exabgp.api.handoff.failed %s", exc)
                continue
            finally:
                conn.close()
            await self._attach(*fds)

    async def _attach(self, rfd: int, wfd: int) -> None:
        """A (new) API child handed over ExaBGP's pipes: read its lines, write our commands."""
        loop = asyncio.get_running_loop()
        self._detach()
        _grow_pipe(rfd)
        reader = asyncio.StreamReader(limit=1 << 24)
        rtrans, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                 os.fdopen(rfd, "rb", buffering=0))
        wtrans, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(wfd, "wb", buffering=0))
        self.writer, self._rtrans = wtrans, rtrans
        log.info("exabgp.api.connected")
        self.on_connect()
        self._reading = asyncio.create_task(self._read(reader, wtrans), name="exabgp-api-read")

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.WriteTransport) -> None:
        """ExaBGP's lines, a pipe-full at a time (no await per line), to on_line one by one."""
        tail = b""
        try:
            while chunk := await reader.read(1 << 18):
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                for raw in lines:
                    self.on_line(raw.decode(errors="replace") + "\n")
                if len(lines) > 1 and self.read_pause:
                    await self._pause_reading()
            if tail:
                self.on_line(tail.decode(errors="replace"))
        except ConnectionError:
            pass
        finally:
            if self.writer is writer:
                self._detach()

    async def _pause_reading(self) -> None:
        """During a burst, let ExaBGP write a few lines before the next wake-up: woken per line,
        the loop costs more than the line does and takes the CPU from ExaBGP (10k routes in
        0.79 s instead of 0.89 s; a lone line is still read at once)."""
        transport = self._rtrans
        if transport is None:
            return
        transport.pause_reading()
        try:
            await asyncio.sleep(self.read_pause)
        finally:
            if not transport.is_closing():
                transport.resume_reading()

    def _detach(self) -> None:
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        self._reading = None
        for t in (self.writer, self._rtrans):
            if t is not None:
                t.close()
        self.writer = self._rtrans = None

    def send(self, lines: list[str]) -> bool:
        """Queue commands for ExaBGP; False if no API process is connected right now."""
        if not lines:
            return True
        if self.writer is None:
            return False
        self.writer.write("".join(f"{line}\n" for line in lines).encode())
        for line in lines:
            log.debug("exabgp.command %s", line)
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._accepting:
            self._accepting.cancel()
        if self._listener:
            self._listener.close()
        self._detach()
