# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""Per-MAC boot configs: install only when netboot is on and the host is installing; never for strangers."""

from __future__ import annotations

import re

import pytest

from provisioner import states as S
from provisioner.conductor import install_tokens, netboot
from provisioner.conductor.boot_context import PREVIEW_TOKEN, boot_context
from provisioner.errors import InvalidInput
from tests.support.install import PUBLIC_URL, SSH_KEY, add_host, db, settings, snapshot  # noqa: F401

TOKEN_RE = re.compile(r"prov\.token=(\S+)")


@pytest.mark.parametrize("kind", ["ipxe", "pxelinux", "grub"])
def test_install_config_carries_a_fresh_token_that_verifies(db, settings, kind):
    host = add_host(db, method="preseed")
    text = netboot.boot_config_for_mac(db, _mac(db, host), kind, settings)
    assert text is not None
    m = TOKEN_RE.search(text)
    assert m, text
    token = m.group(1)
    assert install_tokens.verify(db, token).id == host.id
    assert f"url={PUBLIC_URL}/install/v1/{token}/config" in text
    kernel = "/boot/files/images/debian/linux"
    assert f"{PUBLIC_URL}{kernel}" in text or f"(http,prov.test:8700){kernel}" in text


def _mac(db, host) -> str:
    from provisioner import crud

    return crud.host_nics(db, host_id=host.id)[0].mac


def test_second_boot_fetch_gets_the_same_token_and_revokes_nothing(db, settings):
    # issue 18: a re-fetch (firmware retry, or anyone who knows the MAC) used to mint a new token
    # and so lock the real installer out; the token belongs to the boot (test_boot_token_binding.py)
    host = add_host(db)
    mac = _mac(db, host)
    first = TOKEN_RE.search(netboot.boot_config_for_mac(db, mac, "ipxe", settings) or "").group(1)  # type: ignore[union-attr]
    second = TOKEN_RE.search(netboot.boot_config_for_mac(db, mac, "ipxe", settings) or "").group(1)  # type: ignore[union-attr]
    assert first == second
    assert install_tokens.verify(db, first).id == host.id


@pytest.mark.parametrize(
    ("state", "netboot_on"),
    [(S.INSTALL_WAIT, False), (S.ACTIVE, True), (S.BOOTING, True), (S.INSTALL_FAILED, True), (S.AVAILABLE, True)],
)
def test_local_boot_unless_installing_with_netboot(db, settings, state, netboot_on):
    host = add_host(db, state=state, netboot=netboot_on)
    mac = _mac(db, host)
    before = snapshot(db)
    ipxe = netboot.boot_config_for_mac(db, mac.upper().replace(":", "-"), "ipxe", settings)
    assert ipxe is not None and ipxe.startswith("#!ipxe\n")
    assert "sanboot --no-describe --drive 0x80" in ipxe
    assert "prov.token" not in ipxe
    assert "LOCALBOOT 0" in (netboot.boot_config_for_mac(db, mac, "pxelinux", settings) or "")
    assert "exit" in (netboot.boot_config_for_mac(db, mac, "grub", settings) or "")
    assert snapshot(db) == before  # no token minted for a local boot


def test_host_without_profile_boots_locally(db, settings):
    host = add_host(db, with_profile=False)
    assert "sanboot" in (netboot.boot_config_for_mac(db, _mac(db, host), "ipxe", settings) or "")


def test_unknown_mac_gets_nothing_by_default(db, settings):
    add_host(db)
    assert netboot.boot_config_for_mac(db, "02:00:00:00:00:99", "ipxe", settings) is None
    assert netboot.boot_config_for_mac(db, "02:00:00:00:00:99", "pxelinux", settings) is None


def test_unknown_mac_gets_discovery_when_configured(db, settings):
    s = settings.model_copy(update={"unknown_mac_action": "discover"})
    text = netboot.boot_config_for_mac(db, "02:00:00:00:00:99", "ipxe", s)
    assert text is not None and text.startswith("#!ipxe\n")
    assert "02:00:00:00:00:99" in text and "kernel" not in text and "token" not in text


def test_bad_mac_and_kind_are_refused(db, settings):
    with pytest.raises(InvalidInput):
        netboot.boot_config_for_mac(db, "not-a-mac", "ipxe", settings)
    with pytest.raises(InvalidInput):
        netboot.boot_config_for_mac(db, "02:00:00:00:00:99", "bios", settings)


@pytest.mark.parametrize(
    ("key", "value"),
    [("admin_user", "root\nd-i passwd/root-login boolean true"), ("mirror", "http://x/ y"),
     ("timezone", "UTC\nrootpw x"), ("ssh_authorized_keys", ["ssh-ed25519 AAAA x\nrootpw --plaintext x"]),
     ("packages", ["vim; reboot"]), ("disk", "/dev/sda /dev/sdb"), ("proxy", "ftp://evil")],
)
def test_profile_params_cannot_inject_directives(db, settings, key, value):
    host = add_host(db, params={"ssh_authorized_keys": [SSH_KEY], key: value})
    before = snapshot(db)
    with pytest.raises(InvalidInput) as exc:
        netboot.boot_config_for_mac(db, _mac(db, host), "ipxe", settings)
    assert key in exc.value.message
    assert snapshot(db) == before  # refused before a token was minted


def test_context_has_the_install_parameters(db, settings):
    host = add_host(db, method="kickstart", os_family="rhel",
                    params={"ssh_authorized_keys": SSH_KEY, "domain": "lab.test", "packages": ["vim"]})
    ctx = boot_context(db, host, settings)
    assert ctx["token"] == PREVIEW_TOKEN
    assert ctx["host"]["fqdn"] == f"{host.name}.lab.test"
    assert ctx["install"]["ssh_authorized_keys"] == [SSH_KEY]
    assert ctx["install"]["mirror"].startswith("https://dl.rockylinux.org/")
    assert ctx["urls"]["kernel"] == f"{PUBLIC_URL}/boot/files/images/debian/linux"
    assert ctx["urls"]["kernel_grub"] == "(http,prov.test:8700)/boot/files/images/debian/linux"
    assert ctx["nic"]["mac"] == _mac(db, host)


def test_preview_mints_nothing(db, settings):
    host = add_host(db)
    before = snapshot(db)
    text = netboot.preview_boot_config(db, host, "ipxe", settings)
    assert f"prov.token={PREVIEW_TOKEN}" in text
    assert snapshot(db) == before
