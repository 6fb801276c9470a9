from __future__ import annotations

from pathlib import Path

from provisioner.gitops import inventory as inv_mod
from provisioner.gitops.apply import fingerprints
from provisioner.gitops.drift import detect
from provisioner.gitops.plan import Plan, config_fingerprint, host_body, make_plan, render_text
from provisioner.gitops.world import World
from tests.support.helpers import assert_golden

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "inventory"
SALT = "test-salt"


def inventory() -> inv_mod.Inventory:
    """The example inventory with every host ``configured`` (the example's default is ``available``,
    so that applying it as it stands installs nothing): the workflows are what these tests check."""
    inv = inv_mod.load(EXAMPLES)
    inv.hosts = {n: h.model_copy(update={"state": "configured"}) for n, h in inv.hosts.items()}
    return inv


def pw() -> dict[str, str]:
    return fingerprints({"web01": "pw", "web02": "pw", "kvm01": "pw"}, SALT)


def world_matching(inv: inv_mod.Inventory, state: str = "active") -> World:
    """A controller state that matches the inventory exactly (as the API would report it)."""
    w = World()
    for name, p in inv.profiles.items():
        w.profiles[name] = {"id": 1, **p.model_dump()}
    for name, r in inv.racks.items():
        w.racks[name] = {"id": 1, "name": name, "site": r.site, "size_u": r.size_u}
    fps = {}
    for i, (name, h) in enumerate(sorted(inv.hosts.items())):
        body = host_body(h)
        bmc = dict(body["bmc"])
        bmc["password_set"] = True
        w.hosts[name] = {**body, "id": i + 1, "state": state, "power_state": "on", "bmc": bmc,
                         "nics": [{**n, "name": ""} for n in body["nics"]]}
        fps[f"host/{name}"] = {"config": config_fingerprint(h, inv.profiles), "password": pw()[name]}
        w.guests[name] = {g.name: {"name": g.name} for g in h.guests}
    w.applied = {"salt": SALT, "fingerprints": fps, "objects": [f"host/{n}" for n in inv.hosts] + ["rack/r1"],
                 "document": {"profiles": [p.model_dump() for p in inv.profiles.values()],
                              "racks": [r.model_dump() for r in inv.racks.values()],
                              "hosts": [h.model_dump(mode="json") for h in inv.hosts.values()]}}
    return w


def test_empty_controller_plans_everything_golden() -> None:
    inv = inventory()
    plan = make_plan(inv, World(), password_fingerprints=pw(), source="examples/inventory")
    assert plan.summary() == {"create": 5, "verify": 3, "install": 3, "create-guest": 1}
    assert_golden("gitops/plan-empty.txt", render_text(plan))


def test_matching_controller_plans_nothing() -> None:
    inv = inventory()
    plan = make_plan(inv, world_matching(inv), password_fingerprints=pw())
    assert plan.actions == [], render_text(plan)
    assert render_text(plan).startswith("No changes.")


def test_field_changes_are_listed_field_by_field_golden() -> None:
    inv = inventory()
    w = world_matching(inv)
    w.hosts["web01"]["u_position"] = 30
    w.hosts["web01"]["roles"] = ["web"]
    w.hosts["web02"]["bmc"]["address"] = "10.9.9.9"
    w.racks["r1"]["site"] = "dc2"
    changed_pw = fingerprints({"web01": "pw", "web02": "new-password", "kvm01": "pw"}, SALT)
    plan = make_plan(inv, w, password_fingerprints=changed_pw)
    assert [a.key for a in plan.actions] == ["rack/r1", "host/web01", "host/web02"]
    assert "new-password" not in render_text(plan)
    assert_golden("gitops/plan-changes.txt", render_text(plan))


def test_config_change_plans_configure_and_state_drives_workflows() -> None:
    inv = inventory()
    w = world_matching(inv)
    w.applied["fingerprints"]["host/web01"]["config"] = "old"  # type: ignore[index]
    w.hosts["web02"]["state"] = "install-failed"
    w.hosts["kvm01"]["state"] = "installing"  # busy: left alone
    plan = make_plan(inv, w, password_fingerprints=pw())
    assert [(a.op, a.name) for a in plan.actions] == [("install", "web02"), ("configure", "web01")] or \
        sorted((a.op, a.name) for a in plan.actions) == [("configure", "web01"), ("install", "web02")]


def test_removed_hosts_are_deletions_that_need_permission() -> None:
    inv = inventory()
    w = world_matching(inv)
    w.hosts["old01"] = {"name": "old01", "state": "available"}
    w.applied["objects"].append("host/old01")  # type: ignore[union-attr]
    w.hosts["manual01"] = {"name": "manual01", "state": "available"}  # never managed by GitOps: untouched
    plan = make_plan(inv, w, password_fingerprints=pw())
    assert [(a.op, a.name, a.destructive) for a in plan.actions] == [("delete", "old01", True)]


def test_plan_round_trips_and_fingerprint_tracks_the_world() -> None:
    inv = inventory()
    w = world_matching(inv)
    w.hosts["web01"]["u_position"] = 30
    plan = make_plan(inv, w, password_fingerprints=pw())
    again = Plan.from_dict(plan.to_dict())
    assert again.to_dict() == plan.to_dict()
    w.hosts["web02"]["roles"] = ["x"]
    assert make_plan(inv, w, password_fingerprints=pw()).world_fingerprint != plan.world_fingerprint
    w2 = world_matching(inv)
    w2.hosts["web01"]["u_position"] = 30
    w2.hosts["web01"]["updated_at"] = "later"  # volatile fields do not make a plan stale
    assert make_plan(inv, w2, password_fingerprints=pw()).world_fingerprint == plan.world_fingerprint


def test_drift_detects_hand_changes_power_and_missing_guests() -> None:
    inv = inventory()
    w = world_matching(inv)
    assert detect(w) == []
    w.hosts["web01"]["roles"] = ["db"]
    w.hosts["web02"]["power_state"] = "off"
    w.guests["kvm01"] = {}
    kinds = sorted((d.object, d.kind) for d in detect(w))
    assert kinds == [("guest/kvm01/ci-runner-1", "guest-missing"), ("host/web01", "changed"),
                     ("host/web02", "powered-off")]


def test_plan_for_10000_hosts_is_fast() -> None:
    import time

    from provisioner.gitops.inventory import HostIn, Inventory, NicIn, RackIn

    inv = Inventory()
    inv.racks["r1"] = RackIn(name="r1")
    for i in range(10_000):
        n = f"h{i:05d}"
        inv.hosts[n] = HostIn(name=n, rack="r1", nics=[NicIn(mac=f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:"
                                                               f"{i & 255:02x}", boot=True)])
    t = time.perf_counter()
    plan = make_plan(inv, World(), password_fingerprints={})
    assert len(plan.actions) == 10_001 + 10_000
    assert time.perf_counter() - t < 5.0
