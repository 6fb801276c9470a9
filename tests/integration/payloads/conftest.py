"""Fixtures for the boot payload tests: the cached ramdisk and TCG guests.

Guests run under TCG on purpose: this machine's KVM is the software kvm_pvm
back end, on which stock kernels do not boot (docs/field-notes.md, "Virtualisation").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.lab.ramdisk import Ramdisk, ensure_ramdisk
from tests.integration.payloads.qemu import QEMU, Guest, start_guest
from tests.support.helpers import require_binary


@pytest.fixture(scope="session")
def ramdisk() -> Ramdisk:
    require_binary(QEMU, "apt-get", "dpkg", "cpio", "zstd", "modprobe", "depmod")
    started = time.monotonic()
    rd = ensure_ramdisk()
    print(f"ramdisk {rd.key}: ready in {time.monotonic() - started:.1f}s")
    return rd


@pytest.fixture
def boot_guest(tmp_path: Path) -> Iterator:
    """Factory: boot_guest(args) starts `qemu-system-x86_64 -accel tcg -nographic ARGS`."""
    require_binary(QEMU)
    guests: list[Guest] = []

    def start(args: list[str], name: str = "guest", memory: str = "256") -> Guest:
        guest = start_guest(args, tmp_path / f"{name}-console.log", memory)
        guests.append(guest)
        return guest

    yield start
    for g in guests:
        g.stop()
