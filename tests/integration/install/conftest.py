"""Fixtures for the install fault tests: a real ``prov serve`` subprocess and real-peer machines.

The controller runs with short phase deadlines (install-wait, booting) and a
0.5 s timeout check, so a "callback that never comes" takes seconds; BMC calls
are bounded at 2 s with one retry, so a dead BMC is noticed within ~10 s.
Everything (controller, ipmi_sim, sshd) is killed at the end, pass or fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.helpers import require_binary, require_root
from tests.support.install_faults import SSHD, Machine, Rig, make_machine
from tests.support.serve import ServeProcess


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    require_binary("ipmi_sim", "ipmitool", SSHD, "ssh-keygen", "ssh-keyscan")
    require_root()  # sshd's privilege separation needs root
    rigs: list[Rig] = []

    def make(machines: int = 1, **settings: object) -> Rig:
        values: dict[str, object] = {
            # long enough that a busy 2-core machine never times out a healthy step; the
            # timeout tests shorten the one they are about
            "install_wait_timeout": 120.0,
            "ssh_wait_timeout": 120.0,
            "timeout_check_interval": 0.5,
            "power_call_timeout": 2.0,
            "power_retries": 1,
        }
        values.update(settings)
        n = len(rigs)
        ctl = ServeProcess(tmp_path / f"ctl{n}" / "data", settings=values)
        rig = Rig(ctl=ctl, workdir=tmp_path / f"ctl{n}")
        rigs.append(rig)
        for i in range(machines):
            rig.machines.append(make_machine(rig.workdir, f"node{i + 1:02d}", n * 16 + i + 1))
        ctl.start()
        return rig

    try:
        yield make
    finally:
        for rig in rigs:
            rig.close()


@pytest.fixture
def rig(rig_factory: Callable[..., Rig]) -> Rig:
    """A controller with one enrolled, verified machine whose profile points SSH at its sshd."""
    r = rig_factory()
    m = r.machines[0]
    r.add_profile("deb12", ssh_port=m.ssh_port)
    r.enroll(m, "deb12")
    return r


@pytest.fixture
def machine(rig: Rig) -> Machine:
    return rig.machines[0]
