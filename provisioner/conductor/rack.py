"""Rack provisioning: every host of a rack through the install workflow, with a cap and a queue.

Requests beyond the cap wait in the queue (none is rejected); a host that fails
never stops the others. The rack task's result holds one row per host
(phase, state, error) so the CLI can draw progress and a final table.
"""

from __future__ import annotations

import time
from typing import Any

from sqlmodel import Session

from provisioner import crud
from provisioner import states as S
from provisioner.conductor import engine, install
from provisioner.conductor.tasks import TaskContext
from provisioner.errors import InvalidInput, ProvError
from provisioner.models import Host, Task
from provisioner.settings import Settings, get_settings

KIND = "rack-provision"
# Not DBOS.sleep: each durable sleep is a checkpoint row, one a second for a rack's whole install;
# this loop is not resumable (a restarted rack task is failed, its installs resume by themselves).
POLL = 1.0
_INSTALLABLE = {S.AVAILABLE, S.INSTALL_FAILED, S.CONFIGURE_FAILED}


def start(session: Session, rack_ident: str | int, *, roles: list[str] | None = None, concurrency: int = 4,
          profile: str | None = None, configure: bool | None = None, reinstall: bool = False,
          actor: str = "system", settings: Settings | None = None) -> Task:
    settings = settings or get_settings()
    if not 1 <= concurrency <= 256:
        raise InvalidInput(field="concurrency", reason="must be between 1 and 256")
    rack = crud.get_rack(session, rack_ident)
    assert rack.id is not None
    hosts = [h for h in crud.rack_hosts(session, rack_id=rack.id)
             if not roles or set(roles) & set(h.roles or [])]
    wanted = _INSTALLABLE | ({S.ACTIVE} if reinstall else set())
    selected = [h.name for h in hosts if h.state in wanted]
    skipped = {h.name: f"{h.state}: not installable" + ("" if reinstall else " (active hosts need reinstall)")
               for h in hosts if h.state not in wanted}
    params = {"hosts": selected, "skipped": skipped, "concurrency": concurrency, "profile": profile,
              "configure": configure, "actor": actor}
    return engine.submit(KIND, rack_id=rack.id, params=params, session=session, settings=settings)


def run(ctx: TaskContext) -> dict[str, Any]:
    queue: list[str] = list(ctx.params.get("hosts") or [])
    total = len(queue)
    cap = int(ctx.params.get("concurrency") or 4)
    rows: dict[str, dict[str, Any]] = {n: {"host": n, "phase": "queued", "ok": None} for n in queue}
    for name, why in (ctx.params.get("skipped") or {}).items():
        rows[name] = {"host": name, "phase": "skipped", "ok": None, "error": why}
    running: dict[str, int] = {}  # host -> install task id
    req = install.InstallRequest(profile=ctx.params.get("profile"), configure=ctx.params.get("configure"))
    actor = str(ctx.params.get("actor") or "conductor:rack")
    done = 0
    while queue or running:
        while queue and len(running) < cap:
            name = queue.pop(0)
            with ctx.session() as s:
                try:
                    task = install.start(s, name, req, actor=actor, settings=ctx.settings)
                    assert task.id is not None
                    running[name] = task.id
                    rows[name].update(phase="installing", task=task.id, started=time.time())
                except ProvError as exc:
                    rows[name].update(phase="failed", ok=False, error=exc.message)
                    done += 1
        time.sleep(POLL)
        with ctx.session() as s:
            for name, tid in list(running.items()):
                t = s.get(Task, tid)
                host = crud.get_host(s, name)
                rows[name].update(step=t.step if t else "", state=host.state)
                if t is None or t.status in S.TASK_DONE:
                    ok = t is not None and t.status == S.TASK_SUCCEEDED
                    rows[name].update(phase="done" if ok else "failed", ok=ok,
                                      error=None if ok else (t.error if t else "task vanished"),
                                      elapsed=round(time.time() - rows[name].get("started", time.time()), 1))
                    del running[name]
                    done += 1
        ctx.progress(int(done * 100 / total) if total else 100, step=f"{done}/{total} hosts finished",
                     result={"hosts": list(rows.values())})
        if ctx.cancelled:
            for name, tid in running.items():
                engine.cancel(tid, ctx.settings)
                rows[name].update(phase="cancelled", ok=False)
            break
    failed = [r["host"] for r in rows.values() if r.get("ok") is False]
    result = {"hosts": list(rows.values()), "failed": failed, "succeeded": total - len(failed)}
    ctx.progress(100, step="finished", result=result)
    if failed:
        raise install.InstallFailed(reason=f"{len(failed)} of {total} host(s) failed: {', '.join(failed[:10])}")
    return result


def host_rows(session: Session, rack_id: int) -> list[dict[str, Any]]:
    return [{"host": h.name, "state": h.state} for h in crud.rack_hosts(session, rack_id=rack_id)
            if isinstance(h, Host)]


engine.register(KIND, run)
