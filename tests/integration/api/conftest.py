"""Fixtures for the API tests: every test runs once on SQLite and once on PostgreSQL.

A private PostgreSQL server is started for the session (tests.support.pg);
each test gets a fresh database copied from a migrated template (CREATE DATABASE
... TEMPLATE on PostgreSQL, a file copy on SQLite), so tests are independent and
the schema always comes from the Alembic migrations, not from create_all().
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner import auth, migrate
from provisioner.api.app import create_app
from provisioner.db import dispose_engines, get_engine
from provisioner.settings import Settings
from tests.support import pg
from tests.support.helpers import free_port

BACKENDS = ["sqlite", "postgres"]


def _require_pg() -> None:
    if pg.find_bindir() is None:
        msg = "PostgreSQL server binaries not installed (apt-get install postgresql)"
        if os.environ.get("PROV_REQUIRE_PEERS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.PgServer]:
    _require_pg()
    server = pg.start()
    try:
        yield server
    finally:
        dispose_engines()
        server.stop()


@pytest.fixture(scope="session")
def pg_template(pg_server: pg.PgServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = pg_server.create_database()
    settings = Settings(data_dir=tmp_path_factory.mktemp("pgtmpl"), database_url=pg_server.url(name))
    migrate.upgrade(settings)
    get_engine(settings).dispose()  # a template database must have no open connections
    return name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sqlitetmpl")
    settings = Settings(data_dir=d)
    migrate.upgrade(settings)
    get_engine(settings).dispose()  # checkpoints the WAL into prov.db
    return d / "prov.db"


def make_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest, template: bool = True) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    if backend == "sqlite":
        if template:
            shutil.copy(request.getfixturevalue("sqlite_template"), data_dir / "prov.db")
        return Settings(data_dir=data_dir)
    server: pg.PgServer = request.getfixturevalue("pg_server")
    tmpl = request.getfixturevalue("pg_template") if template else None
    name = server.create_database(template=tmpl)

    def drop() -> None:
        get_engine(Settings(data_dir=data_dir, database_url=server.url(name))).dispose()
        server.drop_database(name)

    request.addfinalizer(drop)
    return Settings(data_dir=data_dir, database_url=server.url(name))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    s = make_settings(backend, tmp_path, request)
    yield s
    get_engine(s).dispose()


@pytest.fixture
def empty_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A database with no schema at all (for the migration tests)."""
    s = make_settings(backend, tmp_path, request, template=False)
    yield s
    get_engine(s).dispose()


@pytest.fixture
def token(settings: Settings) -> str:
    with Session(get_engine(settings)) as session:
        return auth.create_token(session, name="tester")


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    application = create_app(settings)
    application.state.start_services = False  # no background threads in API tests
    return application


@pytest.fixture
def client(app: FastAPI, token: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


@pytest.fixture
def anon(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


class LiveServer:
    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live(app: FastAPI) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server


def host_body(name: str = "web01", mac: str = "52:54:00:12:34:56", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "nics": [{"mac": mac, "boot": True}],
        "bmc": {"kind": "ipmi", "address": "10.0.0.21", "port": 623, "username": "admin",
                "password": "hunter2-secret"},
        "roles": ["docker"],
    }
    body.update(extra)
    return body
