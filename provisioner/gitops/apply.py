"""Execute a plan through the REST API (the same path as the CLI and REST callers).

Phases run in dependency order: profiles, racks, hosts (create/update), then
workflows (verify/install/configure) with a concurrency cap, then guests, then
deletions (hosts before racks). A failed object never stops the others; the
result lists every action with its outcome. Afterwards the applied inventory
(without secrets) is stored on the controller for drift detection.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from provisioner.client import ProvClient
from provisioner.errors import Conflict, InvalidInput, ProvError
from provisioner.gitops.inventory import Inventory
from provisioner.gitops.plan import Action, Plan, config_fingerprint, make_plan
from provisioner.gitops.world import World, fetch

# scrypt cost for password fingerprints (RFC 7914 parameters): slow enough that a
# stolen fingerprint is not a cheap offline guess, computed once per distinct password.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


@lru_cache(maxsize=1024)
def password_fingerprint(password: str, salt: str) -> str:
    digest = hashlib.scrypt(password.encode(), salt=salt.encode(), n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=16)
    return digest.hex()


def resolve_passwords(inv: Inventory) -> dict[str, str]:
    """host -> plaintext BMC password, in memory only (raises InvalidInput naming the host)."""
    out: dict[str, str] = {}
    for name, h in inv.hosts.items():
        if h.bmc is not None and h.bmc.password is not None:
            try:
                out[name] = h.bmc.password.resolve(inv.base)
            except InvalidInput as exc:
                raise InvalidInput(f"hosts/{name}: {exc.message}", field=f"hosts.{name}.bmc.password") from None
    return out


def fingerprints(passwords: dict[str, str], salt: str) -> dict[str, str]:
    return {h: password_fingerprint(pw, salt) for h, pw in passwords.items()}


@dataclass
class Outcome:
    action: Action
    ok: bool
    message: str = ""
    task_id: int | None = None


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "results": [
                {"op": o.action.op, "object": o.action.key, "ok": o.ok, "message": o.message, "task": o.task_id}
                for o in self.outcomes
            ],
        }


def _salt(world: World) -> str:
    return str((world.applied or {}).get("salt") or "prov-gitops")


def build_plan(client: ProvClient, inv: Inventory, *, source: str = "") -> tuple[Plan, World, dict[str, str]]:
    guest_hosts = {n for n, h in inv.hosts.items() if h.guests}
    world = fetch(client, with_guests_for=guest_hosts)
    passwords = resolve_passwords(inv)
    plan = make_plan(inv, world, password_fingerprints=fingerprints(passwords, _salt(world)), source=source)
    return plan, world, passwords


def check_saved_plan(saved: Plan, current: Plan) -> None:
    """A saved plan is applied only if neither the inventory nor the world changed since."""
    if saved.inventory_digest != current.inventory_digest:
        raise Conflict(reason="the saved plan is stale: the inventory changed since it was made; run prov plan again")
    if saved.world_fingerprint != current.world_fingerprint:
        raise Conflict(reason="the saved plan is stale: the controller's state changed since it was made; "
                              "run prov plan again")


ProgressFn = Callable[[Outcome], None]


def apply_plan(
    client: ProvClient,
    inv: Inventory,
    plan: Plan,
    passwords: dict[str, str],
    world: World,
    *,
    allow_delete: bool = False,
    concurrency: int = 8,
    wait: bool = False,
    wait_timeout: float = 7200.0,
    commit: str | None = None,
    progress: ProgressFn | None = None,
) -> ApplyResult:
    destructive = [a for a in plan.actions if a.destructive]
    if destructive and not allow_delete:
        names = ", ".join(a.key for a in destructive[:5])
        raise Conflict(reason=f"the plan deletes {len(destructive)} object(s) ({names}); "
                              "re-run with --allow-delete to allow it")
    result = ApplyResult()

    def run(action: Action, fn: Callable[[], Any]) -> Outcome:
        try:
            out = fn()
            task_id = out.get("id") if isinstance(out, dict) and "status" in out else None
            if wait and task_id:
                _wait_task(client, int(task_id), wait_timeout)
            outcome = Outcome(action, True, "", task_id)
        except ProvError as exc:
            outcome = Outcome(action, False, exc.message)
        result.outcomes.append(outcome)
        if progress:
            progress(outcome)
        return outcome

    by_phase: dict[str, list[Action]] = {"profile": [], "rack": [], "host": [], "workflow": [], "guest": [],
                                         "delete-host": [], "delete-rack": []}
    for a in plan.actions:
        if a.op == "delete":
            by_phase[f"delete-{a.kind}"].append(a)
        elif a.op in ("verify", "install", "configure"):
            by_phase["workflow"].append(a)
        elif a.kind == "guest":
            by_phase["guest"].append(a)
        else:
            by_phase[a.kind].append(a)

    failed_hosts: set[str] = set()
    for a in by_phase["profile"]:
        if a.op == "create":
            run(a, partial(client.post, "/api/v1/profiles", json=a.body))
        else:
            run(a, partial(client.patch, f"/api/v1/profiles/{a.name}", json=_fields(a)))
    for a in by_phase["rack"]:
        if a.op == "create":
            run(a, partial(client.post, "/api/v1/racks", json=a.body))
        else:
            run(a, partial(client.patch, f"/api/v1/racks/{a.name}", json=_fields(a)))

    def host_write(a: Action) -> Outcome:
        body = dict(a.body)
        if "bmc" in body and a.name in passwords:
            body["bmc"] = {**body["bmc"], "password": passwords[a.name]}
        if a.op == "create":
            return run(a, partial(client.post, "/api/v1/hosts", json=body))
        patch = _fields(a)
        if any(c.field.startswith("bmc.") for c in a.changes):
            patch["bmc"] = body.get("bmc")
            if not any(c.field == "bmc.password" for c in a.changes) and isinstance(patch["bmc"], dict):
                patch["bmc"].pop("password", None)
        return run(a, partial(client.patch, f"/api/v1/hosts/{a.name}", json=patch))

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for o in pool.map(host_write, by_phase["host"]):
            if not o.ok:
                failed_hosts.add(o.action.name)

        # verify must finish before install for the same host: one worker per host, actions in order.
        chains: dict[str, list[Action]] = {}
        for a in by_phase["workflow"]:
            chains.setdefault(a.name, []).append(a)

        def run_chain(actions: list[Action]) -> None:
            for a in actions:
                if a.name in failed_hosts:
                    o = Outcome(a, False, "skipped: an earlier step for this host failed")
                    result.outcomes.append(o)
                    if progress:
                        progress(o)
                    continue
                if a.op == "verify":
                    o = run(a, partial(client.post, f"/api/v1/hosts/{a.name}/verify"))
                    if o.ok:
                        _wait_state(client, a.name, {"available"}, 120.0)
                elif a.op == "install":
                    o = run(a, partial(client.post, f"/api/v1/hosts/{a.name}/install",
                                       json={"configure": a.body.get("configure", False)}))
                else:
                    body = {k: v for k, v in (("playbooks", a.body.get("playbooks")),
                                              ("engine", a.body.get("engine"))) if v}
                    o = run(a, partial(client.post, f"/api/v1/hosts/{a.name}/configure", json=body))
                if not o.ok:
                    failed_hosts.add(a.name)

        list(pool.map(run_chain, chains.values()))

        def guest(a: Action) -> Outcome:
            if a.op == "create-guest":
                return run(a, partial(client.post, f"/api/v1/hosts/{a.host}/guests", json=a.body))
            return run(a, partial(client.delete, f"/api/v1/hosts/{a.host}/guests/{a.name}"))

        list(pool.map(guest, by_phase["guest"]))
        list(pool.map(lambda a: run(a, partial(client.delete, f"/api/v1/hosts/{a.name}")), by_phase["delete-host"]))
    for a in by_phase["delete-rack"]:
        run(a, partial(client.delete, f"/api/v1/racks/{a.name}"))

    _record(client, inv, plan, passwords, world, result, commit)
    return result


def _fields(a: Action) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in a.changes:
        top = c.field.split(".", 1)[0]
        if top != "bmc":
            out[top] = a.body.get(top)
    return out


def _wait_task(client: ProvClient, task_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/api/v1/tasks/{task_id}")
        if task.get("status") in ("succeeded", "failed", "cancelled"):
            if task["status"] != "succeeded":
                raise Conflict(reason=f"task {task_id} {task['status']}: {task.get('error') or ''}".strip())
            return
        time.sleep(1.0)
    raise Conflict(reason=f"task {task_id} still running after {timeout:.0f}s")


def _wait_state(client: ProvClient, host: str, states: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = client.get(f"/api/v1/hosts/{host}")
        if h.get("state") in states:
            return
        if str(h.get("state", "")).endswith("-failed"):
            raise Conflict(reason=f"host {host} is {h['state']}: {h.get('last_error') or ''}".strip())
        time.sleep(0.5)


def _record(
    client: ProvClient,
    inv: Inventory,
    plan: Plan,
    passwords: dict[str, str],
    world: World,
    result: ApplyResult,
    commit: str | None,
) -> None:
    """Store what was applied (no secrets: password references and scrypt fingerprints only)."""
    failed = {o.action.key for o in result.failed}
    prev = ((world.applied or {}).get("fingerprints") or {})
    salt = _salt(world)
    fps: dict[str, dict[str, str]] = {}
    for name, h in inv.hosts.items():
        key = f"host/{name}"
        if key in failed:
            if key in prev:
                fps[key] = prev[key]
            continue
        entry: dict[str, str] = {"config": config_fingerprint(h, inv.profiles)}
        if name in passwords:
            entry["password"] = password_fingerprint(passwords[name], salt)
        fps[key] = entry
    objects = [f"rack/{n}" for n, r in inv.racks.items() if r.state != "absent"]
    objects += [f"host/{n}" for n, h in inv.hosts.items() if h.state != "absent"]
    document = {
        "profiles": [p.model_dump() for p in inv.profiles.values()],
        "racks": [r.model_dump() for r in inv.racks.values()],
        "hosts": [h.model_dump(mode="json") for h in inv.hosts.values()],
    }
    client.put("/api/v1/gitops/applied", json={
        "source": plan.source,
        "commit": commit,
        "inventory_digest": plan.inventory_digest,
        "document": document,
        "objects": objects,
        "fingerprints": fps,
        "ok": not result.failed,
    })
