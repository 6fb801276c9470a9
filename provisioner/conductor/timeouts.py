"""Periodic job: hosts whose wait-state deadline passed get the TIMEOUT event.

lifecycle.advance sets ``Host.state_deadline`` when a host enters a transient
state; this checker moves every host past its deadline through the table
(e.g. install-wait -> install-failed), with a message saying how long it waited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlmodel import Session, col, select

from provisioner import lifecycle
from provisioner import states as S
from provisioner.conductor.periodic import start_periodic
from provisioner.db import get_engine
from provisioner.errors import Conflict, ProvError
from provisioner.models import Host, utcnow
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

ACTOR = "conductor:timeouts"
# How often to look (the default of settings.timeout_check_interval). Deadlines are
# minutes to hours, so half a minute late is fine.
DEFAULT_INTERVAL = 30.0

# What a host in each wait state was waiting for: "timed out in booting" alone does
# not tell an operator that the installed system never opened SSH.
WAITING_FOR = {
    S.VERIFYING: "the BMC check did not finish",
    S.INSTALLING: "the controller's power/boot steps did not finish",
    S.INSTALL_WAIT: "the installer never reported done or an error",
    S.BOOTING: "the installed system never opened SSH",
    S.CONFIGURING: "the configuration run did not finish",
    S.DECOMMISSIONING: "decommissioning did not finish",
}


def check_once(settings: Settings | None = None) -> list[str]:
    """Fire TIMEOUT on every host past its deadline; returns the names of the hosts moved."""
    settings = settings or get_settings()
    moved: list[str] = []
    now = utcnow()
    with Session(get_engine(settings), expire_on_commit=False) as session:
        due = session.exec(
            select(Host).where(col(Host.state_deadline).is_not(None), col(Host.state_deadline) < now,
                               col(Host.state).in_(sorted(S.TRANSIENT)))
        ).all()
        for host in due:
            waited = int((now - host.state_entered_at).total_seconds())
            message = f"timed out in {host.state} after {waited}s (deadline {host.state_deadline:%Y-%m-%d %H:%M:%S}Z)"
            if host.state in WAITING_FOR:
                message += f": {WAITING_FOR[host.state]}"
            try:
                lifecycle.advance(session, host, S.TIMEOUT, message=message, actor=ACTOR, settings=settings)
            except Conflict:
                # Moved by someone else in the meantime (e.g. the callback arrived): nothing to do.
                session.rollback()
                continue
            except ProvError as exc:
                session.rollback()
                log.warning("timeout of host %s failed: %s", host.name, exc.message, extra={"host": host.name})
                continue
            moved.append(host.name)
    return moved


def start(settings: Settings | None = None, interval: float | None = None) -> Callable[[], None]:
    """Run check_once every ``interval`` seconds (default: settings.timeout_check_interval) on a
    daemon thread; returns the stop callable."""
    settings = settings or get_settings()
    interval = interval if interval is not None else settings.timeout_check_interval
    return start_periodic("timeouts", interval, lambda: check_once(settings), join_timeout=5)
