"""Drift: where reality differs from the last applied inventory.

Reads the inventory document stored by the last ``prov apply`` and reports
objects whose controller state no longer matches it: fields changed by hand,
hosts missing or in a failure state, hosts that should be installed but are
powered off, guests missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from provisioner.gitops.inventory import Inventory, InventoryDoc
from provisioner.gitops.plan import make_plan
from provisioner.gitops.world import World

_INSTALLED = {"installed", "configured"}


@dataclass
class Drift:
    object: str
    kind: str  # changed | missing | failed | powered-off | guest-missing | unconfigured
    detail: str


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


def detect(world: World) -> list[Drift]:
    applied = world.applied or {}
    inv = inventory_from_applied(applied)
    if inv is None:
        return []
    out: list[Drift] = []
    # Passwords: compare against the fingerprints recorded at apply time (no secrets needed here).
    plan = make_plan(inv, world, password_fingerprints=None)
    for a in plan.actions:
        if a.op == "create":
            out.append(Drift(a.key, "missing", "in the applied inventory but not on the controller"))
        elif a.op == "update":
            fields = ", ".join(c.field for c in a.changes)
            out.append(Drift(a.key, "changed", f"changed since the last apply: {fields}"))
        elif a.op in ("install", "verify"):
            out.append(Drift(a.key, "failed" if "failed" in a.reason else "not-installed", a.reason))
        elif a.op == "configure":
            out.append(Drift(a.key, "unconfigured", a.reason))
        elif a.op == "create-guest":
            out.append(Drift(a.key, "guest-missing", "guest defined in the inventory is missing"))
    for name, h in inv.hosts.items():
        have = world.hosts.get(name)
        if have and h.state in _INSTALLED and have.get("power_state") == "off":
            out.append(Drift(f"host/{name}", "powered-off", "should be running but its BMC reports power off"))
    return out


def to_dicts(drifts: list[Drift]) -> list[dict[str, str]]:
    return [asdict(d) for d in drifts]
