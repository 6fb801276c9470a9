# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""The netboot policy against the fake boot driver: which config a MAC gets, and when a token is minted.

No template is rendered here (FakeBoot records the kind, the name and the
context it was asked to render); test_netboot.py covers the same policy with
the real templates.
"""

from __future__ import annotations

import pytest

from provisioner import crud
from provisioner import states as S
from provisioner.conductor import install_tokens, netboot
from provisioner.conductor.boot_context import PREVIEW_TOKEN
from provisioner.drivers.boot.fake import FakeBoot
from provisioner.errors import InvalidInput
from provisioner.models import Host
from tests.support.install import add_host, db, settings, snapshot  # noqa: F401


def _mac(db, host) -> str:
    return crud.host_nics(db, host_id=host.id)[0].mac


def test_unknown_mac_gets_nothing_and_renders_nothing(db, settings):
    boot = FakeBoot()
    assert netboot.boot_config_for_mac(db, "02:00:00:00:00:99", "ipxe", settings, boot=boot) is None
    assert boot.calls == []


def test_unknown_mac_gets_discovery_when_configured(db, settings):
    boot = FakeBoot()
    s = settings.model_copy(update={"unknown_mac_action": "discover"})
    netboot.boot_config_for_mac(db, "02-00-00-00-00-99", "pxelinux", s, boot=boot)
    assert boot.rendered == [("pxelinux", "discover", {"mac": "02:00:00:00:00:99", "base_url": s.base_url})]


@pytest.mark.parametrize(("state", "netboot_on"), [(S.INSTALL_WAIT, False), (S.ACTIVE, True), (S.BOOTING, True)])
def test_netboot_off_or_not_installing_boots_locally_and_mints_nothing(db, settings, state, netboot_on):
    host = add_host(db, state=state, netboot=netboot_on)
    boot = FakeBoot()
    before = snapshot(db)
    netboot.boot_config_for_mac(db, _mac(db, host), "grub", settings, boot=boot)
    assert boot.calls == [("render", "grub", "local")]
    assert boot.rendered[0][2]["token"] == PREVIEW_TOKEN
    assert snapshot(db) == before


def test_install_state_gets_the_install_config_and_one_token(db, settings):
    host = add_host(db, state=S.INSTALL_WAIT, netboot=True)
    boot = FakeBoot()
    netboot.boot_config_for_mac(db, _mac(db, host), "ipxe", settings, boot=boot)
    # a placeholder render first (a broken template fails before a token is minted), then the real one
    assert boot.calls == [("render", "ipxe", "install")] * 2
    assert boot.rendered[0][2]["token"] == PREVIEW_TOKEN
    token = boot.rendered[1][2]["token"]
    assert token != PREVIEW_TOKEN and boot.rendered[1][2]["urls"]["config"].endswith(f"/{token}/config")
    assert install_tokens.verify(db, token).id == host.id
    db.expire_all()
    assert db.get(Host, host.id).install_token_hash is not None


def test_a_failing_render_mints_no_token(db, settings):
    host = add_host(db, state=S.INSTALLING, netboot=True)

    class Broken(FakeBoot):
        def render_config(self, kind, name, context):
            raise InvalidInput(field="template", reason="broken")

    before = snapshot(db)
    with pytest.raises(InvalidInput):
        netboot.boot_config_for_mac(db, _mac(db, host), "ipxe", settings, boot=Broken())
    assert snapshot(db) == before


def test_preview_and_first_stage_mint_nothing(db, settings):
    host = add_host(db, state=S.INSTALL_WAIT, netboot=True)
    boot = FakeBoot()
    before = snapshot(db)
    netboot.preview_boot_config(db, host, "ipxe", settings, boot=boot)
    netboot.first_stage_script(settings, boot=boot)
    assert boot.calls == [("render", "ipxe", "install"), ("render", "ipxe", "boot")]
    assert boot.rendered[0][2]["token"] == PREVIEW_TOKEN
    assert boot.rendered[1][2] == {"base_url": settings.base_url}
    assert snapshot(db) == before


def test_unknown_kind_is_refused_before_anything(db, settings):
    boot = FakeBoot()
    with pytest.raises(InvalidInput):
        netboot.boot_config_for_mac(db, "02:00:00:00:00:99", "bios", settings, boot=boot)
    assert boot.calls == []
