"""deploy/install.sh's RUNTIME_PKGS provide every program and file prov needs at run time.

The fresh-machine tier (tests/fresh/) proves it end to end in a pristine
Debian root, but only for what its run touches. This is the cheaper and wider
check: each need in tests/unit/deploy/runtime_needs.py is looked up with
``dpkg -S`` on this machine and must come from a listed package or one of
their dependencies. A test removes a package from the list and sees the
check fail, which is how a forgotten install step shows up here.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.unit.deploy import runtime_needs as rn

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _debian_tools() -> None:
    if not (shutil.which("dpkg") and shutil.which("apt-cache")):
        pytest.skip("needs dpkg and apt-cache (a Debian machine)")


def test_every_program_prov_starts_is_declared() -> None:
    undeclared = {name: sorted(where) for name, where in rn.scan_commands().items() if name not in rn.COMMANDS}
    assert not undeclared, (
        f"provisioner/ runs programs that tests/unit/deploy/runtime_needs.py does not declare: {undeclared} "
        "(add them to COMMANDS, with their package in deploy/install.sh's RUNTIME_PKGS)"
    )


def test_the_scan_finds_what_it_should() -> None:
    found = rn.scan_commands()
    for name in ("git", "ssh-keygen", "qemu-img", "ipmitool", "virsh", "genisoimage", "zstd"):
        assert name in found, name


def test_runtime_packages_provide_every_need() -> None:
    problems = rn.unprovided(rn.runtime_packages(), VENV_BIN)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("package", "needs"), [
    ("git", {"git"}),
    ("genisoimage", {"genisoimage"}),
    ("openipmi", {"ipmi_sim"}),
    ("ipxe", {"/usr/lib/ipxe/undionly.kpxe", "/usr/lib/ipxe/ipxe.efi"}),
])
def test_a_package_missing_from_the_list_is_reported(package: str, needs: set[str]) -> None:
    packages = rn.runtime_packages()
    assert package in packages
    text = rn.INSTALL_SH.read_text()
    # The same edit a careless change would make: the word gone from the script's list.
    lines = text.split("RUNTIME_PKGS=(\n", 1)[1].split("\n)\n", 1)[0]
    edited = text.replace(lines, " ".join(p for p in packages if p != package))
    problems = rn.unprovided(rn.runtime_packages(edited), VENV_BIN)
    reported = {p.split(" ", 1)[0].rstrip(":") for p in problems}
    assert reported == needs, problems
