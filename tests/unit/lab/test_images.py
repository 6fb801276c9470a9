"""prepare_image: what the controller hands the deploy agent (raw bytes, sha256, size)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from provisioner.errors import BootError, InvalidInput
from provisioner.lab.images import DiskImage, prepare_image
from tests.support.helpers import require_binary


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(512 * 1024) + bytes(512 * 1024))
    return path


def test_raw_is_used_in_place(raw: Path, tmp_path: Path) -> None:
    want = hashlib.sha256(raw.read_bytes()).hexdigest()
    img = prepare_image(raw, tmp_path / "out", checksum=f"sha256:{want}")
    assert img == DiskImage(path=raw, sha256=want, size=1 << 20)
    assert img.agent_context("http://c/i") == {"url": "http://c/i", "sha256": want, "size": 1 << 20, "format": "raw"}


def test_qcow2_is_converted_once_to_the_same_bytes(raw: Path, tmp_path: Path) -> None:
    require_binary("qemu-img")
    qcow = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(qcow)], check=True)
    published = hashlib.sha256(qcow.read_bytes()).hexdigest()
    img = prepare_image(qcow, tmp_path / "out", checksum=f"sha256:{published}")
    assert img.path == tmp_path / "out" / "disk.raw"
    assert img.path.read_bytes() == raw.read_bytes()
    assert img.sha256 == hashlib.sha256(raw.read_bytes()).hexdigest()


def test_wrong_checksum_is_refused(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(BootError, match="sha256 is"):
        prepare_image(raw, tmp_path / "out", checksum="sha256:" + "0" * 64)
    with pytest.raises(InvalidInput, match="sha256:<64 hex digits>"):
        prepare_image(raw, tmp_path / "out", checksum="md5:abc")
