"""Desired (inventory) vs actual (controller) -> an ordered list of actions.

Nothing here changes anything: ``make_plan`` is a pure function of an
Inventory and a World, so it is fast (10,000 hosts in well under a second once
fetched) and its output is stable enough for golden files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from provisioner.gitops.inventory import HostIn, Inventory, ProfileIn, RackIn
from provisioner.gitops.world import World

PLAN_FORMAT = 1

# What each desired host state means in lifecycle states (provisioner/states.py).
_INSTALLED_STATES = {"booting", "configuring", "active", "configure-failed"}
_CONFIGURED_STATES = {"active"}
_BUSY_STATES = {"verifying", "installing", "install-wait", "booting", "configuring", "decommissioning"}


@dataclass
class Change:
    field: str
    old: Any
    new: Any


@dataclass
class Action:
    op: str  # create | update | delete | verify | install | configure | create-guest | delete-guest
    kind: str  # profile | rack | host | guest
    name: str
    host: str | None = None  # for guests
    changes: list[Change] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    destructive: bool = False

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.host}/{self.name}" if self.host else f"{self.kind}/{self.name}"


@dataclass
class Plan:
    actions: list[Action]
    inventory_digest: str
    world_fingerprint: str
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    # Where the inventory was read: {"file": absolute path} or {"git": url, "ref", "path", "commit"},
    # so ``prov apply --plan-file`` reads the same inventory again without -f.
    origin: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:
            out[a.op] = out.get(a.op, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "source": self.source,
            "origin": self.origin,
            "inventory_digest": self.inventory_digest,
            "world_fingerprint": self.world_fingerprint,
            "summary": self.summary(),
            "warnings": self.warnings,
            "actions": [asdict(a) for a in self.actions],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        actions = []
        for a in d.get("actions", []):
            a = dict(a)
            a["changes"] = [Change(**c) for c in a.get("changes", [])]
            actions.append(Action(**a))
        origin = d.get("origin") or {}
        return cls(actions, d["inventory_digest"], d["world_fingerprint"], d.get("source", ""),
                   list(d.get("warnings", [])), {str(k): str(v) for k, v in origin.items()})


# --------------------------------------------------------------------- desired bodies
def profile_body(p: ProfileIn) -> dict[str, Any]:
    return p.model_dump()


def rack_body(r: RackIn) -> dict[str, Any]:
    return {"name": r.name, "site": r.site, "size_u": r.size_u}


def host_body(h: HostIn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": h.name,
        "rack": h.rack,
        "u_position": h.u_position,
        "roles": list(h.roles),
        "profile": h.profile,
        "nics": [{"mac": n.mac, "boot": n.boot, "name": n.name, "ip": n.ip, **_nic_network(n)} for n in h.nics],
        "network": h.network.model_dump(),
    }
    if h.bmc is not None:
        body["bmc"] = {
            "kind": h.bmc.kind,
            "address": h.bmc.address,
            "port": h.bmc.port,
            "username": h.bmc.username,
            "options": h.bmc.options,
        }
    return body


_NIC_NETWORK = ("address", "gateway", "nameservers", "search", "mtu")


def _nic_network(n: Any) -> dict[str, Any]:
    return {k: getattr(n, k) for k in _NIC_NETWORK}


def config_fingerprint(h: HostIn, profiles: dict[str, ProfileIn]) -> str:
    prof = profiles.get(h.profile or "")
    playbooks = h.playbooks if h.playbooks is not None else (prof.playbooks if prof else [])
    engine = h.engine or (prof.container_engine if prof else "docker")
    blob = json.dumps({"playbooks": playbooks, "engine": engine}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def inventory_digest(inv: Inventory) -> str:
    blob = {
        "profiles": {k: v.model_dump() for k, v in sorted(inv.profiles.items())},
        "racks": {k: v.model_dump() for k, v in sorted(inv.racks.items())},
        "hosts": {k: v.model_dump() for k, v in sorted(inv.hosts.items())},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------- comparison
def _diff(desired: dict[str, Any], actual: dict[str, Any], fields: list[str]) -> list[Change]:
    out = []
    for f in fields:
        new, old = desired.get(f), actual.get(f)
        if _norm(new) != _norm(old):
            out.append(Change(f, old, new))
    return out


def _norm(v: Any) -> Any:
    if v in ("", None, [], {}):
        return None
    if isinstance(v, list):
        return sorted(json.dumps(x, sort_keys=True, default=str) for x in v)
    return v


def _host_changes(h: HostIn, actual: dict[str, Any], pw_changed: bool) -> list[Change]:
    want = host_body(h)
    changes = _diff(want, actual, ["rack", "u_position", "roles", "profile"])
    want_nics = [{k: n[k] for k in ("mac", "boot", "ip", *_NIC_NETWORK)} for n in want["nics"]]
    have_nics = [{"mac": n.get("mac"), "boot": bool(n.get("boot")), "ip": n.get("ip"),
                  **{k: n.get(k) or ([] if k in ("nameservers", "search") else None) for k in _NIC_NETWORK}}
                 for n in actual.get("nics", [])]
    if _norm(want_nics) != _norm(have_nics):
        changes.append(Change("nics", have_nics, want_nics))
    have_net = actual.get("network") or {"bonds": [], "vlans": []}
    if json.dumps(want["network"], sort_keys=True) != json.dumps(have_net, sort_keys=True):
        changes.append(Change("network", have_net, want["network"]))
    if "bmc" in want:
        have_bmc = actual.get("bmc") or {}
        for f in ("kind", "address", "port", "username", "options"):
            wv = want["bmc"].get(f)
            if wv is None and f == "port":
                continue  # default port: the driver decides
            if _norm(wv) != _norm(have_bmc.get(f)):
                changes.append(Change(f"bmc.{f}", have_bmc.get(f), wv))
        if pw_changed:  # named, never shown: the fingerprints differ, the values stay where they are
            had = bool(have_bmc.get("password_set"))
            changes.append(Change("bmc.password", "(set)" if had else None, "(changed)" if had else "(set)"))
    return changes


def make_plan(
    inv: Inventory,
    world: World,
    *,
    password_fingerprints: dict[str, str] | None = None,
    source: str = "",
) -> Plan:
    """Compare; ``password_fingerprints`` maps host -> fingerprint of the inventory's password, which
    is compared with the controller's fingerprint of the stored one (``World.stored_password``)."""
    actions: list[Action] = []
    warnings: list[str] = []
    pw = password_fingerprints or {}
    applied_fp: dict[str, Any] = ((world.applied or {}).get("fingerprints") or {})
    touched: set[str] = set()

    for name, p in sorted(inv.profiles.items()):
        touched.add(f"profile/{name}")
        body = profile_body(p)
        have = world.profiles.get(name)
        if have is None:
            actions.append(Action("create", "profile", name, body=body))
        else:
            ch = _diff(body, have, [k for k in body if k != "name"])
            if ch:
                actions.append(Action("update", "profile", name, changes=ch, body=body))

    for name, r in sorted(inv.racks.items()):
        touched.add(f"rack/{name}")
        body = rack_body(r)
        have = world.racks.get(name)
        if r.state == "absent":
            if have is not None:
                actions.append(Action("delete", "rack", name, destructive=True, reason="state: absent"))
            continue
        if have is None:
            actions.append(Action("create", "rack", name, body=body))
        else:
            ch = _diff(body, have, ["site", "size_u"])
            if ch:
                actions.append(Action("update", "rack", name, changes=ch, body=body))

    for name, h in sorted(inv.hosts.items()):
        touched.add(f"host/{name}")
        have = world.hosts.get(name)
        if h.state == "absent":
            if have is not None:
                actions.append(Action("delete", "host", name, destructive=True, reason="state: absent"))
            continue
        body = host_body(h)
        host_fp = applied_fp.get(f"host/{name}") or {}
        pw_changed = name in pw and pw[name] != world.stored_password(name)
        if have is None:
            actions.append(Action("create", "host", name, body=body))
            state = "enrolled"
        else:
            ch = _host_changes(h, have, pw_changed)
            if ch:
                if have.get("state") in _BUSY_STATES:
                    warnings.append(f"host {name} is {have.get('state')}: its update waits for the next apply")
                else:
                    actions.append(Action("update", "host", name, changes=ch, body=body))
            state = str(have.get("state"))
        actions.extend(_workflow_actions(h, state, host_fp, inv, warnings))
        actions.extend(_guest_actions(h, world))

    # Objects the controller has but the inventory no longer lists: deleted only with --allow-delete.
    managed = set((world.applied or {}).get("objects") or [])
    for name in sorted(world.hosts):
        if name not in inv.hosts and f"host/{name}" in managed:
            actions.append(Action("delete", "host", name, destructive=True, reason="removed from the inventory"))
            touched.add(f"host/{name}")
    for name in sorted(world.racks):
        if name not in inv.racks and f"rack/{name}" in managed:
            actions.append(Action("delete", "rack", name, destructive=True, reason="removed from the inventory"))
            touched.add(f"rack/{name}")

    return Plan(actions, inventory_digest(inv), world.fingerprint(touched), source, warnings)


def _workflow_actions(
    h: HostIn, state: str, host_fp: dict[str, Any], inv: Inventory, warnings: list[str]
) -> list[Action]:
    out: list[Action] = []
    if state in _BUSY_STATES:
        return out
    if state == "maintenance":
        if h.state != "available":
            warnings.append(f"host {h.name} is in maintenance: nothing planned for it")
        return out
    if state in ("enrolled", "verify-failed"):
        out.append(Action("verify", "host", h.name, reason=f"{state} -> available"))
        if h.state == "available":
            return out
        state = "available"
    want_cfg = config_fingerprint(h, inv.profiles)
    if h.state in ("installed", "configured") and state not in _INSTALLED_STATES:
        out.append(Action("install", "host", h.name, reason=f"{state} -> {h.state}",
                          body={"configure": h.state == "configured", "config_fingerprint": want_cfg}))
    elif h.state == "configured" and (state not in _CONFIGURED_STATES or host_fp.get("config") != want_cfg):
        out.append(Action("configure", "host", h.name,
                          reason="configuration changed" if state in _CONFIGURED_STATES else f"{state} -> configured",
                          body={"config_fingerprint": want_cfg, "playbooks": h.playbooks, "engine": h.engine}))
    return out


def _guest_actions(h: HostIn, world: World) -> list[Action]:
    have = world.guests.get(h.name, {})
    out: list[Action] = []
    for g in h.guests:
        if g.state == "absent":
            if g.name in have:
                out.append(Action("delete-guest", "guest", g.name, host=h.name, destructive=True))
        elif g.name not in have:
            out.append(Action("create-guest", "guest", g.name, host=h.name, body=g.model_dump(exclude={"state"})))
    return out


# --------------------------------------------------------------------- rendering
_SYMBOL = {"create": "+", "update": "~", "delete": "-", "verify": ">", "install": ">", "configure": ">",
           "create-guest": "+", "delete-guest": "-"}


def short(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, list | dict):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def render_text(plan: Plan) -> str:
    lines: list[str] = []
    if not plan.actions:
        lines.append("No changes. The controller matches the inventory.")
    for a in plan.actions:
        target = f"{a.kind} {a.host}/{a.name}" if a.host else f"{a.kind} {a.name}"
        verb = a.op if a.op in ("verify", "install", "configure") else ""
        head = f"{_SYMBOL.get(a.op, '?')} {target}" + (f" {verb}" if verb else "")
        if a.reason:
            head += f"  ({a.reason})"
        if a.destructive:
            head += "  [needs --allow-delete]"
        lines.append(head)
        for c in a.changes:
            lines.append(f"    {c.field}: {short(c.old)} -> {short(c.new)}")
    for w in plan.warnings:
        lines.append(f"warning: {w}")
    s = plan.summary()
    creates = s.get("create", 0) + s.get("create-guest", 0)
    deletes = s.get("delete", 0) + s.get("delete-guest", 0)
    workflows = s.get("install", 0) + s.get("configure", 0) + s.get("verify", 0)
    lines.append(
        f"Plan: {creates} to create, {s.get('update', 0)} to change, {workflows} to run "
        f"(install {s.get('install', 0)}, configure {s.get('configure', 0)}, verify {s.get('verify', 0)}), "
        f"{deletes} to delete."
    )
    return "\n".join(lines) + "\n"
