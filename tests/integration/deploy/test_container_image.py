"""deploy/Dockerfile built with podman and run: non-root, /healthz, data kept on a volume, bad volume refused.

No registry is reachable from these machines, so the base image is made
locally from Debian's packages: the fresh tier's cached minbase tarball
(tests/fresh/machine.py), ``podman import``-ed as ``localhost/debian:12``,
passed to the Dockerfile as ``--build-arg BASE``. Everything podman stores
lives in this test's own directory (``--root``/``--runroot``), so no layer
or image survives the test: each run builds from scratch. Only downloads are
kept (.debs and pip's cache, bind-mounted into the build's RUN steps, never
into a layer).

How podman runs on these machines (Debian 12 microVMs: no systemd, hybrid
cgroups v1 + an empty v2, no CAP_SYS_RESOURCE), found by trying:

* crun refuses hybrid cgroups ("cgroups in hybrid mode not supported, drop
  all controllers from cgroupv2"): ``--runtime runc`` works (cgroupfs).
* Without CAP_SYS_RESOURCE the OCI runtime cannot raise rlimits: podman's
  default RLIMIT_NOFILE (1048576) and the hard limits fail with "setrlimit
  RLIMIT_NOFILE/NPROC: operation not permitted"; ``--ulimit`` at or below this
  process's limits (nofile) and 4096 processes work.
* No journald: ``--events-backend file``.
* ``--network host`` for the build (apt and pip reach the mirrors as this
  machine does) and the run: podman's default bridge network would set
  ``ip_forward=1`` and add CNI iptables chains on this machine, which other
  tests rely on not having.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fresh.machine import clean_tree, minbase_tarball
from tests.support.helpers import free_port, require_binary, require_root

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[3]
IMAGE = "localhost/prov:test"
BASE = "localhost/debian:12"
IMAGE_CACHE = Path("/var/cache/prov-test/image")
UID = 10001  # deploy/Dockerfile's USER


@dataclass
class Podman:
    dir: Path

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.dir / "storage"), "--runroot", str(self.dir / "run"),
                "--tmpdir", str(self.dir / "tmp"), "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", *args]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            tail = out.stdout[-3000:] + out.stderr[-3000:]
            pytest.fail(f"podman {' '.join(args[:3])}... exited {out.returncode}:\n{tail}")
        return out

    def run_flags(self, healthcheck: bool = True) -> list[str]:
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
        flags = ["--network", "host", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
        # podman runs HEALTHCHECKs from systemd timers, and there is no systemd here: without a timer
        # (--health-interval disable) the check is run by hand (podman healthcheck run). A foreground
        # `run --rm` still asks systemd and fails, so those run without the check.
        return flags + (["--health-interval", "disable"] if healthcheck else ["--no-healthcheck"])


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    require_root()
    require_binary("podman", "runc", "debootstrap")
    base = tmp_path_factory.mktemp("podman")
    (base / "tmp").mkdir()
    p = Podman(base)
    yield p
    p("rm", "--all", "--force", "--time", "5", check=False)
    p("system", "reset", "--force", check=False, timeout=300)
    # podman bind-mounts its overlay directory onto itself; anything left mounted under base goes first.
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mnt in sorted((m for m in mounts if m.startswith(f"{base}/")), reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    t0 = time.monotonic()
    podman("import", str(minbase_tarball()), BASE, timeout=600)
    t_import = time.monotonic() - t0
    work = tmp_path_factory.mktemp("image-build")
    context = work / "context"
    clean_tree(ROOT, context)
    # This machine's TLS proxy is in its CA bundle, not in pip's own; apt reaches the mirror over http.
    (work / "pip.conf").write_text("[global]\ncert = /etc/prov-build-ca.crt\n")
    for d in ("apt/partial", "pip"):
        (IMAGE_CACHE / d).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    podman("build", "--network", "host", "--format", "docker", "--build-arg", f"BASE={BASE}",
           "--volume", f"{work / 'pip.conf'}:/etc/pip.conf:ro",
           "--volume", "/etc/ssl/certs/ca-certificates.crt:/etc/prov-build-ca.crt:ro",
           "--volume", f"{IMAGE_CACHE / 'apt'}:/var/cache/apt/archives",
           "--volume", f"{IMAGE_CACHE / 'pip'}:/root/.cache/pip",
           "-f", str(context / "deploy" / "Dockerfile"), "-t", IMAGE, str(context), timeout=2400)
    print(f"podman import of the minbase tarball: {t_import:.0f} s; podman build: {time.monotonic() - t0:.0f} s")
    return IMAGE


def test_the_image_runs_as_non_root_without_compilers(podman: Podman, image: str) -> None:
    cfg = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert cfg["User"] == f"{UID}:{UID}"
    assert cfg["Entrypoint"] == ["prov-entrypoint"] and cfg["Cmd"] == ["serve", "--host", "0.0.0.0"]
    out = podman("run", "--rm", *podman.run_flags(healthcheck=False), "--entrypoint", "/bin/sh", image, "-c",
                 "id -u; prov --version; command -v gcc || echo no-gcc")
    uid, version, gcc = out.stdout.split("\n")[:3]
    assert uid == str(UID) and version.startswith("prov ") and gcc == "no-gcc", out.stdout


@contextlib.contextmanager
def _serving(podman: Podman, name: str, volume: str, port: int) -> Iterator[str]:
    podman("run", "-d", "--name", name, *podman.run_flags(), "-v", f"{volume}:/var/lib/prov",
           "-e", f"PROV_PORT={port}", "-e", f"PROV_TFTP_PORT={free_port()}", IMAGE, "serve", "--host", "127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthz(podman, name, url)
        yield url
    finally:
        podman("stop", "--time", "10", name, check=False)


def _wait_healthz(podman: Podman, name: str, url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        if not state["Running"]:
            pytest.fail(f"the container exited ({state['ExitCode']}): {podman('logs', name, check=False).stderr}")
        time.sleep(0.5)
    pytest.fail(f"no /healthz from the container within {timeout:.0f} s: {podman('logs', name, check=False).stderr}")


def test_serves_and_keeps_its_data_on_the_volume_across_a_restart(podman: Podman, image: str) -> None:
    podman("volume", "create", "prov-data")
    port = free_port()
    with _serving(podman, "prov-a", "prov-data", port) as url:
        logs = podman("logs", "prov-a").stdout + podman("logs", "prov-a").stderr
        tokens = [ln.strip() for ln in logs.splitlines() if ln.startswith("    ") and len(ln.strip()) > 20]
        assert len(tokens) == 1, logs[-3000:]
        auth = {"Authorization": f"Bearer {tokens[0]}"}
        # The image's own HEALTHCHECK command, run once.
        podman("healthcheck", "run", "prov-a")
        made = httpx.post(f"{url}/api/v1/racks", json={"name": "r1", "site": "dc1"}, headers=auth, timeout=10)
        assert made.status_code in (200, 201), made.text
    # A new container on the same volume: the database, the token and the rack are still there.
    with _serving(podman, "prov-b", "prov-data", port) as url:
        racks = httpx.get(f"{url}/api/v1/racks", headers=auth, timeout=10)
        assert racks.status_code == 200 and "r1" in racks.text, racks.text
        logs = podman("logs", "prov-b").stderr
        assert "It is shown only now" not in logs
    # And a restart of the same container.
    podman("start", "prov-b")
    _wait_healthz(podman, "prov-b", f"http://127.0.0.1:{port}")
    assert httpx.get(f"http://127.0.0.1:{port}/api/v1/racks", headers=auth, timeout=10).status_code == 200
    podman("stop", "--time", "10", "prov-b")


@pytest.mark.parametrize("how", ["root-owned host directory", "read-only volume"])
def test_refuses_a_data_volume_it_cannot_write(podman: Podman, image: str, tmp_path: Path, how: str) -> None:
    if how == "root-owned host directory":
        host_dir = tmp_path / "data"
        host_dir.mkdir(mode=0o755)
        mount = f"{host_dir}:/var/lib/prov"
    else:
        podman("volume", "create", "prov-ro", check=False)
        mount = "prov-ro:/var/lib/prov:ro"
    out = podman("run", "--rm", *podman.run_flags(healthcheck=False), "-v", mount, image, check=False, timeout=120)
    assert out.returncode == 78, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "/var/lib/prov is not writable by uid 10001" in lines[0], out.stderr

