"""A whole virtual lab for e2e tests and bench/rack.py: private libvirtd, live controller, ``Lab``.

``lab_rig(n)`` starts a private libvirtd (provisioner.lab.libvirtd, its own
mount namespace: the machine's libvirt state is never touched), a live
controller on a loopback port with its background services (task runner,
timeout checker), and a lab of ``n`` guests on its own host-only bridge
(``prov-e2e-<id>``, a free 10.214.x.0/24; nothing is routed off it). Leaving
the context removes the lab (guests, volumes, bridge, daemon and its
dnsmasq/BMCs/apt cache), stops libvirtd and deletes the work directory, also
when the body failed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.lab.lab import Lab, LabSpec
from provisioner.lab.libvirtd import LibvirtdHandle, start_libvirtd, stop_libvirtd
from tests.support.controller import LiveController, live_controller

ACNG_CACHE = Path("/var/cache/prov-test/lab-acng")


@dataclass
class Rig:
    ctl: LiveController
    lab: Lab
    spec: LabSpec
    libvirtd: LibvirtdHandle
    base: Path
    up_seconds: float

    def ssh(self, ip: str, *command: str, timeout: float = 120, user: str = "prov",
            extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """SSH with the lab's admin key (host keys are not pinned: the guests are throwaway)."""
        args = ["ssh", "-i", str(self.lab.admin_key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR", *(extra or []), f"{user}@{ip}", *command]
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 124, "", f"ssh timed out after {timeout} s")

    def console(self, name: str, lines: int = 30) -> str:
        path = self.lab.dir / "console" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console log)"


def free_subnet() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    used = {ipaddress.IPv4Interface(w).network for line in out.splitlines()
            for w in line.split() if "/" in w and w[0].isdigit()}
    for third in range(10, 250):
        net = ipaddress.IPv4Network(f"10.214.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise RuntimeError("no free 10.214.x.0/24 for the lab bridge")


@contextlib.contextmanager
def lab_rig(hosts: int, *, memory_mib: int = 1024, playbooks: list[str] | None = None, engine: str = "docker",
            controller: dict[str, Any] | None = None, ansible_vars: dict[str, Any] | None = None) -> Iterator[Rig]:
    # short path: libvirtd's control socket lives under it (sockaddr_un holds 108 bytes)
    base = Path(tempfile.mkdtemp(prefix="prov-e2e-"))
    tag = uuid.uuid4().hex[:6]
    lv = start_libvirtd(base / "lv", netns=False)
    try:
        with live_controller(base / "data", services=True, **(controller or {})) as ctl:
            spec = LabSpec(hosts=hosts, memory_mib=memory_mib, subnet=free_subnet(), bridge=f"prov-e2e-{tag}",
                           uri=lv.uri, controller_url=ctl.url, acng_cache=str(ACNG_CACHE),
                           pool_dir=str(base / "pool"), playbooks=playbooks or ["site"], container_engine=engine,
                           ansible_vars=dict(ansible_vars or {}))
            lab = Lab(base / "lab", ctl.settings)
            t0 = time.monotonic()
            with ctl.client() as c:
                lab.up(spec, c)
            try:
                yield Rig(ctl, lab, spec, lv, base, time.monotonic() - t0)
            finally:
                with ctl.client() as c:
                    failed = lab.down(c)
                if failed:
                    raise RuntimeError(f"lab down left: {failed}")
    finally:
        stop_libvirtd(lv)
        shutil.rmtree(base, ignore_errors=True)


# Install phases, from the host's history (oldest first): (name, start marker, end marker).
# A marker matches an event's to_state, its event name, or a message prefix.
PHASES = (
    ("power", "to:installing", "to:install-wait"),  # power off, boot device, netboot on, power on
    ("netboot", "to:install-wait", "msg:installer fetched its image deploy agent"),  # DHCP, iPXE, ramdisk boot
    ("image", "msg:installer fetched its image deploy agent", "to:booting"),  # stream, write, verify, seed
    ("first-boot+ssh", "to:booting", "event:ssh-up"),  # reboot, local boot, Debian + cloud-init, sshd
    ("ansible", "to:configuring", "to:active"),
)


def _when(events: list[dict[str, Any]], marker: str, after: float = 0.0) -> float | None:
    kind, _, value = marker.partition(":")
    from datetime import datetime

    for ev in events:
        ts = datetime.fromisoformat(str(ev["created_at"])).timestamp()
        if ts < after:
            continue
        if (kind == "to" and ev.get("to_state") == value) or (kind == "event" and ev.get("event") == value) or \
                (kind == "msg" and str(ev.get("message", "")).startswith(value)):
            return ts
    return None


def phase_breakdown(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per install phase of the LAST install in ``events`` (missing phases are left out)."""
    starts = [e for e in events if e.get("to_state") == "installing"]
    if not starts:
        return {}
    from datetime import datetime

    t0 = datetime.fromisoformat(str(starts[-1]["created_at"])).timestamp()
    out: dict[str, float] = {}
    for name, a, b in PHASES:
        ta = _when(events, a, t0)
        tb = _when(events, b, ta or t0) if ta is not None else None
        if ta is not None and tb is not None:
            out[name] = round(tb - ta, 1)
    # Within the power phase, the BMC's share: the power service writes "(BMC 1.23 s)" on every
    # power and boot-device line; what is left is the controller's own work (API, DB, steps).
    ta, tb = _when(events, "to:installing", t0), _when(events, "to:install-wait", t0)
    if ta is not None and tb is not None:
        bmc = 0.0
        for ev in events:
            ts = datetime.fromisoformat(str(ev["created_at"])).timestamp()
            m = _BMC_SECONDS.search(str(ev.get("message", "")))
            if m and ta <= ts <= tb and ev.get("event") in ("power", "boot-device"):
                bmc += float(m.group(1))
        out["power.bmc"] = round(bmc, 2)
        out["power.controller"] = round(max(0.0, (tb - ta) - bmc), 2)
    end = _when(events, "to:active", t0)
    if end is not None:
        out["total"] = round(end - t0, 1)
    return out


_BMC_SECONDS = re.compile(r"\(BMC ([0-9.]+) s\)")


def host_events(rig: Rig, name: str) -> list[dict[str, Any]]:
    with rig.ctl.client() as c:
        page = c.get(f"/api/v1/hosts/{name}/events", params={"limit": 500})
    return list(page["data"])
