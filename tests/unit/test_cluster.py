"""provisioner/cluster.py on SQLite: claim_dead's compare-and-set, heartbeats that skip, fencing;
the role settings and `prov serve`'s refusals (PostgreSQL and real processes:
tests/integration/api/test_cluster_live.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from typer.testing import CliRunner

from provisioner import cluster, migrate
from provisioner.cli import serve as serve_cli
from provisioner.db import get_engine
from provisioner.models import ClusterMember, utcnow
from provisioner.settings import ALL_ROLES, Settings


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = Settings(data_dir=tmp_path)
    migrate.upgrade(s)
    yield s
    get_engine(s).dispose()


def _age(settings: Settings, member: str, seconds: float) -> None:
    with Session(get_engine(settings)) as session:
        session.execute(update(ClusterMember).where(ClusterMember.id == member)  # type: ignore[arg-type]
                        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


def _row(settings: Settings, member: str) -> ClusterMember:
    with Session(get_engine(settings)) as session:
        row = session.get(ClusterMember, member)
        assert row is not None
        return row


def test_claim_dead_is_a_compare_and_set(settings: Settings) -> None:
    """Two claimers on two sessions, at once: each stale conductor is claimed by exactly one of them."""
    stale = [cluster.register(settings, ["conductor"]) for _ in range(5)]
    for m in stale:
        _age(settings, m, 60)
    fresh = cluster.register(settings, ["conductor", "api"])
    api_only = cluster.register(settings, ["api"])
    _age(settings, api_only, 60)
    got: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def claim(by: str) -> None:
        with Session(get_engine(settings)) as session:
            barrier.wait()
            got[by] = cluster.claim_dead(session, role="conductor", grace_s=15, by=by)

    threads = [threading.Thread(target=claim, args=(by,)) for by in ("c1", "c2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got["c1"] + got["c2"]) == sorted(stale)  # all of them, none twice
    assert not set(got["c1"]) & set(got["c2"])
    for m in stale:
        row = _row(settings, m)
        assert row.state == "dead" and row.taken_over_by in ("c1", "c2")
        assert m in got[row.taken_over_by]
    assert _row(settings, fresh).state == "up"  # heartbeat within the grace
    assert _row(settings, api_only).state == "up"  # no conductor role: nothing to take over
    with Session(get_engine(settings)) as s1, Session(get_engine(settings)) as s2:
        assert cluster.claim_dead(s1, role="conductor", grace_s=15, by="c1") == []
        assert cluster.claim_dead(s2, role="conductor", grace_s=15, by="c2") == []


def test_a_claimer_never_claims_itself_and_a_dead_claimers_claims_pass_on(settings: Settings) -> None:
    a = cluster.register(settings, ["conductor"])
    b = cluster.register(settings, ["conductor"])
    _age(settings, a, 60)
    _age(settings, b, 60)
    with Session(get_engine(settings)) as session:
        assert cluster.claim_dead(session, role="conductor", grace_s=15, by=b) == [a]  # not b itself
    # b dies before (or while) taking a over: whoever claims b gets a's work too
    with Session(get_engine(settings)) as session:
        assert cluster.claim_dead(session, role="conductor", grace_s=15, by="c") == [b, a]
    assert _row(settings, a).taken_over_by == "c" and _row(settings, b).taken_over_by == "c"


def test_live_members_and_the_views(settings: Settings) -> None:
    live = cluster.register(settings, ["boot"], ["10.99.0.0/24"])
    stale = cluster.register(settings, ["conductor"])
    _age(settings, stale, 30)
    stopped = cluster.register(settings, ["api"], api_url="http://x:1")
    with Session(get_engine(settings)) as session:
        cluster.mark_stopped(session, stopped)
        assert [m.id for m in cluster.live_members(session, grace_s=15)] == [live]
        _now, views = cluster.members(session, grace_s=15)
        assert {v.row.id: v.status for v in views} == {live: "live", stale: "stale", stopped: "stopped"}
        assert next(v for v in views if v.row.id == stale).heartbeat_age_s >= 29
    assert _row(settings, live).networks == ["10.99.0.0/24"]


def test_a_heartbeat_that_fails_is_skipped_and_the_thread_goes_on(settings: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = cluster.beat
    calls = {"n": 0}
    m = cluster.Membership(settings, ["conductor"], interval=0.05, on_fenced=lambda _m: None)

    def flaky(session: Session, member_id: str) -> bool:
        if member_id != m.member_id:  # another test's member still beating in this process
            return real(session, member_id)
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise OperationalError("UPDATE cluster_member", {}, Exception("server closed the connection"))
        if calls["n"] == 4:
            raise RuntimeError("a bug in a beat")  # not even this ends the thread
        return real(session, member_id)

    monkeypatch.setattr(cluster, "beat", flaky)
    m.start()
    try:
        deadline = time.monotonic() + 10
        while m.beats < 3:
            assert time.monotonic() < deadline, (m.beats, m.skipped)
            time.sleep(0.02)
        assert m.skipped == 2 and m._thread is not None and m._thread.is_alive()
        first = _row(settings, m.member_id).heartbeat_at
        time.sleep(0.2)
        assert _row(settings, m.member_id).heartbeat_at > first
    finally:
        m.stop()
    assert _row(settings, m.member_id).state == "stopped"


def test_fencing(settings: Settings) -> None:
    fenced: list[str] = []
    conductor = cluster.Membership(settings, ["conductor"], interval=3600, on_fenced=fenced.append).start()
    api = cluster.Membership(settings, ["api"], interval=3600).start()
    try:
        assert conductor.beat_once() and api.beat_once()
        for m in (conductor, api):
            _age(settings, m.member_id, 60)
        with Session(get_engine(settings)) as session:
            assert cluster.claim_dead(session, role="conductor", grace_s=15, by="other") == [conductor.member_id]
            session.execute(update(ClusterMember).where(ClusterMember.id == api.member_id)  # type: ignore[arg-type]
                            .values(state="dead"))
            session.commit()
        # the claimed conductor learns it at its next beat (and must stop: its work runs elsewhere)
        assert not conductor.beat_once() and fenced == [conductor.member_id]
        # a member without work comes back up
        assert not api.beat_once()
        assert _row(settings, api.member_id).state == "up" and api.beat_once()
    finally:
        conductor.stop()
        api.stop()
    assert _row(settings, conductor.member_id).state == "dead"  # a fenced member does not rewrite its fate
    assert _row(settings, api.member_id).state == "stopped"


def test_registration_waits_for_the_database(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    real = cluster.register
    calls = {"n": 0}

    def once_down(*a: object, **kw: object) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        return real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cluster, "register", once_down)
    m = cluster.Membership(settings, ["boot"], interval=3600).start()
    try:
        assert not m.registered
        assert m.beat_once() and m.registered and _row(settings, m.member_id).state == "up"
    finally:
        m.stop()


def test_prune_deletes_only_members_long_gone(settings: Settings) -> None:
    old_stopped = cluster.register(settings, ["api"])
    old_api = cluster.register(settings, ["api"])
    old_conductor = cluster.register(settings, ["conductor"])  # never claimed: its work waits for a taker
    recent = cluster.register(settings, ["api"])
    with Session(get_engine(settings)) as session:
        cluster.mark_stopped(session, old_stopped)
    for m in (old_stopped, old_api, old_conductor):
        _age(settings, m, 2 * 86400)
    with Session(get_engine(settings)) as session:
        assert cluster.prune(session) == 2
        assert {r.id for r in cluster.members(session, grace_s=1e9)[1] for r in [r.row]} == {old_conductor, recent}


# --------------------------------------------------------------------------- settings and prov serve
def test_role_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROV_ROLES", "api, conductor")
    monkeypatch.setenv("PROV_BOOT_NETWORKS", "10.99.0.0/24,10.98.0.0/24")
    s = Settings(data_dir=tmp_path)
    assert s.roles == ["api", "conductor"] and s.role_set == {"api", "conductor"}
    assert s.boot_networks == ["10.99.0.0/24", "10.98.0.0/24"]
    assert Settings(data_dir=tmp_path, roles=[]).role_set == set(ALL_ROLES) == set(serve_cli.ROLES)
    with pytest.raises(ValueError, match="unknown role 'worker'"):
        Settings(data_dir=tmp_path, roles=["worker"])
    with pytest.raises(ValueError, match="at least three heartbeats"):
        Settings(data_dir=tmp_path, cluster_heartbeat_interval=10, cluster_takeover_grace=15)


@pytest.mark.parametrize(("args", "field", "words"), [
    (["--workers", "2"], "--workers", "need PostgreSQL"),
    (["--role", "api"], "--role", "needs PostgreSQL"),
    (["--role", "conductor"], "--role", "needs PostgreSQL"),
    (["--role", "api,worker"], "--role", "'worker' is not a role"),
    (["--role", "conductor", "--network", "10.0.0.0/24"], "--network", "boot role"),
    (["--role", "boot", "--network", "10.0.0.5/24"], "--network", "host bits set"),
    (["--role", "conductor", "--workers", "3"], "--workers", "add api"),
])
def test_serve_refuses_what_sqlite_cannot_run_in_one_line(tmp_path: Path, args: list[str], field: str,
                                                          words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.cli.main import app
    from provisioner.settings import reset_settings

    # `prov serve` applies its options through the environment (server.settings_with): every
    # variable it may set is recorded here first, so the test leaves none behind.
    for key in ("PROV_DATABASE_URL", "PROV_ROLES", "PROV_API_WORKERS", "PROV_BOOT_NETWORKS", "PROV_HOST",
                "PROV_PORT", "PROV_TFTP_PORT"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("PROV_DATA_DIR", str(tmp_path))
    try:
        result = CliRunner().invoke(app, ["serve", *args])
    finally:
        monkeypatch.undo()
        reset_settings()
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and words in lines[0], result.output
    assert not (tmp_path / "prov.db").exists()  # refused before anything was made


def test_all_roles_named_is_the_embedded_default() -> None:
    serve_cli.check_topology(["api", "conductor", "boot"], 1, [], embedded=True)
    serve_cli.check_topology([], None, [], embedded=True)
    serve_cli.check_topology(["conductor"], None, [], embedded=False)
