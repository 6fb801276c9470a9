from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import migrate
from provisioner.api import lifespan
from provisioner.db import get_engine
from provisioner.settings import Settings


def test_a_failing_service_is_logged_and_the_others_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    stopped: list[str] = []

    def explode(s: Settings) -> None:
        raise RuntimeError("cannot bind")

    monkeypatch.setattr(lifespan, "SERVICES", (
        ("fake bad", explode),
        ("fake good", lambda s: (lambda: stopped.append("good"))),
        ("fake nothing to stop", lambda s: None),
    ))
    stops = lifespan.start_services(settings)
    # the cluster membership, the timeout checker, the workflow engine, the dead conductors'
    # takeover (a no-op on SQLite), the good service
    assert len(stops) == 5
    assert "fake bad failed to start" in caplog.text
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
