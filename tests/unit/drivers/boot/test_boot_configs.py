"""Boot config helpers without a database: URLs per boot loader, kinds, rendering from a plain dict."""

from __future__ import annotations

import pytest

from provisioner.drivers.boot import configs
from provisioner.errors import InvalidInput

BASE = "http://10.0.0.1:8700"


def test_relative_boot_files_are_served_under_boot_files_and_absolute_urls_stay():
    assert configs.boot_file_url("images/debian/linux", BASE) == f"{BASE}/boot/files/images/debian/linux"
    assert configs.boot_file_url("/prov/vmlinuz", BASE) == f"{BASE}/boot/files/prov/vmlinuz"
    assert configs.boot_file_url("https://mirror.example/linux", BASE) == "https://mirror.example/linux"
    assert configs.boot_file_url("", BASE) == ""


def test_grub_names_network_files_by_protocol_and_server():
    assert configs.grub_path(f"{BASE}/boot/files/k?x=1") == "(http,10.0.0.1:8700)/boot/files/k?x=1"
    assert configs.grub_path("https://mirror.example/linux") == "https://mirror.example/linux"
    urls = configs.installer_urls("k", "i", BASE)
    assert urls == {"kernel": f"{BASE}/boot/files/k", "initrd": f"{BASE}/boot/files/i",
                    "kernel_grub": "(http,10.0.0.1:8700)/boot/files/k",
                    "initrd_grub": "(http,10.0.0.1:8700)/boot/files/i"}


def test_render_from_a_plain_context_and_unknown_kinds_refused():
    text = configs.render_config("ipxe", "discover", configs.discovery_context("52:54:00:00:00:01", BASE))
    assert text.startswith("#!ipxe\n") and "52:54:00:00:00:01" in text
    assert f"{BASE}/boot/ipxe/" in configs.render_config("ipxe", "boot", configs.first_stage_context(BASE))
    with pytest.raises(InvalidInput):
        configs.render_config("bios", "local", {})
