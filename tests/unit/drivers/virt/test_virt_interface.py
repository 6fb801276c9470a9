"""The ``VirtInterface`` contract, run against both implementations: libvirt (its test driver) and the fake.

What the conductor relies on: every check refuses with the same error class and reason and makes
nothing; ``create_guest`` reports its steps in order through ``on_step``; an exception raised by
``on_step`` (a cancelled task) rolls the guest back; quick calls behave alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from provisioner.drivers.virt import fake
from provisioner.drivers.virt import preflight as pf
from provisioner.drivers.virt.base import CREATE_STEPS, STEP_DEFINE, STEP_VOLUMES, VirtInterface
from provisioner.drivers.virt.libvirt import VirtConnection, open_connection
from provisioner.drivers.virt.spec import GuestSpec, NetworkSpec
from provisioner.errors import Conflict, NotFound, ProvError, VirtRefused

POOL = "default-pool"  # the libvirt test driver's pool; the fake is given the same one


class Stop(ProvError):
    pass


@pytest.fixture(params=["libvirt", "fake"])
def impl(request: pytest.FixtureRequest) -> Iterator[tuple[VirtInterface, str]]:
    """(connection, network name) with a pool ``default-pool`` and an empty NAT network."""
    net = f"n-{uuid.uuid4().hex[:6]}"
    conn: VirtInterface
    if request.param == "libvirt":
        lv = open_connection("test:///default", default_pool=POOL, default_network=net)
        lv.ensure_network(NetworkSpec(net, subnet="10.79.0.0/24"))
        before = {g["name"] for g in lv.list_guests()}
        yield lv, net
        for g in lv.list_guests():
            if g["name"] not in before:
                lv.delete_guest(g["name"])
        lv.delete_network(net)
        lv.close()
        return
    fake.reset()
    host = fake.fake_host("fake:///contract")
    host.pools, host.networks = {POOL: "/default-pool"}, {net: "10.79.0.0/24"}
    conn = fake.open_fake("fake:///contract", default_pool=POOL, default_network=net)
    with conn:
        yield conn, net
    fake.reset()


def gspec(name: str, **kw: Any) -> GuestSpec:
    return GuestSpec.parse({"name": name, "memory_mib": 256, "virt_type": "qemu", "disks": [{"size_gib": 1}],
                            "nics": [{"mac": "52:54:00:cc:00:01"}], **kw})


def names(conn: VirtInterface) -> list[str]:
    return [g["name"] for g in conn.list_guests() if g["name"].startswith("c-")]


def test_both_declare_the_interface() -> None:
    assert issubclass(VirtConnection, VirtInterface) and issubclass(fake.FakeVirt, VirtInterface)


@pytest.mark.parametrize(("kw", "exc", "text"), [
    ({"virt_type": "kvm"}, VirtRefused, "virt_type kvm refused"),
    ({"memory_mib": 4 * 1024 * 1024}, VirtRefused, "exceeds the host's free memory"),
    ({"nics": [{"network": "nope"}]}, VirtRefused, "unknown network 'nope'"),
    ({"disks": [{"size_gib": 1, "pool": "nope"}]}, VirtRefused, "unknown storage pool 'nope'"),
])
def test_refusals_alike(impl: tuple[VirtInterface, str], sw_report: pf.VirtReport, kw: dict[str, Any],
                        exc: type[Exception], text: str) -> None:
    conn, _net = impl
    with pytest.raises(exc, match=text):
        conn.create_guest(gspec("c-refused", **kw), sw_report)
    assert names(conn) == []


def test_steps_duplicates_and_delete_alike(impl: tuple[VirtInterface, str]) -> None:
    conn, _net = impl
    seen: list[str] = []
    info = conn.create_guest(gspec("c-one"), fake.hardware_report(), on_step=seen.append)
    assert seen == [s for s in CREATE_STEPS if s != "seed ISO"] and info["state"] == "running"
    assert info["nics"][0]["mac"] == "52:54:00:cc:00:01" and "warnings" in info
    with pytest.raises(Conflict, match="already exists"):
        conn.plan_guest(gspec("c-one"), fake.hardware_report())
    with pytest.raises(Conflict, match="MAC 52:54:00:cc:00:01 is already used"):
        conn.plan_guest(gspec("c-two"), fake.hardware_report())
    assert conn.shutdown("c-one", timeout=0.5) in ("shutdown", "destroyed") and conn.state("c-one") == "shutoff"
    assert conn.shutdown("c-one") == "already-off"
    conn.start("c-one")
    assert conn.state("c-one") == "running"
    conn.destroy("c-one")
    assert conn.state("c-one") == "shutoff"
    out = conn.delete_guest("c-one")
    assert out["name"] == "c-one" and out["reservations_released"] == ["52:54:00:cc:00:01"]
    assert len(out["volumes_deleted"]) == 1 and names(conn) == []
    with pytest.raises(NotFound):
        conn.guest_info("c-one")
    with pytest.raises(NotFound):
        conn.state("c-one")


@pytest.mark.parametrize("at", [STEP_VOLUMES, STEP_DEFINE])
def test_a_raising_step_rolls_back_alike(impl: tuple[VirtInterface, str], at: str) -> None:
    conn, _net = impl

    def stop_at(step: str) -> None:
        if step == at:
            raise Stop("cancelled")

    with pytest.raises(Stop):
        conn.create_guest(gspec("c-cut"), fake.hardware_report(), on_step=stop_at)
    assert names(conn) == []
    conn.create_guest(gspec("c-cut"), fake.hardware_report(), start=False)  # nothing left in the way
    assert conn.state("c-cut") == "shutoff"
