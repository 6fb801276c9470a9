"""The e2e tier: a real virtual lab (tests.support.labrig) installed through the workflow.

Everything is started here and removed afterwards (also on failure): a private
libvirtd, a live controller, the lab (host-only bridge ``prov-e2e-*``, TCG
guests, ipmi_sim BMCs on loopback, dnsmasq, apt-cacher-ng). Payloads are
cached under /var/cache/prov-test/ (deploy ramdisk, Debian image, apt cache),
so only the first run downloads anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.helpers import require_binary, require_root
from tests.support.labrig import Rig, host_events, lab_rig, phase_breakdown

HOSTS = 2
# Budget of the whole rack install (TCG guests on a 2-core machine: ~10 min quiet, far more when
# other guests share the cores), then a clear failure.
INSTALL_TIMEOUT = float(os.environ.get("PROV_E2E_INSTALL_TIMEOUT", "1500"))
# Reduced but real configuration run (see the README of tests/e2e in the final report): the sshd,
# admin user, sysctl and nftables controls of the hardening role and the container engine with its
# verification container; apt upgrades, auditd and package removal are switched off because under
# TCG they alone take several minutes per guest. PROV_E2E_FULL_HARDENING=1 runs everything.
REDUCED_VARS: dict[str, Any] = {} if os.environ.get("PROV_E2E_FULL_HARDENING") == "1" else {
    "hardening_auto_updates": False,
    "hardening_auditd": False,
    "hardening_remove_packages": False,
    "hardening_disable_services": False,
}
VERIFY_IMAGE = "localhost/prov-verify:busybox"  # imported by the container_verify role


@dataclass
class Installed:
    rig: Rig
    seconds: float
    task: dict[str, Any]
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> host record
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    history: dict[str, list[str]] = field(default_factory=dict)  # last events per host, for failure messages


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    require_root()
    require_binary("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "dnsmasq", "ipmi_sim", "ipmitool",
                   "apt-cacher-ng", "ip", "ssh", "ssh-keygen", "ssh-keyscan", "debootstrap")
    ctl_settings = {"deploy_wait_timeout": INSTALL_TIMEOUT, "install_wait_timeout": INSTALL_TIMEOUT,
                    "ssh_wait_timeout": 600.0, "configure_timeout": INSTALL_TIMEOUT}
    with lab_rig(HOSTS, memory_mib=1024, playbooks=["site"], engine="docker", controller=ctl_settings,
                 ansible_vars=REDUCED_VARS) as r:
        yield r


def wait_task(rig: Rig, task_id: int, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with rig.ctl.client() as c:
        while True:
            task = c.get(f"/api/v1/tasks/{task_id}")
            if task["status"] in ("succeeded", "failed", "cancelled"):
                return dict(task)
            if time.monotonic() > deadline:
                states = {h: c.get(f"/api/v1/hosts/{h}")["state"] for h in rig.lab.state.data["hosts"]}
                consoles = "\n".join(f"--- {h}\n{rig.console(h, 15)}" for h in states)
                pytest.fail(f"{what} did not finish within {timeout:.0f} s (step {task.get('step')!r}, "
                            f"hosts {states})\n{consoles}")
            time.sleep(3)


@pytest.fixture(scope="module")
def installed(rig: Rig) -> Installed:
    """``prov rack provision lab`` through the API, to the end; host records and phase timings."""
    t0 = time.monotonic()
    with rig.ctl.client() as c:
        task = c.post("/api/v1/racks/lab/provision", json={"concurrency": HOSTS})
    done = wait_task(rig, task["id"], INSTALL_TIMEOUT, "rack provision")
    out = Installed(rig, time.monotonic() - t0, done)
    with rig.ctl.client() as c:
        for name in rig.lab.state.data["hosts"]:
            out.hosts[name] = c.get(f"/api/v1/hosts/{name}")
            events = host_events(rig, name)
            out.phases[name] = phase_breakdown(events)
            out.history[name] = [f"{e['created_at'][11:19]} {e['event']} {e.get('to_state') or ''} {e['message'][:160]}"
                                 for e in events[-25:]]
    if done["status"] != "succeeded":
        for name, lines in out.history.items():
            print(f"--- history of {name}\n" + "\n".join(lines) + f"\n--- console of {name}\n{rig.console(name, 25)}")
    print(f"\nE2E rack install of {HOSTS} hosts: {out.seconds:.0f} s; phases {out.phases}")
    return out
