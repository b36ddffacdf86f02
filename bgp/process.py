"""ExaBGP as a supervised child process, and the channel to its API process. asyncio."""
from __future__ import annotations

import asyncio
import collections
import ctypes
import fcntl
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable

from . import render
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


# what ExaBGP 5 logs (category configuration / reactor, level INFO) when a SIGUSR1 has been acted on
RELOADED = "loaded new configuration successfully"
RELOAD_REFUSED = "could not load/reload configuration"
_MD5 = re.compile(r"""(md5[-_]password['"]?\s*[:=]?\s*)("[^"]*"|'[^']*'|[^\s;,}]+)""", re.IGNORECASE)


def redact(line: str) -> str:
    """An ExaBGP log line with any MD5 key in it replaced."""
    return _MD5.sub(r"\1<redacted>", line) if "md5" in line.lower() else line


def write_private(path: str, text: str) -> None:
    """Write a file only its owner can read (it may hold TCP MD5 keys), atomically."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file of that name may have had another mode
        with os.fdopen(fd, "w") as f:
            fd = -1
            f.write(text)
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)


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

    A new configuration is reloaded, not restarted (see reconfigure): ExaBGP re-reads the file on
    SIGUSR1 and keeps every session whose neighbor section is unchanged.
    """

    read_pause = 0.001  # seconds between reads while lines keep coming (see _pause_reading)
    reload_timeout = 3.0  # seconds for ExaBGP to say it acted on one SIGUSR1
    reload_attempts = 5  # SIGUSR1s without an answer before ExaBGP is restarted instead

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
        self._loaded: str | None = None  # the text the running ExaBGP has read
        self._ready = asyncio.Event()  # its API process connected: signal handlers set, file read
        self._reloading: asyncio.Task | None = None
        self._answer: asyncio.Future[bool] | None = None
        self._recent: collections.deque[str] = collections.deque(maxlen=8)
        self.reloads = 0
        self.reload_errors = 0

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

    def reconfigure(self, config_text: str) -> str:
        """Use a new configuration. Returns what happens:

        "unchanged": the same text; nothing to do.
        "reload": ExaBGP re-reads it (SIGUSR1, repeated until ExaBGP says it did; see _reload):
            unchanged neighbors keep their sessions, removed ones close, new ones connect,
            changed ones are re-established.
        "restart": the global part changed (the API process definition, which a reload leaves
            running as it was): ExaBGP is stopped and the supervisor starts it with the new text.
        "pending": ExaBGP is not running now; its next start reads the new text.
        """
        if config_text == self._config:
            return "unchanged"
        old, self._config = self._config, config_text
        if self.proc is None or self.proc.returncode is not None:
            return "pending"
        if render.global_part(config_text) != render.global_part(old):
            self.proc.terminate()
            return "restart"
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._reload(), name="exabgp-reload")
        return "reload"

    async def _reload(self) -> None:
        """SIGUSR1 until the running ExaBGP has read self._config. ExaBGP drops a SIGUSR1 that
        arrives while it still has updates queued, or while it handles another signal, without a
        word, so each one waits for its answer in the log and is sent again without one."""
        unanswered = 0
        while self._config != self._loaded:
            proc = self.proc
            if proc is None or proc.returncode is not None or self._stopping:
                return  # its next start reads the file
            if not self._ready.is_set():
                await self._ready.wait()  # before its handler is set, SIGUSR1 would end ExaBGP
                continue
            text = self._config
            self._write_config()
            self._answer = asyncio.get_running_loop().create_future()
            proc.send_signal(signal.SIGUSR1)
            try:
                ok = await asyncio.wait_for(asyncio.shield(self._answer), self.reload_timeout)
            except asyncio.TimeoutError:
                unanswered += 1
                if unanswered < self.reload_attempts:
                    log.info("exabgp.reload.unanswered pid=%d attempt=%d sending again", proc.pid, unanswered)
                    continue
                log.warning("exabgp.reload.unanswered pid=%d attempts=%d restarting instead", proc.pid, unanswered)
                proc.terminate()
                return
            unanswered = 0
            self._loaded = text
            if ok:
                self.reloads += 1
                log.info("exabgp.reload pid=%d config=%s", proc.pid, self.conf_path)
            else:
                # ExaBGP keeps running with what it had; render() output is validated by tests
                # against the real parser, so this is a bug worth a loud line
                await asyncio.sleep(0.1)  # the reason is logged on the lines after the refusal
                self.reload_errors += 1
                log.error("exabgp.reload.refused pid=%d %s", proc.pid, " | ".join(self._recent))

    def _on_log(self, text: str) -> None:
        """One line of ExaBGP's own log (stdout): an answer to a reload, else debug."""
        text = redact(text)
        self._recent.append(text)
        answer = self._answer
        if answer is not None and not answer.done():
            if RELOADED in text:
                answer.set_result(True)
            elif RELOAD_REFUSED in text:
                self._recent.clear()
                answer.set_result(False)
        log.debug("exabgp.log %s", text)

    def _write_config(self) -> None:
        write_private(self.conf_path, self._config)

    async def _spawn(self) -> None:
        self._ready.clear()
        self._write_config()
        self._loaded = self._config
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
                self._on_log(raw.decode(errors="replace").rstrip())
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
        self._ready.set()
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
        if self._reloading:
            self._reloading.cancel()
        if self._accepting:
            self._accepting.cancel()
        if self._listener:
            self._listener.close()
        self._detach()
