"""The lab's guests: the libvirt they live in (the machine's or one of the lab's own), made and deleted.

N guests (``lab-01`` ...): no OS, an empty qcow2 disk, a virtio NIC with a
fixed MAC on the lab bridge, network boot first (QEMU's NIC ROM is iPXE), TCG
unless the host pre-flight allows KVM.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

from provisioner.errors import LabError, NotFound
from provisioner.lab.spec import LabSpec, LabState, run

POOL = "prov-lab"


def _virsh_ok(uri: str) -> bool:
    try:
        return run("virsh", "-c", uri, "version", check=False, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


SYSTEM_URI = "qemu:///system"


def ensure_libvirtd(uri: str, lab_dir: Path) -> tuple[str, int | None]:
    """The libvirt the guests live in: ``(uri, pid of a libvirtd this call started or None)``.

    ``uri`` empty means automatic: the machine's ``qemu:///system`` when a
    libvirtd already serves it (systemd machines), otherwise a libvirtd of the
    lab's own under ``<lab_dir>/libvirt`` (``provisioner.lab.libvirtd``:
    root QEMU, no cgroups, its own state and socket), stopped by ``lab down``.
    The lab does not start the machine's libvirtd by hand: with the packaged
    qemu.conf (QEMU as ``libvirt-qemu``) on a machine whose ``/dev/kvm`` that
    user cannot open, libvirt 9.0 finds its QEMU capability cache invalid on
    every lookup ("KVM was enabled when probing ..., but it is not available
    now", virQEMUCapsIsValid) and re-probes QEMU, ~30 s per ``virsh define``;
    a BMC's boot-order change then outlasts the IPMI client's deadline.
    """
    if uri:
        if _virsh_ok(uri):
            return uri, None
        raise LabError(reason=f"libvirt at {uri} does not answer (virsh -c {uri} version); "
                              "leave out --uri to let the lab run its own libvirtd")
    if _virsh_ok(SYSTEM_URI):
        return SYSTEM_URI, None
    for daemon in ("virtlogd", "libvirtd"):
        if shutil.which(daemon) is None:
            raise LabError(reason=f"{daemon} is not installed (deploy/install.sh installs the lab's packages)")
    from provisioner.lab.libvirtd import start_libvirtd

    sock = lab_dir / "libvirt" / "run" / "libvirt-sock"
    if len(str(sock)) > 107:  # sockaddr_un.sun_path holds 108 bytes with the NUL (unix(7))
        raise LabError(reason=f"--lab-dir {lab_dir} is too long for libvirtd's socket path; use a shorter one")
    try:
        handle = start_libvirtd(lab_dir / "libvirt", netns=False)
    except RuntimeError as exc:
        raise LabError(reason=f"the lab's libvirtd did not start: {str(exc).splitlines()[0]} "
                              f"(see {lab_dir / 'libvirt' / 'log'})") from exc
    return handle.uri, handle.proc.pid


# The guests, powered off, in a directory pool of their own; returns the virt type chosen
# (recorded in state.json one by one, so lab down removes a half-made set too).
def make_guests(spec: LabSpec, lab_dir: Path, state: LabState) -> str:
    from provisioner.drivers.virt.libvirt import open_connection
    from provisioner.drivers.virt.spec import DiskSpec, GuestSpec, NicSpec

    pool_dir = spec.pool_dir or str(lab_dir / "pool")
    console = lab_dir / "console"
    console.mkdir(parents=True, exist_ok=True)
    with open_connection(spec.uri) as conn:
        report = conn.preflight()
        virt_type = spec.virt_type or ("kvm" if report.kvm_allowed else "qemu")
        conn.ensure_dir_pool(POOL, pool_dir)
        state.data["made"]["pool"] = POOL
        state.save()
        for i in range(spec.hosts):
            name = spec.host_name(i)
            gs = GuestSpec(name=name, vcpus=spec.vcpus, memory_mib=spec.memory_mib, virt_type=virt_type,  # type: ignore[arg-type]
                           machine="pc", disks=[DiskSpec(size_gib=spec.disk_gib, pool=POOL)],
                           nics=[NicSpec(bridge=spec.bridge, mac=spec.host_mac(i))],
                           boot=["network", "hd"], console_log=str(console / f"{name}.log"))
            conn.create_guest(gs, report, start=False)
            state.data["guests"].append(name)
            state.save()
    return virt_type


def delete_guests(uri: str, guests: list[str], pool: str | None) -> None:
    from provisioner.drivers.virt.libvirt import open_connection

    with open_connection(uri) as conn:
        for g in guests:
            with contextlib.suppress(NotFound):
                conn.delete_guest(g, volumes=True, release=False)
        if pool:
            with contextlib.suppress(NotFound):
                conn.delete_pool(pool)
