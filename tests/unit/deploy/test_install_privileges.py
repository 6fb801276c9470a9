"""deploy/install.sh's privilege logic, run against stub commands that record their calls.

A fresh Debian 12 machine has no sudo and the user is root; elsewhere a user
installs with sudo. The script must run apt directly as root, go through sudo
for apt alone otherwise (the venv stays the user's), and without either stop
with one line that says what to do. The stubs (``id``, ``sudo``, ``apt-get``,
``dpkg-query``, ``tee``, ``chmod``, ``rm``, ``python3``) sit first on a PATH
of their own, so nothing on this machine is installed or written.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
INSTALL_SH = ROOT / "deploy" / "install.sh"
POLICY = "/usr/sbin/policy-rc.d"

_RECORD = '#!/bin/sh\necho "$(basename "$0") $*" >>"$CALLS"\n'
STUBS = {
    "id": _RECORD + 'case "$1" in -u) echo "$FAKE_UID";; -un) echo "$FAKE_USER";; esac\n',
    # sudo runs the rest of its command line, so the inner command is recorded too.
    "sudo": _RECORD + 'exec "$@"\n',
    "apt-get": _RECORD + 'echo "DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-}" >>"$CALLS"\n',
    "dpkg-query": 'case " $FAKE_INSTALLED " in *" $3 "*) echo "install ok installed";; esac\n',
    "tee": _RECORD + "cat >/dev/null\n",
    "chmod": _RECORD,
    "rm": _RECORD,
    # python3 -m venv DIR: a venv whose pip and prov only record their calls.
    # (absolute chmod: the chmod on PATH is the recording stub)
    "python3": _RECORD
    + 'mkdir -p "$3/bin"\nfor t in pip prov; do printf \'#!/bin/sh\\necho "%s $*" >>"$CALLS"\\n\' "$t" '
    f'>"$3/bin/$t"; {shutil.which("chmod")} 755 "$3/bin/$t"; done\nln -s pip "$3/bin/python"\n',
}
APT_FAILS = _RECORD + 'case "$1" in install) exit 100;; esac\n'

# Real tools the script needs besides the stubs.
REAL = ("bash", "grep", "dirname", "basename", "touch", "env", "cat", "mkdir", "ln", "printf")


def _make_bin(tmp_path: Path, with_sudo: bool, apt_fails: bool) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in {**STUBS, **({"apt-get": APT_FAILS} if apt_fails else {})}.items():
        if name == "sudo" and not with_sudo:
            continue
        (bindir / name).write_text(body.replace("#!/bin/sh", f"#!{shutil.which('sh')}", 1))
        (bindir / name).chmod(0o755)
    for name in REAL:
        real = shutil.which(name)
        assert real, name
        (bindir / name).symlink_to(real)
    return bindir


def _run(tmp_path: Path, *, uid: int, with_sudo: bool, installed: str = "", dev: bool = False,
         apt_fails: bool = False):
    checkout = tmp_path / "checkout"
    (checkout / "deploy").mkdir(parents=True)
    # policy-rc.d is a real file on some machines (Docker-derived ones ship one); the copy looks for
    # it in tmp_path instead, so the test sees the same thing everywhere.
    script = INSTALL_SH.read_text().replace(POLICY, str(tmp_path / "policy-rc.d"))
    (checkout / "deploy" / "install.sh").write_text(script)
    (checkout / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    calls = tmp_path / "calls"
    calls.touch()
    bindir = _make_bin(tmp_path, with_sudo, apt_fails)
    env = {
        "PATH": f"{bindir}:/nonexistent",
        "CALLS": str(calls),
        "FAKE_UID": str(uid),
        "FAKE_USER": "alice" if uid else "root",
        "FAKE_INSTALLED": installed,
        "HOME": str(tmp_path),
    }
    args = [str(bindir / "bash"), str(checkout / "deploy" / "install.sh"), *(["--dev"] if dev else [])]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return proc, calls.read_text().splitlines(), checkout


def _runtime_packages() -> list[str]:
    lines = INSTALL_SH.read_text().split("RUNTIME_PKGS=(\n", 1)[1].split("\n)\n", 1)[0].splitlines()
    return [w for line in lines for w in line.split("#", 1)[0].split()]


def _apt_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith(("apt-get", "sudo", "tee", "chmod", "rm"))]


def test_root_without_sudo_runs_apt_directly(tmp_path: Path) -> None:
    proc, calls, _ = _run(tmp_path, uid=0, with_sudo=False)
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("sudo") for c in calls), calls
    assert "apt-get update -q" in calls
    install = next(c for c in calls if c.startswith("apt-get install"))
    assert install.split()[-len(_runtime_packages()):] == _runtime_packages()
    assert "DEBIAN_FRONTEND=noninteractive" in calls
    # policy-rc.d goes in before apt and out again after it.
    policy = tmp_path / "policy-rc.d"
    assert _apt_calls(calls)[:2] == [f"tee {policy}", f"chmod +x {policy}"]
    assert _apt_calls(calls)[-1] == f"rm -f {policy}"
    assert "python3 -m venv .venv" in calls and "pip install -q -e ." in calls


def test_non_root_with_sudo_escalates_for_apt_only(tmp_path: Path) -> None:
    proc, calls, checkout = _run(tmp_path, uid=1000, with_sudo=True)
    assert proc.returncode == 0, proc.stderr
    # Every apt step (and the policy-rc.d file around it) goes through sudo...
    policy = tmp_path / "policy-rc.d"
    for step in ("apt-get update -q", f"tee {policy}", f"chmod +x {policy}", f"rm -f {policy}"):
        assert f"sudo {step}" in calls, calls
    assert any(c.startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get install") for c in calls)
    # ...and nothing else does: the venv and pip belong to the user.
    sudo_cmds = {c.split()[1] for c in calls if c.startswith("sudo ")}
    assert sudo_cmds == {"apt-get", "env", "tee", "chmod", "rm"}, sudo_cmds
    assert "python3 -m venv .venv" in calls and (checkout / ".venv" / "bin" / "pip").exists()


def test_non_root_without_sudo_stops_with_one_line(tmp_path: Path) -> None:
    proc, calls, checkout = _run(tmp_path, uid=1000, with_sudo=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "run it as root" in lines[0] and "sudo" in lines[0] and "adduser alice sudo" in lines[0]
    assert not _apt_calls(calls) and not (checkout / ".venv").exists()


def test_nothing_to_install_needs_no_root(tmp_path: Path) -> None:
    # Everything installed already (a second run, or a machine prepared by its admin): no sudo needed.
    proc, calls, _ = _run(tmp_path, uid=1000, with_sudo=False, installed=" ".join(_runtime_packages()))
    assert proc.returncode == 0, proc.stderr
    assert not _apt_calls(calls) and "python3 -m venv .venv" in calls


def test_dev_adds_the_dev_packages_and_extra(tmp_path: Path) -> None:
    proc, calls, _ = _run(tmp_path, uid=0, with_sudo=False, installed=" ".join(_runtime_packages()), dev=True)
    assert proc.returncode == 0, proc.stderr
    install = next(c for c in calls if c.startswith("apt-get install"))
    assert "postgresql" in install and "shellcheck" in install and "podman" in install
    assert "python3" not in install.split()  # installed already: only what is missing
    assert "pip install -q -e .[dev]" in calls


@pytest.mark.parametrize("uid", [0, 1000])
def test_a_failing_apt_still_removes_policy_rc_d(tmp_path: Path, uid: int) -> None:
    proc, calls, checkout = _run(tmp_path, uid=uid, with_sudo=True, apt_fails=True)
    assert proc.returncode == 100
    rm = f"rm -f {tmp_path / 'policy-rc.d'}"
    assert calls[-1] == rm and (uid == 0 or calls[-2] == f"sudo {rm}"), calls
    assert not (checkout / ".venv").exists()
