"""Drift: where reality differs from the last applied inventory.

Reads the inventory document stored by the last ``prov apply`` and reports
objects whose controller state no longer matches it: fields changed by hand
(each with its applied and its current value), a BMC password changed by hand
(named, never shown), objects deleted, hosts in a failure state or not in their
applied state, hosts that should be installed but are powered off, guests missing.

A deleted host is one row, ``deleted``: what the plan would do to bring it back
(create, verify, install, its guests) is not drift of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from provisioner.gitops.inventory import Inventory, InventoryDoc
from provisioner.gitops.plan import Action, make_plan, short
from provisioner.gitops.secrets import RECORDED
from provisioner.gitops.world import World

_INSTALLED = {"installed", "configured"}


@dataclass
class Drift:
    object: str
    kind: str  # changed | deleted | failed | not-installed | unconfigured | powered-off | guest-missing
    detail: str
    changes: list[dict[str, Any]] = field(default_factory=list)  # {field, old: applied, new: now}


def inventory_from_applied(applied: dict[str, Any]) -> Inventory | None:
    doc = applied.get("document") or {}
    if not doc:
        return None
    parsed = InventoryDoc.model_validate({"apiVersion": "prov/v1", **doc})
    inv = Inventory()
    inv.profiles = {p.name: p for p in parsed.profiles}
    inv.racks = {r.name: r for r in parsed.racks}
    inv.hosts = {h.name: h for h in parsed.hosts}
    return inv


def _changed(key: str, changes: list[dict[str, Any]]) -> Drift:
    detail = "; ".join(f"{c['field']}: {short(c['old'])} -> {short(c['new'])}" for c in changes)
    return Drift(key, "changed", detail, changes)


def _host_of(a: Action) -> str | None:
    return a.host if a.kind == "guest" else a.name if a.kind == "host" else None


def _password_changes(inv: Inventory, world: World) -> dict[str, dict[str, Any]]:
    """host -> the bmc.password change, for stored passwords that are not the applied one any more."""
    fps = (world.applied or {}).get("fingerprints") or {}
    out: dict[str, dict[str, Any]] = {}
    for name in inv.hosts:
        entry = fps.get(f"host/{name}") or {}
        if name in world.hosts and RECORDED in entry and entry.get("password") != entry[RECORDED]:
            now = "(another secret)" if entry.get("password") else "(none)"
            out[name] = {"field": "bmc.password", "old": "(as applied)", "new": now}
    return out


def detect(world: World) -> list[Drift]:
    applied = world.applied or {}
    inv = inventory_from_applied(applied)
    if inv is None:
        return []
    out: list[Drift] = []
    plan = make_plan(inv, world, password_fingerprints=None)  # passwords: by the controller's fingerprints
    deleted = {a.name for a in plan.actions if a.op == "create" and a.kind == "host"}
    passwords = _password_changes(inv, world)
    for a in plan.actions:
        if a.op == "create":
            out.append(Drift(a.key, "deleted", "in the last applied inventory, deleted from the controller since"))
            continue
        if _host_of(a) in deleted:
            continue  # a deleted host is one row; bringing it back is the plan's business
        if a.op == "update":
            # the plan's Change is (actual -> desired); drift reads (applied -> now)
            changes = [{"field": c.field, "old": c.new, "new": c.old} for c in a.changes]
            if a.kind == "host" and a.name in passwords:
                changes.append(passwords.pop(a.name))
            out.append(_changed(a.key, changes))
        elif a.op in ("install", "verify"):
            out.append(Drift(a.key, "failed" if "failed" in a.reason else "not-installed", a.reason))
        elif a.op == "configure":
            out.append(Drift(a.key, "unconfigured", a.reason))
        elif a.op == "create-guest":
            out.append(Drift(a.key, "guest-missing", "guest defined in the inventory is missing"))
    for name, change in sorted(passwords.items()):
        out.append(_changed(f"host/{name}", [change]))
    for name, h in inv.hosts.items():
        have = world.hosts.get(name)
        if have and h.state in _INSTALLED and have.get("power_state") == "off":
            out.append(Drift(f"host/{name}", "powered-off", "should be running but its BMC reports power off"))
    return out


def to_dicts(drifts: list[Drift]) -> list[dict[str, Any]]:
    return [asdict(d) for d in drifts]
