"""The README's set-up commands on a pristine Debian 12 machine (tests/fresh/machine.py).

A machine handed back after a session keeps every package a previous run
installed, which is how a broken install step once passed CI. Here each run
starts from ``debootstrap --variant=minbase bookworm`` with none of prov's
packages, copies in a clean tree (the files git knows; no .venv, no caches),
and runs, inside the root:

* the README's first command exactly as written there (parsed out of
  README.md, not restated): the controller installs and serves on its
  embedded defaults; ``/healthz`` answers; the admin token is printed once
  (and not again on the next start); ``prov host list`` works with it and not
  without; ``prov --version`` names the distribution's version; every program
  and file of tests/unit/deploy/runtime_needs.py is there;
* the install step of the README's test command (``deploy/install.sh --dev``,
  apt + pip);
* the first command again on a second pristine root, as a user with sudo
  (the venv is the user's, data in ``~/.local/share/prov``, TFTP's port 69
  refused and said so, the API up).

Slow variants (``PROV_SLOW_TESTS=1``): the test command itself as a sudo user
on a subset, and the tier failing on a root whose install.sh lost a runtime
package.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fresh.machine import FreshMachine, clean_tree, fresh_machine
from tests.support.helpers import require_binary, require_root
from tests.unit.deploy import runtime_needs

pytestmark = [pytest.mark.fresh, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8700"
TOKEN_RE = re.compile(r"It is shown only now:\n\n    (\S+)\n")
INSTALL_TIMEOUT = 900.0  # seconds, for the README's first command up to /healthz (measured: ~150 s cold)
slow = pytest.mark.skipif(os.environ.get("PROV_SLOW_TESTS") != "1",
                          reason="slow (another pristine root and a pytest run inside it): PROV_SLOW_TESTS=1")


def setup_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The shell commands of README.md's "Set up" section, in order (one per ```sh block)."""
    text = readme.read_text()
    section = text.split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.strip().splitlines() if line.strip()]


def test_the_readme_has_exactly_two_setup_commands() -> None:
    commands = setup_commands()
    assert len(commands) == 2, commands
    assert commands[0].startswith("./deploy/install.sh") and "prov serve" in commands[0]
    assert commands[1].startswith("./tests/run.sh")
    # The test command's install step, run below on the fresh root, is this line of tests/run.sh.
    assert "\n./deploy/install.sh --dev\n" in (ROOT / "tests" / "run.sh").read_text()


@dataclass
class Served:
    machine: FreshMachine
    log: Path
    seconds: float  # the README's first command, up to /healthz 200
    checkout: str
    user: str | None

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _require_tools() -> None:
    require_root()
    require_binary("debootstrap", "unshare", "nsenter")


def _wait_healthz(m: FreshMachine, proc, log: Path, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"the README's first command exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
        if m.http_status(f"{URL}/healthz") == 200:
            return time.monotonic() - t0
        time.sleep(2)
    pytest.fail(f"no /healthz 200 within {timeout:.0f} s:\n{log.read_text()[-6000:]}")


def _serve_readme(m: FreshMachine, base: Path, user: str | None) -> Served:
    home = "/root" if user is None else f"/home/{user}"
    checkout = f"{home}/prov"
    clean_tree(ROOT, m.root / checkout.lstrip("/"))
    if user is not None:
        m.sh(f"chown -R {user}:{user} {checkout}")
    log = base / f"readme-{user or 'root'}.log"
    proc = m.spawn(setup_commands()[0], log, user=user, cwd=checkout)
    seconds = _wait_healthz(m, proc, log, INSTALL_TIMEOUT)
    return Served(m, log, seconds, checkout, user)


def _prov(s: Served, args: str, token: str | None = None) -> tuple[int, str]:
    env = f"PROV_URL={URL} " + (f"PROV_TOKEN={token} " if token else "")
    r = s.machine.sh(f"{env}.venv/bin/prov {args}", user=s.user, cwd=s.checkout, timeout=120)
    return r.returncode, r.output


def _stop_serve(m: FreshMachine) -> None:
    for pid in m.pids("prov serve"):
        os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while m.pids("prov serve") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not m.pids("prov serve"), "prov serve did not stop on SIGTERM"


@pytest.fixture(scope="module")
def as_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    _require_tools()
    base = tmp_path_factory.mktemp("fresh-root")
    with fresh_machine(base) as m:
        yield _serve_readme(m, base, user=None)


def test_readme_first_command_installs_and_serves_as_root(as_root: Served) -> None:
    print(f"README command 1 as root, pristine root to /healthz 200: {as_root.seconds:.0f} s")
    out = as_root.text()
    assert "prov: installing system packages:" in out  # the packages really were missing
    assert len(TOKEN_RE.findall(out)) == 1, out[-3000:]
    # Embedded defaults as root: SQLite in /var/lib/prov, TFTP on port 69.
    assert (as_root.machine.root / "var/lib/prov/prov.db").is_file()
    assert "tftp serving /var/lib/prov/boot on 127.0.0.1:69" in out


def test_the_admin_token_works_with_prov_host_list(as_root: Served) -> None:
    (token,) = TOKEN_RE.findall(as_root.text())
    rc, out = _prov(as_root, "host list", token)
    assert rc == 0, out
    rc, out = _prov(as_root, "host list", "not-the-token")
    assert rc != 0 and "token" in out


def test_prov_version_is_the_distributions(as_root: Served) -> None:
    rc, out = _prov(as_root, "--version")
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    assert version and rc == 0 and out.strip() == f"prov {version.group(1)}", out


def test_every_runtime_need_is_on_the_pristine_root(as_root: Served) -> None:
    needs = [c for c, why in runtime_needs.COMMANDS.items()
             if c not in runtime_needs.OPTIONAL and not why.startswith("pip:")]
    script = " ".join(f"command -v {c} >/dev/null || echo MISSING {c};" for c in needs)
    script += " ".join(f"[ -e {f} ] || echo MISSING {f};" for f in runtime_needs.FILES)
    script += f" [ -x {as_root.checkout}/.venv/bin/ansible-playbook ] || echo MISSING ansible-playbook"
    r = as_root.machine.sh(script)
    assert r.returncode == 0 and "MISSING" not in r.output, (
        f"deploy/install.sh left these out on a fresh machine:\n{r.output}")


def test_a_second_start_prints_no_token(as_root: Served, tmp_path: Path) -> None:
    m = as_root.machine
    _stop_serve(m)
    log = tmp_path / "second-start.log"
    proc = m.spawn(".venv/bin/prov serve", log, cwd=as_root.checkout)
    _wait_healthz(m, proc, log, 120)
    assert "It is shown only now" not in log.read_text()
    _stop_serve(m)


def test_the_test_commands_install_step(as_root: Served) -> None:
    t0 = time.monotonic()
    r = as_root.machine.sh("./deploy/install.sh --dev", cwd=as_root.checkout, timeout=1200)
    print(f"deploy/install.sh --dev on the root: {time.monotonic() - t0:.0f} s")
    assert r.returncode == 0, r.output[-6000:]
    check = as_root.machine.sh(
        ".venv/bin/python -c 'import pytest, build, schemathesis' && command -v shellcheck podman psql ipmi_sim",
        cwd=as_root.checkout)
    assert check.returncode == 0, check.output


@pytest.fixture(scope="module")
def as_sudo_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    _require_tools()
    base = tmp_path_factory.mktemp("fresh-sudo")
    with fresh_machine(base) as m:
        # The user's machine: sudo installed, the user in the sudo group (no password prompt in a test).
        prep = m.sh("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q sudo "
                    "&& useradd -m -s /bin/bash -G sudo dev && echo 'dev ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/dev")
        assert prep.returncode == 0, prep.output[-3000:]
        yield _serve_readme(m, base, user="dev")


def test_readme_first_command_as_a_sudo_user(as_sudo_user: Served) -> None:
    s = as_sudo_user
    print(f"README command 1 as a sudo user, pristine root to /healthz 200: {s.seconds:.0f} s")
    out = s.text()
    assert "prov: installing system packages:" in out and len(TOKEN_RE.findall(out)) == 1
    home = s.machine.root / "home/dev"
    # The venv and the data belong to the user; only apt ran as root.
    assert (home / ".local/share/prov/prov.db").is_file()
    for path in (home / "prov/.venv/bin/python", home / ".local/share/prov/prov.db"):
        assert path.lstat().st_uid == (home / "prov").stat().st_uid != 0, path
    assert not (s.machine.root / "var/lib/prov").exists()
    # Port 69 needs root: prov says TFTP did not start, and serves the API anyway.
    assert "TFTP did not start on 127.0.0.1:69" in out
    (token,) = TOKEN_RE.findall(out)
    rc, listing = _prov(s, "host list", token)
    assert rc == 0, listing


@slow
def test_the_test_command_as_a_sudo_user(as_sudo_user: Served) -> None:
    """README command 2 exactly as written, with a small selection: apt via sudo, lint as dev, pytest via sudo."""
    s = as_sudo_user
    _stop_serve(s.machine)
    command = setup_commands()[1] + " -q tests/unit/deploy/test_install_privileges.py"
    r = s.machine.sh(command, user="dev", cwd=s.checkout, timeout=1800)
    assert r.returncode == 0, r.output[-6000:]
    assert " passed" in r.output and "failed" not in r.output, r.output[-3000:]


@slow
def test_the_tier_fails_when_install_sh_loses_a_runtime_package(tmp_path: Path) -> None:
    """The end-to-end proof behind tests/unit/deploy/test_runtime_packages.py's cheaper one."""
    _require_tools()
    with fresh_machine(tmp_path) as m:
        s = _serve_readme_without(m, tmp_path, "genisoimage")
        missing = [c for c in runtime_needs.COMMANDS if c not in runtime_needs.OPTIONAL
                   and not runtime_needs.COMMANDS[c].startswith("pip:")
                   and m.sh(f"command -v {c}").returncode != 0]
        assert missing == ["genisoimage"], (missing, s.seconds)


def _serve_readme_without(m: FreshMachine, base: Path, package: str) -> Served:
    checkout = "/root/prov"
    dest = m.root / checkout.lstrip("/")
    clean_tree(ROOT, dest)
    script = dest / "deploy" / "install.sh"
    text = script.read_text()
    assert f" {package} " in text
    script.write_text(text.replace(f" {package} ", " ", 1))
    log = base / "readme-mutated.log"
    proc = m.spawn(setup_commands()[0], log, cwd=checkout)
    return Served(m, log, _wait_healthz(m, proc, log, INSTALL_TIMEOUT), checkout, None)
