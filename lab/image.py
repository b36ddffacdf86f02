"""The podbgp container image, built with buildah and no registry; and a node's speaker run from it.

Build (`make image`, or `python -m lab.image build --image localhost/podbgp:dev`), as root:
  1. buildah and, for the base, debootstrap are installed with apt-get when missing;
  2. the base: unless BASE_IMAGE is given, `debootstrap --variant=minbase bookworm` with the
     Containerfile's DEB_PACKAGES included, trimmed and committed as localhost/podbgp-base:bookworm
     (kept in buildah's storage: later builds skip the debootstrap);
  3. a wheelhouse on the host: `pip wheel` of a copy of the package's files and every dependency,
     pinned to the versions installed in the running environment, for this CPython 3.11;
  4. `buildah build --isolation chroot` of the Containerfile with the wheelhouse as its context.
The image carries the sha256 of its inputs (Containerfile, the package's source files, the pinned
versions, the base image's ID) as the label io.podbgp.image.inputs; when that matches, nothing
is rebuilt. Caches live in .cache/image/ of the checkout.

Running a node's speaker from the image, as a DaemonSet Pod would (host network, NET_ADMIN only):
`container_argv` gives the argv that creates a working container and the argv that runs a
command in it; the runner runs the latter under `ip netns exec NS` and keeps its PID.

Stopping by PID (buildah 1.28, chroot isolation, seen in a lab with node2's speaker in the image):
- SIGTERM to `buildah run` is no clean stop: buildah SIGKILLs the command ("subprocess exited on
  killed"), so the speaker never stops ExaBGP; ExaBGP gets SIGTERM from its PR_SET_PDEATHSIG and
  exits a second or so later.
- SIGTERM to the process group of `buildah run` (started with start_new_session) reaches the
  speaker too, but buildah kills it halfway through its stop.
- SIGTERM to the command itself is the clean stop: the speaker stops ExaBGP and exits, then
  `buildah run` exits (about 0.3 s; it passes on the command's exit status). There is no PID namespace, so the command's
  PID is a host PID: the child of `buildah-chroot-exec` under the run (`command_pid`).
`stop(run_pid)` does that, falls back to SIGKILL, and returns once nothing runs in the container's
mount namespace any more. Remove the working container afterwards (`remove_container`); buildah
removes one that a run still uses without complaint, and that run then panics on exit.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from importlib import metadata

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTAINERFILE = os.path.join(ROOT, "Containerfile")
CACHE_DIR = os.environ.get("PODBGP_IMAGE_CACHE", os.path.join(ROOT, ".cache", "image"))
DEFAULT_IMAGE = "localhost/podbgp:dev"
BASE_NAME = "localhost/podbgp-base:bookworm"
SUITE = "bookworm"
MIRROR = os.environ.get("PODBGP_DEBIAN_MIRROR", "http://deb.debian.org/debian")
INPUTS_LABEL = "io.podbgp.image.inputs"
BASE_LABEL = "io.podbgp.base.packages"
# Symlinks of the image's own tree (usrmerge, /var/run). `buildah run --isolation chroot` leaves
# out a mount whose destination passes through one of them, without a word (runc would resolve it
# inside the root); a DaemonSet mounts its token at /var/run/secrets/..., so destinations are
# resolved here.
IMAGE_SYMLINKS = {"/var/run": "/run", "/var/lock": "/run/lock", "/bin": "/usr/bin", "/sbin": "/usr/sbin",
                  "/lib": "/usr/lib", "/lib64": "/usr/lib64"}
# What deploy/daemonset.yaml grants: drop ALL, add NET_ADMIN (routes) and NET_BIND_SERVICE
# (ExaBGP listening on :179). Callers that have the Pod's securityContext pass its list instead.
CAPABILITIES = ("net_admin", "net_bind_service")
# Every Linux capability: buildah run's `--cap-drop ALL` also drops what --cap-add adds (1.28),
# so the ones not wanted are dropped by name.
ALL_CAPABILITIES = (
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable "
    "net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio sys_chroot "
    "sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time sys_tty_config mknod lease "
    "audit_write audit_control setfcap mac_override mac_admin syslog wake_alarm block_suspend audit_read "
    "perfmon bpf checkpoint_restore").split()
NOT_PINNED = {"podbgp", "setuptools", "wheel"}
# Run in the image after the Containerfile's cuts (as check/runtime.py of the build context): every
# module podbgp ships, and the Kubernetes client's calls the speaker makes (in-cluster and
# kubeconfig loading, a GET and a PATCH through speaker.kubeclient to a closed port, ApiException
# from a response, iter_resp_lines). A missing module or name anywhere on that path fails the build.
RUNTIME_CHECK = r'''
import importlib, os, pkgutil, shutil, tempfile

import certifi

from importlib.metadata import distribution

for top in distribution("podbgp").read_text("top_level.txt").split():  # the packages the wheel ships
    for info in pkgutil.walk_packages(importlib.import_module(top).__path__, top + "."):
        importlib.import_module(info.name)
from kubernetes.client.exceptions import ApiException
from kubernetes.config import incluster_config
from kubernetes.watch.watch import iter_resp_lines

from speaker.kubeclient import KubeClient

d = tempfile.mkdtemp()
shutil.copy(certifi.where(), os.path.join(d, "ca.crt"))
for name, text in (("token", "t"), ("kubeconfig", """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")):
    with open(os.path.join(d, name), "w") as f:
        f.write(text)
incluster_config.SERVICE_TOKEN_FILENAME = os.path.join(d, "token")
incluster_config.SERVICE_CERT_FILENAME = os.path.join(d, "ca.crt")
os.environ.update(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT="1")


def refused(call) -> None:
    """call() may fail by the refused connection only, never by a missing module or name."""
    try:
        call()
    except Exception as exc:
        while exc is not None:
            if isinstance(exc, (ImportError, AttributeError, NameError)):
                raise exc
            exc = exc.__cause__ or exc.__context__


try:
    refused(lambda: list(KubeClient(None, read_timeout=1).list("/api/v1/nodes")))
    refused(lambda: KubeClient(os.path.join(d, "kubeconfig"), read_timeout=1).patch_node_status("n", {"status": {}}))
finally:
    shutil.rmtree(d)


class Response:
    status, reason, data, headers = 403, "Forbidden", b"{}", {}


try:
    ApiException.from_response(http_resp=Response(), body="{}", data=None)
except ApiException as exc:
    assert exc.status == 403, exc
assert callable(iter_resp_lines)
print("runtime check: ok")
'''
TRIM = ("var/lib/apt/lists", "var/cache/apt", "var/log", "usr/share/man", "usr/share/info", "usr/share/locale")


class ImageError(Exception):
    pass


def _run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise ImageError(f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc


def install_tools(*tools: str) -> None:
    """apt-get install the Debian packages of the same names when their commands are missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ImageError(f"missing {', '.join(missing)} (run as root to install them)")
    log.info("image.tools.install packages=%s", ",".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update", "-qq"], env=env, timeout=600)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, timeout=1200)


# ---- what goes in ----------------------------------------------------------------------------

def deb_packages() -> list[str]:
    """The Containerfile's ARG DEB_PACKAGES: what the base must hold for a build without network."""
    with open(CONTAINERFILE) as f:
        m = re.search(r'^ARG DEB_PACKAGES="([^"]*)"', f.read(), re.M)
    if not m:
        raise ImageError(f"{CONTAINERFILE} has no ARG DEB_PACKAGES=\"...\" line")
    return m.group(1).split()


def pruned() -> list[str]:
    """The paths under site-packages the Containerfile deletes after the install (its `rm -rf`
    list, comment lines left out)."""
    with open(CONTAINERFILE) as f:
        m = re.search(r"^\s*rm -rf \\\n(.*?)^\s*; \\$", f.read(), re.M | re.S)
    if not m:
        raise ImageError(f"{CONTAINERFILE} has no `rm -rf \\ ... ; \\` list")
    return [p for line in m.group(1).splitlines() if not line.lstrip().startswith("#")
            for p in line.replace("\\", " ").split()]


def size_bytes(image: str) -> int:
    """The image's size as `buildah images` reports it (decimal units)."""
    text = _run(["buildah", "images", "--format", "{{.Size}}", image]).stdout.split("\n")[0].strip()
    m = re.fullmatch(r"([\d.]+)\s*([kMGT]?B)", text)
    if not m:
        raise ImageError(f"buildah images: cannot read the size {text!r} of {image}")
    return int(float(m.group(1)) * 1000 ** "BkMGT".index(m.group(2)[0]))


def source_files() -> list[str]:
    """Files the package is built from, relative to the checkout (tracked or new, not ignored)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    paths = ["pyproject.toml", "README.md", *packages]
    proc = _run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard", "-z", "--", *paths], check=False)
    if proc.returncode == 0:
        names = proc.stdout.split("\0")
    else:  # not a git checkout: walk the package directories
        names = paths[:2] + [os.path.relpath(os.path.join(d, f), ROOT) for p in packages
                             for d, _, fs in os.walk(os.path.join(ROOT, p)) for f in fs]
    return sorted(n for n in names if n and "__pycache__" not in n and os.path.isfile(os.path.join(ROOT, n)))


def pins() -> str:
    """name==version of every distribution in this environment (what the tests ran against)."""
    seen = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name and name not in NOT_PINNED:
            seen.setdefault(name, dist.version)
    return "".join(f"{n}=={v}\n" for n, v in sorted(seen.items()))


def inputs_hash(base_id: str, pinned: str, files: list[str]) -> str:
    h = hashlib.sha256()
    for label, data in (("base", base_id.encode()), ("pins", pinned.encode()), ("check", RUNTIME_CHECK.encode())):
        h.update(f"{label}\0{len(data)}\0".encode() + data)
    for name in ["Containerfile", *files]:
        with open(os.path.join(ROOT, name), "rb") as f:
            data = f.read()
        h.update(f"file\0{name}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


# ---- buildah storage -------------------------------------------------------------------------

def image_info(image: str) -> dict | None:
    """{"id": ..., "labels": {...}} of a local image, or None when there is none."""
    proc = _run(["buildah", "inspect", "--type", "image", "--format",
                 "{{.FromImageID}}\t{{range $k, $v := .OCIv1.Config.Labels}}{{$k}}={{$v}}\x1f{{end}}", image],
                check=False)
    if proc.returncode != 0:
        return None
    image_id, _, labels = proc.stdout.rstrip("\n").partition("\t")
    return {"id": image_id, "labels": dict(kv.split("=", 1) for kv in labels.split("\x1f") if "=" in kv)}


def ensure_base(packages: list[str]) -> str:
    """The debootstrap base (built when missing or holding other packages); returns its image ID."""
    want = " ".join(sorted(packages))
    info = image_info(BASE_NAME)
    if info and info["labels"].get(BASE_LABEL) == want:
        return info["id"]
    install_tools("debootstrap")
    rootfs = os.path.join(CACHE_DIR, "rootfs")
    debs = os.path.join(CACHE_DIR, "debs")
    shutil.rmtree(rootfs, ignore_errors=True)
    os.makedirs(debs, exist_ok=True)
    start = time.monotonic()
    log.info("image.base.debootstrap suite=%s packages=%s dir=%s", SUITE, want, rootfs)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(sorted(packages))}", f"--cache-dir={debs}",
          SUITE, rootfs, MIRROR], timeout=1800)
    try:
        _trim(rootfs)
        _commit_rootfs(rootfs, BASE_NAME, {BASE_LABEL: want})
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    log.info("image.base.built image=%s seconds=%.1f", BASE_NAME, time.monotonic() - start)
    return image_info(BASE_NAME)["id"]


def _trim(rootfs: str) -> None:
    """What no node needs: apt lists and caches, logs, man pages, locales, docs (copyrights stay)."""
    for rel in TRIM:
        d = os.path.join(rootfs, rel)
        for entry in os.listdir(d) if os.path.isdir(d) else ():
            p = os.path.join(d, entry)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
    for d, _, files in os.walk(os.path.join(rootfs, "usr/share/doc")):
        for f in files:
            if f != "copyright":
                os.unlink(os.path.join(d, f))


def _commit_rootfs(rootfs: str, name: str, labels: dict[str, str]) -> None:
    ctr = _run(["buildah", "from", "scratch"]).stdout.strip()
    try:
        mnt = _run(["buildah", "mount", ctr]).stdout.strip()
        tar = subprocess.Popen(["tar", "-C", rootfs, "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*",
                                "--exclude=./sys/*", "-cf", "-", "."], stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-C", mnt, "--numeric-owner", "-xpf", "-"], stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0 or untar.returncode != 0:
            raise ImageError(f"copying {rootfs} into the base container failed")
        _run(["buildah", "umount", ctr])
        config = ["--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--cmd", "/bin/bash"]
        for k, v in labels.items():
            config += ["--label", f"{k}={v}"]
        _run(["buildah", "config", *config, ctr])
        _run(["buildah", "commit", "--quiet", ctr, name])
    finally:
        _run(["buildah", "rm", ctr], check=False)


# ---- the image -------------------------------------------------------------------------------

def host_python() -> str:
    """A CPython 3.11 on the host (the image's Python): this one if it is, else python3.11."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if not found:
        raise ImageError("the wheelhouse needs a host CPython 3.11 (the image's Python): none found")
    return found


def build_wheelhouse(files: list[str], pinned: str, wheels: str) -> None:
    """podbgp (from a copy of exactly `files`) and its dependencies as wheels, and pip's own wheel."""
    shutil.rmtree(wheels, ignore_errors=True)
    os.makedirs(wheels)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        src = os.path.join(tmp, "src")
        for name in files:
            os.makedirs(os.path.dirname(os.path.join(src, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(src, name))
        constraints = os.path.join(tmp, "constraints.txt")
        with open(constraints, "w") as f:
            f.write(pinned)
        _run([host_python(), "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", wheels,
              "-c", constraints, src, "pip"], timeout=1800)
    log.info("image.wheelhouse wheels=%d dir=%s", len(os.listdir(wheels)), wheels)


def build(image: str = DEFAULT_IMAGE, base_image: str | None = None, force: bool = False) -> bool:
    """Build the image unless it exists with the same inputs; True when it was built."""
    install_tools("buildah")
    if not os.path.exists(CONTAINERFILE):
        raise ImageError(f"no {CONTAINERFILE}: build from a podbgp checkout")
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(os.path.join(CACHE_DIR, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time shares the caches
        return _build(image, base_image, force)


def _build(image: str, base_image: str | None, force: bool) -> bool:
    packages = deb_packages()
    if base_image:
        if image_info(base_image) is None:
            _run(["buildah", "pull", "--quiet", base_image], timeout=1800)
        base_id, base = image_info(base_image)["id"], base_image
    else:
        base_id, base = ensure_base(packages), BASE_NAME
    files, pinned = source_files(), pins()
    digest = inputs_hash(base_id, pinned, files)
    old = image_info(image)
    if old and old["labels"].get(INPUTS_LABEL) == digest and not force:
        log.info("image.fresh image=%s inputs=%s", image, digest[:12])
        return False
    start = time.monotonic()
    context = os.path.join(CACHE_DIR, "context")
    build_wheelhouse(files, pinned, os.path.join(context, "wheels"))
    os.makedirs(os.path.join(context, "check"), exist_ok=True)
    with open(os.path.join(context, "check", "runtime.py"), "w") as f:
        f.write(RUNTIME_CHECK)
    _run(["buildah", "build", "--isolation", "chroot", "--pull=never", "--layers=false", "--quiet",
          "-f", CONTAINERFILE, "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"DEB_PACKAGES={' '.join(packages)}",
          "--label", f"{INPUTS_LABEL}={digest}", "-t", image, context], timeout=1800)
    if old and old["id"] != image_info(image)["id"]:
        _run(["buildah", "rmi", old["id"]], check=False)  # the replaced image, unless a container uses it
    log.info("image.built image=%s inputs=%s seconds=%.1f", image, digest[:12], time.monotonic() - start)
    return True


def ensure(image: str, base_image: str | None = None) -> None:
    """Build the image if it is missing or its inputs changed (installs buildah/debootstrap if needed)."""
    build(image, base_image)


# ---- running a speaker from it ----------------------------------------------------------------

def container_argv(image: str, name: str, mounts: list[tuple[str, str, bool]], env: dict[str, str],
                   argv: list[str], capabilities: tuple[str, ...] = CAPABILITIES) -> tuple[list[str], list[str]]:
    """(argv creating working container `name` from image, argv running `argv` in it).

    mounts are (host path, container path, read-only); env is set on top of the image's (a PATH
    given here replaces the image's, which puts /opt/podbgp/bin first). The run shares the
    caller's network namespace (run it under `ip netns exec NS`: hostNetwork) and holds exactly
    `capabilities` (names as in a securityContext, any case, CAP_ optional).
    """
    setup = ["buildah", "from", "--pull=never", "--quiet", "--name", name, image]
    run = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
    wanted = {c.lower().removeprefix("cap_") for c in capabilities}
    unknown = wanted - set(ALL_CAPABILITIES)
    if unknown:
        raise ImageError(f"unknown capabilities: {', '.join(sorted(unknown))}")
    for cap in ALL_CAPABILITIES:
        run += ["--cap-add" if cap in wanted else "--cap-drop", f"CAP_{cap.upper()}"]
    for host, ctr, ro in mounts:
        ctr = in_image(ctr)
        run += ["-v", f"{host}:{ctr}:ro" if ro else f"{host}:{ctr}"]
    for k, v in sorted(env.items()):
        run += ["--env", f"{k}={v}"]
    return setup, [*run, name, "--", *argv]


def in_image(path: str) -> str:
    """path with the image's symlinked directories resolved (/var/run/x -> /run/x)."""
    path = os.path.normpath(path)
    for link, target in IMAGE_SYMLINKS.items():
        if path == link or path.startswith(link + "/"):
            return target + path[len(link):]
    return path


def remove_container(name: str) -> None:
    """Remove working container `name`; one that does not exist is already removed."""
    proc = _run(["buildah", "rm", name], check=False)
    if proc.returncode != 0 and _run(["buildah", "inspect", "--type", "container", name], check=False).returncode == 0:
        raise ImageError(f"buildah rm {name} failed: {proc.stderr.strip()[-400:]}")


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(") ", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _argv0(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def command_pid(run_pid: int) -> int | None:
    """The PID (this host's: chroot isolation makes no PID namespace) of the command a
    `buildah run` with PID run_pid started: the child of its buildah-chroot-exec. None if none yet."""
    todo = [run_pid]
    while todo:
        pid = todo.pop()
        kids = _children(pid)
        if _argv0(pid) == "buildah-chroot-exec" and kids:
            return kids[0]
        todo += kids
    return None


def _dead(pid: int) -> bool:
    """Gone or a zombie (reaps nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _gone(pid: int) -> bool:
    """Like _dead, reaping pid first if it is this process's child."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    return _dead(pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def processes_in(mntns: str) -> list[int]:
    """Live processes in mount namespace `mntns` (a run's container: buildah makes one per run)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and mount_namespace(int(p)) == mntns and not _dead(int(p))]


def stop(run_pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Stop what a `buildah run` (PID run_pid) runs, as a kubelet stops a container: `sig` to the
    command itself; after `timeout`, SIGKILL to the run's process group (its own when started with
    start_new_session) or to run_pid alone; then, after `timeout` again, SIGKILL to whatever still
    runs in the container's mount namespace (ExaBGP outlives a SIGKILLed speaker by about a second:
    it has a session of its own).
    SIGTERM to `buildah run` itself is no clean stop: the command gets SIGKILL."""
    cmd = command_pid(run_pid)
    ns = mount_namespace(cmd) if cmd else None
    try:
        os.kill(cmd or run_pid, sig)
    except ProcessLookupError:
        pass
    if not _wait_gone(run_pid, timeout):
        log.warning("image.stop.kill run_pid=%d after=%.0fs", run_pid, timeout)
        try:
            if os.getpgid(run_pid) == run_pid:
                os.killpg(run_pid, signal.SIGKILL)
            else:
                os.kill(run_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not _wait_gone(run_pid, 10):
            raise ImageError(f"buildah run pid {run_pid} outlived SIGKILL")
    if ns and ns != mount_namespace(os.getpid()):
        deadline = time.monotonic() + timeout
        while processes_in(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in processes_in(ns):
            log.warning("image.stop.leftover pid=%d", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main(argv: list[str] | None = None) -> int:
    import click

    @click.group()
    def cli() -> None:
        """The podbgp container image."""

    @cli.command("build")
    @click.option("--image", default=DEFAULT_IMAGE, show_default=True)
    @click.option("--base-image", default=None, help="base image (default: a local debootstrap of bookworm)")
    @click.option("--force", is_flag=True, help="build even when the image's inputs are unchanged")
    def build_cmd(image: str, base_image: str | None, force: bool) -> None:
        """Build the image, or do nothing when it is up to date."""
        try:
            build(image, base_image or None, force)
        except ImageError as exc:
            raise click.ClickException(str(exc)) from None

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    return cli.main(argv, prog_name="python -m lab.image", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
