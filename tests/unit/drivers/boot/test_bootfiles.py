"""bootfiles.populate on a temp boot root."""

from __future__ import annotations

from provisioner.drivers.boot import bootfiles
from provisioner.drivers.boot.bootfiles import BootFile


def test_populate(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"ipxe" * 100)
    files = (BootFile("undionly.kpxe", (str(tmp_path / "missing"), str(src)), True),
             BootFile("pxelinux.0", (str(tmp_path / "nope"),), False))
    root = tmp_path / "boot"
    assert bootfiles.populate(root, files) == {"undionly.kpxe": "installed", "pxelinux.0": "missing"}
    assert (root / "undionly.kpxe").read_bytes() == src.read_bytes()
    assert not (root / "undionly.kpxe").is_symlink()
    assert bootfiles.populate(root, files)["undionly.kpxe"] == "current"
    src.write_bytes(b"new")
    assert bootfiles.populate(root, files)["undionly.kpxe"] == "installed"
    assert (root / "undionly.kpxe").read_bytes() == b"new"
