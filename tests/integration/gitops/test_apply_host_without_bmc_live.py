"""A host listed without a BMC converges (issue 18, item 9).

It used to be created as ``ipmi`` with no address: ``prov apply`` said ``verify host/x ... ok``,
the verify then failed, and every later ``prov plan`` wanted to verify it again. Now it is a
``manual`` host (powered by hand), which verifies, and a second plan has nothing to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.controller import LiveController, live_controller

pytestmark = pytest.mark.integration

INVENTORY = """\
apiVersion: prov/v1
racks:
  - {name: r1, site: lab}
hosts:
  - name: hand01
    rack: r1
    u_position: 1
    nics: [{mac: "52:54:00:bb:00:01", boot: true}]
"""


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[LiveController]:
    with live_controller(tmp_path / "data") as c:
        yield c


def prov(ctl: LiveController, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **ctl.env()}, timeout=120, stdin=subprocess.DEVNULL)


def test_a_host_without_bmc_is_manual_verifies_and_the_plan_converges(ctl: LiveController, tmp_path: Path) -> None:
    inv = tmp_path / "inv"
    inv.mkdir()
    (inv / "hosts.yaml").write_text(INVENTORY)
    r = prov(ctl, "apply", "-f", str(inv))
    assert r.returncode == 0, r.stdout + r.stderr
    with ctl.client() as c:
        host = c.get("/api/v1/hosts/hand01")
    assert host["bmc"]["kind"] == "manual" and host["state"] == "available", host
    r = prov(ctl, "plan", "-f", str(inv))
    assert r.returncode == 0 and r.stdout.startswith("No changes."), r.stdout + r.stderr
