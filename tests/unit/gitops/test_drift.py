"""Drift rows (issue 19, item 3): applied -> now per field, a deleted host once, a hand-set password named."""

from __future__ import annotations

from provisioner.cli.gitops_drift import render_text
from provisioner.gitops.drift import detect, to_dicts
from provisioner.gitops.secrets import RECORDED
from tests.unit.gitops.test_plan import inventory, world_matching


def test_a_deleted_host_is_one_row_without_ghosts() -> None:
    inv = inventory()
    w = world_matching(inv)
    del w.hosts["kvm01"]  # had a guest and wants to be configured: neither is drift of its own
    del w.guests["kvm01"]
    rows = to_dicts(detect(w))
    assert [(d["object"], d["kind"]) for d in rows] == [("host/kvm01", "deleted")]


def test_changed_fields_show_applied_and_current_values() -> None:
    inv = inventory()
    w = world_matching(inv)
    w.hosts["web01"]["u_position"] = 30
    w.hosts["web01"]["roles"] = ["db"]
    (d,) = to_dicts(detect(w))
    assert d["changes"] == [{"field": "u_position", "old": 10, "new": 30},
                            {"field": "roles", "old": ["web", "docker"], "new": ["db"]}]
    assert d["detail"] == 'u_position: 10 -> 30; roles: ["web", "docker"] -> ["db"]'
    assert render_text([d]).splitlines() == ["~ host/web01 changed", "    u_position: 10 -> 30",
                                             '    roles: ["web", "docker"] -> ["db"]',
                                             "Drift: 1 object(s) differ from the last applied inventory."]


def test_a_password_set_by_hand_is_named_never_shown() -> None:
    inv = inventory()
    w = world_matching(inv)
    entry = w.applied["fingerprints"]["host/web02"]  # type: ignore[index]
    entry[RECORDED], entry["password"] = entry["password"], "f" * 32  # the controller's view: another secret
    w.hosts["web02"]["roles"] = ["x"]
    (d,) = to_dicts(detect(w))
    assert d["object"] == "host/web02" and d["kind"] == "changed"
    assert d["changes"][-1] == {"field": "bmc.password", "old": "(as applied)", "new": "(another secret)"}
    assert "f" * 32 not in repr(d)
    entry["password"] = entry[RECORDED]  # set back to the applied one: no drift
    w.hosts["web02"]["roles"] = inv.hosts["web02"].roles
    assert detect(w) == []
