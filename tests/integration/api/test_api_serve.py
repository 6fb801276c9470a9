"""`prov serve` and `prov token create` as real processes on a loopback port."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import free_port

pytestmark = pytest.mark.integration

PROV = [sys.executable, "-m", "provisioner.cli.main"]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    env["PROV_DATA_DIR"] = str(data_dir)
    return env


def test_serve_first_start_and_token_create(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path)
    proc = subprocess.Popen([*PROV, "serve", "--host", "127.0.0.1", "--port", str(port), "--tftp-port",
                             str(free_port())], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "prov serve did not become ready"
            time.sleep(0.2)
        # a second `prov token create` against the same data directory, while serving
        out = subprocess.run([*PROV, "token", "create", "--name", "ci"], env=env, capture_output=True, text=True,
                             timeout=60, check=True)
        token = out.stdout.strip()
        assert token.startswith("prov_") and len(out.stdout.splitlines()) == 1
        r = httpx.get(f"{url}/api/v1/hosts", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["count"] == 0
        assert httpx.get(f"{url}/api/v1/hosts").status_code == 401
        # revoked while serving: refused once the API's token cache (10 s) has expired, no restart
        listed = subprocess.run([*PROV, "token", "list", "-o", "json"], env=env, capture_output=True, text=True,
                                timeout=60, check=True)
        assert [t["name"] for t in json.loads(listed.stdout)] == ["admin", "ci"] and token not in listed.stdout
        subprocess.run([*PROV, "token", "revoke", "ci"], env=env, capture_output=True, timeout=60, check=True)
        deadline = time.monotonic() + 15
        while httpx.get(f"{url}/api/v1/hosts", headers={"Authorization": f"Bearer {token}"}).status_code != 401:
            assert time.monotonic() < deadline, "a revoked token still works after the cache TTL"
            time.sleep(0.5)
        gone = subprocess.run([*PROV, "token", "revoke", "nobody"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert gone.returncode == 3 and gone.stderr.startswith("error: ")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    # the admin token was printed once on stderr; only its sha256 is stored
    admin = next(line.strip() for line in err.splitlines() if line.strip().startswith("prov_"))
    with sqlite3.connect(tmp_path / "prov.db") as db:
        rows = dict(db.execute("SELECT name, token_hash FROM apitoken").fetchall())
        version = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert rows["admin"] == hashlib.sha256(admin.encode()).hexdigest()
    assert rows["ci"] == hashlib.sha256(token.encode()).hexdigest()
    assert version
    blob = (tmp_path / "prov.db").read_bytes()
    assert admin.encode() not in blob and token.encode() not in blob
    # log lines are JSON, one per line
    json_lines = [line for line in err.splitlines() if line.startswith("{")]
    assert json_lines and all(line.endswith("}") for line in json_lines)
    assert admin not in "\n".join(json_lines)

    # (a second start printing no new token is covered by tests/unit/test_auth.py)
