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
* the lab daemon (``python -m provisioner.lab.lab daemon LAB_DIR``, one process
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
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioner.client import ProvClient
from provisioner.errors import LabError, NotFound, ProvError
from provisioner.lab import bmc as labbmc
from provisioner.settings import Settings

log = logging.getLogger("provisioner.lab")

RACK = "lab"
PROFILE = "lab-debian12"
BRIDGE = "prov-lab0"
SUBNET = "10.213.0.0/24"
POOL = "prov-lab"
IMAGE_REL = "images/lab-debian12.raw"
ADMIN_USER = "prov"
BMC_USER = "admin"
# QEMU's OUI; the two octets after it come from the subnet so two labs on one
# machine never share a MAC, and a rebuilt lab gets the same MACs again.
MAC_OUI = "52:54:00"
FIRST_HOST = 10  # .10, .11 ... (the DHCP pool for unknown MACs is .100-.199 and unused)
DEFAULT_ACNG_CACHE = Path("/var/cache/prov-lab/acng")
_READY = "daemon.ready"


@dataclass
class LabSpec:
    hosts: int = 3
    memory_mib: int = 1024
    disk_gib: int = 8
    vcpus: int = 1
    subnet: str = SUBNET
    bridge: str = BRIDGE
    uri: str = ""  # "" = the machine's qemu:///system if it runs, else a libvirtd of the lab's own
    prefix: str = "lab"
    controller_url: str = "http://127.0.0.1:8700"  # where the forwarder sends guests' HTTP
    http_port: int = 0  # bridge port guests use; 0: the controller's port
    acng_port: int = 3142
    acng_cache: str = str(DEFAULT_ACNG_CACHE)
    virt_type: str = ""  # "" = pre-flight decides (kvm only with hardware virtualisation)
    playbooks: list[str] = field(default_factory=lambda: ["site"])
    container_engine: str = "docker"
    # role switches for the configuration run (profile.params.ansible_vars), e.g. {"hardening_auditd": false}
    ansible_vars: dict[str, Any] = field(default_factory=dict)
    pool_dir: str = ""  # default <lab_dir>/pool

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def port(self) -> int:
        return self.http_port or (urlsplit(self.controller_url).port or 80)

    @property
    def guest_url(self) -> str:
        return f"http://{self.gateway}:{self.port}"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.gateway}:{self.acng_port}"

    def host_name(self, i: int) -> str:
        return f"{self.prefix}-{i + 1:02d}"

    def host_ip(self, i: int) -> str:
        return str(self.network.network_address + FIRST_HOST + i)

    def host_mac(self, i: int) -> str:
        o = self.network.network_address.packed
        return f"{MAC_OUI}:{o[1]:02x}:{o[2]:02x}:{FIRST_HOST + i:02x}"


def _run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(reason=f"{' '.join(cmd)}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc


def _virsh_ok(uri: str) -> bool:
    try:
        return _run("virsh", "-c", uri, "version", check=False, timeout=15).returncode == 0
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


# --------------------------------------------------------------------------- state
class LabState:
    """``state.json``: the spec and everything made so far (written after every step)."""

    def __init__(self, lab_dir: Path) -> None:
        self.dir = lab_dir
        self.path = lab_dir / "state.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.path)

    @property
    def spec(self) -> LabSpec:
        return LabSpec(**self.data["spec"])

    def bmcs(self) -> list[labbmc.BmcConfig]:
        return [labbmc.BmcConfig(**b) for b in self.data.get("bmcs", [])]


# --------------------------------------------------------------------------- the lab
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
            virt_type = self._make_guests(spec)
            say(f"guests: {spec.hosts} x {spec.memory_mib} MiB, {virt_type.upper()}, powered off")
            self._start_daemon(spec)
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
        if _run("ip", "link", "show", spec.bridge, check=False).returncode == 0:
            raise LabError(reason=f"interface {spec.bridge} already exists (another lab? prov lab down)")
        _run("ip", "link", "add", spec.bridge, "type", "bridge")
        self.state.data["made"]["bridge"] = spec.bridge
        self.state.save()
        _run("ip", "addr", "add", f"{spec.gateway}/{spec.network.prefixlen}", "dev", spec.bridge)
        _run("ip", "link", "set", spec.bridge, "up")

    def _start_daemon(self, spec: LabSpec) -> None:
        bmcs = []
        for i in range(spec.hosts):
            cfg = labbmc.BmcConfig(name=spec.host_name(i), port=labbmc.free_udp_port(), username=BMC_USER,
                                   password=labbmc.new_password(), uri=spec.uri,
                                   state_dir=str(self.dir / "bmc" / spec.host_name(i)))
            labbmc.write_config(cfg)
            bmcs.append(asdict(cfg))
        self.state.data["bmcs"] = bmcs
        self.state.save()
        (self.dir / _READY).unlink(missing_ok=True)
        logf = (self.dir / "daemon.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "provisioner.lab.lab", "daemon", str(self.dir)],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
        logf.close()
        self.state.data["made"]["daemon_pid"] = proc.pid
        self.state.save()
        deadline = time.monotonic() + 60
        while not (self.dir / _READY).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / "daemon.log").read_text(errors="replace")[-1500:]
                raise LabError(reason=f"the lab daemon did not come up: {tail}")
            time.sleep(0.2)

    def _make_guests(self, spec: LabSpec) -> str:
        from provisioner.drivers.virt.libvirt import open_connection
        from provisioner.drivers.virt.spec import DiskSpec, GuestSpec, NicSpec

        pool_dir = spec.pool_dir or str(self.dir / "pool")
        console = self.dir / "console"
        console.mkdir(parents=True, exist_ok=True)
        with open_connection(spec.uri) as conn:
            report = conn.preflight()
            virt_type = spec.virt_type or ("kvm" if report.kvm_allowed else "qemu")
            conn.ensure_dir_pool(POOL, pool_dir)
            self.state.data["made"]["pool"] = POOL
            self.state.save()
            for i in range(spec.hosts):
                name = spec.host_name(i)
                gs = GuestSpec(name=name, vcpus=spec.vcpus, memory_mib=spec.memory_mib, virt_type=virt_type,  # type: ignore[arg-type]
                               machine="pc", disks=[DiskSpec(size_gib=spec.disk_gib, pool=POOL)],
                               nics=[NicSpec(bridge=spec.bridge, mac=spec.host_mac(i))],
                               boot=["network", "hd"], console_log=str(console / f"{name}.log"))
                conn.create_guest(gs, report, start=False)
                self.state.data["guests"].append(name)
                self.state.save()
        return virt_type

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
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "prov-lab-admin", "-f", str(key))
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
        attempt("daemon", lambda: _stop_daemon(made.get("daemon_pid")))
        guests = self.state.data.get("guests", [])
        if guests or made.get("pool"):
            attempt("guests", lambda: _delete_guests(spec.uri, guests, made.get("pool")))
        if made.get("libvirtd_pid"):
            # after the guests: libvirtd leaves running QEMU processes alone when it stops
            attempt("libvirtd", lambda: _stop_daemon(made.get("libvirtd_pid"), timeout=30))
        if made.get("bridge"):
            attempt("bridge", lambda: _run("ip", "link", "del", made["bridge"], check=False))
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


def _stop_daemon(pid: int | None, timeout: float = 15.0) -> None:
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(int(pid), 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(int(pid), os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pid), signal.SIGKILL)


def _delete_guests(uri: str, guests: list[str], pool: str | None) -> None:
    from provisioner.drivers.virt.libvirt import open_connection

    with open_connection(uri) as conn:
        for g in guests:
            with contextlib.suppress(NotFound):
                conn.delete_guest(g, volumes=True, release=False)
        if pool:
            with contextlib.suppress(NotFound):
                conn.delete_pool(pool)


# --------------------------------------------------------------------------- the daemon
class Forwarder:
    """TCP relay ``listen`` -> ``target``: guests reach a controller that listens on loopback."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(listen, reuse_port=False)
        self.stop = threading.Event()

    def serve(self) -> None:
        self.sock.settimeout(0.5)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            open_ends = 2
            while open_ends and not self.stop.is_set():
                for key, _ in sel.select(timeout=1.0):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    data = src.recv(1 << 20)
                    if not data:
                        sel.unregister(src)
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                        open_ends -= 1
                        continue
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            sel.close()
            client.close()
            upstream.close()


def _acng_config(spec: LabSpec, conf: Path) -> None:
    cache = Path(spec.acng_cache)
    cache.mkdir(parents=True, exist_ok=True)
    conf.mkdir(parents=True, exist_ok=True)
    from provisioner.render import render

    (conf / "acng.conf").write_text(render("lab/acng.conf.j2", {
        "cache_dir": str(cache), "log_dir": str(conf), "port": spec.acng_port, "bind": spec.gateway,
        "pid_file": str(conf / "acng.pid"), "socket": str(conf / "acng.sock"),
    }))


def daemon(lab_dir: Path) -> int:
    """The lab's long-running part: dnsmasq, forwarder, apt-cacher-ng and the BMCs; SIGTERM stops all."""
    from provisioner.drivers.boot.dhcp import DhcpConfig, DnsmasqManager, HostEntry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = LabState(lab_dir)
    spec = state.spec
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    children: list[subprocess.Popen[bytes]] = []
    manager: DnsmasqManager | None = None
    fwd: Forwarder | None = None
    try:
        net = spec.network
        cfg = DhcpConfig(interface=spec.bridge, server_ip=spec.gateway, http_base=spec.guest_url,
                         state_dir=lab_dir / "dnsmasq", mode="full",
                         range_start=str(net.network_address + 100), range_end=str(net.network_address + 199),
                         netmask=str(net.netmask), lease_time="1h")
        manager = DnsmasqManager(cfg)
        manager.write_config()
        # Every lab MAC has a reservation and gets boot information; whether a
        # boot installs is decided by the controller's per-MAC script (netboot + state).
        manager.sync([HostEntry(mac=spec.host_mac(i), hostname=spec.host_name(i), ip=spec.host_ip(i), netboot=True)
                      for i in range(spec.hosts)])
        manager.start()
        target = urlsplit(spec.controller_url)
        try:
            fwd = Forwarder((spec.gateway, spec.port), (target.hostname or "127.0.0.1", target.port or 80))
            threading.Thread(target=fwd.serve, name="lab-forwarder", daemon=True).start()
        except OSError as exc:
            # The controller itself listens on the bridge address (e.g. 0.0.0.0): nothing to forward.
            log.info("forwarder not started (%s): the controller is expected on %s", exc, spec.guest_url)
        conf = lab_dir / "acng"
        _acng_config(spec, conf)
        acng_err = (conf / "stderr.log").open("ab")
        children.append(subprocess.Popen(["apt-cacher-ng", "-c", str(conf), "ForeGround=1"],
                                         stdout=subprocess.DEVNULL, stderr=acng_err))
        for b in state.bmcs():
            err = (b.dir / "ipmi_sim.log").open("ab")
            children.append(subprocess.Popen(labbmc.command(b), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                             cwd=b.dir))
        for b in state.bmcs():
            labbmc.wait_ready(b)
        _wait_tcp(spec.gateway, spec.acng_port, 15, "apt-cacher-ng")
        (lab_dir / _READY).write_text(str(os.getpid()))
        log.info("lab daemon ready: %d BMC(s), dnsmasq pid %s", len(children) - 1, manager.pid)
        while not stop.wait(1.0):
            for c in children:
                if c.poll() is not None:
                    log.error("lab child %s exited with %s", c.args[0] if isinstance(c.args, list) else c.args,
                              c.returncode)
                    children.remove(c)
                    break
        return 0
    except Exception:
        log.exception("lab daemon failed")
        return 1
    finally:
        if fwd is not None:
            fwd.stop.set()
            fwd.sock.close()
        for c in children:
            with contextlib.suppress(OSError):
                c.terminate()
        for c in children:
            try:
                c.wait(5)
            except subprocess.TimeoutExpired:
                c.kill()
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.stop()


def _wait_tcp(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.2)
    raise LabError(reason=f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "daemon":
        return daemon(Path(args[1]))
    sys.stderr.write("usage: python -m provisioner.lab.lab daemon LAB_DIR\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
