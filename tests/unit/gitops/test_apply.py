"""apply_plan and the baseline it records (issue 19, item 3), against a recording fake controller.

Independent failures do not stop the apply, dependents are skipped naming what failed, and
every outcome (full, partial, none at all) leaves a baseline that describes reality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner.errors import Conflict, InvalidInput
from provisioner.gitops import inventory as inv_mod
from provisioner.gitops.apply import ApplyResult, Outcome, apply_plan, check_saved_plan, fingerprints
from provisioner.gitops.plan import Action, Plan, make_plan
from provisioner.gitops.world import World

SALT = "test-salt"
INV = """\
apiVersion: prov/v1
defaults:
  bmc: {kind: manual}
profiles:
  - {name: deb, install_method: image, image_url: "http://127.0.0.1/i.raw"}
racks:
  - {name: r1}
  - {name: r2}
hosts:
  - {name: a1, rack: r1, profile: deb, nics: [{mac: "52:54:00:00:00:01"}],
     bmc: {address: 127.0.0.1, port: 1001, password: {env: APPLY_PW}}}
  - {name: b1, rack: r2, profile: deb, nics: [{mac: "52:54:00:00:00:02"}]}
  - {name: c1, rack: r1, profile: deb, nics: [{mac: "52:54:00:00:00:03"}]}
"""


class FakeController:
    """Answers like the API; ``fail`` maps "METHOD path" to the error it raises."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[tuple[str, str]] = []
        self.recorded: list[dict[str, Any]] = []

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        self.calls.append((method, path))
        if f"{method} {path}" in self.fail:
            raise self.fail[f"{method} {path}"]
        if method == "PUT" and path == "/api/v1/gitops/applied":
            self.recorded.append(kw["json"])
            return kw["json"]
        if method == "GET" and path.startswith("/api/v1/hosts/"):
            return {"name": path.rsplit("/", 1)[1], "state": "available"}
        return {}

    def get(self, path: str, **kw: Any) -> Any:
        return self._call("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self._call("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self._call("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self._call("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self._call("DELETE", path, **kw)


@pytest.fixture
def inv(tmp_path: Path) -> inv_mod.Inventory:
    (tmp_path / "inv.yaml").write_text(INV)
    return inv_mod.load(tmp_path / "inv.yaml")


def run(inv: inv_mod.Inventory, ctl: FakeController, world: World | None = None,
        **kw: Any) -> tuple[ApplyResult, Plan]:
    world = world or World(applied={"salt": SALT})
    passwords = {"a1": "pw-a1"}
    plan = make_plan(inv, world, password_fingerprints=fingerprints(passwords, SALT))
    return apply_plan(ctl, inv, plan, passwords, world, **kw), plan  # type: ignore[arg-type]


def status(result: ApplyResult) -> dict[tuple[str, str], str]:
    return {(o.action.op, o.action.key): o.status for o in result.outcomes}


def test_a_failed_rack_skips_its_hosts_and_everything_else_goes_on(inv: inv_mod.Inventory) -> None:
    ctl = FakeController({"POST /api/v1/racks": InvalidInput(field="x", reason="r2 refused")})
    # only r2's create fails: the fake fails every rack POST, so make r1 exist already
    world = World(applied={"salt": SALT}, racks={"r1": {"name": "r1", "site": "", "size_u": 42}})
    result, _plan = run(inv, ctl, world)
    s = status(result)
    assert s[("create", "rack/r2")] == "failed"
    assert s[("create", "host/b1")] == "skipped" and s[("verify", "host/b1")] == "skipped"
    assert s[("create", "host/a1")] == "ok" and s[("verify", "host/a1")] == "ok" and s[("verify", "host/c1")] == "ok"
    skipped = next(o for o in result.outcomes if o.action.key == "host/b1" and o.action.op == "create")
    assert skipped.message == "rack/r2 failed"
    assert ("POST", "/api/v1/hosts/b1/verify") not in ctl.calls  # never attempted
    assert result.summary() == "Apply: 5 succeeded, 1 failed, 2 skipped."
    (rec,) = ctl.recorded
    assert rec["ok"] is False
    assert rec["objects"] == ["rack/r1", "host/a1", "host/c1"]  # r2 and b1 were never made
    assert [h["name"] for h in rec["document"]["hosts"]] == ["a1", "c1"]
    assert [r["name"] for r in rec["document"]["racks"]] == ["r1"]
    assert "pw-a1" not in repr(rec) and rec["fingerprints"]["host/a1"]["password"]


def test_a_failed_verify_keeps_the_password_fingerprint_and_the_old_config(inv: inv_mod.Inventory) -> None:
    ctl = FakeController({"POST /api/v1/hosts/a1/verify": Conflict(reason="BMC refused")})
    result, _ = run(inv, ctl)
    assert status(result)[("verify", "host/a1")] == "failed"
    (rec,) = ctl.recorded
    fp = rec["fingerprints"]["host/a1"]
    # the create set the password: recorded (the controller checks it), so no "(set) -> (changed)" next time
    assert fp["password"] == fingerprints({"a1": "pw-a1"}, SALT)["a1"]
    assert "config" not in fp  # the workflow did not finish: the next plan configures again
    assert "host/a1" in rec["objects"] and "config" in rec["fingerprints"]["host/c1"]


def test_an_unexpected_end_still_records_what_succeeded(inv: inv_mod.Inventory) -> None:
    class Interrupt(Exception):
        pass

    class Ctl(FakeController):
        def post(self, path: str, **kw: Any) -> Any:
            if path == "/api/v1/hosts/a1/verify":
                raise Interrupt  # not a ProvError: a Ctrl-C, a bug
            return super().post(path, **kw)

    ctl = Ctl()
    with pytest.raises(Interrupt):
        run(inv, ctl, concurrency=1)
    (rec,) = ctl.recorded  # recorded at all: that is the point
    assert rec["ok"] is False  # it did not finish
    assert "host/a1" in rec["objects"] and "config" not in rec["fingerprints"]["host/a1"]


def test_a_no_op_apply_records_once_then_not_again(inv: inv_mod.Inventory) -> None:
    ctl = FakeController()
    run(inv, ctl)
    (first,) = ctl.recorded
    # the controller now holds what was recorded; the same apply again plans nothing
    applied = {**first, "id": 1, "salt": SALT}
    world = World(applied=applied)
    world.profiles = {"deb": {**inv.profiles["deb"].model_dump()}}
    world.racks = {n: {"name": n, "site": "", "size_u": 42} for n in inv.racks}
    from provisioner.gitops.plan import host_body

    for name, h in inv.hosts.items():
        body = host_body(h)
        bmc = {**body["bmc"], "password_set": True} if "bmc" in body else {"kind": "manual"}
        nics = [{**n, "name": ""} for n in body["nics"]]
        world.hosts[name] = {**body, "state": "available", "bmc": bmc, "nics": nics}
    result, plan = run(inv, ctl, world)
    assert plan.actions == [] and result.outcomes == [] and result.recorded
    assert len(ctl.recorded) == 1  # nothing new to say: no second row
    # the inventory drops c1, which was deleted by hand meanwhile: still a no-op plan, but a new baseline
    del world.hosts["c1"]
    inv.hosts.pop("c1")
    result, plan = run(inv, ctl, world)
    assert plan.actions == [] and len(ctl.recorded) == 2
    assert ctl.recorded[-1]["objects"] == ["rack/r1", "rack/r2", "host/a1", "host/b1"] and ctl.recorded[-1]["ok"]


def test_a_failed_delete_stays_managed(inv: inv_mod.Inventory) -> None:
    world = World(applied={"salt": SALT, "id": 1, "objects": ["host/old1"],
                           "document": {"hosts": [{"name": "old1"}]}, "fingerprints": {"host/old1": {"config": "x"}}})
    world.hosts["old1"] = {"name": "old1", "state": "available"}
    ctl = FakeController({"DELETE /api/v1/hosts/old1": Conflict(reason="busy")})
    result, _ = run(inv, ctl, world, allow_delete=True)
    assert status(result)[("delete", "host/old1")] == "failed"
    rec = ctl.recorded[-1]
    assert "host/old1" in rec["objects"] and {"name": "old1"} in rec["document"]["hosts"]
    assert rec["fingerprints"]["host/old1"] == {"config": "x"}


def test_outcome_statuses_and_summary() -> None:
    a = Action("create", "host", "x")
    r = ApplyResult([Outcome(a, True), Outcome(a, False, "boom"), Outcome(a, False, "y failed", skipped=True)])
    assert [o.status for o in r.outcomes] == ["ok", "failed", "skipped"]
    assert r.summary() == "Apply: 1 succeeded, 1 failed, 1 skipped."
    assert ApplyResult([Outcome(a, True)]).summary() == "Apply: 1 succeeded, 0 failed."
    d = r.to_dict()
    assert (d["succeeded"], d["failed"], d["skipped"], d["ok"]) == (1, 1, 1, False)


def test_a_saved_plan_is_refused_when_the_actions_differ(inv: inv_mod.Inventory) -> None:
    world = World(applied={"salt": SALT})
    saved = make_plan(inv, world, password_fingerprints=fingerprints({"a1": "pw-a1"}, SALT))
    same = Plan.from_dict(saved.to_dict())
    check_saved_plan(same, saved)  # a round trip through JSON is the same plan
    world.hosts["a1"] = {"name": "a1", "state": "available", "rack": "r1", "profile": "deb"}
    with pytest.raises(Conflict, match="controller's state changed"):
        check_saved_plan(saved, make_plan(inv, world, password_fingerprints={}))
    other = Plan.from_dict(saved.to_dict())
    other.actions = other.actions[:-1]
    with pytest.raises(Conflict, match="would do something else"):
        check_saved_plan(other, saved)
    edited = Plan.from_dict({**saved.to_dict(), "inventory_digest": "0" * 64})
    with pytest.raises(Conflict, match="inventory changed since the plan was made"):
        check_saved_plan(edited, saved)


def test_the_plan_file_carries_its_origin(inv: inv_mod.Inventory) -> None:
    plan = make_plan(inv, World(), password_fingerprints={})
    plan.origin = {"git": "/srv/inv.git", "ref": "main", "path": "inventory", "commit": "a" * 40}
    assert Plan.from_dict(plan.to_dict()).origin == plan.origin
    old = plan.to_dict()
    del old["origin"]  # a plan saved by an older prov
    assert Plan.from_dict(old).origin == {}
