"""The whole transition table, walked: reachability, ways back, deadlines, and what the API advertises.

Pure table checks (no database): ``lifecycle.TRANSITIONS`` is the one table,
``lifecycle.allowed_events`` what HostPublic.allowed_events and 409s advertise,
``lifecycle.target_of`` what ``advance`` accepts. A real gap the walk finds
goes into KNOWN_GAPS below, named, instead of being silenced.
"""

from __future__ import annotations

import ast
import os
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from provisioner import host_json, lifecycle
from provisioner import states as S
from provisioner.errors import InvalidTransition
from provisioner.settings import Settings

# Gaps the walk knows about, each with why it is left: (check, state or event) -> reason.
KNOWN_GAPS: dict[tuple[str, str], str] = {
    ("sent", S.DECOMMISSION): "no decommission workflow or endpoint sends it yet: decommissioning and "
                              "decommission-failed are reachable in the table only",
    ("sent", S.RETRY): "the table's retry edges are never sent (POST /hosts/{h}/retry sends install; verify "
                       "and configure are re-run with their own events), yet allowed_events advertises 'retry'",
}

STATES = sorted(S.ALL)


@pytest.fixture(autouse=True)
def _default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() as shipped: no PROV_*_TIMEOUT from the environment running the tests."""
    for name in [n for n in os.environ if n.startswith("PROV_") and n.endswith("_TIMEOUT")]:
        monkeypatch.delenv(name)


def _targets(state: str, event: str) -> set[str]:
    """Where ``event`` can take a host in ``state``: ``<previous>`` is any state maintenance records."""
    target = lifecycle.TRANSITIONS[(state, event)]
    if target != S.PREVIOUS:
        return {target}
    # advance() records the state a host entered maintenance from (a stable one, else available)
    return {st if st in S.STABLE else S.AVAILABLE for (st, ev), to in lifecycle.TRANSITIONS.items()
            if to == S.MAINTENANCE}


def _edges(state: str) -> dict[str, set[str]]:
    return {ev: _targets(state, ev) for (st, ev) in lifecycle.TRANSITIONS if st == state}


def _reachable(start: str) -> set[str]:
    seen, todo = {start}, deque([start])
    while todo:
        for targets in _edges(todo.popleft()).values():
            for t in targets - seen:
                seen.add(t)
                todo.append(t)
    return seen


def _host(state: str, maintenance_from: str | None = None) -> Any:
    return SimpleNamespace(name="h1", state=state, maintenance_from=maintenance_from)


def test_the_table_names_only_known_states_and_events() -> None:
    for (state, event), target in lifecycle.TRANSITIONS.items():
        assert state in S.ALL, f"edge from unknown state {state!r}"
        assert event in S.EVENTS, f"({state}, {event}): unknown event"
        assert target in S.ALL or target == S.PREVIOUS, f"({state}, {event}) -> unknown state {target!r}"
    assert {ev for (_, ev) in lifecycle.TRANSITIONS} == set(S.EVENTS), "an event no edge uses"
    assert S.STABLE | S.TRANSIENT | S.FAILED == S.ALL
    assert not (S.STABLE & S.TRANSIENT or S.STABLE & S.FAILED or S.TRANSIENT & S.FAILED)


@pytest.mark.parametrize("state", STATES)
def test_every_state_is_reachable_from_enrolled(state: str) -> None:
    if ("reachable", state) in KNOWN_GAPS:
        pytest.skip(KNOWN_GAPS[("reachable", state)])
    assert state in _reachable(S.ENROLLED), f"no path from {S.ENROLLED} to {state}"


@pytest.mark.parametrize("state", STATES)
def test_no_state_is_a_dead_end(state: str) -> None:
    assert lifecycle.allowed_events(state), f"{state} has no way out"
    # and from everywhere a host can get back into service
    assert _reachable(state) & {S.AVAILABLE, S.ACTIVE}, f"{state} never leads back to available/active"


@pytest.mark.parametrize("state", sorted(S.FAILED))
def test_every_failure_state_has_a_way_back(state: str) -> None:
    if ("way back", state) in KNOWN_GAPS:
        pytest.skip(KNOWN_GAPS[("way back", state)])
    assert state.endswith("-failed")
    back = {ev for ev, targets in _edges(state).items() if targets - S.FAILED}
    assert back, f"{state}: no event leads to a state that is not a failure"
    assert back & _events_sent_by_code(), f"{state}: its ways back ({sorted(back)}) are never sent by any code"
    assert S.MAINTAIN in back, f"{state}: cannot be taken out of service"


@pytest.mark.parametrize("state", sorted(S.TRANSIENT))
def test_every_wait_state_has_a_deadline_from_settings_and_a_timeout_edge(state: str) -> None:
    defaults = Settings()
    assert (state, S.TIMEOUT) in lifecycle.TRANSITIONS, f"{state} has a deadline but nothing fires on it"
    assert lifecycle.TRANSITIONS[(state, S.TIMEOUT)] in S.FAILED
    assert (state, S.FAIL) in lifecycle.TRANSITIONS
    # Give every *_timeout setting its own value: the state's deadline must be one of them, and
    # follow it when it changes - a constant in lifecycle.py would not.
    fields = [f for f, info in Settings.model_fields.items() if f.endswith("_timeout") and info.annotation is float]
    tuned = Settings(**{f: 10_000.0 + i for i, f in enumerate(fields)})
    secs = lifecycle.deadline_seconds(state, tuned)
    assert secs is not None and secs >= 10_000.0, f"{state}: deadline {secs} is not read from settings"
    field = fields[int(secs - 10_000.0)]
    assert lifecycle.deadline_seconds(state, defaults) == getattr(defaults, field) > 0


def test_the_deadlines_are_the_documented_defaults() -> None:
    s = Settings()
    assert {st: lifecycle.deadline_seconds(st, s) for st in sorted(S.TRANSIENT)} == {
        S.BOOTING: 900.0, S.CONFIGURING: 3600.0, S.DECOMMISSIONING: 1200.0, S.INSTALL_WAIT: 3600.0,
        S.INSTALLING: 600.0, S.VERIFYING: 120.0,
    }
    for state in S.STABLE | S.FAILED:
        assert lifecycle.deadline_seconds(state, s) is None, f"{state} is not a wait state"


@pytest.mark.parametrize("state", STATES)
def test_allowed_events_are_exactly_what_the_table_accepts(state: str) -> None:
    allowed = lifecycle.allowed_events(state)
    assert allowed == sorted(set(allowed)) == sorted(ev for (st, ev) in lifecycle.TRANSITIONS if st == state)
    for event in sorted(S.EVENTS):
        host = _host(state, maintenance_from=S.ACTIVE)
        if event in allowed:
            assert lifecycle.target_of(host, event) in S.ALL
        else:
            with pytest.raises(InvalidTransition):
                lifecycle.target_of(host, event)
    # the host JSON's allowed_events (precomputed per state) says the same
    assert host_json._ALLOWED[state] == allowed


def test_unmaintain_goes_back_to_where_the_host_was() -> None:
    for before in sorted(S.STABLE - {S.MAINTENANCE}):
        assert lifecycle.target_of(_host(S.MAINTENANCE, maintenance_from=before), S.UNMAINTAIN) == before
    assert lifecycle.target_of(_host(S.MAINTENANCE), S.UNMAINTAIN) == S.AVAILABLE  # nothing recorded


def _events_sent_by_code() -> set[str]:
    """Events some module outside the state machine names (``S.DONE``...), plus the operator's
    own events, which POST /hosts/{h}/transition takes as text (schemas.OperatorEvent)."""
    from typing import get_args

    from provisioner.schemas import OperatorEvent

    names = {name for name in dir(S) if name.isupper() and isinstance(getattr(S, name), str)
             and getattr(S, name) in S.EVENTS}
    pkg = Path(lifecycle.__file__).parent
    sent = set(get_args(OperatorEvent))
    for path in pkg.rglob("*.py"):
        if path.name in ("lifecycle.py", "states.py") and path.parent == pkg:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in names and isinstance(node.value, ast.Name) \
                    and node.value.id in ("S", "states"):
                sent.add(getattr(S, node.attr))
    return sent


@pytest.mark.parametrize("event", sorted(S.EVENTS))
def test_every_event_of_the_table_is_sent_by_some_code(event: str) -> None:
    if ("sent", event) in KNOWN_GAPS:
        pytest.skip(KNOWN_GAPS[("sent", event)])
    assert event in _events_sent_by_code(), f"no code sends {event!r}: its edges can never be taken"


def test_known_gaps_are_still_gaps() -> None:
    """A gap that got fixed leaves KNOWN_GAPS, so the list never hides a working edge."""
    sent = _events_sent_by_code()
    for (check, name), reason in KNOWN_GAPS.items():
        if check == "sent":
            assert name not in sent, f"{name!r} is sent now; drop it from KNOWN_GAPS ({reason})"
        elif check == "reachable":
            assert name not in _reachable(S.ENROLLED), f"{name} is reachable now; drop it from KNOWN_GAPS"
