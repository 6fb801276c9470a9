"""GitOps converges (issue 19, items 2 and 3): the real CLI against a real ``prov serve``.

Each test is one case of the issue: a partly failed apply, a no-op apply after a host was
deleted by hand, a secret that did not change, ``apply --plan-file`` alone, drift values,
``drift --config`` with nothing to check, and the "Type yes to apply" question.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.cli import exitcodes
from tests.support.serve import ServeProcess, free_port

pytestmark = pytest.mark.integration

PW = "converge-secret-1"

BASE = """\
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
"""


def host(name: str, n: int, *, extra: str = "", bmc: str = "", u: int | None = None, roles: str = "[web]") -> str:
    bmc = bmc or f"{{address: 127.0.0.1, port: {10000 + n}, password: {{env: CONVERGE_PW}}}}"
    return (f"  - name: {name}\n    rack: r1\n    u_position: {u or n}\n    profile: deb\n    roles: {roles}\n"
            f"    nics: [{{mac: \"52:54:00:cc:00:{n:02x}\", boot: true}}]\n    bmc: {bmc}\n{extra}")


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[ServeProcess]:
    with ServeProcess(tmp_path / "data") as c:
        yield c


def prov(ctl: ServeProcess, *args: str, cwd: Path | None = None, pw: str = PW) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    env.update(PROV_URL=ctl.url, PROV_TOKEN=ctl.token, CONVERGE_PW=pw, PROV_CONFIG=str(ctl.data_dir / "none.yaml"))
    return subprocess.run([sys.executable, "-m", "provisioner.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=180, stdin=subprocess.DEVNULL)


def write(d: Path, hosts: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.yaml").write_text(BASE + hosts)
    return d


def plan_json(ctl: ServeProcess, inv: Path) -> dict:
    r = prov(ctl, "plan", "-f", str(inv), "-o", "json")
    assert r.returncode in (0, 2), r.stdout + r.stderr
    return json.loads(r.stdout)


def test_a_partly_failed_apply_records_what_succeeded_and_converges(ctl: ServeProcess, tmp_path: Path) -> None:
    with ctl.client() as c:  # a host made by hand holds the MAC that bad01 wants: its create fails (409)
        c.post("/api/v1/hosts", json={"name": "squatter", "nics": [{"mac": "52:54:00:cc:00:02", "boot": True}]})
    closed = free_port()  # nothing listens: red01's BMC refuses, so its verify fails
    inv = write(tmp_path / "inv", host("ok01", 1) + host("bad01", 2)
                + host("red01", 3, bmc=f"{{kind: redfish, address: 127.0.0.1, port: {closed}, "
                                      "password: {env: CONVERGE_PW}}"))
    r = prov(ctl, "apply", "-f", str(inv), "--yes")
    assert r.returncode == exitcodes.ERROR, r.stdout + r.stderr
    # every independent action ran; bad01's verify is skipped (its create failed), not attempted
    assert "Apply: 5 succeeded, 2 failed, 1 skipped." in r.stdout, r.stdout + r.stderr
    assert "verify host/bad01 ... skipped" in r.stderr and "create host/bad01 ... FAILED" in r.stderr
    assert "verify host/red01 ... FAILED" in r.stderr and "verify host/ok01 ... ok" in r.stderr
    with ctl.client() as c:
        applied = c.get("/api/v1/gitops/applied")
        assert c.get("/api/v1/hosts/ok01")["state"] == "available"
    assert applied["id"] is not None and applied["ok"] is False
    assert {"rack/r1", "host/ok01", "host/red01"} <= set(applied["objects"]) and "host/bad01" not in applied["objects"]
    assert [h["name"] for h in applied["document"]["hosts"]] == ["ok01", "red01"]
    assert PW not in json.dumps(applied)
    # drift knows the baseline ("Nothing applied yet" was the bug); red01 is failed, nothing else
    r = prov(ctl, "drift", "-o", "json")
    assert r.returncode == exitcodes.DRIFT, r.stdout + r.stderr
    assert [(d["object"], d["kind"]) for d in json.loads(r.stdout)] == [("host/red01", "failed")]
    # the next plan retries only what failed, and no password shows as changed
    actions = [(a["op"], a["name"]) for a in plan_json(ctl, inv)["actions"]]
    assert actions == [("create", "bad01"), ("verify", "bad01"), ("verify", "red01")], actions
    # the cause goes away: the next apply converges
    with ctl.client() as c:
        c.delete("/api/v1/hosts/squatter")
    write(inv, host("ok01", 1) + host("bad01", 2) + host("red01", 3))
    r = prov(ctl, "apply", "-f", str(inv), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert prov(ctl, "plan", "-f", str(inv)).stdout.startswith("No changes.")
    r = prov(ctl, "drift")
    assert r.returncode == 0 and r.stdout.startswith("No drift"), r.stdout + r.stderr
    with ctl.client() as c:
        assert c.get("/api/v1/gitops/applied")["ok"] is True


def test_a_no_op_apply_records_so_drift_forgets_a_host_deleted_by_hand(ctl: ServeProcess, tmp_path: Path) -> None:
    inv = write(tmp_path / "inv", host("web01", 1) + host("web02", 2))
    assert prov(ctl, "apply", "-f", str(inv)).returncode == 0
    with ctl.client() as c:
        c.delete("/api/v1/hosts/web02")
        first = c.get("/api/v1/gitops/applied")["id"]
    r = prov(ctl, "drift", "-o", "json")
    assert r.returncode == exitcodes.DRIFT
    rows = json.loads(r.stdout)
    assert [(d["object"], d["kind"]) for d in rows] == [("host/web02", "deleted")]  # once: no not-installed ghost
    r = prov(ctl, "drift")
    assert r.stdout.count("web02") == 1, r.stdout
    # the inventory follows reality: nothing to do, but the apply records the new baseline
    write(inv, host("web01", 1))
    r = prov(ctl, "apply", "-f", str(inv))
    assert r.returncode == 0 and "No changes" in r.stdout, r.stdout + r.stderr
    with ctl.client() as c:
        applied = c.get("/api/v1/gitops/applied")
    assert applied["id"] != first and applied["objects"] == ["rack/r1", "host/web01"]
    r = prov(ctl, "drift")
    assert r.returncode == 0 and r.stdout.startswith("No drift"), r.stdout + r.stderr
    # an identical no-op apply adds no row: the baseline is already right
    assert prov(ctl, "apply", "-f", str(inv)).returncode == 0
    with ctl.client() as c:
        assert c.get("/api/v1/gitops/applied")["id"] == applied["id"]


def test_an_unchanged_secret_is_no_change_and_a_changed_one_is_named_not_shown(
        ctl: ServeProcess, tmp_path: Path) -> None:
    # adopted: the host was made by hand with the inventory's password; no apply recorded it
    with ctl.client() as c:
        c.post("/api/v1/racks", json={"name": "r1", "site": "lab"})
        c.post("/api/v1/profiles", json={"name": "deb", "install_method": "image",
                                         "image_url": "http://127.0.0.1/img.raw"})
        c.post("/api/v1/hosts", json={
            "name": "web01", "rack": "r1", "u_position": 1, "profile": "deb", "roles": ["web"],
            "nics": [{"mac": "52:54:00:cc:00:01", "boot": True}],
            "bmc": {"kind": "manual", "address": "127.0.0.1", "port": 10001, "username": "admin", "password": PW}})
        c.post("/api/v1/hosts/web01/verify")
        deadline = time.monotonic() + 30
        while c.get("/api/v1/hosts/web01")["state"] != "available" and time.monotonic() < deadline:
            time.sleep(0.2)
    inv = write(tmp_path / "inv", host("web01", 1))
    r = prov(ctl, "plan", "-f", str(inv))
    assert r.returncode == 0 and r.stdout.startswith("No changes."), r.stdout + r.stderr
    # another password in the inventory: a change, named, its value never shown
    r = prov(ctl, "plan", "-f", str(inv), pw="converge-secret-2")
    assert r.returncode == 2 and "bmc.password: (set) -> (changed)" in r.stdout, r.stdout
    assert "converge-secret" not in r.stdout + r.stderr
    assert prov(ctl, "apply", "-f", str(inv), pw="converge-secret-2").returncode == 0
    assert prov(ctl, "plan", "-f", str(inv), pw="converge-secret-2").returncode == 0
    # someone sets another password by hand: the controller's fingerprint no longer matches the record
    with ctl.client() as c:
        c.patch("/api/v1/hosts/web01", json={"bmc": {"password": "set-by-hand"}})
    r = prov(ctl, "plan", "-f", str(inv), pw="converge-secret-2")
    assert r.returncode == 2 and "bmc.password: (set) -> (changed)" in r.stdout, r.stdout
    r = prov(ctl, "drift", "-o", "json")
    assert r.returncode == exitcodes.DRIFT
    assert [(d["object"], d["kind"], d["detail"]) for d in json.loads(r.stdout)] == [
        ("host/web01", "changed", "bmc.password: (as applied) -> (another secret)")]
    # set back by hand to the applied value: the same secret again, no change, no drift
    with ctl.client() as c:
        c.patch("/api/v1/hosts/web01", json={"bmc": {"password": "converge-secret-2"}})
    assert prov(ctl, "plan", "-f", str(inv), pw="converge-secret-2").returncode == 0
    assert prov(ctl, "drift").returncode == 0


def test_apply_plan_file_alone_reads_the_planned_inventory_and_refuses_a_changed_one(
        ctl: ServeProcess, tmp_path: Path) -> None:
    inv = write(tmp_path / "inv", host("web01", 1))
    plan_file = tmp_path / "plan.json"
    r = prov(ctl, "plan", "-f", "inv", "--out", str(plan_file), cwd=tmp_path)  # a relative path
    assert r.returncode == 2, r.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = prov(ctl, "apply", "--plan-file", str(plan_file), cwd=elsewhere)  # no -f
    assert r.returncode == 0, r.stdout + r.stderr
    with ctl.client() as c:
        assert c.get("/api/v1/hosts/web01")["state"] == "available"
    # planned, then the inventory is edited: the saved plan is refused and nothing changes
    write(inv, host("web01", 1, roles="[web, db]"))
    assert prov(ctl, "plan", "-f", str(inv), "--out", str(plan_file)).returncode == 2
    write(inv, host("web01", 1, u=7))
    r = prov(ctl, "apply", "--plan-file", str(plan_file))
    assert r.returncode == exitcodes.ERROR, r.stdout + r.stderr
    assert "the inventory changed since the plan was made" in r.stderr and len(r.stderr.splitlines()) == 1
    with ctl.client() as c:
        assert c.get("/api/v1/hosts/web01")["u_position"] == 1
    # a password changed since the plan: the plan would do something else, so it is refused too
    assert prov(ctl, "plan", "-f", str(inv), "--out", str(plan_file)).returncode == 2
    r = prov(ctl, "apply", "--plan-file", str(plan_file), pw="converge-secret-9")
    assert r.returncode == exitcodes.ERROR and "stale" in r.stderr, r.stdout + r.stderr


def test_drift_shows_applied_and_actual_values(ctl: ServeProcess, tmp_path: Path) -> None:
    inv = write(tmp_path / "inv", host("web01", 1))
    assert prov(ctl, "apply", "-f", str(inv)).returncode == 0
    with ctl.client() as c:
        c.patch("/api/v1/hosts/web01", json={"roles": ["hand-edited"], "u_position": 30})
    r = prov(ctl, "drift", "-o", "json")
    assert r.returncode == exitcodes.DRIFT
    (row,) = json.loads(r.stdout)
    assert row["object"] == "host/web01" and row["kind"] == "changed"
    assert row["changes"] == [{"field": "u_position", "old": 1, "new": 30},
                              {"field": "roles", "old": ["web"], "new": ["hand-edited"]}]
    assert row["detail"] == 'u_position: 1 -> 30; roles: ["web"] -> ["hand-edited"]'
    r = prov(ctl, "drift")  # one line per field, as the plan shows them
    assert r.stdout == ('~ host/web01 changed\n    u_position: 1 -> 30\n    roles: ["web"] -> ["hand-edited"]\n'
                        "Drift: 1 object(s) differ from the last applied inventory.\n"), r.stdout


def test_drift_config_with_no_active_host_says_nothing_was_checked(ctl: ServeProcess, tmp_path: Path) -> None:
    inv = write(tmp_path / "inv", host("web01", 1))
    assert prov(ctl, "apply", "-f", str(inv)).returncode == 0
    r = prov(ctl, "drift", "--config")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No drift" not in r.stdout
    assert "Checked 0 hosts: no host of the last applied inventory is active (1 not active: web01)" in r.stdout
    r = prov(ctl, "drift", "--config", "-o", "json")  # the rows, as plain drift gives them; the count on stderr
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout + r.stderr
    assert r.stderr.startswith("Checked 0 hosts: no host of the last applied inventory is active"), r.stderr


def _on_a_terminal(ctl: ServeProcess, args: list[str], answer: str) -> tuple[int, str]:
    """Run prov with a pseudo-terminal as stdin/stdout, answer its question, return (code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    env.update(PROV_URL=ctl.url, PROV_TOKEN=ctl.token, CONVERGE_PW=PW, PROV_CONFIG=str(ctl.data_dir / "none.yaml"),
               COLUMNS="200")
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "provisioner.cli.main", *args], stdin=slave, stdout=slave,
                         stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not answered and b"Type yes to apply:" in out:
            os.write(master, answer.encode() + b"\n")
            answered = True
        if p.poll() is not None and not ready:
            break
    code = p.wait(30)
    os.close(master)
    return code, out.decode(errors="replace")


def test_apply_asks_before_it_deletes_and_refuses_off_a_terminal_without_yes(
        ctl: ServeProcess, tmp_path: Path) -> None:
    inv = write(tmp_path / "inv", host("web01", 1) + host("web02", 2))
    assert prov(ctl, "apply", "-f", str(inv)).returncode == 0  # creates and verifies: nothing to ask
    write(inv, host("web01", 1))
    r = prov(ctl, "apply", "-f", str(inv), "--allow-delete")
    assert r.returncode == exitcodes.NOT_CONFIRMED, r.stdout + r.stderr
    assert r.stderr == ("error: the plan deletes 1 object(s) (host/web02): not confirmed "
                        "(stdin is not a terminal; add --yes to apply without asking)\n")
    code, out = _on_a_terminal(ctl, ["apply", "-f", str(inv), "--allow-delete"], "no")
    assert code == exitcodes.NOT_CONFIRMED and "- host web02" in out and "Apply cancelled" in out, out
    with ctl.client() as c:
        c.get("/api/v1/hosts/web02")  # still there
    code, out = _on_a_terminal(ctl, ["apply", "-f", str(inv), "--allow-delete"], "yes")
    assert code == 0 and "Apply: 1 succeeded, 0 failed." in out, out
    with ctl.client() as c:
        assert c.get("/api/v1/hosts", params={"name": "web02"})["count"] == 0


def test_apply_that_installs_needs_yes_off_a_terminal(ctl: ServeProcess, tmp_path: Path) -> None:
    inv = write(tmp_path / "inv", host("web01", 1, extra="    state: installed\n"))
    r = prov(ctl, "apply", "-f", str(inv))
    assert r.returncode == exitcodes.NOT_CONFIRMED, r.stdout + r.stderr
    assert "the plan installs 1 host(s) (web01)" in r.stderr
    with ctl.client() as c:
        assert c.get("/api/v1/hosts")["count"] == 0 and c.get("/api/v1/racks")["count"] == 0  # nothing changed
