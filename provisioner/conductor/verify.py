"""Verify a host's BMC: enrolled -> verifying -> available | verify-failed.

The check is cheap and read-only: the stored parameters are validated, then
the BMC must answer a power-status query with the stored credentials.
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
        if host.state != S.VERIFYING:
            host = advance(s, host, S.VERIFY, message="check BMC", actor=actor, task_id=task_id,
                           settings=settings)
        try:
            svc.driver_factory(svc.spec_for(host)).validate()
        except ProvError as exc:
            return advance(s, host, S.FAIL, message=f"BMC parameters invalid: {exc.message}", actor=actor,
                           task_id=task_id, settings=settings)
        assert host.id is not None
        res = svc.get_power(host.id, actor=actor)
        s.refresh(host)
        if res.ok:
            return advance(s, host, S.DONE, message=f"BMC answered: power {res.power_state}", actor=actor,
                           task_id=task_id, settings=settings)
        return advance(s, host, S.FAIL, message=f"BMC check failed ({res.error}): {res.message}", actor=actor,
                       task_id=task_id, settings=settings)
