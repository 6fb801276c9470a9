"""The installers' own report commands, run for real against a live controller.

Each install file is fetched with ``curl`` exactly as an installer would, the
report commands it contains are cut out of it and executed with the tools the
installer has (``curl`` in Anaconda and Subiquity, busybox ``wget`` in d-i),
and the host's state is checked afterwards, ending with the no-reinstall check:
the next PXE boot script is a local boot.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlmodel import Session

from provisioner import crud
from provisioner import states as S
from provisioner.db import get_engine
from provisioner.models import Host
from provisioner.settings import Settings
from tests.support.helpers import require_binary
from tests.support.install import add_host, live_server, wait_tasks

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Settings, str]]:
    with live_server(tmp_path / "data") as s:
        yield s


def curl(url: str) -> str:
    r = subprocess.run(["curl", "-fsS", "-m", "10", url], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"{url}: {r.stderr}"
    return r.stdout


def sh(script: str) -> None:
    """Run an installer snippet. The snippets end in '|| true', so check the effect, not the exit code."""
    subprocess.run(["sh", "-eu", "-c", script], check=True, timeout=30, capture_output=True)


def boot(db: Session, url: str, host: Host) -> tuple[str, str]:
    mac = crud.host_nics(db, host_id=host.id)[0].mac
    script = curl(f"{url}/boot/ipxe/{mac}")
    m = re.search(r"prov\.token=(\S+)", script)
    assert m, script
    return script, m.group(1)


def state(db: Session, host: Host) -> Host:
    db.expire_all()
    h = db.get(Host, host.id)
    assert h is not None
    return h


def section(ks: str, header: str) -> str:
    m = re.search(rf"^{re.escape(header)}[^\n]*\n(.*?)^%end$", ks, re.M | re.S)
    assert m, header
    return m.group(1)


def assert_no_reinstall(db: Session, url: str, host: Host) -> None:
    wait_tasks(db)
    h = state(db, host)
    assert h.state == S.BOOTING and not h.netboot and h.install_token_hash is None
    mac = crud.host_nics(db, host_id=host.id)[0].mac
    again = curl(f"{url}/boot/ipxe/{mac}")
    assert "sanboot --no-describe --drive 0x80" in again and "prov.token" not in again


def test_kickstart_pre_post_report_start_and_done(server):
    require_binary("curl")
    settings, url = server
    with Session(get_engine(settings)) as db:
        host = add_host(db, method="kickstart", os_family="rhel")
        script, token = boot(db, url, host)
        assert f"inst.ks={url}/install/v1/{token}/config" in script
        ks = curl(f"{url}/install/v1/{token}/config")
        sh(section(ks, "%pre"))
        assert [e.event for e in crud_events(db, host)][-1] == "install-start"
        sh(section(ks, "%post --nochroot"))
        assert_no_reinstall(db, url, host)


def test_kickstart_onerror_reports_the_failure(server):
    require_binary("curl")
    settings, url = server
    with Session(get_engine(settings)) as db:
        host = add_host(db, method="kickstart", os_family="rhel")
        _script, token = boot(db, url, host)
        ks = curl(f"{url}/install/v1/{token}/config")
        sh(section(ks, "%onerror"))
        h = state(db, host)
        assert h.state == S.INSTALL_FAILED and "anaconda reported" in (h.last_error or "")
        # the token is spent: a replayed "done" is refused and changes nothing
        sh(section(ks, "%post --nochroot"))
        assert state(db, host).state == S.INSTALL_FAILED


def test_autoinstall_commands_report_start_and_done(server):
    require_binary("curl")
    settings, url = server
    with Session(get_engine(settings)) as db:
        host = add_host(db, method="autoinstall", os_family="ubuntu")
        script, token = boot(db, url, host)
        seed = f"{url}/install/v1/{token}/"
        assert f"ds=nocloud-net;s={seed}" in script
        # what cloud-init's NoCloud datasource fetches from the seed URL
        meta = yaml.safe_load(curl(seed + "meta-data"))
        assert meta["local-hostname"] == host.name
        curl(seed + "vendor-data")
        ai = yaml.safe_load(curl(seed + "user-data"))["autoinstall"]
        for cmd in ai["early-commands"]:
            sh(cmd)
        assert [e.event for e in crud_events(db, host)][-1] == "install-start"
        for cmd in ai["late-commands"]:
            sh(cmd)
        assert_no_reinstall(db, url, host)


def test_preseed_busybox_wget_reports_start_and_done(server):
    require_binary("busybox")
    settings, url = server
    with Session(get_engine(settings)) as db:
        host = add_host(db, method="preseed")
        script, token = boot(db, url, host)
        assert f"auto=true priority=critical url={url}/install/v1/{token}/config" in script
        preseed = curl(f"{url}/install/v1/{token}/config")
        wgets = re.findall(r"wget -q -O /dev/null '[^']+'", preseed)
        assert len(wgets) == 2  # early_command (start), late_command (done)
        sh("busybox " + wgets[0])
        assert [e.event for e in crud_events(db, host)][-1] == "install-start"
        sh("busybox " + wgets[1])
        assert_no_reinstall(db, url, host)


def crud_events(db: Session, host: Host) -> list:
    from sqlmodel import select

    from provisioner.models import Event

    db.expire_all()
    return list(db.exec(select(Event).where(Event.host_id == host.id).order_by(Event.id)).all())  # type: ignore[arg-type]
