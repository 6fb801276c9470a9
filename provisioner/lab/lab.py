"""The virtual lab: a rack of libvirt guests that stand in for bare metal, on one machine.

``prov lab up --hosts N`` builds, and ``prov lab down`` removes, everything below
(recorded in ``<lab_dir>/state.json`` as it is made, so ``down`` also cleans up
after a half-finished ``up``):

* the libvirt to use (``ensure_libvirtd``): the machine's ``qemu:///system``
  if a libvirtd serves it, else one of the lab's own under ``<lab_dir>/libvirt``;
* an isolated provisioning network: a Linux bridge (``prov-lab0``, 10.213.0.1/24
  by default) with no uplink and no libvirt DHCP; ip_forward stays as it is,
  nothing is routed or NATed off the bridge;
* N guests (``lab-01`` ...): no OS, an empty qcow2 disk, a virtio NIC with a
  fixed MAC on the bridge, network boot first (QEMU's NIC ROM is iPXE), TCG
  unless the host pre-flight allows KVM (it does not on kvm_pvm machines);
* one IPMI BMC per guest (``provisioner.lab.bmc``: ipmi_sim on a loopback UDP
  port, chassis control through prov's libvirt power driver);
* the lab daemon (``python -m provisioner.lab.daemon daemon LAB_DIR``, one process
  group): prov's own dnsmasq (``drivers/boot/dhcp.py``: DHCP with a reservation
  per MAC, iPXE handed the controller's boot script URL; QEMU's iPXE ROM needs
  no TFTP), a TCP forwarder from the bridge address to the controller (which
  usually listens on loopback; with no ``public_url`` the controller names the
  address a request came to, see ``conductor.netboot.settings_for_request``), apt-cacher-ng
  on the bridge address so guests install packages through a cache that makes
  later runs work offline, and the BMCs;
* in the controller, through the API: rack ``lab``, an image profile
  ``lab-debian12`` (the Debian 12 image of ``provisioner.lab.images``, placed in
  the boot root with the deploy ramdisk) with the lab's admin SSH key and the
  controller's Ansible key, and the hosts, verified (BMC answered) to
  ``available``.

``prov rack provision lab`` then installs them through the normal workflow.

The parts: spec.py (LabSpec, LabState), guests.py (libvirt and the guests),
daemon.py (the lab daemon and the forwarder), bmc.py (the BMCs), and this
module (``Lab``: the bridge, the payloads, enrolment, status and teardown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from provisioner.client import ProvClient
from provisioner.errors import LabError, NotFound, ProvError
from provisioner.lab.daemon import start_daemon, stop_daemon
from provisioner.lab.guests import delete_guests, ensure_libvirtd, make_guests
from provisioner.lab.spec import LabSpec, LabState, run
from provisioner.settings import Settings

log = logging.getLogger("provisioner.lab")

RACK = "lab"
PROFILE = "lab-debian12"
IMAGE_REL = "images/lab-debian12.raw"
ADMIN_USER = "prov"


class Lab:
    def __init__(self, lab_dir: Path, settings: Settings) -> None:
        self.dir = lab_dir
        self.settings = settings
        self.state = LabState(lab_dir)

    # ------------------------------------------------------------------ up
    def up(self, spec: LabSpec, client: ProvClient, *, progress: Any = None) -> dict[str, Any]:
        say = progress or (lambda msg: log.info("lab: %s", msg))
        if self.state.exists:
            raise LabError(reason=f"a lab already exists in {self.dir} (prov lab status; prov lab down)")
        if not 1 <= spec.hosts <= 64:
            raise LabError(reason="--hosts must be between 1 and 64")
        for binary in ("ipmi_sim", "ipmitool", "dnsmasq", "apt-cacher-ng", "ip", "virsh"):
            if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
                raise LabError(reason=f"{binary} is not installed (deploy/install.sh installs the lab's packages)")
        t0 = time.monotonic()
        self.state.data = {"spec": asdict(spec), "made": {}, "guests": [], "hosts": [], "bmcs": []}
        self.state.save()
        try:
            made = self.state.data["made"]
            spec.uri, made["libvirtd_pid"] = ensure_libvirtd(spec.uri, self.dir)
            self.state.data["spec"]["uri"] = spec.uri
            self.state.save()
            say(f"libvirt: {spec.uri}" + (" (the lab's own libvirtd)" if made["libvirtd_pid"] else ""))
            say("payloads: deploy ramdisk and Debian 12 image (built once, then cached)")
            profile_image = self._publish_payloads()
            say(f"network: bridge {spec.bridge} {spec.gateway}/{spec.network.prefixlen}")
            self._make_bridge(spec)
            virt_type = make_guests(spec, self.dir, self.state)
            say(f"guests: {spec.hosts} x {spec.memory_mib} MiB, {virt_type.upper()}, powered off")
            start_daemon(spec, self.dir, self.state)
            say(f"lab daemon: dnsmasq, forwarder {spec.guest_url} -> {spec.controller_url}, "
                f"apt proxy {spec.proxy_url}, {spec.hosts} BMC(s)")
            self._check_controller(spec)
            self._enrol(spec, client, profile_image)
            say(f"enrolled rack {RACK}: {', '.join(spec.host_name(i) for i in range(spec.hosts))}")
        except BaseException:
            with contextlib.suppress(Exception):
                self.down(client)
            raise
        return {"rack": RACK, "profile": PROFILE, "hosts": self.status(client),
                "seconds": round(time.monotonic() - t0, 1), "admin_key": str(self.admin_key),
                "guest_url": spec.guest_url}

    @property
    def admin_key(self) -> Path:
        return self.dir / "ssh" / "id_ed25519"

    def _publish_payloads(self) -> dict[str, str]:
        from provisioner.drivers.deploy.base import RAMDISK_INITRD, RAMDISK_KERNEL
        from provisioner.drivers.deploy.images import publish_image
        from provisioner.lab.images import ensure_image
        from provisioner.lab.ramdisk import ensure_ramdisk

        boot = self.settings.boot_dir
        rd = ensure_ramdisk()
        made: list[str] = []
        for src, rel in ((rd.kernel, RAMDISK_KERNEL), (rd.initrd, RAMDISK_INITRD)):
            dest = boot / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists() or dest.read_bytes() != src.read_bytes():
                shutil.copyfile(src, dest)
                made.append(rel)
        img = ensure_image()
        checksum = publish_image(img.path, boot, IMAGE_REL, img.sha256)
        made += [IMAGE_REL, IMAGE_REL + ".sha256"]
        self.state.data["made"]["boot_files"] = made
        self.state.save()
        return {"image_url": IMAGE_REL, "image_checksum": checksum}

    def _make_bridge(self, spec: LabSpec) -> None:
        if run("ip", "link", "show", spec.bridge, check=False).returncode == 0:
            raise LabError(reason=f"interface {spec.bridge} already exists (another lab? prov lab down)")
        run("ip", "link", "add", spec.bridge, "type", "bridge")
        self.state.data["made"]["bridge"] = spec.bridge
        self.state.save()
        run("ip", "addr", "add", f"{spec.gateway}/{spec.network.prefixlen}", "dev", spec.bridge)
        run("ip", "link", "set", spec.bridge, "up")

    def _check_controller(self, spec: LabSpec) -> None:
        """Guests must get scripts that name the bridge address, not the controller's loopback URL."""
        import httpx

        try:
            text = httpx.get(f"{spec.guest_url}/boot/boot.ipxe", timeout=10).text
        except httpx.HTTPError as exc:
            raise LabError(reason=f"the controller does not answer at {spec.guest_url} through the lab's "
                                  f"forwarder ({exc.__class__.__name__}); is it running at {spec.controller_url}?") \
                from exc
        if spec.guest_url not in text:
            raise LabError(reason=f"the controller's boot script does not name {spec.guest_url}: unset "
                                  f"PROV_PUBLIC_URL (or set it to {spec.guest_url}) and restart prov serve")

    def _admin_public_key(self) -> str:
        key = self.admin_key
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "prov-lab-admin", "-f", str(key))
        return key.with_suffix(".pub").read_text().strip()

    def _enrol(self, spec: LabSpec, client: ProvClient, image: dict[str, str]) -> None:
        from provisioner.drivers.config import ansible

        keys = [self._admin_public_key(), ansible.public_key(ansible.ensure_ssh_key(self.settings))]
        try:
            client.get(f"/api/v1/racks/{RACK}")
        except NotFound:
            client.post("/api/v1/racks", json={"name": RACK, "site": "virtual lab"})
            self.state.data["made"]["rack"] = RACK
        profile = {
            "os_family": "debian", "install_method": "image", **image,
            # the ramdisk and the installed system both talk on the serial console (console logs)
            "kernel_args": "console=ttyS0,115200n8",
            "params": {"admin_user": ADMIN_USER, "ssh_authorized_keys": keys, "proxy": spec.proxy_url,
                       "disk": "/dev/vda", "ansible_vars": spec.ansible_vars},
            "playbooks": spec.playbooks, "container_engine": spec.container_engine,
        }
        try:
            client.get(f"/api/v1/profiles/{PROFILE}")
            client.patch(f"/api/v1/profiles/{PROFILE}", json=profile)
        except NotFound:
            client.post("/api/v1/profiles", json={"name": PROFILE, **profile})
            self.state.data["made"]["profile"] = PROFILE
        self.state.save()
        for i, b in enumerate(self.state.bmcs()):
            name = spec.host_name(i)
            client.post("/api/v1/hosts", json={
                "name": name, "rack": RACK, "u_position": i + 1, "profile": PROFILE, "roles": ["lab"],
                "nics": [{"mac": spec.host_mac(i), "name": "eth0", "boot": True, "ip": spec.host_ip(i)}],
                "bmc": {"kind": "ipmi", "address": "127.0.0.1", "port": b.port, "username": b.username,
                        "password": b.password, "options": {"cipher_suite": 3}},
            })
            self.state.data["hosts"].append(name)
            self.state.save()
        for name in self.state.data["hosts"]:
            client.post(f"/api/v1/hosts/{name}/verify")

    # ------------------------------------------------------------------ status
    def status(self, client: ProvClient | None = None) -> list[dict[str, Any]]:
        if not self.state.exists:
            return []
        spec = self.state.spec
        states: dict[str, str] = {}
        with contextlib.suppress(Exception):
            from provisioner.drivers.virt.libvirt import open_connection

            with open_connection(spec.uri) as conn:
                for g in self.state.data.get("guests", []):
                    with contextlib.suppress(ProvError):
                        states[g] = conn.state(g)
        rows = []
        for i, b in enumerate(self.state.bmcs()):
            row: dict[str, Any] = {"host": b.name, "mac": spec.host_mac(i), "ip": spec.host_ip(i),
                                   "bmc": f"127.0.0.1:{b.port}", "guest": states.get(b.name, "-"), "state": "-"}
            if client is not None:
                with contextlib.suppress(ProvError):
                    row["state"] = client.get(f"/api/v1/hosts/{b.name}").get("state", "-")
            rows.append(row)
        return rows

    def daemon_alive(self) -> bool:
        pid = self.state.data.get("made", {}).get("daemon_pid")
        if not pid:
            return False
        try:
            os.kill(int(pid), 0)
        except OSError:
            return False
        return True

    # ------------------------------------------------------------------ down
    def down(self, client: ProvClient | None = None) -> list[str]:
        """Remove everything state.json says was made; best effort, every step attempted. Returns what failed."""
        if not self.state.exists:
            return []
        spec = self.state.spec
        made = self.state.data.get("made", {})
        failed: list[str] = []

        def attempt(what: str, fn: Any) -> None:
            try:
                fn()
            except Exception as exc:  # keep going: the rest must still be removed
                failed.append(f"{what}: {exc}")

        if client is not None:
            for name in self.state.data.get("hosts", []):
                attempt(f"host {name}", lambda n=name: _delete_host(client, n))
            if made.get("profile"):
                attempt("profile", lambda: _ignore_missing(client.delete, f"/api/v1/profiles/{PROFILE}"))
            if made.get("rack"):
                attempt("rack", lambda: _ignore_missing(client.delete, f"/api/v1/racks/{RACK}"))
        attempt("daemon", lambda: stop_daemon(made.get("daemon_pid")))
        guests = self.state.data.get("guests", [])
        if guests or made.get("pool"):
            attempt("guests", lambda: delete_guests(spec.uri, guests, made.get("pool")))
        if made.get("libvirtd_pid"):
            # after the guests: libvirtd leaves running QEMU processes alone when it stops
            attempt("libvirtd", lambda: stop_daemon(made.get("libvirtd_pid"), timeout=30))
        if made.get("bridge"):
            attempt("bridge", lambda: run("ip", "link", "del", made["bridge"], check=False))
        for rel in made.get("boot_files", []):
            attempt(f"boot file {rel}", lambda r=rel: (self.settings.boot_dir / r).unlink(missing_ok=True))
        if not failed:
            shutil.rmtree(self.dir, ignore_errors=True)
        return failed


def _ignore_missing(fn: Any, path: str) -> None:
    with contextlib.suppress(NotFound):
        fn(path)


def _delete_host(client: ProvClient, name: str) -> None:
    with contextlib.suppress(NotFound):
        try:
            client.delete(f"/api/v1/hosts/{name}")
        except ProvError:
            # mid-install: abort whatever runs, then delete
            with contextlib.suppress(ProvError):
                client.post(f"/api/v1/hosts/{name}/transition", json={"event": "abort"})
            client.delete(f"/api/v1/hosts/{name}")
