"""ExaBGP as a supervised child process, and the channel to its API process. asyncio."""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable

from .types import BgpError

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


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
    """Runs `exabgp server CONF`, restarts it with backoff when it dies, relays API lines.

    on_line(line) gets every line ExaBGP writes to its API process; on_connect() fires when a
    (new) API process connects, on_exit(rc) when ExaBGP died unexpectedly.
    """

    def __init__(self, runtime_dir: str, exabgp: str, on_line: Callable[[str], None],
                 on_connect: Callable[[], None], on_exit: Callable[[int], None]) -> None:
        self.runtime_dir = runtime_dir
        self.exabgp = find_exabgp(exabgp)
        self.on_line, self.on_connect, self.on_exit = on_line, on_connect, on_exit
        self.conf_path = os.path.join(runtime_dir, "exabgp.conf")
        self.sock_path = os.path.join(runtime_dir, "api.sock")
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.AbstractServer | None = None
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
        self.server = await asyncio.start_unix_server(self._accept, path=self.sock_path, limit=1 << 24)
        self._config = config_text
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = writer
        log.info("exabgp.api.connected")
        self.on_connect()
        try:
            async for raw in reader:
                self.on_line(raw.decode(errors="replace"))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if self.writer is writer:
                self.writer = None
            writer.close()

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
        if self.server:
            self.server.close()
        if self.writer:
            self.writer.close()
