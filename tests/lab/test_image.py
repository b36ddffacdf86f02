"""Issue 7: podbgp's container image. Built with buildah and no registry (lab.image); one lab node's
speaker runs from it as its DaemonSet Pod would, and Pods still reach Pods across nodes."""
import os
import subprocess
import sys
import uuid

import pytest

from lab import demo, runner
from lab import image as image_mod
from tests.lab.conftest import poll

IMAGE = os.environ.get("PODBGP_TEST_IMAGE", image_mod.DEFAULT_IMAGE)
pytestmark = pytest.mark.timeout(1200)  # a cold build installs buildah and debootstraps the base


@pytest.fixture(scope="module")
def image():
    """The image, built if missing or stale (buildah and debootstrap installed when missing)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    image_mod.ensure(IMAGE)
    return IMAGE


@pytest.fixture
def container(image):
    """run(argv) -> CompletedProcess inside a fresh working container of the image; removed after."""
    name = f"pbi{uuid.uuid4().hex[:6]}-check"
    setup, _ = image_mod.container_argv(image, name, [], {}, [])
    subprocess.run(setup, check=True, capture_output=True, timeout=120)
    try:
        yield lambda argv: subprocess.run(image_mod.container_argv(image, name, [], {}, argv)[1],
                                          capture_output=True, text=True, timeout=60)
    finally:
        image_mod.remove_container(name)


def test_image_runs_podbgp_and_exabgp_from_the_venv_on_debian_python(container):
    host = subprocess.run([sys.executable, "-m", "speaker.cli", "--version"], capture_output=True, text=True, check=True)
    inside = container(["podbgp", "--version"])
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout == host.stdout and inside.stdout.startswith("podbgp ")  # the checkout's podbgp
    exa = container(["exabgp", "version"])  # ExaBGP 5's CLI has no --version flag: `exabgp version` says it
    assert exa.returncode == 0 and "ExaBGP : 5.0.15" in exa.stdout and "/opt/podbgp/" in exa.stdout, exa.stdout
    py = container(["sh", "-c", "for c in podbgp exabgp ip; do command -v $c; done; python3 --version"])
    assert py.stdout.split() == ["/opt/podbgp/bin/podbgp", "/opt/podbgp/bin/exabgp", "/usr/sbin/ip",
                                 "Python", py.stdout.split()[-1]] and py.stdout.split()[-1].startswith("3.11.")


def test_image_holds_no_compiler_pip_or_apt_lists(container):
    found = container(["sh", "-c", "for c in gcc cc pip pip3; do command -v $c; done; ls /opt/podbgp/bin | grep -x 'pip.*';"
                                   "ls -A /var/lib/apt/lists /root/.cache 2>/dev/null; true"])
    assert found.returncode == 0 and found.stdout.split() == ["/var/lib/apt/lists:"], found.stdout


def test_image_ships_no_lab_and_nothing_the_speaker_never_imports(container):
    site = container(["sh", "-c", "echo /opt/podbgp/lib/python3*/site-packages"]).stdout.strip()
    cut = image_mod.pruned()
    assert "kubernetes/aio" in cut and "kubernetes/client/api" in cut
    present = container(["sh", "-c", f"cd {site} && for p in lab {' '.join(cut)}; do [ ! -e $p ] || echo $p; done"])
    assert present.returncode == 0 and present.stdout == "", present.stdout  # cut, or never shipped
    kept = container(["sh", "-c", f"cd {site} && ls -d speaker bgp reconciler hostroute kubernetes/config "
                                  "kubernetes/client/models/__init__.py pydantic"])
    assert kept.returncode == 0, kept.stderr
    helptext = container(["podbgp", "--help"])
    commands = helptext.stdout.split("Commands:")[1].split()
    assert helptext.returncode == 0 and "host-route" in commands and "speaker" in commands and "lab" not in commands
    # what the speaker imports and calls at run time still works after the cuts (the build ran it too)
    check = container(["python3", "-c", image_mod.RUNTIME_CHECK])
    assert check.returncode == 0 and check.stdout == "runtime check: ok\n", check.stderr[-2000:]


def test_image_is_at_most_200_mb(image):
    assert image_mod.size_bytes(image) <= 200_000_000


def test_unchanged_inputs_build_nothing(image):
    assert image_mod.build(image) is False


def _effective_caps(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)


def test_a_node_speaker_from_the_image_routes_pods_like_the_others(image):
    name = f"pbi{uuid.uuid4().hex[:6]}"
    state = runner.up(runner.DEFAULT_TOPOLOGY, name=name, speaker_images={"node2": image})
    try:
        demo.wait_routes(state, timeout=90)
        ok, total, lines = demo.matrix(state)
        assert total > 0 and ok == total, "\n".join(lines)
        exa = {n: runner.speaker_status(state, n)["exabgpPid"] for n in ("node1", "node2")}
        # node2's ExaBGP runs in the container: another root holding /opt/podbgp, another mount namespace
        root2, root1 = os.stat(f"/proc/{exa['node2']}/root/"), os.stat(f"/proc/{exa['node1']}/root/")
        assert (root2.st_dev, root2.st_ino) != (root1.st_dev, root1.st_ino) == (os.stat("/").st_dev, os.stat("/").st_ino)
        assert os.path.exists(f"/proc/{exa['node2']}/root/opt/podbgp/bin/exabgp")
        ns = image_mod.mount_namespace(exa["node2"])
        assert ns and ns != image_mod.mount_namespace(os.getpid())
        # ... started by the runner's `buildah run`, whose command is node2's speaker
        speaker = image_mod.command_pid(state.pids["speaker:node2"])
        assert speaker and image_mod.mount_namespace(speaker) == ns
        assert _effective_caps(speaker) == 1 << 12 | 1 << 10  # NET_ADMIN and NET_BIND_SERVICE, as deploy/daemonset.yaml grants
    finally:
        runner.down(name)
    poll(lambda: not image_mod.processes_in(ns), timeout=10, interval=0.1)
    left = subprocess.run(["buildah", "containers", "--format", "{{.ContainerName}}"], capture_output=True, text=True,
                          check=True).stdout.split()
    assert not [c for c in left if c.startswith(f"{name}-")]
