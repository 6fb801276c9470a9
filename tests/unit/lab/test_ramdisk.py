"""Unit tests of the ramdisk cache and the vmlinux extractor (no QEMU, no apt)."""

from __future__ import annotations

import gzip
import lzma
import threading
from pathlib import Path

import pytest

from provisioner.errors import BootError
from provisioner.lab import ramdisk

FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64


def _bzimage(payload: bytes) -> bytes:
    # A setup header full of bytes that look like magics but are not streams,
    # then the compressed kernel, then trailing data (as in a real bzImage).
    return b"MZ" + b"\x1f\x8b\x08junk" + b"\xfd7zXZ\x00junk" + bytes(500) + payload + b"\x00trailer" * 10


@pytest.mark.parametrize(
    "compress",
    [lambda b: gzip.compress(b), lambda b: lzma.compress(b, format=lzma.FORMAT_XZ)],
    ids=["gzip", "xz"],
)
def test_extract_vmlinux_finds_the_real_stream(compress) -> None:
    assert ramdisk.extract_vmlinux(_bzimage(compress(FAKE_ELF))) == FAKE_ELF


def test_extract_vmlinux_passes_an_elf_through() -> None:
    assert ramdisk.extract_vmlinux(FAKE_ELF) == FAKE_ELF


def test_extract_vmlinux_rejects_non_kernels() -> None:
    with pytest.raises(BootError, match="no compressed ELF"):
        ramdisk.extract_vmlinux(_bzimage(gzip.compress(b"not an elf")))


def test_cache_key_depends_on_versions_and_inputs(tmp_path: Path, monkeypatch) -> None:
    init = tmp_path / "init"
    init.write_text("one")
    monkeypatch.setattr(ramdisk, "_KEY_INPUTS", (init,))
    a = ramdisk.cache_key({"linux-image-6.1.0-1-amd64": "6.1.1-1", "busybox-static": "1:1.35"})
    assert a == ramdisk.cache_key({"busybox-static": "1:1.35", "linux-image-6.1.0-1-amd64": "6.1.1-1"})
    assert a != ramdisk.cache_key({"linux-image-6.1.0-2-amd64": "6.1.2-1", "busybox-static": "1:1.35"})
    init.write_text("two")
    assert a != ramdisk.cache_key({"linux-image-6.1.0-1-amd64": "6.1.1-1", "busybox-static": "1:1.35"})


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch) -> Path:
    """A stand-in build script that counts its runs and is slow enough to race."""
    counter = tmp_path / "runs"
    script = tmp_path / "build.sh"
    script.write_text(
        "#!/bin/sh\nset -e\necho run >>" + str(counter) + "\nsleep 0.2\n"
        'for f in vmlinuz vmlinux initrd.img; do echo "$f" >"$1/$f"; done\n'
        'echo "busybox-static=1:1.35" >"$1/versions.txt"\n'
    )
    script.chmod(0o755)
    monkeypatch.setattr(ramdisk, "BUILD_SCRIPT", script)
    monkeypatch.setattr(ramdisk, "_KEY_INPUTS", (script,))
    monkeypatch.setattr(ramdisk, "resolve_versions", lambda: {"busybox-static": "1:1.35"})
    return counter


def test_ensure_ramdisk_builds_once_under_concurrency(tmp_path: Path, fake_build: Path) -> None:
    cache = tmp_path / "cache"
    results: list[ramdisk.Ramdisk] = []
    threads = [threading.Thread(target=lambda: results.append(ramdisk.ensure_ramdisk(cache))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert fake_build.read_text().count("run") == 1
    rd = results[0]
    assert all(r == rd for r in results)
    assert rd.initrd.read_text() == "initrd.img\n"
    assert rd.versions == {"busybox-static": "1:1.35"}
    # Only the finished key directory and its lock file remain.
    assert sorted(p.name for p in cache.iterdir()) == sorted([rd.key, f".{rd.key}.lock"])


def test_ensure_ramdisk_failed_build_leaves_nothing(tmp_path: Path, fake_build: Path) -> None:
    ramdisk.BUILD_SCRIPT.write_text("#!/bin/sh\necho 'apt-get download: no network' >&2\nexit 3\n")
    cache = tmp_path / "cache"
    with pytest.raises(BootError, match=r"exit 3.*no network"):
        ramdisk.ensure_ramdisk(cache)
    assert [p.name for p in cache.iterdir()] == [p.name for p in cache.glob(".*.lock")]
