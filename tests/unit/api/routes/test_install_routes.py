# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""Install-time routes and boot scripts over HTTP: tokens, limits, state, and no reinstall loop."""

from __future__ import annotations

import json

import pytest

from provisioner import crud
from provisioner import states as S
from provisioner.conductor import install_tokens
from provisioner.conductor.boot_context import PREVIEW_TOKEN
from provisioner.models import Host, utcnow
from tests.support.install import PUBLIC_URL, add_host, api, db, settings, snapshot, wait_tasks  # noqa: F401


def _mac(db, host):
    return crud.host_nics(db, host_id=host.id)[0].mac


def _boot_token(api, db, host):
    r = api.client.get(f"/boot/ipxe/{_mac(db, host)}")
    assert r.status_code == 200, r.text
    token = pxe_token(r.text)
    return r.text, token


def pxe_token(text):
    for word in text.split():
        if word.startswith("prov.token="):
            return word.split("=", 1)[1]
    raise AssertionError(f"no token in {text}")


def test_boot_ipxe_chain_script(api):
    r = api.client.get("/boot/boot.ipxe")
    assert r.status_code == 200
    assert r.text.startswith("#!ipxe\n")
    assert f"chain --autofree {PUBLIC_URL}/boot/ipxe/${{netX/mac}}" in r.text
    assert r.headers["cache-control"] == "no-store"


def test_unknown_mac_404(api):
    r = api.client.get("/boot/ipxe/02:00:00:00:00:42")
    assert r.status_code == 404


def test_full_install_flow_without_reinstall_loop(api, db):
    host = add_host(db, method="preseed")
    script, token = _boot_token(api, db, host)
    assert f"url={PUBLIC_URL}/install/v1/{token}/config" in script

    r = api.client.get(f"/install/v1/{token}/config")
    assert r.status_code == 200, r.text
    assert "d-i passwd/root-login boolean false" in r.text
    assert f"{PUBLIC_URL}/install/v1/{token}/report?event=done" in r.text

    r = api.client.post(f"/install/v1/{token}/events", json={"event": "start", "message": "early"})
    assert r.status_code == 200 and r.json()["state"] == S.INSTALL_WAIT
    r = api.client.get(f"/install/v1/{token}/report", params={"event": "progress", "progress": 50})
    assert r.status_code == 200
    r = api.client.post(f"/install/v1/{token}/events", json={"event": "done"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == S.BOOTING

    wait_tasks(db)  # the boot-device change runs in the background
    db.expire_all()
    h = db.get(Host, host.id)
    assert h.state == S.BOOTING and h.netboot is False and h.install_token_hash is None

    # reused token: 403 and nothing changes
    before = snapshot(db)
    for method, url, kw in [("POST", f"/install/v1/{token}/events", {"json": {"event": "done"}}),
                            ("GET", f"/install/v1/{token}/config", {}),
                            ("GET", f"/install/v1/{token}/report?event=error", {})]:
        r = api.client.request(method, url, **kw)
        assert r.status_code == 403, (url, r.text)
    assert snapshot(db) == before

    # the next PXE boot is a local boot, even with the install state forced back
    r = api.client.get(f"/boot/ipxe/{_mac(db, host)}")
    assert r.status_code == 200 and "sanboot --no-describe --drive 0x80" in r.text and "prov.token" not in r.text


@pytest.mark.parametrize("kind", ["wrong", "expired", "other-host"])
def test_bad_tokens_are_403_and_change_nothing(api, db, settings, kind):
    host = add_host(db)
    other = add_host(db)
    token = install_tokens.mint(db, host, settings)
    other_token = install_tokens.mint(db, other, settings)
    if kind == "wrong":
        bad = token[:-4] + "AAAA"
    elif kind == "expired":
        host.install_token_expires = utcnow()
        db.add(host)
        db.commit()
        bad = token
    else:
        bad = f"{host.id}.{other_token.split('.', 1)[1]}"
    before = snapshot(db)
    for body in ({"event": "done"}, {"event": "error", "message": "x"}, {"bogus": 1}):
        r = api.client.post(f"/install/v1/{bad}/events", json=body)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "forbidden"
    for path in ("config", "user-data", "meta-data", "vendor-data"):
        assert api.client.get(f"/install/v1/{bad}/{path}").status_code == 403
    assert api.client.get(f"/install/v1/{bad}/report", params={"event": "done"}).status_code == 403
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"event": "finished"}', b'{"event": "done", "extra": 1}',
     b'{"event": "progress", "progress": 101}', b'{"event": 5}', b'{"event": "done", "message": 7}',
     json.dumps({"event": "error", "message": "x" * 5000}).encode()],
)
def test_malformed_events_are_422_and_change_nothing(api, db, settings, body):
    host = add_host(db)
    token = install_tokens.mint(db, host, settings)
    before = snapshot(db)
    r = api.client.post(f"/install/v1/{token}/events", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert snapshot(db) == before


def test_oversized_event_is_413_and_changes_nothing(api, db, settings):
    host = add_host(db)
    token = install_tokens.mint(db, host, settings)
    before = snapshot(db)
    big = json.dumps({"event": "error", "message": "x" * 40_000}).encode()
    r = api.client.post(f"/install/v1/{token}/events", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # chunked (no Content-Length) is cut off while streaming
    r = api.client.post(f"/install/v1/{token}/events", content=iter([big[:10_000], big[10_000:]]),
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert snapshot(db) == before


def test_event_for_host_not_waiting_is_409(api, db, settings):
    host = add_host(db, state=S.INSTALL_WAIT)
    token = install_tokens.mint(db, host, settings)
    host.state = S.ACTIVE  # e.g. an operator aborted and fixed it by hand
    db.add(host)
    db.commit()
    before = snapshot(db)
    r = api.client.post(f"/install/v1/{token}/events", json={"event": "done"})
    assert r.status_code == 409
    assert api.client.get(f"/install/v1/{token}/config").status_code == 409
    assert snapshot(db) == before


def test_ipxe_error_report_fails_the_install(api, db):
    host = add_host(db, method="kickstart", os_family="rhel")
    _script, token = _boot_token(api, db, host)
    r = api.client.get(f"/install/v1/{token}/report",
                       params={"event": "error", "reason": "ipxe-boot-failed", "errno": "0x3e11623b"})
    assert r.status_code == 200, r.text
    db.expire_all()
    h = db.get(Host, host.id)
    assert h.state == S.INSTALL_FAILED and "ipxe-boot-failed" in h.last_error and "3e11623b" in h.last_error
    # and a failed host is not handed the installer again on its next PXE boot
    assert "sanboot" in api.client.get(f"/boot/ipxe/{_mac(db, host)}").text


def test_autoinstall_nocloud_files(api, db):
    host = add_host(db, method="autoinstall", os_family="ubuntu")
    script, token = _boot_token(api, db, host)
    assert f"ds=nocloud-net;s={PUBLIC_URL}/install/v1/{token}/" in script
    ud = api.client.get(f"/install/v1/{token}/user-data")
    assert ud.status_code == 200 and ud.text.startswith("#cloud-config\n") and "autoinstall:" in ud.text
    md = api.client.get(f"/install/v1/{token}/meta-data")
    assert md.status_code == 200 and f'local-hostname: "{host.name}"' in md.text
    assert api.client.get(f"/install/v1/{token}/vendor-data").status_code == 200
    assert api.client.get(f"/install/v1/{token}/config").text == ud.text


def test_user_data_refused_for_other_methods(api, db, settings):
    host = add_host(db, method="preseed")
    token = install_tokens.mint(db, host, settings)
    assert api.client.get(f"/install/v1/{token}/user-data").status_code == 409


def test_rendered_preview_and_templates_api(api, db):
    host = add_host(db, method="kickstart", os_family="rhel")
    before = snapshot(db)
    r = api.client.get(f"/api/v1/hosts/{host.name}/rendered/kickstart", headers=api.auth)
    assert r.status_code == 200 and r.text.startswith("#version=RHEL9")
    assert PREVIEW_TOKEN in r.text
    r = api.client.get(f"/api/v1/hosts/{host.id}/rendered/ipxe", headers=api.auth)
    assert r.status_code == 200 and r.text.startswith("#!ipxe\n") and "inst.ks=" in r.text
    assert snapshot(db) == before
    assert api.client.get(f"/api/v1/hosts/{host.name}/rendered/bogus", headers=api.auth).status_code == 422
    assert api.client.get("/api/v1/hosts/nope/rendered/ipxe", headers=api.auth).status_code == 404
    assert api.client.get("/api/v1/templates").status_code == 401
    listed = api.client.get("/api/v1/templates", headers=api.auth).json()
    names = {(t["kind"], t["name"]) for t in listed["data"]}
    assert {("kickstart", "default"), ("preseed", "default"), ("autoinstall", "user-data"), ("ipxe", "install"),
            ("pxelinux", "local"), ("grub", "install")} <= names


def test_template_upload_over_http(api, db, settings):
    src = "#!ipxe\necho custom local boot for {{ host.name }}\nexit\n"
    r = api.client.put("/api/v1/templates/ipxe/local", content=src, headers=api.auth)
    assert r.status_code == 200, r.text
    assert r.json()["overrides_builtin"] is True
    host = add_host(db, state=S.ACTIVE)
    r = api.client.get(f"/boot/ipxe/{_mac(db, host)}")
    assert r.text == f"#!ipxe\necho custom local boot for {host.name}\nexit\n"

    r = api.client.put("/api/v1/templates/ipxe/mine", content="#!ipxe\necho {{ hots.name }}\n", headers=api.auth)
    assert r.status_code == 422 and "hots" in r.json()["message"]
    r = api.client.put("/api/v1/templates/ipxe/evil", content="#!ipxe\n{{ ''.__class__.__mro__ }}\n",
                       headers=api.auth)
    assert r.status_code == 422 and "sandbox" in r.json()["message"]
    r = api.client.put("/api/v1/templates/ipxe/..%2F..%2Fetc", content="#!ipxe\n", headers=api.auth)
    assert r.status_code in (404, 422)
    assert not (settings.user_templates_dir / "ipxe" / "mine.j2").exists()
    assert not (settings.user_templates_dir / "ipxe" / "evil.j2").exists()
