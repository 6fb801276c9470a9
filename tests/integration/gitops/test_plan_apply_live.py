"""prov plan / apply / drift as a pipeline runs them: the real CLI against a live controller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.controller import LiveController, live_controller
from tests.support.helpers import require_binary

pytestmark = pytest.mark.integration

INVENTORY = """\
apiVersion: prov/v1
defaults:
  bmc: {kind: manual, username: admin}
profiles:
  - name: deb
    install_method: image
    image_url: http://127.0.0.1/img.raw
racks:
  - {name: r1, site: lab}
hosts:
  - name: web01
    rack: r1
    u_position: 1
    profile: deb
    roles: [web]
    nics: [{mac: "52:54:00:aa:00:01", boot: true}]
    bmc: {address: 127.0.0.1, port: 10001, password: {env: GITOPS_PW}}
  - name: web02
    rack: r1
    u_position: 2
    profile: deb
    nics: [{mac: "52:54:00:aa:00:02", boot: true}]
    bmc: {address: 127.0.0.1, port: 10002, password: {file: pw.txt}}
"""


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[LiveController]:
    with live_controller(tmp_path / "data") as c:
        yield c


def prov(ctl: LiveController, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ctl.env(), "GITOPS_PW": "gitops-secret-1"}
    return subprocess.run([sys.executable, "-m", "provisioner.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120, stdin=subprocess.DEVNULL)


def write_inventory(d: Path, text: str = INVENTORY) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.yaml").write_text(text)
    (d / "pw.txt").write_text("gitops-secret-2\n")
    return d


def test_plan_apply_is_idempotent_and_records_history(ctl: LiveController, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv")
    r = prov(ctl, "plan", "-f", str(inv))
    assert r.returncode == 2, r.stderr
    assert "+ host web01" in r.stdout and "> host web01 verify" in r.stdout
    r = prov(ctl, "apply", "-f", str(inv))
    assert r.returncode == 0, r.stdout + r.stderr
    with ctl.client() as c:
        hosts = {h["name"]: h for h in c.get("/api/v1/hosts")["data"]}
        assert hosts["web01"]["state"] == "available" and hosts["web01"]["bmc"]["password_set"]
        assert hosts["web01"]["roles"] == ["web"]
        applied = c.get("/api/v1/gitops/applied")
    blob = json.dumps(applied)
    assert "gitops-secret" not in blob  # references and fingerprints only
    assert applied["document"]["hosts"][0]["bmc"]["password"] == {"env": "GITOPS_PW", "file": None, "store": None}
    # a second plan has nothing to do, a second apply changes nothing
    r = prov(ctl, "plan", "-f", str(inv))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("No changes.")
    r = prov(ctl, "apply", "-f", str(inv))
    assert r.returncode == 0 and "No changes" in r.stdout


def test_changes_plan_file_staleness_and_deletion(ctl: LiveController, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv")
    assert prov(ctl, "apply", "-f", str(inv)).returncode == 0
    changed = INVENTORY.replace("roles: [web]", "roles: [web, db]").replace("u_position: 2", "u_position: 7")
    write_inventory(inv, changed)
    plan_file = tmp_path / "plan.json"
    r = prov(ctl, "plan", "-f", str(inv), "--out", str(plan_file), "-o", "json")
    assert r.returncode == 2
    actions = json.loads(r.stdout)["actions"]
    assert [(a["op"], a["name"]) for a in actions] == [("update", "web01"), ("update", "web02")]
    # the world changes behind the saved plan's back: apply refuses it and changes nothing
    with ctl.client() as c:
        c.patch("/api/v1/hosts/web01", json={"u_position": 30})
    r = prov(ctl, "apply", "-f", str(inv), "--plan-file", str(plan_file))
    assert r.returncode == 1 and "stale" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with ctl.client() as c:
        assert c.get("/api/v1/hosts/web02")["u_position"] == 2
    # a fresh plan applies
    r = prov(ctl, "plan", "-f", str(inv), "--out", str(plan_file))
    assert r.returncode == 2
    r = prov(ctl, "apply", "-f", str(inv), "--plan-file", str(plan_file))
    assert r.returncode == 0, r.stderr
    with ctl.client() as c:
        assert c.get("/api/v1/hosts/web01")["roles"] == ["web", "db"]
        assert c.get("/api/v1/hosts/web01")["u_position"] == 1
    # removing a host from the inventory is a deletion that needs --allow-delete
    write_inventory(inv, changed.split("  - name: web02")[0])
    r = prov(ctl, "apply", "-f", str(inv))
    assert r.returncode == 1 and "--allow-delete" in r.stderr
    with ctl.client() as c:
        assert c.get("/api/v1/hosts", params={"name": "web02"})["count"] >= 0
        c.get("/api/v1/hosts/web02")  # still there
    r = prov(ctl, "apply", "-f", str(inv), "--allow-delete")  # off a terminal, a deletion also needs --yes
    assert r.returncode == 11 and "add --yes" in r.stderr, r.stderr
    r = prov(ctl, "apply", "-f", str(inv), "--allow-delete", "--yes")
    assert r.returncode == 0, r.stderr
    r = prov(ctl, "plan", "-f", str(inv))
    assert r.returncode == 0, r.stdout


def test_drift_after_a_manual_change(ctl: LiveController, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv")
    r = prov(ctl, "drift")
    assert r.returncode == 0 and "Nothing applied yet" in r.stdout
    assert prov(ctl, "apply", "-f", str(inv)).returncode == 0
    assert prov(ctl, "drift").returncode == 0
    with ctl.client() as c:
        c.patch("/api/v1/hosts/web02", json={"roles": ["hand-edited"]})
    r = prov(ctl, "drift", "-o", "json")
    assert r.returncode == 8  # drift found (not an error: 1)
    assert json.loads(r.stdout) == [{"object": "host/web02", "kind": "changed",
                                     "detail": 'roles: [] -> ["hand-edited"]',  # applied -> now
                                     "changes": [{"field": "roles", "old": [], "new": ["hand-edited"]}]}]


def test_bad_inventory_is_rejected_before_anything_changes(ctl: LiveController, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", INVENTORY.replace('"52:54:00:aa:00:02"', '"52:54:00:aa:00:01"'))
    r = prov(ctl, "apply", "-f", str(inv))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "hosts[1].nics[0].mac: 52:54:00:aa:00:01 already used by web01" in r.stderr
    with ctl.client() as c:
        assert c.get("/api/v1/hosts")["count"] == 0 and c.get("/api/v1/racks")["count"] == 0


def test_apply_from_git_records_the_commit(ctl: LiveController, tmp_path: Path) -> None:
    require_binary("git")
    src = tmp_path / "src"
    write_inventory(src / "inventory")
    (src / "inventory" / "pw.txt").unlink()
    (src / "inventory" / "hosts.yaml").write_text(INVENTORY.replace("{file: pw.txt}", "{env: GITOPS_PW}"))
    bare = tmp_path / "inv.git"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(src)], check=True)
    subprocess.run([*git, "-C", str(src), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(src), "commit", "-qm", "racks"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(bare)], check=True)
    sha = subprocess.run(["git", "-C", str(bare), "rev-parse", "main"], capture_output=True, text=True,
                         check=True).stdout.strip()
    r = prov(ctl, "apply", "--git", str(bare), "--ref", "main", "--path", "inventory")
    assert r.returncode == 0, r.stdout + r.stderr
    with ctl.client() as c:
        assert c.get("/api/v1/gitops/applied")["commit"] == sha
        events = c.get("/api/v1/hosts/web01/events")["data"]
    assert any(sha in e["actor"] for e in events), events
    r = prov(ctl, "plan", "--git", str(bare), "--ref", "no-such-branch", "--path", "inventory")
    assert r.returncode == 1 and "no branch, tag or commit 'no-such-branch'" in r.stderr
