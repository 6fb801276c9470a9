"""A live prov controller for tests and benchmarks: the real app on a loopback port.

``LiveController`` runs ``create_app`` under uvicorn in a background thread,
with its own data directory (SQLite unless a database URL is given), the
schema migrated, and an operator token. Background services that would touch
the machine (TFTP on port 69, DHCP, power sync) are off unless asked for.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlmodel import Session

from provisioner import auth, migrate
from provisioner.api.app import create_app
from provisioner.client import ProvClient
from provisioner.db import get_engine
from provisioner.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveController:
    url: str
    token: str
    settings: Settings
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def client(self, **kw: Any) -> ProvClient:
        return ProvClient(self.url, self.token, **kw)

    def env(self) -> dict[str, str]:
        """Environment for a ``prov`` subprocess talking to this controller."""
        return {"PROV_URL": self.url, "PROV_TOKEN": self.token, "PROV_DATA_DIR": str(self.settings.data_dir)}

    def session(self) -> Session:
        return Session(get_engine(self.settings), expire_on_commit=False)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


@contextlib.contextmanager
def live_controller(
    data_dir: Path, *, database_url: str | None = None, services: bool = False, host: str = "127.0.0.1",
    **overrides: Any,
) -> Iterator[LiveController]:
    port = _free_port()
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        host=host,
        port=port,
        tftp_enabled=False,
        dhcp_enabled=False,
        power_sync_enabled=False,
        log_json=False,
        **overrides,
    )
    settings.ensure_dirs()
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as s:
        token = auth.create_token(s, name="test")
    app = create_app(settings)
    app.state.start_services = services
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"prov-api-{port}", daemon=True)
    thread.start()
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"controller on {url} did not start")
        time.sleep(0.05)
    ctl = LiveController(url, token, settings, server, thread)
    try:
        yield ctl
    finally:
        ctl.stop()
