"""Migration 0005 (the installed OS's network) on a database with hosts: upgrade keeps every row and
reads as DHCP, a static NIC/bond/VLAN host round-trips through the API, downgrade drops only the new
columns. SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from sqlmodel import Session

from provisioner import auth, migrate
from provisioner.api.app import create_app
from provisioner.db import get_engine

pytestmark = pytest.mark.integration

NEW_NIC = {"address", "gateway", "nameservers", "search", "mtu"}
NEW_HOST = {"network_bonds", "network_vlans"}


def _columns(engine, table: str) -> set[str]:  # type: ignore[no-untyped-def]
    return {c["name"] for c in inspect(engine).get_columns(table)}


def test_0005_up_and_down_with_rows(empty_settings) -> None:  # type: ignore[no-untyped-def]
    engine = get_engine(empty_settings)
    migrate.upgrade(empty_settings, "0004")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO host (name, roles, state, state_entered_at, version, bmc_kind, bmc_options, "
                          "power_state, netboot, created_at, updated_at) VALUES ('old1', '[]', 'enrolled', "
                          "CURRENT_TIMESTAMP, 0, 'manual', '{}', 'unknown', false, CURRENT_TIMESTAMP, "
                          "CURRENT_TIMESTAMP)"))
        host_id = conn.execute(text("SELECT id FROM host WHERE name = 'old1'")).scalar_one()
        conn.execute(text("INSERT INTO nic (host_id, mac, name, boot, ip) VALUES "
                          f"({host_id}, '52:54:00:00:00:01', 'eth0', true, '10.0.0.10')"))
    assert not (NEW_NIC & _columns(engine, "nic"))
    migrate.upgrade(empty_settings)
    assert _columns(engine, "nic") >= NEW_NIC and _columns(engine, "host") >= NEW_HOST

    app = create_app(empty_settings)
    app.state.start_services = False
    with Session(engine) as session:
        token = auth.create_token(session, name="migration")
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        old = c.get("/api/v1/hosts/old1").json()
        assert old["nics"] == [{"mac": "52:54:00:00:00:01", "name": "eth0", "boot": True, "ip": "10.0.0.10",
                                "address": None, "gateway": None, "nameservers": [], "search": [], "mtu": None}]
        assert old["network"] == {"bonds": [], "vlans": []}
        body = {"name": "new1", "nics": [
            {"mac": "52:54:00:00:00:02", "name": "eth0", "boot": True, "address": "10.0.0.20/24",
             "gateway": "10.0.0.1", "nameservers": ["10.0.0.1"], "search": ["lab.example"], "mtu": 1500},
            {"mac": "52:54:00:00:00:03", "name": "eth1"}, {"mac": "52:54:00:00:00:04", "name": "eth2"}],
            "network": {"bonds": [{"name": "bond0", "mode": "802.3ad", "members": ["eth1", "52:54:00:00:00:04"],
                                   "options": {"miimon": 100, "lacp_rate": "fast"}, "address": "10.1.0.20/24"}],
                        "vlans": [{"id": 100, "link": "bond0", "address": "10.2.0.20/24"}]}}
        r = c.post("/api/v1/hosts", json=body)
        assert r.status_code == 201, r.text
        got = c.get("/api/v1/hosts/new1").json()
        assert got["nics"][0]["address"] == "10.0.0.20/24" and got["nics"][0]["search"] == ["lab.example"]
        assert got["network"]["bonds"][0]["members"] == ["eth1", "52:54:00:00:00:04"]
        assert got["network"]["bonds"][0]["options"]["lacp_rate"] == "fast"
        assert got["network"]["vlans"][0]["id"] == 100
    with engine.begin() as conn:  # no batch rebuild of host: its NICs must survive (see the revision)
        command.downgrade(migrate.alembic_config(conn), "0004")
    assert not (NEW_NIC & _columns(engine, "nic")) and not (NEW_HOST & _columns(engine, "host"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM nic")).scalar_one() == 4
        assert conn.execute(text("SELECT name FROM host ORDER BY name")).scalars().all() == ["new1", "old1"]
