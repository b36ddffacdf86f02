"""bgp.process.ExaBGP.reconfigure with a stand-in for ExaBGP 5 that handles SIGUSR1 the way the
real one does (reactor/loop.py): re-reads the file and logs "loaded new configuration
successfully", or "could not load/reload configuration"; a signal that arrives while updates
are queued is dropped without a word; before its handler is set a SIGUSR1 ends the process."""
import asyncio
import os
import stat
import sys

import pytest

from bgp.process import ExaBGP, api_command, redact
from tests.conftest import ROOT

FAKE = f"""#!{sys.executable}
import os, re, signal, subprocess, sys, time
mode = os.environ.get("PODBGP_FAKE_MODE", "")
conf_path = sys.argv[2]
log = open(conf_path + ".log", "a", buffering=1)
time.sleep(0.3)  # start-up: a SIGUSR1 now would end the process (no handler yet)
signals = []
def usr1(signum, frame):
    signals.append(signum)
signal.signal(signal.SIGUSR1, usr1)
conf = open(conf_path).read()
log.write("loaded " + re.findall(r"neighbor (\\S+) {{", conf).__repr__() + "\\n")
run = re.search(r"run (.*);", conf).group(1).split()
child = subprocess.Popen(run, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd={ROOT!r})
seen = 0
while True:
    time.sleep(0.02)
    while signals:
        signals.pop()
        seen += 1
        log.write(f"signal {{seen}}\\n")
        if mode == "ignore" or (mode == "drop-first" and seen == 1):
            continue  # "did we complete the run of updates caused by the last SIGUSR1?": no
        conf = open(conf_path).read()
        if "broken" in conf:
            print("12:00:00 | 1 | configuration | could not load/reload configuration", flush=True)
            print("12:00:00 | 1 | configuration | syntax error in section neighbor line 7: broken", flush=True)
            continue
        log.write("loaded " + re.findall(r"neighbor (\\S+) {{", conf).__repr__() + "\\n")
        print("12:00:00 | 1 | reactor | loaded new configuration successfully", flush=True)
"""

PROCESS = "process podbgp {{\n    run {run};\n    encoder json;\n}}\n"


def conf(tmp_path, *neighbors, sock="api.sock", extra=""):
    text = PROCESS.format(run=" ".join(api_command(str(tmp_path / sock))))
    for n in neighbors:
        text += f"\nneighbor {n} {{\n    hold-time 9;{extra}\n}}\n"
    return text


def loaded(tmp_path):
    path = tmp_path / "exabgp.conf.log"
    return [x for x in path.read_text().splitlines() if x.startswith("loaded")] if path.exists() else []


def signals(tmp_path):
    return [x for x in (tmp_path / "exabgp.conf.log").read_text().splitlines() if x.startswith("signal")]


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake-exabgp"
    path.write_text(FAKE)
    path.chmod(0o755)
    return str(path)


async def started(tmp_path, fake, text):
    connects = asyncio.Queue()
    exits = []
    bgp = ExaBGP(str(tmp_path), fake, lambda line: None, lambda: connects.put_nowait(1), exits.append)
    bgp.reload_timeout = 0.5
    await bgp.start(text)
    return bgp, connects, exits


async def until(check, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not within the deadline")
        await asyncio.sleep(0.02)


def test_a_neighbor_change_is_a_reload_of_the_running_exabgp(tmp_path, fake):
    async def body():
        bgp, connects, exits = await started(tmp_path, fake, conf(tmp_path, "10.0.0.1"))
        try:
            await asyncio.wait_for(connects.get(), 10)
            pid = bgp.pid
            assert bgp.reconfigure(conf(tmp_path, "10.0.0.1")) == "unchanged"
            assert bgp.reconfigure(conf(tmp_path, "10.0.0.1", "10.0.0.2")) == "reload"
            await until(lambda: bgp.reloads == 1)
            assert bgp.pid == pid and bgp.restarts == 0 and exits == []
            assert loaded(tmp_path) == ["loaded ['10.0.0.1']", "loaded ['10.0.0.1', '10.0.0.2']"]
            assert stat.S_IMODE(os.stat(tmp_path / "exabgp.conf").st_mode) == 0o600  # it may hold MD5 keys
        finally:
            await bgp.stop()
    asyncio.run(body())


def test_a_dropped_signal_is_sent_again(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("PODBGP_FAKE_MODE", "drop-first")

    async def body():
        bgp, connects, _ = await started(tmp_path, fake, conf(tmp_path, "10.0.0.1"))
        try:
            await asyncio.wait_for(connects.get(), 10)
            assert bgp.reconfigure(conf(tmp_path, "10.0.0.2")) == "reload"
            await until(lambda: bgp.reloads == 1)
            assert signals(tmp_path) == ["signal 1", "signal 2"] and bgp.restarts == 0
            assert loaded(tmp_path)[-1] == "loaded ['10.0.0.2']"
        finally:
            await bgp.stop()
    asyncio.run(body())


def test_a_reload_asked_during_start_up_waits_for_the_signal_handler(tmp_path, fake):
    async def body():
        bgp, connects, exits = await started(tmp_path, fake, conf(tmp_path, "10.0.0.1"))
        try:
            await asyncio.sleep(0.05)  # ExaBGP is starting: SIGUSR1 would end it now
            assert bgp.reconfigure(conf(tmp_path, "10.0.0.3")) == "reload"
            await until(lambda: bgp.reloads == 1)
            assert exits == [] and bgp.restarts == 0
            assert loaded(tmp_path)[-1] == "loaded ['10.0.0.3']"
        finally:
            await bgp.stop()
    asyncio.run(body())


def test_the_api_process_definition_changes_only_with_a_restart(tmp_path, fake):
    async def body():
        bgp, connects, exits = await started(tmp_path, fake, conf(tmp_path, "10.0.0.1"))
        try:
            await asyncio.wait_for(connects.get(), 10)
            pid = bgp.pid
            assert bgp.reconfigure(conf(tmp_path, "10.0.0.1", sock="api.sock ")) == "restart"
            await asyncio.wait_for(connects.get(), 15)
            assert bgp.restarts == 1 and bgp.pid != pid and bgp.reloads == 0
        finally:
            await bgp.stop()
    asyncio.run(body())


def test_a_refused_reload_is_counted_and_exabgp_keeps_running(tmp_path, fake, caplog):
    async def body():
        bgp, connects, exits = await started(tmp_path, fake, conf(tmp_path, "10.0.0.1"))
        try:
            await asyncio.wait_for(connects.get(), 10)
            pid = bgp.pid
            assert bgp.reconfigure(conf(tmp_path, "10.0.0.1", extra=" broken;")) == "reload"
            await until(lambda: bgp.reload_errors == 1)
            assert bgp.pid == pid and bgp.reloads == 0 and exits == []
        finally:
            await bgp.stop()
    asyncio.run(body())
    refused = [r.getMessage() for r in caplog.records if "exabgp.reload.refused" in r.getMessage()]
    assert len(refused) == 1 and "syntax error in section neighbor line 7: broken" in refused[0]


def test_an_exabgp_that_never_answers_is_restarted_instead(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("PODBGP_FAKE_MODE", "ignore")

    async def body():
        bgp, connects, exits = await started(tmp_path, fake, conf(tmp_path, "10.0.0.1"))
        bgp.reload_timeout, bgp.reload_attempts = 0.2, 3
        try:
            await asyncio.wait_for(connects.get(), 10)
            assert bgp.reconfigure(conf(tmp_path, "10.0.0.4")) == "reload"
            await asyncio.wait_for(connects.get(), 15)  # a new ExaBGP read the new file at its start
            assert bgp.restarts == 1 and len(signals(tmp_path)) == 3
            assert loaded(tmp_path)[-1] == "loaded ['10.0.0.4']"
        finally:
            await bgp.stop()
    asyncio.run(body())


def test_md5_keys_are_redacted_from_exabgps_log_lines():
    assert redact('line 9: md5-password "aHVudGVyMg==";') == "line 9: md5-password <redacted>;"
    assert redact("{'md5-password': 'hunter2', 'md5-base64': True}") == \
        "{'md5-password': <redacted>, 'md5-base64': True}"
    assert redact("neighbor 10.0.0.1 up") == "neighbor 10.0.0.1 up"
