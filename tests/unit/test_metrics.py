"""/metrics (api/routes/metrics.py, provisioner/metrics.py): the families, the counters that move, the scope.

The exposition is parsed with prometheus_client's own parser, never matched as
text. The process-wide series are shared by every test of this process, so each
test compares a value before and after what it does. The real controller,
a real BMC and a real TFTP client: tests/integration/api/test_metrics_live.py.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from provisioner import auth, migrate
from provisioner import metrics as M
from provisioner.api.app import create_app
from provisioner.api.routes.metrics import dhcp_lease_file
from provisioner.cli.serve import Scope as CliScope
from provisioner.conductor import engine, install
from provisioner.conductor.power import PowerService
from provisioner.db import get_engine
from provisioner.drivers.boot import tftp as T
from provisioner.drivers.power.base import BootDevice, BootSetting
from provisioner.drivers.power.fake import FakeFleet
from provisioner.drivers.power.manual import OperatorActionRequired
from provisioner.errors import BmcAuthError, BmcTimeout
from provisioner.settings import Settings
from tests.support.power import add_host
from tests.unit.api.test_scopes import _url, protected_routes

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

FAMILIES = {
    # process-wide (provisioner/metrics.py)
    "prov_bmc_calls": "counter", "prov_bmc_call_errors": "counter", "prov_bmc_call_duration_seconds": "histogram",
    "prov_tftp_transfers": "counter", "prov_tftp_bytes_sent": "counter", "prov_tftp_active_transfers": "gauge",
    "prov_http_boot_bytes": "counter", "prov_dhcp_leases": "gauge",
    "prov_install_phase_duration_seconds": "histogram", "prov_installs": "counter", "prov_build_info": "gauge",
    "process_cpu_seconds": "counter", "process_resident_memory_bytes": "gauge", "process_start_time_seconds": "gauge",
    "python_info": "gauge", "python_gc_collections": "counter",
    # per app (api/middleware.py, api/routes/metrics.py)
    "prov_http_requests": "counter", "prov_http_request_duration_seconds": "histogram", "prov_hosts": "gauge",
    "prov_task_duration_seconds": "histogram", "prov_drift_objects": "gauge",
}


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    from cryptography.fernet import Fernet

    s = Settings(data_dir=tmp_path / "data", secret_key=Fernet.generate_key().decode(), tftp_enabled=False,
                 dhcp_enabled=False, power_sync_enabled=False)
    s.ensure_dirs()
    migrate.upgrade(s)
    yield s
    get_engine(s).dispose()


def _token(settings: Settings, *scopes: str) -> dict[str, str]:
    with Session(get_engine(settings)) as s:
        return {"Authorization": f"Bearer {auth.create_token(s, name='-'.join(scopes), scopes=scopes)}"}


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    app.state.start_services = False
    with TestClient(app) as client:
        yield client


@pytest.fixture
def scrape(api: TestClient, settings: Settings) -> Callable[[], Samples]:
    headers = _token(settings, "metrics")

    def get() -> Samples:
        r = api.get("/metrics", headers=headers)
        assert r.status_code == 200, r.text
        return parse(r.text)

    return get


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --------------------------------------------------------------------------- the exposition
def test_every_family_once_and_no_created_series(api: TestClient, settings: Settings) -> None:
    text = api.get("/metrics", headers=_token(settings, "viewer")).text
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    types = {f.name: f.type for f in families}
    missing = {n: t for n, t in FAMILIES.items() if types.get(n) != t}
    assert not missing, f"families missing or of another type: {missing}"
    created = [s.name for f in families for s in f.samples if s.name.endswith("_created")]
    assert not created and "_created" not in text
    build = [s for f in families if f.name == "prov_build_info" for s in f.samples]
    assert len(build) == 1 and build[0].value == 1
    assert build[0].labels["version"] and build[0].labels["python"].count(".") == 2


def test_a_bmc_call_moves_the_counters_with_its_class(settings: Settings,
                                                      scrape: Callable[[], Samples]) -> None:
    fleet = FakeFleet()
    svc = PowerService(settings, driver_factory=fleet.driver)
    svc.sleep = lambda s: None
    hid = add_host(settings, "m1", kind="ipmi", port=1623, password="pw-metrics")
    bmc = fleet.machine("127.0.0.1", 1623)
    before = scrape()
    assert svc.get_power(hid).ok
    # one timeout, then an answer: two calls, one error of class bmc_timeout
    bmc.failures = [BmcTimeout(bmc="127.0.0.1:1623", seconds=1)]
    assert svc.get_power(hid).ok
    bmc.failures = [BmcAuthError(bmc="127.0.0.1:1623")]
    assert svc.set_boot_device(hid, BootSetting(BootDevice.PXE)).error == "bmc_auth"
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("prov_bmc_calls_total", driver="ipmi", op="get_power_state", outcome="ok") == 2
    assert moved("prov_bmc_calls_total", driver="ipmi", op="get_power_state", outcome="error") == 1
    assert moved("prov_bmc_calls_total", driver="ipmi", op="set_boot_device", outcome="error") == 1
    assert moved("prov_bmc_call_errors_total", driver="ipmi", **{"class": "bmc_timeout"}) == 1
    assert moved("prov_bmc_call_errors_total", driver="ipmi", **{"class": "bmc_auth"}) == 1
    assert moved("prov_bmc_call_duration_seconds_count", driver="ipmi", op="get_power_state") == 3
    assert moved("prov_bmc_call_duration_seconds_bucket", driver="ipmi", op="get_power_state", le="+Inf") == 3


def test_bmc_call_classes_an_operator_action_and_an_unexpected_error() -> None:
    def run(exc: Exception) -> None:
        with pytest.raises(type(exc)), M.bmc_call("manual", "set_power_state"):
            raise exc

    def calls(outcome: str) -> float:
        return M.BMC_CALLS.labels("manual", "set_power_state", outcome)._value.get()

    def errors(cls: str) -> float:
        return M.BMC_ERRORS.labels("manual", cls)._value.get()

    before = (calls("operator_action"), calls("error"), errors("unexpected"), errors("operator_action"))
    run(OperatorActionRequired(request="power on", host="m1"))
    run(RuntimeError("a driver bug"))
    after = (calls("operator_action"), calls("error"), errors("unexpected"), errors("operator_action"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, 0]


# --------------------------------------------------------------------------- TFTP
def _fetch(port: int, name: str) -> bytes:
    """A lock-step RFC 1350 client; raises RuntimeError on a TFTP ERROR."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(struct.pack("!H", 1) + name.encode() + b"\0octet\0", ("127.0.0.1", port))
        data = b""
        while True:
            pkt, peer = s.recvfrom(1024)
            op, block = struct.unpack("!HH", pkt[:4])
            if op == 5:
                raise RuntimeError(block, pkt[4:-1].decode())
            data += pkt[4:]
            s.sendto(struct.pack("!HH", 4, block), peer)
            if len(pkt) - 4 < 512:
                return data
    finally:
        s.close()


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_tftp_fetch_moves_transfers_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "pxelinux.0").write_bytes(b"x" * 1500)

    def tftp(outcome: str) -> float:
        return M.TFTP_TRANSFERS.labels(outcome)._value.get()

    ok, refused, sent = tftp("ok"), tftp("refused"), M.TFTP_BYTES._value.get()
    with T.TftpServer(T.TftpConfig(root=tmp_path, host="127.0.0.1", port=0)) as server:
        assert _fetch(server.port, "pxelinux.0") == b"x" * 1500
        with pytest.raises(RuntimeError, match="not found"):
            _fetch(server.port, "nosuch.efi")
        # the server counts once it has the last ACK, a moment after the client is done
        assert _wait(lambda: tftp("ok") == ok + 1 and server.active_transfers == 0)
    assert tftp("refused") == refused + 1
    assert M.TFTP_BYTES._value.get() == sent + 1500
    assert M.TFTP_ACTIVE._value.get() == 0


# --------------------------------------------------------------------------- HTTP boot, DHCP
def test_http_boot_bytes_count_what_was_sent(api: TestClient, settings: Settings,
                                             scrape: Callable[[], Samples]) -> None:
    settings.boot_dir.mkdir(parents=True, exist_ok=True)
    (settings.boot_dir / "vmlinuz").write_bytes(b"k" * 10_000)
    before = scrape()
    assert len(api.get("/boot/files/vmlinuz").content) == 10_000
    assert api.get("/boot/files/vmlinuz", headers={"Range": "bytes=0-99"}).status_code == 206
    assert api.head("/boot/files/vmlinuz").status_code == 200  # headers only: no bytes
    assert api.get("/boot/files/nosuch").status_code == 404  # an error body is no boot file
    assert api.get("/boot/boot.ipxe").status_code == 200
    after = scrape()
    assert value(after, "prov_http_boot_bytes_total", kind="file") - \
        value(before, "prov_http_boot_bytes_total", kind="file") == 10_100
    assert value(after, "prov_http_boot_bytes_total", kind="script") > value(
        before, "prov_http_boot_bytes_total", kind="script")


def test_dhcp_leases_are_read_from_dnsmasqs_lease_file(settings: Settings,
                                                       scrape: Callable[[], Samples]) -> None:
    assert value(scrape(), "prov_dhcp_leases") == 0  # no lease file: DHCP off
    path = dhcp_lease_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    path.write_text(f"{now + 3600} 52:54:00:00:00:01 10.0.0.101 web01 01:52:54:00:00:00:01\n"
                    f"0 52:54:00:00:00:02 10.0.0.102 web02 *\n"  # infinite
                    f"{now - 10} 52:54:00:00:00:03 10.0.0.103 * *\n"  # expired
                    "duid 00:01:00:01:2c:2f:36:4e:52:54:00:00:00:ff\n"
                    "garbage\n")
    assert value(scrape(), "prov_dhcp_leases") == 2
    leases = M.DhcpLeases(path)
    assert leases.count(now=now + 7200) == 1  # the one-hour lease ran out, the infinite one did not


def test_the_lease_file_is_read_only_up_to_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "leases"
    line = b"0 52:54:00:00:00:01 10.0.0.1 h *\n"
    path.write_bytes(line * 1000)
    monkeypatch.setattr(M, "MAX_LEASE_BYTES", len(line) * 10 + 5)  # ten lines and a cut one
    assert M.DhcpLeases(path).count() == 10


# --------------------------------------------------------------------------- installs
def test_install_steps_and_outcomes_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = SimpleNamespace(params={}, progress=lambda *a, **kw: None, host_id=1, resumed=False, announced=False)
    recorded = {f"install.{s}" for s in install.STEPS[:install.STEPS.index("boot-disk")]}

    def run_step(options: dict[str, Any], fn: Any, *args: Any) -> Any:
        """DBOS re-executing the workflow: steps it recorded return their output without running."""
        return None if options["name"] in recorded else fn(*args)

    monkeypatch.setattr(engine.DBOS, "run_step", run_step)
    monkeypatch.setattr(install, "_host", lambda c: SimpleNamespace(state="active", ssh_host_key="k"))
    monkeypatch.setattr(install, "_STEP_FNS", {s: (lambda c, a: None) for s in install.STEPS})

    def phase(step: str) -> float:
        return float(M.REGISTRY.get_sample_value("prov_install_phase_duration_seconds_count", {"step": step})
                     or 0)

    def installs(outcome: str) -> float:
        return M.INSTALLS.labels(outcome)._value.get()

    before = {s: phase(s) for s in install.STEPS}
    ok, failed = installs("succeeded"), installs("failed")
    install.run(ctx)  # type: ignore[arg-type]
    assert {s: phase(s) - before[s] for s in install.STEPS} == {
        s: (1 if install.STEPS.index(s) >= install.STEPS.index("boot-disk") else 0) for s in install.STEPS}
    assert installs("succeeded") == ok + 1

    def boom(c: Any, a: str) -> None:
        raise install.InstallFailed(reason="no")

    monkeypatch.setattr(install, "_STEP_FNS", {**install._STEP_FNS, "wait-ssh": boom})
    with pytest.raises(install.InstallFailed):
        install.run(ctx)  # type: ignore[arg-type]
    assert installs("failed") == failed + 1
    assert phase("wait-ssh") == before["wait-ssh"] + 1  # the failed step is not observed


# --------------------------------------------------------------------------- the metrics scope
def test_a_metrics_token_scrapes_and_reads_nothing_else(api: TestClient, settings: Settings) -> None:
    headers = _token(settings, "metrics")
    assert api.get("/metrics", headers=headers).status_code == 200
    checked = 0
    for method, path in protected_routes(api.app):  # type: ignore[arg-type]
        if (method, path) == ("GET", "/metrics"):
            continue
        r = api.request(method, _url(path), headers=headers, json={} if method != "GET" else None)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert r.json()["token_scopes"] == ["metrics"]
        checked += 1
    assert checked > 50
    r = api.get("/api/v1/hosts", headers=headers)
    assert "needs the viewer scope" in r.json()["message"]


@pytest.mark.parametrize("scope", ["admin", "operator", "viewer"])
def test_the_operator_scopes_still_scrape(api: TestClient, settings: Settings, scope: str) -> None:
    assert api.get("/metrics", headers=_token(settings, scope)).status_code == 200


def test_installer_tokens_do_not_scrape(api: TestClient, settings: Settings) -> None:
    r = api.get("/metrics", headers=_token(settings, "installer"))
    assert r.status_code == 403 and r.json()["required_scope"] == "viewer"


def test_a_metrics_token_is_made_through_the_api(api: TestClient, settings: Settings) -> None:
    r = api.post("/api/v1/tokens", headers=_token(settings, "admin"), json={"name": "prometheus",
                                                                          "scopes": ["metrics"]})
    assert r.status_code == 201, r.text
    assert r.json()["scopes"] == ["metrics"]
    assert api.get("/metrics", headers={"Authorization": f"Bearer {r.json()['token']}"}).status_code == 200
    r = api.post("/api/v1/tokens", headers=_token(settings, "admin"),
                 json={"name": "all", "scopes": list(auth.SCOPES)})
    assert r.status_code == 201 and r.json()["scopes"] == list(auth.SCOPES)


def test_the_cli_offers_every_scope() -> None:
    assert [s.value for s in CliScope] == list(auth.SCOPES)
