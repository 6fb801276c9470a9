"""The periodic drift check: change detection, history lines, stored result, API/metrics exposure."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from provisioner import auth, migrate
from provisioner import states as S
from provisioner.conductor import drift_check
from provisioner.db import get_engine
from provisioner.errors import VirtError
from provisioner.models import Event, Host, InventoryApply
from provisioner.settings import Settings

DOC: dict[str, Any] = {
    "hosts": [
        {"name": "web01", "state": "installed"},
        {"name": "kvm01", "state": "available", "guests": [{"name": "vm1", "memory_mib": 256}]},
        {"name": "gone01", "state": "available"},
    ],
}


def _setup(tmp_path: Path, *, doc: dict[str, Any] | None = None) -> Settings:
    settings = Settings(data_dir=tmp_path, drift_check_interval=0)
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as s:
        s.add(Host(name="web01", state=S.ACTIVE, bmc_kind="manual", power_state="off"))
        s.add(Host(name="kvm01", state=S.AVAILABLE, bmc_kind="manual"))
        s.add(InventoryApply(source="test", document=doc if doc is not None else DOC,
                             objects=["host/web01", "host/kvm01", "host/gone01"]))
        s.commit()
    return settings


def _drift_events(settings: Settings) -> list[tuple[str, str]]:
    with Session(get_engine(settings)) as s:
        names = {h.id: h.name for h in s.exec(select(Host)).all()}
        rows = s.exec(select(Event).where(Event.event == "drift").order_by(col(Event.id))).all()
        return [(names[e.host_id], e.message) for e in rows]


def _no_guests(session: Session, settings: Settings, host: str) -> list[dict[str, Any]]:
    return []


def test_history_lines_only_on_change() -> None:
    off = {"object": "host/a", "kind": "powered-off", "detail": "should be running"}
    guest = {"object": "guest/a/vm1", "kind": "guest-missing", "detail": "missing"}
    rack = {"object": "rack/r1", "kind": "changed", "detail": "size_u"}
    first = drift_check.history_lines(None, [off, rack])
    assert first == {"a": "drift detected: powered-off: should be running"}  # racks have no history
    assert drift_check.history_lines([off, rack], [rack, off]) == {}  # same set, other order: nothing
    both = drift_check.history_lines([off], [off, guest])
    assert both["a"].startswith("drift detected: guest-missing guest/a/vm1: missing; powered-off:")
    assert drift_check.history_lines([off, guest], [rack]) == {
        "a": "drift resolved: matches the last applied inventory again"}


def test_check_once_stores_result_and_writes_history_once(tmp_path: Path) -> None:
    settings = _setup(tmp_path)
    res = drift_check.check_once(settings, list_guests=_no_guests)
    assert res is not None
    kinds = {(d["object"], d["kind"]) for d in res.drift}
    # gone01 was deleted: one "deleted" row, no ghost "not-installed" row (issue 19, item 3)
    assert kinds == {("host/web01", "powered-off"), ("host/gone01", "deleted"),
                     ("guest/kvm01/vm1", "guest-missing")}
    events = _drift_events(settings)
    assert sorted(h for h, _ in events) == ["kvm01", "web01"]  # gone01 has no row to write to
    assert any("powered-off" in m for h, m in events if h == "web01")

    # a second pass with the same reality: stored again, no new history
    again = drift_check.check_once(settings, list_guests=_no_guests)
    assert again is not None and again.history == [] and len(_drift_events(settings)) == 2

    # the host is back on: one "resolved" line on it, the others unchanged
    with Session(get_engine(settings)) as s:
        h = s.exec(select(Host).where(Host.name == "web01")).one()
        h.power_state = "on"
        s.add(h)
        s.commit()
    third = drift_check.check_once(settings, list_guests=_no_guests)
    assert third is not None and [line.split(":")[0] for line in third.history] == ["web01"]
    assert _drift_events(settings)[-1] == ("web01", "drift resolved: matches the last applied inventory again")
    with Session(get_engine(settings)) as s:
        last = drift_check.last_result(s)
    assert last["checked_at"] is not None and last["count"] == 2  # gone01 (once) and the guest
    get_engine(settings).dispose()


def test_unlistable_guests_are_unknown_not_missing(tmp_path: Path) -> None:
    settings = _setup(tmp_path)

    def down(session: Session, settings: Settings, host: str) -> list[dict[str, Any]]:
        raise VirtError(reason="libvirt not answering")

    res = drift_check.check_once(settings, list_guests=down)
    assert res is not None and not any(d["kind"] == "guest-missing" for d in res.drift)
    present = drift_check.check_once(settings, list_guests=lambda s, st, h: [{"name": "vm1"}])
    assert present is not None and not any(d["kind"] == "guest-missing" for d in present.drift)
    get_engine(settings).dispose()


def test_nothing_applied_means_no_check(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    assert drift_check.check_once(settings) is None
    with Session(get_engine(settings)) as s:
        assert drift_check.last_result(s) == {"applied_id": None, "checked_at": None, "drift": [], "count": 0}
    get_engine(settings).dispose()


def test_loop_runs_at_interval_and_zero_is_off(tmp_path: Path) -> None:
    settings = _setup(tmp_path)
    stop = drift_check.start(settings, interval=0)
    stop()  # off: nothing started, stop is harmless
    with Session(get_engine(settings)) as s:
        assert s.exec(select(InventoryApply)).one().drift_checked_at is None
    stop = drift_check.start(settings, interval=0.05, list_guests=_no_guests)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with Session(get_engine(settings)) as s:
                if s.exec(select(InventoryApply)).one().drift_checked_at is not None:
                    break
            time.sleep(0.02)
        else:
            pytest.fail("the loop never ran a pass")
    finally:
        stop()
    assert len(_drift_events(settings)) == 2  # several passes, still one line per host
    get_engine(settings).dispose()


def test_api_last_and_metrics_gauge(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from provisioner.api.app import create_app

    settings = _setup(tmp_path)
    with Session(get_engine(settings)) as s:
        token = auth.create_token(s, name="drift-tests")
    app = create_app(settings)
    app.state.start_services = False
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        before = c.get("/api/v1/gitops/drift/last").json()
        assert before["checked_at"] is None and before["applied_id"] is not None and before["interval"] == 0
        drift_check.check_once(settings, list_guests=_no_guests)
        last = c.get("/api/v1/gitops/drift/last").json()
        assert last["count"] == 3 and {d["kind"] for d in last["drift"]} == {
            "powered-off", "deleted", "guest-missing"}
        text = c.get("/metrics").text
        assert 'prov_drift_objects{kind="powered-off"} 1.0' in text
        assert 'prov_drift_objects{kind="changed"} 0.0' in text
        assert "prov_drift_last_check_timestamp_seconds" in text
    get_engine(settings).dispose()


# --------------------------------------------------------------------------- prov drift --last
class _FakeClient:
    def __init__(self, last: dict[str, Any]) -> None:
        self.last = last
        self.paths: list[str] = []

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get(self, path: str, **kw: Any) -> Any:
        self.paths.append(path)
        return self.last


def _cli(monkeypatch: pytest.MonkeyPatch, last: dict[str, Any], *args: str) -> tuple[int, str, list[str]]:
    from typer.testing import CliRunner

    from provisioner.cli import gitops_drift as cli_gitops
    from provisioner.cli.main import app

    fake = _FakeClient(last)
    monkeypatch.setattr(cli_gitops, "ProvClient", lambda **kw: fake)
    res = CliRunner().invoke(app, ["drift", "--last", *args], catch_exceptions=False,
                             env={"COLUMNS": "200"})
    return res.exit_code, res.output, fake.paths


def test_cli_last_shows_stored_result_without_recomputing(monkeypatch: pytest.MonkeyPatch) -> None:
    row = {"object": "host/web01", "kind": "powered-off", "detail": "should be running"}
    last = {"applied_id": 3, "checked_at": "2026-11-29T00:00:00+00:00", "interval": 300, "count": 1, "drift": [row]}
    code, out, paths = _cli(monkeypatch, last)
    assert code == 8 and "host/web01" in out and "powered-off" in out and "2026-11-29T00:00:00" in out  # 8: drift
    assert paths == ["/api/v1/gitops/drift/last"]  # one read: no world fetched, nothing recomputed
    code, out, _ = _cli(monkeypatch, last, "--output", "json")
    assert code == 8 and '"kind": "powered-off"' in out
    code, out, _ = _cli(monkeypatch, {**last, "checked_at": None, "drift": [], "count": 0})
    assert code == 0 and "has not checked" in out and "every 300 s" in out
    code, out, _ = _cli(monkeypatch, {**last, "drift": [], "count": 0})
    assert code == 0 and "No drift" in out


# --------------------------------------------------------------------------- config drift (no ansible)
def test_config_targets_and_drift_rows(tmp_path: Path) -> None:
    from provisioner.conductor import drift_config
    from provisioner.errors import InvalidInput

    doc = {"profiles": [{"name": "p", "playbooks": ["harden"], "container_engine": "none"}],
           "hosts": [{"name": "a1", "state": "configured", "profile": "p"},
                     {"name": "a2", "state": "configured", "playbooks": ["site"]},
                     {"name": "idle", "state": "configured"}]}
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as s:
        with pytest.raises(InvalidInput):  # nothing applied: nothing to check against
            drift_config.targets(s)
        s.add(Host(name="a1", state=S.ACTIVE))
        s.add(Host(name="a2", state=S.ACTIVE))
        s.add(Host(name="idle", state=S.AVAILABLE))  # not active: not checked
        s.add(InventoryApply(document=doc, objects=[]))
        s.commit()
        groups = drift_config.targets(s)
        names = {k: sorted(s.get(Host, i).name for i in v) for k, v in groups.items()}  # type: ignore[union-attr]
        assert names == {(("harden",), "none"): ["a1"], (("site",), "docker"): ["a2"]}
        assert list(drift_config.targets(s, ["a2"])) == [(("site",), "docker")]
        with pytest.raises(InvalidInput, match="not in the applied inventory: zz"):
            drift_config.targets(s, ["zz"])
    rows = drift_config.to_drift({
        "a1": {"status": "changed", "changed": 2, "changed_tasks": ["Install the sshd hardening drop-in",
                                                                   "Reload sshd"]},
        "a2": {"status": "ok", "changed": 0, "changed_tasks": []},
        "a3": {"status": "unreachable", "changed": 0, "changed_tasks": [], "message": "no route"},
    })
    assert rows == [
        {"object": "host/a1", "kind": "config",
         "detail": "2 task(s) would change: 'Install the sshd hardening drop-in', 'Reload sshd'"},
        {"object": "host/a3", "kind": "config-unknown",
         "detail": "check mode could not finish (unreachable): no route"},
    ]
    get_engine(settings).dispose()


def test_world_from_db_matches_api_shape_no_false_changes(tmp_path: Path) -> None:
    """A host exactly as applied (rack, U, roles, NICs, BMC) shows no drift; a hand change shows one."""
    from provisioner.models import Nic, Rack

    doc = {"racks": [{"name": "r1", "size_u": 42}],
           "hosts": [{"name": "db01", "rack": "r1", "u_position": 4, "roles": ["db"], "state": "available",
                      "nics": [{"mac": "52:54:00:00:00:01", "boot": True}],
                      "bmc": {"kind": "ipmi", "address": "127.0.0.1", "port": 6230, "username": "admin"}}]}
    settings = _setup(tmp_path, doc=doc)
    with Session(get_engine(settings)) as s:
        rack = Rack(name="r1", size_u=42)
        s.add(rack)
        s.commit()
        host = Host(name="db01", rack_id=rack.id, u_position=4, roles=["db"], state=S.AVAILABLE, bmc_kind="ipmi",
                    bmc_address="127.0.0.1", bmc_port=6230, bmc_username="admin")
        s.add(host)
        s.commit()
        assert host.id is not None
        s.add(Nic(host_id=host.id, mac="52:54:00:00:00:01", boot=True))
        s.commit()
    res = drift_check.check_once(settings, list_guests=_no_guests)
    assert res is not None and [d for d in res.drift if d["object"] in ("host/db01", "rack/r1")] == []
    with Session(get_engine(settings)) as s:
        h = s.exec(select(Host).where(Host.name == "db01")).one()
        h.roles = ["db", "by-hand"]
        s.add(h)
        s.commit()
    res = drift_check.check_once(settings, list_guests=_no_guests)
    assert res is not None
    assert [(d["object"], d["kind"], d["detail"]) for d in res.drift if d["object"] == "host/db01"] == [
        ("host/db01", "changed", 'roles: ["db"] -> ["db", "by-hand"]')]  # applied -> now
    assert ("db01", 'drift detected: changed: roles: ["db"] -> ["db", "by-hand"]') in _drift_events(settings)
    get_engine(settings).dispose()
