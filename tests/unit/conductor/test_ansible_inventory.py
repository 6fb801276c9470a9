"""The Ansible inventory generated from the database (groups by rack and role, host vars)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, SQLModel, create_engine

from provisioner.conductor.inventory import build_inventory, group_name
from provisioner.drivers.config import ansible
from provisioner.models import Host, Nic, Profile, Rack


@pytest.fixture
def session(tmp_path: Path) -> Session:
    engine = create_engine(f"sqlite:///{tmp_path / 'inv.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as s:
        r1 = Rack(name="rack-1")
        p = Profile(name="debian12", params={"ansible_vars": {"hardening_auditd": False, "ansible_user": "evil"}})
        s.add_all([r1, p])
        s.commit()
        s.add_all([
            Host(name="web01", rack_id=r1.id, roles=["docker", "Web"], profile_id=p.id, ip_address="10.0.0.5",
                 ssh_host_key="10.0.0.5 ssh-ed25519 AAAAC3Nza"),
            Host(name="db01", rack_id=r1.id, roles=["db"]),
            Host(name="lonely", roles=[]),
        ])
        s.commit()
        db01 = s.exec(__import__("sqlmodel").select(Host).where(Host.name == "db01")).one()
        s.add(Nic(host_id=db01.id, mac="52:54:00:00:00:01", boot=True, ip="10.0.0.6"))
        s.commit()
        return s


def test_groups_by_rack_and_role(session: Session) -> None:
    inv = build_inventory(session)
    assert inv["rack_rack_1"]["hosts"] == ["db01", "web01"]
    assert inv["role_docker"]["hosts"] == ["web01"]
    assert inv["role_web"]["hosts"] == ["web01"]
    assert inv["role_db"]["hosts"] == ["db01"]
    assert inv["ungrouped"]["hosts"] == ["lonely"]
    assert set(inv["all"]["children"]) >= {"rack_rack_1", "role_docker", "role_db", "ungrouped"}


def test_host_vars_come_from_the_database(session: Session) -> None:
    hv = build_inventory(session)["_meta"]["hostvars"]
    assert hv["web01"]["ansible_host"] == "10.0.0.5"
    assert hv["db01"]["ansible_host"] == "10.0.0.6"  # the boot NIC's reservation
    assert hv["lonely"]["ansible_host"] == "lonely"
    assert hv["web01"]["prov_rack"] == "rack-1"
    assert hv["web01"]["prov_profile"] == "debian12"
    assert hv["web01"]["hardening_auditd"] is False  # role switch from the profile
    assert "ansible_user" not in hv["web01"]  # a profile cannot change how we connect


def test_static_conversion_and_connection_vars(session: Session, tmp_path: Path) -> None:
    spec = ansible.RunSpec(playbooks=["harden"], inventory=build_inventory(session),
                           run_vars={"hardening_banner": False})
    key, kh = tmp_path / "ssh/id", tmp_path / "ssh/known_hosts"
    inv = ansible._connection_inventory(spec, key, kh)
    assert set(inv["all"]["hosts"]) == {"web01", "db01", "lonely"}
    assert inv["all"]["children"]["rack_rack_1"]["hosts"] == {"db01": None, "web01": None}
    v = inv["all"]["vars"]
    assert v["ansible_ssh_private_key_file"] == str(key)
    assert f"UserKnownHostsFile={kh}" in v["ansible_ssh_common_args"]
    assert v["hardening_banner"] is False
    # the recorded host key is pinned in the run's known_hosts
    assert ansible._known_hosts_text(spec) == "10.0.0.5 ssh-ed25519 AAAAC3Nza\n"


def test_group_names_are_identifiers() -> None:
    assert group_name("role", "K8s-Worker.v2") == "role_k8s_worker_v2"
