"""``prov template list|render|upload`` against the real API (in-process server)."""

from __future__ import annotations

from sqlmodel import Session

import provisioner.cli.template  # noqa: F401  (registers the commands)
from provisioner.db import get_engine
from tests.support.install import add_host
from tests.unit.cli.conftest import one_error_line


def test_template_list(prov):
    r = prov("template", "list", "-o", "json")
    assert r.exit_code == 0, r.output
    assert '"kickstart"' in r.stdout and '"user-data"' in r.stdout


def test_template_render_for_host(prov, live_api, uid):
    with Session(get_engine(live_api.settings)) as s:
        host = add_host(
            s,
            name=f"tpl-{uid}",
            method="kickstart",
            os_family="rhel",
            mac=f"02:{uid[0:2]}:{uid[2:4]}:{uid[4:6]}:{uid[6:8]}:01",
        )
        name = host.name
    r = prov("template", "render", "kickstart", "--host", name)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("#version=RHEL9") and f"--hostname={name}." in r.stdout
    r = prov("template", "render", "ipxe", "--host", name)
    assert r.exit_code == 0 and r.stdout.startswith("#!ipxe") and "inst.ks=" in r.stdout
    r = prov("template", "render", "ipxe", "--host", f"missing-{uid}")
    assert r.exit_code == 3 and "not found" in one_error_line(r)


def test_template_upload(prov, tmp_path, uid):
    good = tmp_path / "good.j2"
    good.write_text("#!ipxe\necho hello {{ host.name }}\nexit\n")
    r = prov("template", "upload", "ipxe", f"site-{uid}", str(good), "-o", "json")
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad.j2"
    bad.write_text("#!ipxe\necho {{ host.nmae }} {{ hostname }}\n")
    r = prov("template", "upload", "ipxe", f"bad-{uid}", str(bad))
    assert r.exit_code == 2
    assert "hostname" in one_error_line(r)
    r = prov("template", "upload", "ipxe", f"x-{uid}", str(tmp_path / "nope.j2"))
    assert r.exit_code == 2
