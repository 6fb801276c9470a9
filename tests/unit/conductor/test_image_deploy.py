"""Image deploy glue: publishing an image in the boot root, validation, the agent script, the iPXE line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlmodel import Session

from provisioner import migrate, render
from provisioner import states as S
from provisioner.conductor import image_deploy, netboot
from provisioner.conductor.boot_context import boot_context
from provisioner.db import get_engine
from provisioner.drivers.deploy.base import RAMDISK_INITRD, RAMDISK_KERNEL
from provisioner.drivers.deploy.fake import FakeDeploy
from provisioner.drivers.deploy.images import publish_image
from provisioner.errors import InvalidInput
from provisioner.models import Host, Nic, Profile
from provisioner.settings import Settings

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0123456789abcdefghijkl lab"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, power_sync_enabled=False, tftp_enabled=False,
                 public_url="http://10.213.0.1:8700")
    s.ensure_dirs()
    migrate.upgrade(s)
    return s


def _host(settings: Settings, image_url: str, checksum: str = "") -> int:
    with Session(get_engine(settings)) as s:
        prof = Profile(name="img", install_method="image", image_url=image_url, image_checksum=checksum,
                       kernel_args="console=ttyS0", params={"ssh_authorized_keys": [KEY], "disk": "/dev/vda"})
        s.add(prof)
        s.flush()
        h = Host(name="lab-01", profile_id=prof.id, state=S.INSTALL_WAIT, netboot=True)
        s.add(h)
        s.flush()
        assert h.id is not None
        s.add(Nic(host_id=h.id, mac="52:54:00:d5:00:0a", boot=True, ip="10.213.0.10"))
        s.commit()
        assert h.id is not None
        return h.id


def test_publish_then_agent_script_names_image_checksum_size_and_seed(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(b"\x01" * 4096)
    checksum = publish_image(src, settings.boot_dir, "images/lab.raw")
    assert checksum == "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    assert (settings.boot_dir / "images/lab.raw.sha256").read_text().startswith(checksum[7:])
    hid = _host(settings, "images/lab.raw", checksum)
    for f in (RAMDISK_KERNEL, RAMDISK_INITRD):
        (settings.boot_dir / f).parent.mkdir(parents=True, exist_ok=True)
        (settings.boot_dir / f).write_bytes(b"k")
    with Session(get_engine(settings)) as s:
        host = s.get(Host, hid)
        assert host is not None
        prof = s.get(Profile, host.profile_id)
        assert prof is not None
        image_deploy.check_boot_files(prof, settings)
        text = image_deploy.agent_script(s, host, "1.tok", settings)
        ctx = boot_context(s, host, settings, token="1.tok")
    assert "IMAGE_URL=http://10.213.0.1:8700/boot/files/images/lab.raw" in text
    assert f"IMAGE_SHA256={checksum[7:]}" in text and "IMAGE_SIZE=4096" in text
    assert "EVENTS=http://10.213.0.1:8700/install/v1/1.tok/events" in text
    assert KEY in text and "1.tok" not in text.split("meta-data")[1].split("user-data")[0]
    ipxe = render.render("ipxe/install.j2", ctx, settings)
    assert "kernel http://10.213.0.1:8700/boot/files/prov/vmlinuz" in ipxe
    assert "prov.run=http://10.213.0.1:8700/install/v1/1.tok/agent.sh" in ipxe


def test_validation_names_the_missing_ramdisk_and_a_wrong_checksum(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(b"\x02" * 512)
    publish_image(src, settings.boot_dir, "images/lab.raw")
    hid = _host(settings, "images/lab.raw", "sha256:" + "0" * 64)
    with Session(get_engine(settings)) as s:
        host = s.get(Host, hid)
        assert host is not None
        prof = s.get(Profile, host.profile_id)
        assert prof is not None
        with pytest.raises(InvalidInput, match="prov/vmlinuz is missing"):
            image_deploy.check_boot_files(prof, settings)
        for f in (RAMDISK_KERNEL, RAMDISK_INITRD):
            (settings.boot_dir / f).parent.mkdir(parents=True, exist_ok=True)
            (settings.boot_dir / f).write_bytes(b"k")
        with pytest.raises(InvalidInput, match="sha256"):
            image_deploy.check_boot_files(prof, settings)


def test_request_base_url_only_without_public_url(settings: Settings) -> None:
    assert netboot.settings_for_request(settings, "http://10.9.9.1:80/").base_url == "http://10.213.0.1:8700"
    bare = settings.model_copy(update={"public_url": None})
    assert netboot.settings_for_request(bare, "http://10.9.9.1:8700/").base_url == "http://10.9.9.1:8700"


def test_agent_script_context_through_the_fake_deploy_driver(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(b"\x03" * 2048)
    checksum = publish_image(src, settings.boot_dir, "images/lab.raw")
    hid = _host(settings, "images/lab.raw", checksum)
    deploy = FakeDeploy()
    with Session(get_engine(settings)) as s:
        host = s.get(Host, hid)
        assert host is not None
        image_deploy.agent_script(s, host, "1.tok", settings, deploy=deploy)
    [(what, template, ctx)] = deploy.calls
    assert (what, template) == ("agent", "deploy/agent.sh.j2")
    assert ctx["token"] == "1.tok" and ctx["urls"]["agent"].endswith("/install/v1/1.tok/agent.sh")
    assert ctx["image"] == {"url": "http://10.213.0.1:8700/boot/files/images/lab.raw", "sha256": checksum[7:],
                            "size": 2048, "format": "raw"}
    assert ctx["deploy"]["after"] == "reboot" and ctx["deploy"]["on_error"] == "shell"
    assert "1.tok" not in ctx["deploy"]["instance_id"]
