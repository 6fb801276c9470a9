"""The API's hand-built host JSON (host_json + api.responses) equals what pydantic writes for HostPublic."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import text
from sqlmodel import Session

from provisioner import crud, host_json, migrate
from provisioner.api.responses import dumps
from provisioner.db import get_engine
from provisioner.models import Host, Nic, Profile, Rack
from provisioner.settings import Settings


class _Stamp(BaseModel):
    at: datetime

    def model_dump(self, **kw):  # type: ignore[no-untyped-def,override]
        return json.loads(self.model_dump_json())


def test_sqlite_iso_matches_pydantic() -> None:
    for dt in (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC),
               datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC)):
        stored = dt.strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's SQLite storage format
        assert host_json.sqlite_iso(stored) == _Stamp(at=dt).model_dump()["at"] == json.loads(dumps(dt))
    # written some other way (SQLite's own datetime('now'), an offset): parsed, not sliced
    assert host_json.sqlite_iso("2026-01-02 03:04:05") == "2026-01-02T03:04:05Z"
    assert host_json.sqlite_iso("2026-01-02 03:04:05.25+02:00") == "2026-01-02T01:04:05.250000Z"
    assert host_json.sqlite_iso(None) is None


def test_listing_row_equals_pydantic_host_public(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    engine = get_engine(settings)
    with Session(engine, expire_on_commit=False) as s:
        rack, profile = Rack(name="r1"), Profile(name="debian12")
        s.add_all([rack, profile])
        s.commit()
        hosts = [
            Host(name="a1", rack_id=rack.id, u_position=3, roles=["web", "db"], profile_id=profile.id,
                 bmc_kind="ipmi", bmc_address="10.0.0.1", bmc_port=623, bmc_username="admin",
                 bmc_password_enc="x", bmc_options={"k": [1, 2.5, "ü"]}, bmc_reachable=True, bmc_error="boom",
                 last_error="failed é", installed_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
            Host(name="a2"),  # no rack, profile, NICs, BMC
        ]
        s.add_all(hosts)
        s.flush()
        s.add_all([Nic(host_id=hosts[0].id or 0, mac="52:54:00:00:00:02", name="eth1", ip="10.1.0.2"),
                   Nic(host_id=hosts[0].id or 0, mac="52:54:00:00:00:01", boot=True)])
        s.commit()
        s.execute(text("UPDATE host SET state_deadline = '2026-01-02 03:04:05' WHERE name = 'a2'"))
        s.commit()
        s.expire_all()  # the objects above do not know about that raw UPDATE
        rows, total = crud.list_hosts(s, limit=10)
        assert total == 2 and [r["name"] for r in rows] == ["a1", "a2"]
        for row in rows:
            one = crud.host_public_dict(s, row["name"])
            obj = crud.host_public_dict(s, crud.get_host(s, row["name"]))
            model = crud.host_public(s, crud.get_host(s, row["name"]))
            expected = json.loads(model.model_dump_json())
            assert json.loads(dumps(row)) == json.loads(dumps(one)) == json.loads(dumps(obj)) == expected
        assert rows[0]["nics"][0]["mac"] == "52:54:00:00:00:02"  # NICs in insertion order
        assert rows[0]["rack"] == "r1" and rows[0]["profile"] == "debian12" and rows[1]["rack"] is None
    engine.dispose()


def test_page_keys_follow_host_public() -> None:
    """The fast path is derived from HostPublic: its keys, in its order, nested ones too."""
    from provisioner.schemas import BmcPublic, HostPublic, NicPublic

    fields = host_json.spec(HostPublic)
    assert [f.key for f in fields] == list(HostPublic.model_fields)
    bmc = next(f for f in fields if f.key == "bmc")
    assert [f.key for f in bmc.nested] == list(BmcPublic.model_fields)
    assert {f.source for f in bmc.nested} >= {"bmc_kind", "bmc_options", "bmc_password_enc"}
    assert tuple(NicPublic.model_fields) == host_json._NIC_KEYS
    assert not [c for c in host_json.HOST_COLUMNS if c.endswith(("_hash", "_enc")) and c != "bmc_password_enc"]
    assert "ssh_host_key" not in host_json.HOST_COLUMNS


def test_a_field_added_to_host_public_appears_without_restating_it() -> None:
    from typing import Any

    from provisioner.schemas import HostPublic

    class Wider(HostPublic):
        virt_report: dict[str, Any] | None  # a host column HostPublic does not publish today
        install_token_expires: datetime | None

    fields = host_json.spec(Wider)
    cols = host_json.columns(fields)
    assert cols[-2:] == ["virt_report", "install_token_expires"]
    index = {name: i for i, name in enumerate((*cols, *host_json.EXTRA))}
    row = [None] * len(index)
    row[index["state"]], row[index["roles"]], row[index["bmc_options"]] = "enrolled", '["a"]', "{}"
    row[index["virt_report"]], row[index["install_token_expires"]] = '{"cpus": 2}', "2026-01-02 03:04:05.000000"
    out = host_json.compile_fields(fields, index, True)(row, {})
    assert list(out) == list(Wider.model_fields)
    assert out["virt_report"] == {"cpus": 2} and out["install_token_expires"] == "2026-01-02T03:04:05Z"
    assert out["roles"] == ["a"] and out["allowed_events"] and out["nics"] == []


def test_a_field_with_no_source_or_a_secret_is_refused() -> None:
    import pytest

    from provisioner.schemas import HostPublic

    class Typo(HostPublic):
        ip_adress: str | None

    class Leak(HostPublic):
        bmc_password_enc: str | None

    class Digest(HostPublic):
        install_token_hash: str | None

    for model in (Typo, Leak, Digest):
        with pytest.raises(TypeError, match="no host column"):
            host_json.spec(model)
