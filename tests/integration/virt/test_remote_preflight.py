"""The remote pre-flight over a real SSH connection: an sshd the test starts on a loopback port.

The last test goes through the conductor (conductor/virt.py) as ``GET /hosts/{host}/virt?refresh=true``
does: an enrolled KVM host whose libvirt URI names the SSH target and key, the report stored on it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from provisioner import migrate
from provisioner.conductor import virt
from provisioner.db import get_engine
from provisioner.drivers.virt import preflight as pf
from provisioner.models import Host
from provisioner.settings import Settings
from tests.support.helpers import free_port, require_binary, require_root

pytestmark = pytest.mark.integration


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    require_root()
    require_binary("/usr/sbin/sshd", "ssh", "ssh-keygen", "python3")
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / key)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "client.pub").read_text())
    port = free_port()
    (tmp_path / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile none\nStrictModes no\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory (Debian)
    with open(tmp_path / "sshd.log", "wb") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp_path / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=log)
    opts = ["-p", str(port), "-i", str(tmp_path / "client"), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5"]
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", *opts, "root@127.0.0.1", "true"],
                             capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sshd.log").read_text()
            time.sleep(0.1)
        yield "root@127.0.0.1", opts
    finally:
        proc.terminate()
        proc.wait(10)


def test_remote_preflight_over_ssh(sshd: tuple[str, list[str]]) -> None:
    target, opts = sshd
    facts = pf.remote_facts(target, ssh_options=opts)
    local = pf.collect_facts("/")
    # same machine: the script shipped over SSH sees what the local probe sees
    assert facts["live"] is True and facts["cpu"] == local["cpu"] and facts["dev_kvm"] == local["dev_kvm"]
    assert facts["modules"].keys() == local["modules"].keys()
    assert pf.evaluate(facts).overall == pf.evaluate(local).overall


def test_remote_preflight_failure_is_clear(sshd: tuple[str, list[str]]) -> None:
    _target, opts = sshd
    with pytest.raises(RuntimeError, match=r"nobody-here@127\.0\.0\.1: exit 255"):
        pf.remote_facts("nobody-here@127.0.0.1", ssh_options=opts, timeout=20)


def test_enrolled_host_report_through_the_conductor(sshd: tuple[str, list[str]], tmp_path: Path) -> None:
    _target, opts = sshd
    port, key = opts[opts.index("-p") + 1], opts[opts.index("-i") + 1]
    settings = Settings(data_dir=tmp_path / "data", log_json=False, tftp_enabled=False, dhcp_enabled=False)
    settings.ensure_dirs()
    migrate.upgrade(settings)
    # libvirt's own SSH URI parameters: the pre-flight reaches the host the way libvirt would
    uri = f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={key}&no_verify=1"
    with Session(get_engine(settings)) as s:
        s.add(Host(name="kvm-ssh", ip_address="192.0.2.1", bmc_kind="manual", bmc_options={"virt_uri": uri}))
        s.commit()
    out = virt.host_report(settings, "kvm-ssh", refresh=True)
    assert out["host"] == "kvm-ssh" and out["uri"] == uri and out["facts"]["live"] is True
    assert out["overall"] == pf.evaluate(pf.collect_facts("/")).overall  # the same machine, seen over SSH
    with Session(get_engine(settings)) as s:
        stored = s.exec(select(Host).where(Host.name == "kvm-ssh")).one().virt_report
    assert stored and stored["checked_at"] == out["checked_at"] and stored["overall"] == out["overall"]
