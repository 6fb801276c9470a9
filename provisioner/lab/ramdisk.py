"""prov's deploy/test ramdisk: a Debian kernel plus a busybox initramfs, cached.

The build itself is ``recipes/build-ramdisk.sh`` (one implementation, package
data so a wheel has it too; humans run it as ``deploy/build-ramdisk.sh``); this
module gives Python callers a cached, concurrency-safe
``ensure_ramdisk()`` and holds the vmlinux extractor the script calls
(``python -m provisioner.lab.ramdisk extract-vmlinux IN OUT``).

Cache layout: ``<cache_dir>/<key>/{vmlinuz,vmlinux,initrd.img,versions.txt}``
where ``key`` hashes the resolved Debian package versions and the build
inputs (script, ``/init``, udhcpc script). A new kernel in the archive or an
edited ``/init`` therefore builds a new ramdisk; nothing else does.

This module imports only the standard library (and ``provisioner.errors``,
which does too) so the build script can run it with the system ``python3``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import BootError

DEFAULT_CACHE_DIR = Path("/var/cache/prov-test/ramdisk")
# .debs are shared across keys: an edited /init must not re-download 70 MB.
DEB_CACHE_DIR = Path("/var/cache/prov-test/debs")

# The recipes are package data beside this module (a checkout and a wheel install alike).
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
BUILD_SCRIPT = RECIPES_DIR / "build-ramdisk.sh"
_KEY_INPUTS = (BUILD_SCRIPT, RECIPES_DIR / "ramdisk" / "init", RECIPES_DIR / "ramdisk" / "udhcpc.script")
_OUTPUTS = ("vmlinuz", "vmlinux", "initrd.img", "versions.txt")
_COMPLETE = ".complete"


@dataclass(frozen=True)
class Ramdisk:
    kernel: Path  # bzImage, for iPXE/pxelinux/`qemu -kernel` via the BIOS
    vmlinux: Path  # ELF with a PVH note, for QEMU direct boot (faster under TCG)
    initrd: Path  # zstd-compressed newc cpio
    versions: dict[str, str]  # Debian package -> version it was built from
    key: str


# --- vmlinux extraction (scripts/extract-vmlinux of the kernel tree, in Python) ---

_ELF_MAGIC = b"\x7fELF"


def _gunzip(data: bytes) -> bytes:
    # wbits 16+MAX_WBITS: gzip container; trailing bytes after the member are ignored.
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _unxz(data: bytes) -> bytes:
    # The kernel appends its own data after the xz stream; the decompressor
    # stops at the end of the first stream and leaves the rest in unused_data.
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _unlzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def _unzstd(data: bytes) -> bytes:
    proc = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=False)
    return proc.stdout  # a truncated-frame complaint still yields the whole ELF


# Same magics, same order as the kernel's scripts/extract-vmlinux.
_DECOMPRESSORS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (b"\x1f\x8b\x08", _gunzip),
    (b"\xfd7zXZ\x00", _unxz),
    (b"\x5d\x00\x00\x00", _unlzma),
    (b"\x28\xb5\x2f\xfd", _unzstd),
)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Return the ELF kernel inside a bzImage: try each compression magic at
    each offset where it occurs, keep the first result that is an ELF file."""
    if bzimage.startswith(_ELF_MAGIC):
        return bzimage
    for magic, decompress in _DECOMPRESSORS:
        start = bzimage.find(magic)
        while start != -1:
            try:
                out = decompress(bzimage[start:])
            except (OSError, EOFError, lzma.LZMAError, zlib.error):
                out = b""
            if out.startswith(_ELF_MAGIC):
                return out
            start = bzimage.find(magic, start + 1)
    raise BootError(reason="no compressed ELF kernel found in the bzImage")


# --- cache ----------------------------------------------------------------------


def run_checked(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BootError(reason=f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def resolve_versions() -> dict[str, str]:
    """Debian package -> version the build would use (from apt's local lists)."""
    out = run_checked([str(BUILD_SCRIPT), "--resolve"])
    pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {name: version for name, version in pairs}


def cache_key(versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(versions):
        h.update(f"{name}={versions[name]}\n".encode())
    for path in _KEY_INPUTS:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path``: parallel builders (tests, xdist workers) build a cache entry once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load(key_dir: Path, key: str) -> Ramdisk:
    versions = {}
    for line in (key_dir / "versions.txt").read_text().splitlines():
        name, _, version = line.partition("=")
        versions[name] = version
    return Ramdisk(
        kernel=key_dir / "vmlinuz",
        vmlinux=key_dir / "vmlinux",
        initrd=key_dir / "initrd.img",
        versions=versions,
        key=key,
    )


def build_cached(cache: Path, key: str, build: Callable[[Path], None], outputs: tuple[str, ...]) -> Path:
    """Return ``cache/key``, running ``build(tmpdir)`` first if it is not there yet.

    Concurrency-safe (one flock per key: parallel tests build a key once) and
    crash-safe (built beside the final place and renamed; a key directory
    without its ``.complete`` marker is rebuilt). Shared by the ramdisk and
    the lab OS image.
    """
    key_dir = cache / key
    if (key_dir / _COMPLETE).exists():
        return key_dir
    with locked(cache / f".{key}.lock"):
        if (key_dir / _COMPLETE).exists():  # another process built it while we waited
            return key_dir
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache))
        try:
            tmp.chmod(0o755)  # mkdtemp makes 0700; QEMU under libvirt runs as another user
            build(tmp)
            missing = [name for name in outputs if not (tmp / name).is_file()]
            if missing:
                raise BootError(reason=f"build of {key} produced no {', '.join(missing)}")
            (tmp / _COMPLETE).touch()
            if key_dir.exists():  # a crashed earlier build left an incomplete dir
                shutil.rmtree(key_dir)
            tmp.rename(key_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return key_dir


def ensure_ramdisk(cache_dir: Path | None = None) -> Ramdisk:
    """Return the cached ramdisk for today's package versions, building it once."""
    cache = cache_dir or DEFAULT_CACHE_DIR
    versions = resolve_versions()
    key = cache_key(versions)

    def build(out: Path) -> None:
        env = dict(os.environ, PYTHON=sys.executable, PROV_DEB_CACHE=str(DEB_CACHE_DIR))
        run_checked([str(BUILD_SCRIPT), str(out)], env=env)

    return _load(build_cached(cache, key, build, _OUTPUTS), key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provisioner.lab.ramdisk")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract-vmlinux", help="decompress a bzImage to its ELF vmlinux")
    ex.add_argument("bzimage", type=Path)
    ex.add_argument("out", type=Path)
    en = sub.add_parser("ensure", help="build (or find) the cached ramdisk and print its paths")
    en.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "extract-vmlinux":
        args.out.write_bytes(extract_vmlinux(args.bzimage.read_bytes()))
        return 0
    rd = ensure_ramdisk(args.cache_dir)
    print(f"kernel={rd.kernel}\nvmlinux={rd.vmlinux}\ninitrd={rd.initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
