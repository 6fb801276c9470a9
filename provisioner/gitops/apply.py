"""Execute a plan through the REST API (the same path as the CLI and REST callers).

Phases run in dependency order: profiles, racks, hosts (create/update), then
workflows (verify/install/configure) with a concurrency cap, then guests, then
deletions (hosts before racks). A failed action stops only what depends on it
(the hosts of a rack or profile that failed, a host's later workflow steps and
guests, the rack whose hosts could not be deleted: each "skipped", naming what
failed); everything independent goes on, and the result lists every action with
its outcome. Whatever happened, even after a Ctrl-C, what was applied is then
recorded on the controller (gitops/record.py) so the baseline and drift are right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from provisioner.client import ProvClient
from provisioner.errors import Conflict, InvalidInput, ProvError
from provisioner.gitops import record
from provisioner.gitops.inventory import Inventory
from provisioner.gitops.plan import Action, Plan, make_plan
from provisioner.gitops.secrets import password_fingerprint
from provisioner.gitops.world import World, fetch, fetch_password_fingerprints

VERIFY_TIMEOUT = 120.0  # seconds for a verified host to reach 'available' (settings.verify_timeout's default)


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
    skipped: bool = False  # not attempted: something it depends on failed

    @property
    def status(self) -> str:
        return "ok" if self.ok else "skipped" if self.skipped else "failed"


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)
    recorded: bool = False  # the baseline was stored (or was already right)
    record_error: str = ""

    @property
    def failed(self) -> list[Outcome]:
        """Every action that did not succeed (skipped ones included)."""
        return [o for o in self.outcomes if not o.ok]

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes if o.ok)

    @property
    def skipped(self) -> int:
        return sum(1 for o in self.outcomes if o.skipped)

    def summary(self) -> str:
        """``Apply: N succeeded, M failed[, K skipped].`` (skipped ones are not counted as failed)."""
        failed = len(self.failed) - self.skipped
        tail = f", {self.skipped} skipped" if self.skipped else ""
        return f"Apply: {self.succeeded} succeeded, {failed} failed{tail}."

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed and not self.record_error,
            "succeeded": self.succeeded,
            "failed": len(self.failed) - self.skipped,
            "skipped": self.skipped,
            "recorded": self.recorded,
            "record_error": self.record_error or None,
            "results": [
                {"op": o.action.op, "object": o.action.key, "ok": o.ok, "status": o.status, "message": o.message,
                 "task": o.task_id}
                for o in self.outcomes
            ],
        }


def salt_of(world: World) -> str:
    return str((world.applied or {}).get("salt") or "prov-gitops")


def build_plan(client: ProvClient, inv: Inventory, *, source: str = "",
               origin: dict[str, str] | None = None) -> tuple[Plan, World, dict[str, str]]:
    guest_hosts = {n for n, h in inv.hosts.items() if h.guests}
    world = fetch(client, with_guests_for=guest_hosts)
    passwords = resolve_passwords(inv)
    # Hosts no apply recorded a fingerprint for (adopted into the inventory): the controller's own.
    unknown = sorted(n for n in passwords if n in world.hosts and world.stored_password(n) is None
                     and (world.hosts[n].get("bmc") or {}).get("password_set"))
    if unknown:
        fetch_password_fingerprints(client, world, unknown)
    plan = make_plan(inv, world, password_fingerprints=fingerprints(passwords, salt_of(world)), source=source)
    plan.origin = dict(origin or {})
    return plan, world, passwords


def _normal(plan: Plan) -> list[Any]:
    import json

    return list(json.loads(json.dumps(plan.to_dict()["actions"], sort_keys=True, default=str)))


def check_saved_plan(saved: Plan, current: Plan) -> None:
    """A saved plan is applied only if the inventory, the world and so the actions are what it saw."""
    if saved.inventory_digest != current.inventory_digest:
        raise Conflict(reason="the saved plan is stale: the inventory changed since the plan was made; "
                              "run prov plan again")
    if saved.world_fingerprint != current.world_fingerprint:
        raise Conflict(reason="the saved plan is stale: the controller's state changed since the plan was made; "
                              "run prov plan again")
    if _normal(saved) != _normal(current):
        raise Conflict(reason="the saved plan is stale: applying now would do something else than it says "
                              "(a BMC password changed since?); run prov plan again")


ProgressFn = Callable[[Outcome], None]


@dataclass
class _Run:
    """One apply in progress: what failed so far, and the outcomes."""

    client: ProvClient
    wait: bool
    wait_timeout: float
    progress: ProgressFn | None
    result: ApplyResult = field(default_factory=ApplyResult)
    broken: set[str] = field(default_factory=set)  # objects (profile/x, host/x, guest/h/x) with a failure

    def run(self, a: Action, fn: Callable[[], Any], needs: Iterable[str] = ()) -> Outcome:
        dep = next((k for k in needs if k in self.broken), None)
        if dep is not None:
            outcome = Outcome(a, False, f"{dep} failed", skipped=True)
        else:
            try:
                out = fn()
                task_id = out.get("id") if isinstance(out, dict) and "status" in out else None
                if self.wait and task_id:
                    _wait_task(self.client, int(task_id), self.wait_timeout)
                outcome = Outcome(a, True, "", task_id)
            except ProvError as exc:
                outcome = Outcome(a, False, exc.message)
        if not outcome.ok:
            self.broken.add(a.key)
        self.result.outcomes.append(outcome)
        if self.progress:
            self.progress(outcome)
        return outcome


def _phases(plan: Plan) -> dict[str, list[Action]]:
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
    return by_phase


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
    r = _Run(client, wait, wait_timeout, progress)
    complete = False
    try:
        _execute(r, inv, plan, passwords, world, concurrency)
        complete = True
    finally:
        # Also after a Ctrl-C or a lost controller: what did happen must be the baseline.
        try:
            r.result.recorded = record.store(client, inv, plan, r.result.outcomes, passwords, world, commit,
                                             salt_of(world), complete=complete)
        except ProvError as exc:
            r.result.record_error = exc.message
    return r.result


def _needs_of_host(a: Action, inv: Inventory) -> list[str]:
    h = inv.hosts.get(a.name)
    if h is None:
        return []
    return [k for k in (f"profile/{h.profile}" if h.profile else "", f"rack/{h.rack}" if h.rack else "") if k]


def _execute(r: _Run, inv: Inventory, plan: Plan, passwords: dict[str, str], world: World, concurrency: int) -> None:
    client = r.client
    phases = _phases(plan)
    for a in phases["profile"]:
        if a.op == "create":
            r.run(a, partial(client.post, "/api/v1/profiles", json=a.body))
        else:
            r.run(a, partial(client.patch, f"/api/v1/profiles/{a.name}", json=_fields(a)))
    for a in phases["rack"]:
        if a.op == "create":
            r.run(a, partial(client.post, "/api/v1/racks", json=a.body))
        else:
            r.run(a, partial(client.patch, f"/api/v1/racks/{a.name}", json=_fields(a)))

    def host_write(a: Action) -> Outcome:
        body = dict(a.body)
        if "bmc" in body and a.name in passwords:
            body["bmc"] = {**body["bmc"], "password": passwords[a.name]}
        needs = _needs_of_host(a, inv)
        if a.op == "create":
            return r.run(a, partial(client.post, "/api/v1/hosts", json=body), needs)
        patch = _fields(a)
        if any(c.field.startswith("bmc.") for c in a.changes):
            patch["bmc"] = body.get("bmc")
            if not any(c.field == "bmc.password" for c in a.changes) and isinstance(patch["bmc"], dict):
                patch["bmc"].pop("password", None)
        return r.run(a, partial(client.patch, f"/api/v1/hosts/{a.name}", json=patch), needs)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(host_write, phases["host"]))

        # verify must finish before install for the same host: one worker per host, actions in order.
        chains: dict[str, list[Action]] = {}
        for a in phases["workflow"]:
            chains.setdefault(a.name, []).append(a)

        def verify(name: str) -> Any:
            out = client.post(f"/api/v1/hosts/{name}/verify")
            _wait_state(client, name, {"available"}, VERIFY_TIMEOUT)
            return out

        def run_chain(actions: list[Action]) -> None:
            for a in actions:
                needs = [*_needs_of_host(a, inv), a.key]  # a.key: the host's write and earlier steps
                if a.op == "verify":
                    r.run(a, partial(verify, a.name), needs)
                elif a.op == "install":
                    r.run(a, partial(client.post, f"/api/v1/hosts/{a.name}/install",
                                     json={"configure": a.body.get("configure", False)}), needs)
                else:
                    body = {k: v for k, v in (("playbooks", a.body.get("playbooks")),
                                              ("engine", a.body.get("engine"))) if v}
                    r.run(a, partial(client.post, f"/api/v1/hosts/{a.name}/configure", json=body), needs)

        list(pool.map(run_chain, chains.values()))

        def guest(a: Action) -> Outcome:
            needs = [f"host/{a.host}"]
            if a.op == "create-guest":
                return r.run(a, partial(client.post, f"/api/v1/hosts/{a.host}/guests", json=a.body), needs)
            return r.run(a, partial(client.delete, f"/api/v1/hosts/{a.host}/guests/{a.name}"), needs)

        list(pool.map(guest, phases["guest"]))
        list(pool.map(lambda a: r.run(a, partial(client.delete, f"/api/v1/hosts/{a.name}")),
                      phases["delete-host"]))
    for a in phases["delete-rack"]:
        # its hosts that this apply was to delete must be gone first
        needs = [f"host/{n}" for n, h in world.hosts.items() if h.get("rack") == a.name]
        r.run(a, partial(client.delete, f"/api/v1/racks/{a.name}"), needs)


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
    while True:
        h = client.get(f"/api/v1/hosts/{host}")
        if h.get("state") in states:
            return
        if str(h.get("state", "")).endswith("-failed"):
            raise Conflict(reason=f"host {host} is {h['state']}: {h.get('last_error') or ''}".strip())
        if time.monotonic() > deadline:
            raise Conflict(reason=f"host {host} still {h.get('state')} after {timeout:.0f}s")
        time.sleep(0.5)

