"""Warnings of ``prov template render`` (issue 19, item 4): the rules, and the preview that applies them.

The preview's text must be what the host is really served: rendered with the installer's own
context (its SSH keys included), only the install token replaced by a placeholder.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session

from provisioner import states as S
from provisioner import templates_catalog
from provisioner.conductor import configure, install_tokens
from provisioner.conductor.boot_context import PREVIEW_TOKEN
from provisioner.conductor.preview import preview
from provisioner.drivers.config.fake import PUBLIC_KEY, FakeConfig
from provisioner.models import Profile
from provisioner.render_warnings import boot_warnings, key_warnings, kind_warnings, url_warnings
from provisioner.settings import Settings
from tests.support.install import SSH_KEY, add_host, db, settings  # noqa: F401


def codes(warnings: list[Any]) -> list[str]:
    return [w.code for w in warnings]


# --------------------------------------------------------------------------- the rules
@pytest.mark.parametrize(("kind", "family", "method", "expected"), [
    ("kickstart", "debian", "image", ["kind_not_used", "os_family_mismatch"]),  # the case
    ("kickstart", "rhel", "kickstart", []),
    ("preseed", "rhel", "preseed", ["os_family_mismatch"]),
    ("preseed", "debian", "preseed", []),
    ("preseed", "ubuntu", "preseed", ["os_family_mismatch"]),  # Ubuntu's d-i ended with 20.04
    ("autoinstall", "ubuntu", "autoinstall", []),
    ("autoinstall", "debian", "preseed", ["kind_not_used", "os_family_mismatch"]),
    ("kickstart", "rhel", "image", ["kind_not_used"]),
    ("ipxe", "debian", "image", []),
    ("grub", "rhel", "kickstart", []),
])
def test_kind_and_family(kind: str, family: str, method: str, expected: list[str]) -> None:
    found = kind_warnings(kind, profile="p1", os_family=family, install_method=method)
    assert codes(found) == expected
    for w in found:
        assert "p1" in w.message and "\n" not in w.message


def test_kind_not_used_says_what_the_host_gets_instead() -> None:
    (w, _) = kind_warnings("kickstart", profile="debian12", os_family="debian", install_method="image")
    assert "never served a kickstart" in w.message and "deploy agent" in w.message


BASE = "http://127.0.0.1:8700"


@pytest.mark.parametrize(("base", "public", "text", "expected"), [
    (BASE, None, f"chain {BASE}/boot/x", ["public_url_unset"]),
    (BASE, "http://10.0.0.1:8700", "chain http://10.0.0.1:8700/boot/x", []),  # set: whatever it is
    ("http://10.0.0.1:8700", None, "chain http://10.0.0.1:8700/boot/x", []),  # listens on a real address
    ("http://0.0.0.0:8700", None, "chain http://0.0.0.0:8700/boot/x", ["public_url_unset"]),
    ("http://localhost:8700", None, "http://localhost:8700/x", ["public_url_unset"]),
    ("http://[::1]:8700", None, "http://[::1]:8700/x", ["public_url_unset"]),
    (BASE, None, "#!ipxe\nexit\n", []),  # names no controller URL at all (a local boot)
])
def test_public_url(base: str, public: str | None, text: str, expected: list[str]) -> None:
    assert codes(url_warnings("ipxe", base_url=base, public_url=public, text=text)) == expected


def test_public_url_message_names_the_url_and_the_setting() -> None:
    (w,) = url_warnings("ipxe", base_url=BASE, public_url=None, text=BASE)
    assert BASE in w.message and "PROV_PUBLIC_URL" in w.message and "over HTTP" in w.message
    (w,) = url_warnings("pxelinux", base_url=BASE, public_url=None, text=BASE)
    assert "over TFTP" in w.message


def test_keys_and_local_boot() -> None:
    assert codes(key_warnings("preseed", keys=[])) == ["no_ssh_key"]
    assert key_warnings("preseed", keys=[SSH_KEY]) == []
    assert key_warnings("ipxe", keys=[]) == []
    assert codes(boot_warnings("ipxe", host="web01", state="enrolled", installs=False)) == ["local_boot"]
    assert boot_warnings("ipxe", host="web01", state="installing", installs=True) == []
    assert boot_warnings("preseed", host="web01", state="enrolled", installs=False) == []


# --------------------------------------------------------------------------- the preview
@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> FakeConfig:
    fake = FakeConfig()
    monkeypatch.setattr(configure, "driver", fake)
    return fake


def _profile(db: Session, host_profile_id: int | None, **fields: Any) -> Profile:  # noqa: F811
    profile = db.get(Profile, host_profile_id)
    assert profile is not None
    for k, v in fields.items():
        setattr(profile, k, v)
    db.add(profile)
    db.commit()
    return profile


def test_a_kickstart_for_a_debian_image_profile_warns(db: Session, settings: Settings) -> None:  # noqa: F811
    host = add_host(db, method="image", os_family="debian", state=S.ENROLLED, netboot=False)
    got = preview(db, host.name, "kickstart", settings)
    assert got.text.startswith("#version=RHEL9")  # still rendered: the operator asked for it
    assert codes(got.warnings) == ["kind_not_used", "os_family_mismatch"]
    assert got.template == "kickstart/default.j2"
    assert got.to_dict()["warnings"][0]["code"] == "kind_not_used"


def test_a_fitting_preview_has_no_warnings(db: Session, settings: Settings) -> None:  # noqa: F811
    host = add_host(db, method="preseed", os_family="debian")  # installing, netboot on, PROV_PUBLIC_URL set
    assert preview(db, host.name, "preseed", settings).warnings == []
    got = preview(db, host.name, "ipxe", settings)
    assert got.warnings == [] and got.template == "ipxe/install.j2"


def test_loopback_controller_url_warns(db: Session, settings: Settings) -> None:  # noqa: F811
    loop = settings.model_copy(update={"public_url": None})  # the embedded default: 127.0.0.1:8700
    host = add_host(db, method="preseed", os_family="debian")
    got = preview(db, host.name, "ipxe", loop)
    assert codes(got.warnings) == ["public_url_unset"]
    assert loop.base_url in got.text and loop.base_url in got.warnings[0].message


def test_a_local_boot_preview_says_so(db: Session, settings: Settings) -> None:  # noqa: F811
    host = add_host(db, method="preseed", os_family="debian", state=S.ENROLLED, netboot=False)
    got = preview(db, host.name, "ipxe", settings)
    assert codes(got.warnings) == ["local_boot"] and got.template == "ipxe/local.j2"


def test_no_key_warns(db: Session, settings: Settings) -> None:  # noqa: F811
    host = add_host(db, method="preseed", os_family="debian", params={})
    got = preview(db, host.name, "preseed", settings)
    assert codes(got.warnings) == ["no_ssh_key"]


@pytest.mark.parametrize(("method", "family", "kind", "name"), [
    ("autoinstall", "ubuntu", "autoinstall", None),
    ("autoinstall", "ubuntu", "autoinstall", "user-data"),
    ("preseed", "debian", "preseed", None),
    ("kickstart", "rhel", "kickstart", None),
])
def test_preview_is_what_the_installer_gets_keys_included(db: Session, settings: Settings,  # noqa: F811
                                                         fake_engine: FakeConfig, method: str, family: str,
                                                         kind: str, name: str | None) -> None:
    """The issue's ``authorized-keys: []``: a profile with playbooks gets the controller's key (its
    configure step logs in with it), and the preview shows exactly what the installer is served."""
    host = add_host(db, method=method, os_family=family, params={"ssh_authorized_keys": [SSH_KEY]})
    _profile(db, host.profile_id, playbooks=["harden"])
    token = install_tokens.mint(db, host, settings)
    served = templates_catalog.render_install_file(db, host, token, settings, kind=kind, name=name)
    shown = preview(db, host.name, kind, settings)
    assert shown.text == served.replace(token, PREVIEW_TOKEN)
    assert SSH_KEY in shown.text and PUBLIC_KEY in shown.text
    assert "no_ssh_key" not in codes(shown.warnings)
    if kind == "autoinstall":
        assert "authorized-keys: []" not in shown.text


def test_without_playbooks_the_controller_key_is_not_added(db: Session, settings: Settings,  # noqa: F811
                                                           fake_engine: FakeConfig) -> None:
    host = add_host(db, method="autoinstall", os_family="ubuntu", params={})
    got = preview(db, host.name, "autoinstall", settings)
    assert PUBLIC_KEY not in got.text and "authorized-keys: []" in got.text
    assert codes(got.warnings) == ["no_ssh_key"]
