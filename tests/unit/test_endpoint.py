"""The speaker's two listeners (speaker.endpoint): which path answers on which, the public one's 404
line, the Unix socket's mode and life (a stale one replaced, removed at close), and how `podbgp
status` finds the socket."""
import asyncio
import json
import os
import socket
import stat

import pytest
from click.testing import CliRunner

from speaker import endpoint
from speaker.cli import main
from speaker.config import ConfigError, runtime_dir
from tests.unit.test_explain_core import make, up

async def get(connect, path):
    reader, writer = await connect()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0].removeprefix("HTTP/1.1 "), body


@pytest.mark.parametrize("path, public, local", [
    ("/metrics", "200 OK", "200 OK"),
    ("/healthz", "200 OK", "200 OK"),
    ("/livez", "200 OK", "200 OK"),
    ("/readyz", "200 OK", "200 OK"),
    ("/status", "404 Not Found", "200 OK"),
    ("/explain?prefix=10.42.2.0/24", "404 Not Found", "200 OK"),
    ("/explain", "404 Not Found", "400 Bad Request"),  # the public side says nothing of the query
    ("/", "404 Not Found", "404 Not Found"),
    ("/status/../metrics", "404 Not Found", "404 Not Found"),
])
def test_which_path_answers_on_which_listener(tmp_path, path, public, local):
    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.2.0/24", "192.168.50.12"))
        sock = str(tmp_path / "status.sock")
        server = await endpoint.serve(sp, "127.0.0.1:0", sock)
        try:
            host, port = server.public.sockets[0].getsockname()[:2]
            got_public, public_body = await get(lambda: asyncio.open_connection(host, port), path)
            got_local, local_body = await get(lambda: asyncio.open_unix_connection(sock), path)
        finally:
            server.close()
            await server.wait_closed()
        assert (got_public, got_local) == (public, local)
        if public.startswith("404"):  # one line, naming where /status and /explain are and the command
            assert public_body == endpoint.NOT_HERE and public_body.count(b"\n") == 1
            assert b"Unix socket" in public_body and b"`podbgp status` on the node" in public_body
        if path == "/status":
            assert json.loads(local_body)["node"] == "node1" and b"node1" not in public_body
        await sp.bgp.stop()
    asyncio.run(body())


def test_the_socket_is_roots_alone_replaces_a_stale_one_and_goes_at_close(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        sock = str(tmp_path / "run" / "status.sock")
        os.makedirs(os.path.dirname(sock))
        stale = socket.socket(socket.AF_UNIX)  # a killed speaker's socket: bound, nobody listening
        stale.bind(sock)
        stale.close()
        os.chmod(sock, 0o666)  # bind() would fail with EADDRINUSE unless it is removed first
        server = await endpoint.serve(sp, "127.0.0.1:0", sock)
        st = os.lstat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
        assert (await get(lambda: asyncio.open_unix_connection(sock), "/healthz"))[0] == "200 OK"
        server.close()
        await server.wait_closed()
        assert not os.path.exists(sock)
        await sp.bgp.stop()
    asyncio.run(body())


def test_a_successors_socket_is_not_removed_and_a_file_in_the_way_is_refused(tmp_path):
    async def body():
        sp, _ = make(tmp_path)
        sock = str(tmp_path / "status.sock")
        first = await endpoint.serve(sp, "127.0.0.1:0", sock)
        second = await endpoint.serve(sp, "127.0.0.1:0", sock)  # a new speaker while the old one stops
        first.close()
        await first.wait_closed()
        assert (await get(lambda: asyncio.open_unix_connection(sock), "/status"))[0] == "200 OK"
        second.close()
        await second.wait_closed()
        assert not os.path.exists(sock)
        with open(sock, "w") as f:
            f.write("not a socket")
        with pytest.raises(OSError, match="exists and is not a socket"):
            await endpoint.serve(sp, "127.0.0.1:0", sock)
        assert open(sock).read() == "not a socket"
        await sp.bgp.stop()
    asyncio.run(body())


def test_the_command_finds_the_socket_and_refuses_address(tmp_path, monkeypatch):
    monkeypatch.delenv("PODBGP_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("PODBGP_STATUS_SOCKET", raising=False)
    conf = tmp_path / "podbgp.yaml"
    conf.write_text("runtimeDir: /var/run/elsewhere\n")  # no nodeName: the node's shell has none
    assert runtime_dir(None, env={}) == "/run/podbgp"
    assert runtime_dir(str(conf), env={}) == "/var/run/elsewhere"
    assert runtime_dir(str(conf), env={"PODBGP_RUNTIME_DIR": "/x"}) == "/x"  # as load(): the environment wins
    with pytest.raises(ConfigError, match="cannot read"):
        runtime_dir(str(tmp_path / "none.yaml"), env={})
    cli = CliRunner()
    res = cli.invoke(main, ["status"])
    assert res.exit_code == 1 and res.output.startswith("Error: no speaker answers on /run/podbgp/status.sock: ")
    res = cli.invoke(main, ["status", "--config", str(conf)])
    assert res.output.startswith("Error: no speaker answers on /var/run/elsewhere/status.sock: ")
    res = cli.invoke(main, ["explain", "10.42.2.0/24", "--address", "127.0.0.1:9469"])
    assert res.exit_code == 2 and "served only on the node's Unix socket" in res.output


def test_the_command_reads_status_through_the_socket(tmp_path):
    sock = str(tmp_path / "status.sock")

    async def body():
        sp, _ = make(tmp_path)
        await up(sp, ("10.42.2.0/24", "192.168.50.12"))
        server = await endpoint.serve_local(sp, sock)
        try:
            res = await asyncio.to_thread(CliRunner().invoke, main, ["status", "--json", "--socket", sock])
        finally:
            server.close()
            await server.wait_closed()
        await sp.bgp.stop()
        return res
    res = asyncio.run(body())
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["node"] == "node1" and {p["address"] for p in doc["peers"]} == {"192.168.50.1", "192.168.50.2"}
