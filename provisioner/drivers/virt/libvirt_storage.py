"""libvirt adapter: storage pools, volumes (created, uploaded, deleted) and the NoCloud seed ISO."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import libvirt

from provisioner.drivers.virt.libvirt_host import LibvirtHost, parse_xml, translate
from provisioner.errors import ProvError, VirtError
from provisioner.render import render


class LibvirtStorage(LibvirtHost):
    """Pools and volumes on the connected host."""

    def pool_names(self) -> list[str]:
        with translate("list pools"):
            return sorted(p.name() for p in self._conn.listAllStoragePools())

    def _pool(self, name: str) -> Any:
        with translate("storage pool", kind="storage pool", name=name):
            pool = self._conn.storagePoolLookupByName(name)
        with translate(f"pool {name}"):
            if not pool.isActive():
                pool.create(0)
        return pool

    def _pool_path(self, name: str) -> str:
        with translate(f"pool {name}"):
            return parse_xml(self._pool(name).XMLDesc(0)).findtext("target/path") or ""

    def ensure_dir_pool(self, name: str, path: str) -> None:
        """A directory pool, defined, built, started and autostarted when missing."""
        with translate(f"pool {name}"):
            try:
                pool = self._conn.storagePoolLookupByName(name)
            except libvirt.libvirtError:
                pool = self._conn.storagePoolDefineXML(render("libvirt/pool.xml.j2", {"name": name, "path": path}), 0)
                pool.build(0)
                pool.setAutostart(1)
            if not pool.isActive():
                pool.create(0)

    def delete_pool(self, name: str) -> None:
        with translate(f"delete pool {name}", kind="storage pool", name=name):
            pool = self._conn.storagePoolLookupByName(name)
            if pool.isActive():
                pool.destroy()
            pool.undefine()

    def volume_exists(self, pool: str, name: str) -> bool:
        try:
            self._pool(pool).storageVolLookupByName(name)
            return True
        except libvirt.libvirtError:
            return False

    def _backing_path(self, pool: str, backing: str) -> str | None:
        try:
            if backing.startswith("/"):
                return str(self._conn.storageVolLookupByPath(backing).path())
            return str(self._pool(pool).storageVolLookupByName(backing).path())
        except libvirt.libvirtError:
            return None

    def create_volume(
        self, pool: str, name: str, size_bytes: int, *, fmt: str = "qcow2",
        backing_path: str | None = None, backing_format: str = "qcow2",
    ) -> str:
        ctx = {"name": name, "capacity": size_bytes, "format": fmt,
               "backing_path": backing_path, "backing_format": backing_format}
        with translate(f"create volume {pool}/{name}"):
            vol = self._pool(pool).createXML(render("libvirt/volume.xml.j2", ctx), 0)
            return str(vol.path())

    def upload_volume(self, pool: str, name: str, data: bytes) -> str:
        """A raw volume holding ``data`` (works for remote hosts too: libvirt streams it)."""
        path = self.create_volume(pool, name, len(data), fmt="raw")
        try:
            with translate(f"upload {pool}/{name}"):
                vol = self._pool(pool).storageVolLookupByName(name)
                stream = self._conn.newStream(0)
                vol.upload(stream, 0, len(data), 0)
                view = memoryview(data)
                offset = 0
                while offset < len(view):
                    offset += stream.send(bytes(view[offset: offset + 1024 * 1024]))
                stream.finish()
        except BaseException:
            with contextlib.suppress(ProvError):
                self.delete_volume_path(path)
            raise
        return path

    def delete_volume_path(self, path: str) -> bool:
        try:
            vol = self._conn.storageVolLookupByPath(path)
        except libvirt.libvirtError:
            return False
        with translate(f"delete volume {path}"):
            vol.delete(0)
        return True


def build_seed_iso(hostname: str, user_data: str, meta_data: dict[str, Any], network_config: str | None) -> bytes:
    """A cloud-init NoCloud seed: an ISO 9660 image labelled ``cidata`` (cloud-init's NoCloud docs)."""
    tool = shutil.which("genisoimage") or shutil.which("xorriso")
    if tool is None:
        raise VirtError(reason="genisoimage or xorriso is needed to build a NoCloud seed ISO")
    meta = {"instance-id": f"prov-{hostname}", "local-hostname": hostname, **meta_data}
    with tempfile.TemporaryDirectory(prefix="prov-seed-") as tmp:
        src = Path(tmp, "seed")
        src.mkdir()
        (src / "user-data").write_text(user_data)
        # JSON is valid YAML, and cloud-init reads meta-data as YAML.
        (src / "meta-data").write_text(json.dumps(meta, indent=2) + "\n")
        if network_config:
            (src / "network-config").write_text(network_config)
        out = Path(tmp, "seed.iso")
        if tool.endswith("xorriso"):
            cmd = [tool, "-as", "mkisofs", "-output", str(out), "-volid", "cidata", "-joliet", "-rock", str(src)]
        else:
            cmd = [tool, "-quiet", "-output", str(out), "-volid", "cidata", "-joliet", "-rock", str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise VirtError(reason=f"seed ISO: {proc.stderr.strip()[-300:]}")
        return out.read_bytes()
