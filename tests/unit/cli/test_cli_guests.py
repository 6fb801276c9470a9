"""``prov virt check`` and ``prov vm ...`` against a live in-process API whose libvirt is the test driver.

The API's pre-flight is pinned to a recorded software-KVM tree (monkeypatched in this process, where the
server thread runs) so the refusal tests mean the same on every machine. ``vm create`` and ``vm rm`` are
controller tasks the CLI follows; the host ``fk1`` is the in-memory fake, for a task that fails half-way.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
import uvicorn
from click.testing import CliRunner, Result
from sqlmodel import Session

import provisioner.cli.guests
import provisioner.cli.virt  # noqa: F401  (registers commands)
from provisioner import auth, migrate
from provisioner.api.app import create_app
from provisioner.cli.groups import app
from provisioner.client import ProvClient
from provisioner.db import get_engine
from provisioner.drivers.virt import fake
from provisioner.drivers.virt import preflight as pf
from provisioner.drivers.virt.libvirt import VirtConnection, open_connection
from provisioner.models import Host
from provisioner.settings import Settings
from tests.support.helpers import free_port

TREES = Path(__file__).resolve().parents[2] / "support" / "virt_trees"
FK1 = f"fake:///cli-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Settings]]:
    port = free_port()
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("prov-vm-cli"),
        host="127.0.0.1",
        port=port,
        tftp_enabled=False,
        dhcp_enabled=False,
        power_sync_enabled=False,
        log_json=False,
        log_level="WARNING",
        virt_uri="test:///default",
        virt_pool="default-pool",
        virt_network=f"nat-{uuid.uuid4().hex[:6]}",
        virt_network_subnet="10.66.0.0/24",
    )
    settings.ensure_dirs()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as session:
        token = auth.create_token(session, name="vm-cli-tests")
        session.add(
            Host(name="kvm1", ip_address="127.0.0.1", bmc_kind="manual", bmc_options={"virt_uri": "test:///default"})
        )
        session.add(Host(name="fk1", ip_address="127.0.0.2", bmc_kind="manual", bmc_options={"virt_uri": FK1}))
        session.commit()
    srv = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
        )
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API did not start"
        time.sleep(0.02)
    # test:///default keeps its state only while a connection is open; the API opens one per request.
    holder = open_connection("test:///default")
    try:
        yield f"http://127.0.0.1:{port}", token, settings
    finally:
        for g in holder.list_guests():
            if g["name"].startswith("cli-"):
                with contextlib.suppress(Exception):
                    holder.delete_guest(g["name"])
        with contextlib.suppress(Exception):
            holder.delete_network(settings.virt_network)
        holder.close()
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def pinned_preflight(monkeypatch: pytest.MonkeyPatch) -> None:
    sw = pf.evaluate(pf.collect_facts(TREES / "software_kvm_pvm"), {"domain_types": ["qemu", "kvm"]})
    monkeypatch.setattr(VirtConnection, "preflight", lambda self: sw)
    monkeypatch.setattr(pf, "remote_facts", lambda target, **kw: pf.collect_facts(TREES / "intel_ept_nested"))


def prov(server: tuple[str, str, Settings], tmp_path: Path, *args: str) -> Result:
    url, token, _ = server
    env = {"PROV_URL": url, "PROV_TOKEN": token, "PROV_CLIENT_CONFIG": str(tmp_path / "c.yaml")}
    return CliRunner().invoke(typer.main.get_command(app), list(args), env=env, catch_exceptions=False)


def error_line(r: Result) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_virt_check_local(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = prov(server, tmp_path, "virt", "check", "--uri", "test:///default", "--output", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["host"] == "local" and data["overall"] in (
        pf.HARDWARE_KVM,
        pf.HARDWARE_KVM_NO_NESTED,
        pf.SOFTWARE_KVM_ONLY,
        pf.EMULATION_ONLY,
    )
    assert [g["id"] for g in data["generations"]] == ["G1", "G2", "G3", "G4", "G5"]
    r = prov(server, tmp_path, "virt", "check", "--uri", "test:///default")
    assert r.exit_code == 0 and "overall" in r.stdout and "G3 nested" in r.stdout


def test_virt_check_enrolled_host_is_stored(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = prov(server, tmp_path, "virt", "check", "kvm1", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["overall"] == pf.HARDWARE_KVM
    with Session(get_engine(server[2])) as s:
        from sqlmodel import select

        host = s.exec(select(Host).where(Host.name == "kvm1")).one()
        assert host.virt_report and host.virt_report["overall"] == pf.HARDWARE_KVM
    r = prov(server, tmp_path, "virt", "check", "kvm1", "--stored")
    assert r.exit_code == 0 and "hardware-kvm" in r.stdout


def test_vm_lifecycle(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = f"cli-{uuid.uuid4().hex[:6]}"
    r = prov(
        server,
        tmp_path,
        "vm",
        "create",
        name,
        "--memory",
        "128",
        "--virt-type",
        "qemu",
        "--disk-size",
        "1",
        "--mac",
        "52:54:00:66:00:01",
        "--dry-run",
    )
    assert r.exit_code == 0, r.output
    assert f"<name>{name}</name>" in r.stdout and "<domain type='qemu'>" in r.stdout
    assert name not in prov(server, tmp_path, "vm", "list", "-o", "json").stdout  # dry run defined nothing
    r = prov(
        server,
        tmp_path,
        "vm",
        "create",
        name,
        "--memory",
        "128",
        "--virt-type",
        "qemu",
        "--disk-size",
        "1",
        "--mac",
        "52:54:00:66:00:01",
        "-o",
        "json",
    )
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["state"] == "running" and info["nics"][0]["mac"] == "52:54:00:66:00:01"
    assert name in prov(server, tmp_path, "vm", "list").stdout
    assert json.loads(prov(server, tmp_path, "vm", "show", name, "-o", "json").stdout)["virt_type"] == "qemu"
    r = prov(server, tmp_path, "vm", "stop", name, "--timeout", "1", "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["state"] == "shutoff"
    assert json.loads(prov(server, tmp_path, "vm", "start", name, "-o", "json").stdout)["state"] == "running"
    assert prov(server, tmp_path, "vm", "console", name).exit_code == 0
    r = prov(server, tmp_path, "vm", "rm", name, "--yes", "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["reservations_released"] == ["52:54:00:66:00:01"]
    assert name not in prov(server, tmp_path, "vm", "list", "-o", "json").stdout


def test_vm_create_with_seed_dry_run(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ud = tmp_path / "user-data"
    ud.write_text("#cloud-config\nhostname: s1\n")
    r = prov(server, tmp_path, "vm", "create", f"cli-{uuid.uuid4().hex[:6]}", "--virt-type", "qemu", "--memory", "128",
             "--disk-size", "1", "--user-data", str(ud), "--boot", "hd", "--boot", "cdrom", "--dry-run", "-o", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert "device='cdrom'" in data["xml"] and data["seed_volume"]["name"].endswith("-seed.iso")
    assert "<boot dev='cdrom'/>" in data["xml"]


def test_vm_refusals(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = f"cli-{uuid.uuid4().hex[:6]}"
    r = prov(server, tmp_path, "vm", "create", name, "--memory", "128")
    assert r.exit_code == 2 and "virt_type kvm refused" in error_line(r) and "software-kvm-only" in r.stderr
    r = prov(server, tmp_path, "vm", "create", name, "--memory", "128", "--virt-type", "qemu", "--network", "nope")
    assert r.exit_code == 2 and "unknown network 'nope'" in error_line(r)
    r = prov(server, tmp_path, "vm", "create", name, "--memory", "4000000", "--virt-type", "qemu")
    assert r.exit_code == 2 and "free memory" in error_line(r)
    r = prov(
        server, tmp_path, "vm", "create", name, "--memory", "128", "--virt-type", "qemu", "--mac", "01:00:00:00:00:01"
    )
    assert r.exit_code == 2 and "multicast" in error_line(r)
    r = prov(server, tmp_path, "vm", "show", "no-such-guest")
    assert r.exit_code == 3 and "not found" in error_line(r)
    r = prov(server, tmp_path, "vm", "list", "--host", "no-such-host")
    assert r.exit_code == 3
    assert name not in prov(server, tmp_path, "vm", "list", "-o", "json").stdout


def test_vm_create_and_rm_on_an_enrolled_kvm_host_follow_tasks(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = f"cli-{uuid.uuid4().hex[:6]}"
    r = prov(server, tmp_path, "vm", "create", name, "--host", "kvm1", "--memory", "128", "--virt-type", "qemu",
             "--mac", "52:54:00:66:00:02")
    assert r.exit_code == 0, r.output
    assert name in r.stdout and "running" in r.stdout  # the guest's row, once the task ended
    with server_client(server) as c:
        events = c.get("/api/v1/hosts/kvm1/events")["data"]
        assert {"guest-create", "guest-created"} <= {e["event"] for e in events if name in e["message"]}
    r = prov(server, tmp_path, "vm", "rm", name, "--host", "kvm1", "--no-wait", "--yes", "-o", "json")
    assert r.exit_code == 0, r.output
    task = json.loads(r.stdout)
    assert task["kind"] == "guest-delete" and task["link"] == f"/api/v1/tasks/{task['id']}"
    with server_client(server) as c:
        deadline = time.monotonic() + 20
        while c.get(task["link"])["status"] != "succeeded":
            assert time.monotonic() < deadline, "delete task did not finish"
            time.sleep(0.05)
    assert name not in prov(server, tmp_path, "vm", "list", "--host", "kvm1", "-o", "json").stdout


def test_vm_create_task_failure_exits_with_its_error(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake.fake_host(FK1).fail_at = "define domain"
    try:
        r = prov(server, tmp_path, "vm", "create", "cli-fails", "--host", "fk1", "--virt-type", "qemu",
                 "--memory", "128", "--disk-size", "1", "-o", "json")
    finally:
        fake.fake_host(FK1).fail_at = None
    assert r.exit_code == 6 and "define domain of cli-fails: injected failure" in error_line(r)  # VirtError's code
    assert fake.fake_host(FK1).guests == {} and fake.fake_host(FK1).volumes == {}
    r = prov(server, tmp_path, "vm", "create", "cli-ok", "--host", "fk1", "--virt-type", "qemu", "--memory", "128")
    assert r.exit_code == 0 and "cli-ok" in r.stdout, r.output
    assert fake.fake_host(FK1).guests["cli-ok"]["state"] == "running"


def server_client(server: tuple[str, str, Settings]) -> ProvClient:
    return ProvClient(server[0], server[1])
