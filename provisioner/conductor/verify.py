"""Verify a host's BMC: enrolled -> verifying -> available | verify-failed.

The check is cheap and read-only: the stored parameters are validated, then
the BMC must answer a power-status query with the stored credentials.

No database connection is held while the BMC is asked (issue 18: a dead BMC
kept a pooled connection for the whole wait, and twenty of them exhausted the
pool): one short session moves the host to ``verifying``, the BMC is asked with
none open, and a second short session records the outcome. Moving the host to
``verifying`` is the claim: a second verify of the same host meanwhile gets 409
at once instead of asking the BMC too.
"""

from __future__ import annotations

from provisioner import crud
from provisioner import states as S
from provisioner.conductor.power import PowerService, get_service
from provisioner.db import session_scope
from provisioner.errors import ProvError
from provisioner.lifecycle import advance
from provisioner.models import Host
from provisioner.settings import Settings, get_settings


def verify_host(ident: int | str, *, settings: Settings | None = None, actor: str = "system",
                task_id: int | None = None, service: PowerService | None = None) -> Host:
    settings = settings or get_settings()
    svc = service or get_service(settings)
    with session_scope(settings) as s:
        host = crud.get_host(s, ident)
        # InvalidTransition / Conflict (409) when the host is already verifying or was moved meanwhile
        host = advance(s, host, S.VERIFY, message="check BMC", actor=actor, task_id=task_id, settings=settings)
    assert host.id is not None
    host_id = host.id
    problem: str | None = None
    try:
        svc.driver_factory(svc.spec_for(host)).validate()
    except ProvError as exc:
        problem = f"BMC parameters invalid: {exc.message}"
    if problem is None:
        # the BMC call, with no session open (get_power opens its own short ones)
        res = svc.get_power(host_id, actor=actor)
        if res.ok:
            return _finish(settings, host_id, S.DONE, f"BMC answered: power {res.power_state}", actor, task_id)
        problem = f"BMC check failed ({res.error}): {res.message}"
    return _finish(settings, host_id, S.FAIL, problem, actor, task_id)


def _finish(settings: Settings, host_id: int, event: str, message: str, actor: str, task_id: int | None) -> Host:
    with session_scope(settings) as s:
        host = crud.get_host(s, host_id)
        return advance(s, host, event, message=message, actor=actor, task_id=task_id, settings=settings)
