"""conductor/virt.py: which libvirt a KVM host has, and its pre-flight report (measured, stored, reused).

The hypervisor is the in-memory fake (``fake://`` URIs); the facts come from recorded trees.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, SQLModel, select

from provisioner.conductor import drift_check, virt
from provisioner.db import get_engine
from provisioner.drivers.virt import fake
from provisioner.drivers.virt import preflight as pf
from provisioner.drivers.virt.fake import FakeVirt
from provisioner.drivers.virt.spec import GuestSpec
from provisioner.errors import InvalidInput, NotFound, VirtError
from provisioner.models import Host
from provisioner.settings import Settings

TREES = Path(__file__).resolve().parents[2] / "support" / "virt_trees"
_REAL_COLLECT = pf.collect_facts


def _facts(tree: str) -> dict[str, Any]:
    return _REAL_COLLECT(TREES / tree)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    fake.reset()
    st = Settings(data_dir=tmp_path, log_json=False, virt_uri=f"fake:///local-{uuid.uuid4().hex[:6]}")
    SQLModel.metadata.create_all(get_engine(st))
    with Session(get_engine(st)) as s:
        s.add(Host(name="kvm1", ip_address="10.0.0.5", bmc_kind="manual", bmc_options={"virt_uri": "fake:///kvm1"}))
        s.add(Host(name="kvm2", ip_address="10.0.0.6", bmc_kind="manual"))
        s.add(Host(name="kvm3", bmc_kind="manual"))
        s.add(Host(name="kvm4", bmc_kind="manual",
                   bmc_options={"virt_uri": "qemu+ssh://admin@kvm4.example:2222/system?keyfile=/k&no_verify=1"}))
        s.commit()
    yield st
    fake.reset()


def _stored(settings: Settings, name: str) -> dict[str, Any] | None:
    with Session(get_engine(settings)) as s:
        return s.exec(select(Host).where(Host.name == name)).one().virt_report


def test_kvm_host_resolution(settings: Settings) -> None:
    assert virt.kvm_host(settings, "local") == virt.KvmHost("local", settings.virt_uri)
    kvm1 = virt.kvm_host(settings, "kvm1")
    assert (kvm1.name, kvm1.uri, kvm1.ip_address) == ("kvm1", "fake:///kvm1", "10.0.0.5") and kvm1.host_id
    assert virt.host_uri(settings, "kvm2") == "qemu+ssh://root@10.0.0.6/system"
    assert virt.host_uri(settings, str(kvm1.host_id)) == "fake:///kvm1"  # by id too
    with pytest.raises(InvalidInput, match="kvm3 has no address"):
        virt.kvm_host(settings, "kvm3")
    with pytest.raises(NotFound):
        virt.kvm_host(settings, "nope")


def test_connect_opens_the_fake_with_the_controllers_defaults(settings: Settings) -> None:
    with virt.connect(settings, "kvm1") as conn:
        assert isinstance(conn, FakeVirt) and conn.uri == "fake:///kvm1"
        assert (conn.default_pool, conn.default_network) == (settings.virt_pool, settings.virt_network)


def test_refresh_measures_over_ssh_and_stores(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list[str], int]] = []
    engine = get_engine(settings)

    def remote(target: str, *, ssh_options: list[str] | None = None, **_kw: Any) -> dict[str, Any]:
        # no database connection is held while the SSH pre-flight runs
        seen.append((target, list(ssh_options or []), engine.pool.checkedout()))  # type: ignore[attr-defined]
        return _facts("intel_ept_nested")

    monkeypatch.setattr(pf, "remote_facts", remote)
    out = virt.host_report(settings, "kvm1")  # nothing stored yet: measured
    assert out["host"] == "kvm1" and out["uri"] == "fake:///kvm1" and out["overall"] == pf.HARDWARE_KVM
    assert seen == [("root@10.0.0.5", [], 0)]
    stored = _stored(settings, "kvm1")
    assert stored and stored["overall"] == pf.HARDWARE_KVM and stored["checked_at"] == out["checked_at"]
    assert stored["libvirt"]["domain_types"] == ["kvm", "qemu"]  # the fake's domain capabilities
    again = virt.host_report(settings, "kvm1")  # stored: not measured again
    assert len(seen) == 1 and again["checked_at"] == out["checked_at"]
    virt.host_report(settings, "kvm1", refresh=True)
    assert len(seen) == 2


def test_ssh_target_and_options_come_from_the_uri(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list[str]]] = []

    def remote(target: str, *, ssh_options: list[str] | None = None, **_kw: Any) -> dict[str, Any]:
        seen.append((target, list(ssh_options or [])))
        return _facts("amd_npt_no_nested")

    def unreachable(uri: str, settings: Settings | None = None) -> Any:
        raise VirtError(reason=f"connect {uri}: no route")

    monkeypatch.setattr(pf, "remote_facts", remote)
    monkeypatch.setattr(virt, "open_uri", unreachable)  # no real SSH from a unit test
    out = virt.host_report(settings, "kvm4", refresh=True)
    assert seen == [("admin@kvm4.example", ["-p", "2222", "-i", "/k", "-o", "StrictHostKeyChecking=no",
                                            "-o", "UserKnownHostsFile=/dev/null"])]
    # libvirt is not reachable there: the report says so and is still stored
    assert any("libvirt not reachable" in w for w in out["warnings"])
    assert (_stored(settings, "kvm4") or {}).get("overall") == pf.HARDWARE_KVM_NO_NESTED


def test_ssh_failure_is_a_virt_error_and_stores_nothing(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def remote(target: str, **_kw: Any) -> dict[str, Any]:
        raise RuntimeError(f"{target}: exit 255")

    monkeypatch.setattr(pf, "remote_facts", remote)
    with pytest.raises(VirtError, match="pre-flight over SSH failed"):
        virt.host_report(settings, "kvm1", refresh=True)
    assert _stored(settings, "kvm1") is None


def test_local_is_measured_here_and_not_stored(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pf, "collect_facts", lambda root="/", **kw: _facts("software_kvm_pvm"))
    out = virt.host_report(settings, "local")
    assert out["host"] == "local" and out["overall"] == pf.SOFTWARE_KVM_ONLY
    with Session(get_engine(settings)) as s:
        assert all(h.virt_report is None for h in s.exec(select(Host)).all())


def test_report_of_a_host_deleted_meanwhile_is_not_stored(settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def remote(target: str, **_kw: Any) -> dict[str, Any]:
        with Session(get_engine(settings)) as s:
            s.delete(s.exec(select(Host).where(Host.name == "kvm1")).one())
            s.commit()
        return _facts("intel_ept_nested")

    monkeypatch.setattr(pf, "remote_facts", remote)
    assert virt.host_report(settings, "kvm1")["overall"] == pf.HARDWARE_KVM


def test_drift_check_lists_guests_through_the_conductor(settings: Settings) -> None:
    fake.fake_host("fake:///kvm1").guests.clear()
    with virt.connect(settings, "kvm1") as conn:
        conn.create_guest(fake_spec("vm1"))
    with Session(get_engine(settings)) as s:
        assert [g["name"] for g in drift_check._libvirt_guests(s, settings, "kvm1")] == ["vm1"]


def fake_spec(name: str) -> GuestSpec:
    return GuestSpec.parse({"name": name, "memory_mib": 128, "virt_type": "qemu"})
