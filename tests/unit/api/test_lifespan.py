from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from provisioner import migrate
from provisioner.api import lifespan
from provisioner.db import get_engine
from provisioner.settings import Settings


def test_optional_services_missing_failing_and_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    stopped: list[str] = []
    good = types.ModuleType("prov_fake_good")
    good.start = lambda s: (lambda: stopped.append("good"))  # type: ignore[attr-defined]
    bad = types.ModuleType("prov_fake_bad")

    def explode(s: Settings) -> None:
        raise RuntimeError("cannot bind")

    bad.start = explode  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "prov_fake_good", good)
    monkeypatch.setitem(sys.modules, "prov_fake_bad", bad)
    monkeypatch.setattr(lifespan, "_module_exists", lambda name: name != "prov_fake_missing")
    monkeypatch.setattr(lifespan, "OPTIONAL_SERVICES", ("prov_fake_missing", "prov_fake_bad", "prov_fake_good"))
    stops = lifespan.start_services(settings)
    assert len(stops) == 2  # the timeout checker + the good service
    assert "prov_fake_bad failed to start" in caplog.text
    lifespan.stop_services(stops)
    assert stopped == ["good"]
    get_engine(settings).dispose()


def test_app_starts_with_lifespan(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from provisioner.api.app import create_app

    settings = Settings(data_dir=tmp_path, tftp_port=0, tftp_enabled=False, power_sync_enabled=False)
    migrate.upgrade(settings)
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").json()["status"] == "ready"
    get_engine(settings).dispose()
