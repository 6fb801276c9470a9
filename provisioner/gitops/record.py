"""What an apply records as the new baseline (``PUT /gitops/applied``), whatever its outcome.

Every apply records, so ``prov drift`` and the next plan compare with what is really
there (issue 19, item 3): a partly failed apply records the objects it did apply
(``ok: false``), a no-op apply records the inventory it found already in place (an
object deleted by hand and then removed from the inventory stops being drift).

Per object of the inventory:

* its create/update succeeded, or it needed none: the inventory's entry;
* its create/update failed or was skipped: the previous record's entry, or none (a
  host that could not be created is not part of the baseline);
* a deletion that failed keeps the previous entry and stays managed, so the next plan
  deletes it again; one that succeeded leaves the managed set.

A host's workflow (verify/install/configure) that failed keeps the previous config
digest, so the next plan runs configure again; its password fingerprint is recorded
once the write that set the password succeeded (the controller checks it against the
stored password before keeping it: conductor/applied.py). No secret is ever sent:
password references and fingerprints only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from provisioner.client import ProvClient
from provisioner.gitops.inventory import Inventory
from provisioner.gitops.plan import Plan, config_fingerprint
from provisioner.gitops.secrets import password_fingerprint
from provisioner.gitops.world import World

if TYPE_CHECKING:
    from provisioner.gitops.apply import Outcome

_WRITES = {"create", "update"}
_WORKFLOWS = {"verify", "install", "configure"}
_CLIENT_KEYS = ("config", "password")  # what the client records; the controller adds its own stamps


def _by_name(entries: Iterable[Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)}


def body(inv: Inventory, plan: Plan, outcomes: list[Outcome], passwords: dict[str, str], world: World,
         commit: str | None, salt: str, *, complete: bool = True) -> dict[str, Any]:
    """The PUT body for this apply's outcomes (``complete=False``: it ended early; actions without
    an outcome did not happen, like failed ones)."""
    prev = world.applied or {}
    prev_doc = prev.get("document") or {}
    prev_fps: dict[str, Any] = prev.get("fingerprints") or {}
    prev_objects = set(prev.get("objects") or [])
    done = {id(o.action) for o in outcomes if o.ok}
    missed = [a for a in plan.actions if id(a) not in done]  # failed, skipped, or never reached
    bad_write = {a.key for a in missed if a.op in _WRITES}
    bad_flow = {a.key for a in missed if a.op in _WORKFLOWS}
    bad_delete = {a.key for a in missed if a.op == "delete"}
    bad_guest = {a.key for a in missed if a.kind == "guest"}
    deleted = {a.key for a in plan.actions if a.op == "delete"} - bad_delete

    def exists(kind: str, name: str) -> bool:
        have = world.racks if kind == "rack" else world.hosts
        key = f"{kind}/{name}"
        return (name in have and key not in deleted) or (key not in bad_write and key in _created(plan))

    document: dict[str, list[dict[str, Any]]] = {}
    for section, kind, objs in (("profiles", "profile", inv.profiles), ("racks", "rack", inv.racks),
                                ("hosts", "host", inv.hosts)):
        before = _by_name(prev_doc.get(section) or [])
        entries: list[dict[str, Any]] = []
        for name, obj in objs.items():
            key = f"{kind}/{name}"
            if key in bad_write or key in bad_delete:
                if name in before:
                    entries.append(before[name])
                continue
            entry = obj.model_dump(mode="json")
            if kind == "host" and bad_guest:
                entry["guests"] = _guests(name, entry.get("guests") or [], before.get(name), bad_guest)
            entries.append(entry)
        # removed from the inventory, but its deletion failed: still there, still managed
        entries += [e for n, e in before.items() if f"{kind}/{n}" in bad_delete and n not in objs]
        document[section] = entries

    objects: list[str] = []
    for kind, objs in (("rack", inv.racks), ("host", inv.hosts)):
        for name, obj in objs.items():
            key = f"{kind}/{name}"
            present = getattr(obj, "state", "present") != "absent"
            if (present and exists(kind, name)) or key in bad_delete:
                objects.append(key)
        objects += sorted(k for k in bad_delete if k.startswith(f"{kind}/") and k not in objects
                          and (k in prev_objects))

    fps: dict[str, dict[str, str]] = {}
    for name, h in inv.hosts.items():
        key = f"host/{name}"
        old = {k: str(v) for k, v in (prev_fps.get(key) or {}).items() if k in _CLIENT_KEYS}
        if key in bad_write or key in bad_delete or h.state == "absent":
            if old:
                fps[key] = old
            continue
        entry = dict(old) if key in bad_flow else {}
        if key not in bad_flow:
            entry["config"] = config_fingerprint(h, inv.profiles)
        if name in passwords:
            entry["password"] = password_fingerprint(passwords[name], salt)
        if entry:
            fps[key] = entry
    for key in bad_delete:
        old = {k: str(v) for k, v in (prev_fps.get(key) or {}).items() if k in _CLIENT_KEYS}
        if old:
            fps.setdefault(key, old)
    return {"source": plan.source, "commit": commit, "inventory_digest": plan.inventory_digest,
            "document": document, "objects": objects, "fingerprints": fps, "ok": complete and not missed}


def _created(plan: Plan) -> set[str]:
    return {a.key for a in plan.actions if a.op == "create"}


def _guests(host: str, wanted: list[dict[str, Any]], before: dict[str, Any] | None,
            bad: set[str]) -> list[dict[str, Any]]:
    """A host's guests as applied: a guest whose create/delete failed keeps its previous entry."""
    prev = _by_name((before or {}).get("guests") or [])
    out: list[dict[str, Any]] = []
    for g in wanted:
        if f"guest/{host}/{g['name']}" in bad:
            if g["name"] in prev:
                out.append(prev[g["name"]])
            continue
        out.append(g)
    return out


def _same(new: dict[str, Any], prev: dict[str, Any]) -> bool:
    """The previous record already says this (a no-op apply of the same inventory, commit and outcome)."""
    if not prev.get("id"):
        return False
    prev_fps = {k: {f: str(v) for f, v in (e or {}).items() if f in _CLIENT_KEYS}
                for k, e in (prev.get("fingerprints") or {}).items()}
    fields = ("inventory_digest", "commit", "ok", "objects", "document")
    return all(new[f] == prev.get(f) for f in fields) and new["fingerprints"] == prev_fps


def store(client: ProvClient, inv: Inventory, plan: Plan, outcomes: list[Outcome], passwords: dict[str, str],
          world: World, commit: str | None, salt: str, *, complete: bool = True) -> bool:
    """Record this apply unless the controller's record already says exactly this; True when it is right."""
    new = body(inv, plan, outcomes, passwords, world, commit, salt, complete=complete)
    if _same(new, world.applied or {}):
        return True
    client.put("/api/v1/gitops/applied", json=new)
    return True
