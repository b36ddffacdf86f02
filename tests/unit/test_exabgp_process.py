"""bgp.process.ExaBGP with a stand-in for ExaBGP that treats its API process the way ExaBGP 5 does:
spawns `run` with pipes on stdin/stdout, writes JSON lines, reads commands, respawns a dead
helper (closing its pipes), and exits when told. No root, no network."""
import asyncio
import time
import sys

from bgp.process import ExaBGP, api_command
from tests.conftest import ROOT

FAKE = f"""#!{sys.executable}
import re, subprocess, sys, time
conf = open(sys.argv[2]).read()
run = re.search(r"run (.*);", conf).group(1).split()
log = open(sys.argv[2] + ".log", "a", buffering=1)
for gen in range(2):
    child = subprocess.Popen(run, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd={ROOT!r})
    log.write(f"child {{child.pid}}\\n")
    child.stdin.write(b'{{"type": "state", "gen": %d}}\\n' % gen)
    child.stdin.flush()
    log.write("command " + child.stdout.readline().decode())
    child.kill()  # as ExaBGP does with a helper it replaces: kill it, drop its pipes
    child.wait()
    child.stdin.close()
    child.stdout.close()
sys.exit(3)
"""


def test_api_child_hands_exabgps_pipes_to_the_speaker_and_survives_respawns(tmp_path):
    fake = tmp_path / "fake-exabgp"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    conf = f"process podbgp {{\n    run {' '.join(api_command(str(tmp_path / 'api.sock')))};\n}}\n"
    lines, connects, exits = [], [], []

    async def scenario():
        got = asyncio.Queue()
        bgp = ExaBGP(str(tmp_path), str(fake), lambda line: (lines.append(line), got.put_nowait(line)),
                     lambda: connects.append(1), exits.append)
        await bgp.start(conf)
        try:
            for want in ('"gen": 0', '"gen": 1', '"gen": 0'):  # child respawned, then ExaBGP restarted
                line = await asyncio.wait_for(got.get(), 10)
                assert want in line and line.endswith("\n")
                assert bgp.send([f"announce after {want}"])
            await asyncio.sleep(0.2)
        finally:
            await bgp.stop()
        return bgp

    bgp = asyncio.run(scenario())
    assert len(connects) >= 3 and exits == [3] and bgp.restarts == 1
    log = (tmp_path / "exabgp.conf.log").read_text().splitlines()
    assert [x for x in log if x.startswith("command")][:3] == [
        'command announce after "gen": 0', 'command announce after "gen": 1', 'command announce after "gen": 0']
    for pid in (int(x.split()[1]) for x in log if x.startswith("child")):
        # the parent-death signal is delivered as ExaBGP exits; give it a deadline, not zero time
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), f"API child {pid} outlived its ExaBGP by more than 5 s"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
