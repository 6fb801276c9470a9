"""The host state machine: one table, one function that moves a host.

``advance()`` is the only code that changes ``Host.state``. It checks the edge
against ``TRANSITIONS``, moves the host with a compare-and-set on
``Host.version`` (so two concurrent requests cannot both win, on SQLite as on
PostgreSQL), sets the deadline of the new state if it is a wait state (its
length from settings: ``deadline_seconds``), and appends one ``Event`` row that
says "host X moved from A to B because E". States and events are named in
states.py; tests/unit/test_lifecycle.py walks the whole table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session

from provisioner import states as S
from provisioner.errors import Conflict, InvalidTransition
from provisioner.models import Event, Host
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

# (state, event) -> new state.  One line per edge; the comment says why it exists.
TRANSITIONS: Mapping[tuple[str, str], str] = {
    # enrolment: check the BMC before anything touches the host
    (S.ENROLLED, S.VERIFY): S.VERIFYING,
    (S.VERIFYING, S.DONE): S.AVAILABLE,
    (S.VERIFYING, S.FAIL): S.VERIFY_FAILED,
    (S.VERIFYING, S.TIMEOUT): S.VERIFY_FAILED,  # a BMC that never answers
    (S.VERIFY_FAILED, S.RETRY): S.VERIFYING,  # e.g. after fixing the password
    (S.VERIFY_FAILED, S.VERIFY): S.VERIFYING,
    (S.AVAILABLE, S.VERIFY): S.VERIFYING,  # re-check after a BMC change
    # install: controller phase, then wait for the installer's callbacks
    (S.AVAILABLE, S.INSTALL): S.INSTALLING,
    (S.INSTALLING, S.WAIT): S.INSTALL_WAIT,  # host powered on into PXE
    (S.INSTALLING, S.FAIL): S.INSTALL_FAILED,  # power/boot-device/netboot step failed
    (S.INSTALLING, S.TIMEOUT): S.INSTALL_FAILED,
    (S.INSTALLING, S.ABORT): S.INSTALL_FAILED,
    (S.INSTALL_WAIT, S.DONE): S.BOOTING,  # installer said done: boot from disk
    (S.INSTALL_WAIT, S.FAIL): S.INSTALL_FAILED,  # installer reported an error
    (S.INSTALL_WAIT, S.TIMEOUT): S.INSTALL_FAILED,  # callback never came
    (S.INSTALL_WAIT, S.ABORT): S.INSTALL_FAILED,
    (S.BOOTING, S.CONFIGURE): S.CONFIGURING,  # SSH is up and the profile has playbooks
    (S.BOOTING, S.DONE): S.ACTIVE,  # SSH is up, nothing to configure
    (S.BOOTING, S.FAIL): S.INSTALL_FAILED,
    (S.BOOTING, S.TIMEOUT): S.INSTALL_FAILED,  # booted but SSH never opened
    (S.BOOTING, S.ABORT): S.INSTALL_FAILED,
    (S.INSTALL_FAILED, S.RETRY): S.INSTALLING,
    (S.INSTALL_FAILED, S.INSTALL): S.INSTALLING,
    (S.ACTIVE, S.INSTALL): S.INSTALLING,  # explicit reinstall only, never by netboot
    # configuration (Ansible)
    (S.AVAILABLE, S.CONFIGURE): S.CONFIGURING,  # a host installed outside prov
    (S.ACTIVE, S.CONFIGURE): S.CONFIGURING,  # re-run playbooks
    (S.CONFIGURING, S.DONE): S.ACTIVE,
    (S.CONFIGURING, S.FAIL): S.CONFIGURE_FAILED,
    (S.CONFIGURING, S.TIMEOUT): S.CONFIGURE_FAILED,
    (S.CONFIGURING, S.ABORT): S.CONFIGURE_FAILED,
    (S.CONFIGURE_FAILED, S.RETRY): S.CONFIGURING,
    (S.CONFIGURE_FAILED, S.CONFIGURE): S.CONFIGURING,
    (S.CONFIGURE_FAILED, S.INSTALL): S.INSTALLING,
    # decommission: power off, netboot off, back to the pool
    (S.AVAILABLE, S.DECOMMISSION): S.DECOMMISSIONING,
    (S.ACTIVE, S.DECOMMISSION): S.DECOMMISSIONING,
    (S.INSTALL_FAILED, S.DECOMMISSION): S.DECOMMISSIONING,
    (S.CONFIGURE_FAILED, S.DECOMMISSION): S.DECOMMISSIONING,
    (S.DECOMMISSIONING, S.DONE): S.AVAILABLE,
    (S.DECOMMISSIONING, S.FAIL): S.DECOMMISSION_FAILED,
    (S.DECOMMISSIONING, S.TIMEOUT): S.DECOMMISSION_FAILED,
    (S.DECOMMISSION_FAILED, S.RETRY): S.DECOMMISSIONING,
    # maintenance: from any state that is not mid-task; back to where it was
    (S.ENROLLED, S.MAINTAIN): S.MAINTENANCE,
    (S.AVAILABLE, S.MAINTAIN): S.MAINTENANCE,
    (S.ACTIVE, S.MAINTAIN): S.MAINTENANCE,
    (S.VERIFY_FAILED, S.MAINTAIN): S.MAINTENANCE,
    (S.INSTALL_FAILED, S.MAINTAIN): S.MAINTENANCE,
    (S.CONFIGURE_FAILED, S.MAINTAIN): S.MAINTENANCE,
    (S.DECOMMISSION_FAILED, S.MAINTAIN): S.MAINTENANCE,
    (S.MAINTENANCE, S.UNMAINTAIN): S.PREVIOUS,
}


def deadline_seconds(state: str, settings: Settings | None = None) -> float | None:
    """Seconds a host may stay in ``state`` before the conductor's periodic check fires TIMEOUT;
    None for a state without a deadline. Every wait state's comes from settings (operators tune
    them with PROV_* or the config file); none is a constant here."""
    s = settings or get_settings()
    return {
        S.VERIFYING: s.verify_timeout,
        S.INSTALLING: s.installing_timeout,
        S.INSTALL_WAIT: s.install_wait_timeout,
        S.BOOTING: s.ssh_wait_timeout,
        S.CONFIGURING: s.configure_timeout,
        S.DECOMMISSIONING: s.decommission_timeout,
    }.get(state)


def allowed_events(state: str) -> list[str]:
    return sorted(ev for (st, ev) in TRANSITIONS if st == state)


def target_of(host: Host, event: str) -> str:
    """The state ``event`` would move ``host`` to, or raise InvalidTransition."""
    target = TRANSITIONS.get((host.state, event))
    if target is None:
        raise InvalidTransition(
            host=host.name,
            state=host.state,
            event=event,
            allowed=", ".join(allowed_events(host.state)) or "none",
            allowed_events=allowed_events(host.state),
            current_state=host.state,
        )
    if target == S.PREVIOUS:
        return host.maintenance_from or S.AVAILABLE
    return target


def _now() -> datetime:
    return datetime.now(UTC)  # aware: sqlmodel's UTCDateTime columns refuse naive values


def advance(
    session: Session,
    host: Host,
    event: str,
    *,
    message: str = "",
    actor: str = "system",
    task_id: int | None = None,
    settings: Settings | None = None,
) -> Host:
    """Move ``host`` by ``event``, record why, and commit.

    Raises InvalidTransition (409) when the edge is not in the table, and
    Conflict (409) when another request moved the host first.
    """
    old_state = host.state
    new_state = target_of(host, event)
    now = _now()
    secs = deadline_seconds(new_state, settings)
    deadline = now + timedelta(seconds=secs) if secs else None
    values: dict[str, object] = {
        "state": new_state,
        "state_deadline": deadline,
        "state_entered_at": now,
        "version": host.version + 1,
        "updated_at": now,
    }
    if new_state == S.MAINTENANCE:
        values["maintenance_from"] = old_state if old_state in S.STABLE else S.AVAILABLE
    if new_state in S.FAILED and message:
        values["last_error"] = message
    # Compare-and-set: the row moves only if nobody moved it since we read it.
    result = session.execute(
        update(Host)
        .where(Host.id == host.id)  # type: ignore[arg-type]
        .where(Host.version == host.version)  # type: ignore[arg-type]
        .where(Host.state == old_state)  # type: ignore[arg-type]
        .values(**values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise Conflict(reason=f"host {host.name} was changed by another request; try again", host=host.name)
    session.add(
        Event(
            host_id=host.id,
            from_state=old_state,
            to_state=new_state,
            event=event,
            message=message,
            actor=actor,
            task_id=task_id,
            created_at=now,
        )
    )
    session.commit()
    session.refresh(host)
    log.info("host %s moved from %s to %s because %s%s", host.name, old_state, new_state, event,
             f": {message}" if message else "", extra={"host": host.name, "task": task_id})
    return host
