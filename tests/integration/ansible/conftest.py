"""Fixtures for the Ansible tests: real SSH hosts in network namespaces, a real prov API.

``ansible_lab`` starts (once per session) a bridge, apt-cacher-ng and two
Debian 12 namespace hosts from the cached debootstrap root (built on first
use, ~100 s, cached under /var/cache/prov-test/cfg); ``prov_api`` runs the
real FastAPI app on a loopback port with its own data directory. Everything
is torn down at the end of the session.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from provisioner import states as S
from provisioner.conductor import engine
from provisioner.db import get_engine
from provisioner.models import Host, Rack
from tests.support import nshost
from tests.support.cli import LiveServer, start_inprocess_server
from tests.support.helpers import require_binary, require_root

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR"]


@pytest.fixture(scope="session")
def ansible_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nshost.Lab]:
    require_root()
    require_binary("debootstrap", "apt-cacher-ng", "unshare", "nft", "sshd", "ssh", "sshpass", "nc", "zstd")
    tag = secrets.token_hex(2)
    lab = nshost.Lab.up(tag, [f"c{tag}a", f"c{tag}b"], tmp_path_factory.mktemp("nshosts"),
                        proxy_port=nshost.free_low_port())
    try:
        yield lab
    finally:
        lab.down()


@dataclass
class Api:
    server: LiveServer
    http: httpx.Client

    @property
    def settings(self) -> Any:
        return self.server.settings

    def add_host(self, name: str, address: str, *, rack: str | None = None, state: str = S.AVAILABLE) -> int:
        with Session(get_engine(self.settings)) as s:
            rack_id = None
            if rack:
                r = Rack(name=rack)
                s.add(r)
                s.commit()
                rack_id = r.id
            h = Host(name=name, ip_address=address, state=state, bmc_kind="manual", rack_id=rack_id, roles=["docker"])
            s.add(h)
            s.commit()
            assert h.id is not None
            return h.id

    def host(self, name: str) -> Host:
        with Session(get_engine(self.settings)) as s:
            from provisioner import crud

            return crud.get_host(s, name)

    def wait(self, task_id: int, timeout: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.http.get(f"/api/v1/configure/{task_id}").json()["task"]
            if task["status"] in ("succeeded", "failed", "cancelled"):
                return dict(task)
            time.sleep(0.5)
        raise AssertionError(f"task {task_id} did not finish in {timeout} s")


@pytest.fixture(scope="session")
def prov_api(ansible_lab: nshost.Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    engine.stop()
    with start_inprocess_server(tmp_path_factory.mktemp("prov-data")) as server:
        server.settings.ansible_ssh_key = ansible_lab.key
        server.settings.ansible_user = nshost.ADMIN_USER
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"},
                          timeout=30) as http:
            yield Api(server, http)
    engine.stop()


def ssh(address: str, key: Path, user: str, command: str, *, password: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Log in from outside, like an operator (or an attacker) would."""
    if password is not None:
        argv = ["sshpass", "-e", "ssh", *SSH_OPTS, "-o", "PreferredAuthentications=password",
                "-o", "PubkeyAuthentication=no", f"{user}@{address}", command]
        env = {**os.environ, "SSHPASS": password}
    else:
        argv = ["ssh", *SSH_OPTS, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key),
                f"{user}@{address}", command]
        env = None
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
