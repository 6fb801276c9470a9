"""prov's DHCP: a supervised dnsmasq process (the only module that runs dnsmasq).

Layout under ``state_dir``::

    dnsmasq.conf     main config (rendered from templates/dnsmasq/dnsmasq.conf.j2)
    hosts.d/         one file per NIC (templates/dnsmasq/host.j2), ``--dhcp-hostsfile=DIR``
    leases           lease database
    dnsmasq.log      dnsmasq's own log (stderr in the foreground)

Per-host changes touch one file and then SIGHUP dnsmasq, which re-reads the
hosts directory (dnsmasq(8), --dhcp-hostsfile with a directory). We do not use
``--dhcp-hostsdir``: its inotify watch reads a *changed* file while the old
record is still loaded, logs "duplicate dhcp-host IP address" and drops the
new record, racing with the SIGHUP that would clear the old one (seen here
with dnsmasq 2.90: a host whose netboot was switched off kept its boot tag).
The main config is never regenerated for a host change; a change of the main
config (range, mode) needs a restart.

Boot information: every *known* host gets the first stage picked by option 93
(client arch: BIOS ``undionly.kpxe``, UEFI ``ipxe.efi``) and iPXE (user class
"iPXE") gets the HTTP script directly; unknown MACs get nothing, or the
discovery chain when ``unknown_mac_action == "discover"``. Whether a boot
*installs* is decided per MAC by the controller's boot script (conductor/netboot.py: install
only while the host's netboot flag is on and it is in an install state,
otherwise a local-boot script), never by DHCP. We tried carrying netboot as a
``set:netboot`` tag in the host files: dnsmasq 2.90 aborts (SIGABRT/SIGSEGV) on
SIGHUP when a ``--dhcp-hostsfile`` entry with ``set:<tag>`` holds a lease
(reproduced with a three-line config), so host files carry no tags and a
netboot flip does not touch DHCP at all. ``HostEntry.netboot`` is kept for the
record (it is written as a comment).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from provisioner.errors import BootError, InvalidInput
from provisioner.render import render

if TYPE_CHECKING:
    from provisioner.settings import Settings

log = logging.getLogger("provisioner.dhcp")

BIOS_FILE = "undionly.kpxe"  # iPXE's UNDI loader for BIOS PXE ROMs (Debian package ipxe)
UEFI_FILE = "ipxe.efi"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")  # IFNAMSIZ is 16 incl. NUL
_LEASE_RE = re.compile(r"^(infinite|\d+[smhdw]?)$")


def interface_ipv4(interface: str) -> str:
    """The primary IPv4 address of ``interface`` (SIOCGIFADDR), for next-server and URLs."""
    siocgifaddr = 0x8915  # linux/sockios.h
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", interface.encode()[:15]))
        except OSError as exc:
            raise BootError(reason=f"interface {interface} has no IPv4 address ({exc.strerror})") from exc
    return socket.inet_ntoa(res[20:24])


@dataclass(frozen=True)
class HostEntry:
    """One DHCP reservation (one NIC). Validated: the values end up in a dnsmasq config file."""

    mac: str
    hostname: str
    ip: str | None = None
    netboot: bool = False

    def __post_init__(self) -> None:
        mac = self.mac.lower().replace("-", ":")
        object.__setattr__(self, "mac", mac)
        if not _MAC_RE.fullmatch(mac):
            raise InvalidInput(field="mac", reason=f"not a MAC address: {self.mac!r}")
        if not _HOSTNAME_RE.fullmatch(self.hostname):
            raise InvalidInput(field="hostname", reason=f"not a valid DHCP host name: {self.hostname!r}")
        if self.ip is not None:
            try:
                ipaddress.IPv4Address(self.ip)
            except ValueError as exc:
                raise InvalidInput(field="ip", reason=f"not an IPv4 address: {self.ip!r}") from exc

    @property
    def filename(self) -> str:
        return self.mac.replace(":", "-") + ".conf"


@dataclass
class DhcpConfig:
    interface: str
    server_ip: str  # our address on the boot network: next-server (TFTP) and the HTTP script host
    http_base: str  # e.g. http://10.0.0.1:8700 (where iPXE fetches /boot/boot.ipxe)
    state_dir: Path
    mode: Literal["full", "proxy"] = "full"
    range_start: str = ""
    range_end: str = ""
    netmask: str = "255.255.255.0"
    subnet: str = ""  # proxy mode: the network address served by the other DHCP server
    lease_time: str = "1h"
    unknown_mac_action: Literal["ignore", "discover"] = "ignore"
    ipv6_ra: bool = True
    tftp_server: str = ""  # default: server_ip
    user: str = field(default_factory=lambda: pwd.getpwuid(os.geteuid()).pw_name)
    binary: str = "dnsmasq"

    def __post_init__(self) -> None:
        if not _IFNAME_RE.fullmatch(self.interface):
            raise InvalidInput(field="dhcp_interface", reason=f"not an interface name: {self.interface!r}")
        for name in ("server_ip", "range_start", "range_end", "netmask", "subnet", "tftp_server"):
            value = getattr(self, name)
            if value:
                try:
                    ipaddress.IPv4Address(value)
                except ValueError as exc:
                    raise InvalidInput(field=name, reason=f"not an IPv4 address: {value!r}") from exc
        if self.mode == "full" and not (self.range_start and self.range_end):
            raise InvalidInput(field="dhcp_range", reason="full mode needs a range start and end")
        if self.mode == "proxy" and not self.subnet:
            raise InvalidInput(field="dhcp_range", reason="proxy mode needs the subnet address")
        if self.mode not in ("full", "proxy"):
            raise InvalidInput(field="dhcp_mode", reason=f"unknown mode {self.mode!r}")
        if self.unknown_mac_action not in ("ignore", "discover"):
            raise InvalidInput(field="unknown_mac_action", reason=f"must be ignore or discover, not "
                                                                  f"{self.unknown_mac_action!r}")
        if not _LEASE_RE.fullmatch(self.lease_time):
            raise InvalidInput(field="lease_time", reason=f"invalid lease time {self.lease_time!r}")
        if not re.fullmatch(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?$", self.http_base):
            raise InvalidInput(field="public_url", reason=f"not a plain http(s) URL: {self.http_base!r}")
        if not re.fullmatch(r"^[a-z_][a-z0-9_-]*$", self.user):
            raise InvalidInput(field="user", reason=f"invalid user name {self.user!r}")
        self.tftp_server = self.tftp_server or self.server_ip

    @classmethod
    def from_settings(cls, settings: Settings) -> DhcpConfig:
        """Build from ``dhcp_interface`` and ``dhcp_range``:
        ``"START,END[,NETMASK[,LEASE]]"`` (full) or ``"SUBNET,proxy"`` (proxy)."""
        if not settings.dhcp_interface or not settings.dhcp_range:
            raise InvalidInput(field="dhcp_interface", reason="DHCP needs dhcp_interface and dhcp_range")
        server_ip = interface_ipv4(settings.dhcp_interface)
        parts = [p.strip() for p in settings.dhcp_range.split(",")]
        http_base = (settings.public_url or f"http://{server_ip}:{settings.port}").rstrip("/")
        action: Literal["ignore", "discover"] = "discover" if settings.unknown_mac_action == "discover" else "ignore"
        proxy = len(parts) == 2 and parts[1] == "proxy"
        if not proxy and len(parts) < 2:
            raise InvalidInput(field="dhcp_range",
                               reason=f"expected START,END[,NETMASK[,LEASE]] or SUBNET,proxy: {settings.dhcp_range}")
        return cls(
            interface=settings.dhcp_interface, server_ip=server_ip, http_base=http_base,
            state_dir=settings.data_dir / "dnsmasq", unknown_mac_action=action,
            mode="proxy" if proxy else "full",
            subnet=parts[0] if proxy else "",
            range_start="" if proxy else parts[0],
            range_end="" if proxy else parts[1],
            netmask=parts[2] if not proxy and len(parts) > 2 else "255.255.255.0",
            lease_time=parts[3] if not proxy and len(parts) > 3 else "1h",
        )

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts.d"

    @property
    def conf_file(self) -> Path:
        return self.state_dir / "dnsmasq.conf"

    @property
    def lease_file(self) -> Path:
        return self.state_dir / "leases"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "dnsmasq.log"

    def render(self) -> str:
        return render("dnsmasq/dnsmasq.conf.j2", {
            "mode": self.mode,
            "interface": self.interface,
            "user": self.user,
            "lease_file": str(self.lease_file),
            "hosts_dir": str(self.hosts_dir),
            "range_start": self.range_start,
            "range_end": self.range_end,
            "netmask": self.netmask,
            "subnet": self.subnet,
            "lease_time": self.lease_time,
            "ipv6_ra": self.ipv6_ra,
            "unknown_mac_action": self.unknown_mac_action,
            "ipxe_script_url": f"{self.http_base}/boot/boot.ipxe",
            "tftp_server": self.tftp_server,
            "bios_file": BIOS_FILE,
            "uefi_file": UEFI_FILE,
        })


def render_host(entry: HostEntry) -> str:
    return render("dnsmasq/host.j2", {"mac": entry.mac, "hostname": entry.hostname, "ip": entry.ip,
                                       "netboot": entry.netboot})


def dhcp_name(name: str) -> str:
    """A host name as a valid DHCP host name (lower case, letters, digits and hyphens, <= 63)."""
    return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:63] or "host"


class DnsmasqManager:
    """Writes the config, runs dnsmasq in the foreground, restarts it if it dies."""

    def __init__(self, cfg: DhcpConfig) -> None:
        self.cfg = cfg
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    # -- files
    def write_config(self) -> Path:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.hosts_dir.mkdir(parents=True, exist_ok=True)
        (self.cfg.state_dir / "tmp").mkdir(exist_ok=True)
        _atomic_write(self.cfg.conf_file, self.cfg.render(), self.cfg.state_dir / "tmp")
        return self.cfg.conf_file

    def set_host(self, entry: HostEntry, *, reload: bool = True) -> bool:
        """Write one host's file; True if it changed (and dnsmasq was told)."""
        path = self.cfg.hosts_dir / entry.filename
        text = render_host(entry)
        with contextlib.suppress(FileNotFoundError):
            if path.read_text() == text:
                return False
        self.cfg.hosts_dir.mkdir(parents=True, exist_ok=True)
        # written elsewhere and renamed in: dnsmasq never reads a half-written file
        _atomic_write(path, text, self.cfg.state_dir / "tmp")
        log.info("dhcp: host %s (%s) netboot=%s ip=%s written", entry.hostname, entry.mac, entry.netboot, entry.ip)
        if reload:
            self.reload()
        return True

    def remove_host(self, mac: str, *, reload: bool = True) -> bool:
        path = self.cfg.hosts_dir / (mac.lower().replace(":", "-") + ".conf")
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        log.info("dhcp: host %s removed", mac)
        if reload:
            self.reload()
        return True

    def sync(self, entries: list[HostEntry]) -> int:
        """Make hosts.d match ``entries``, touching only the files that differ; one reload at the end."""
        changed = 0
        wanted = {e.filename for e in entries}
        for entry in entries:
            changed += self.set_host(entry, reload=False)
        if self.cfg.hosts_dir.is_dir():
            for path in self.cfg.hosts_dir.iterdir():
                if path.name not in wanted and path.suffix == ".conf":
                    path.unlink()
                    changed += 1
        if changed:
            self.reload()
        return changed

    # -- process
    def check(self) -> None:
        """``dnsmasq --test`` on the written config; raises BootError with dnsmasq's words."""
        self.write_config()
        res = subprocess.run([self._binary(), "--test", f"--conf-file={self.cfg.conf_file}"],
                             capture_output=True, text=True, timeout=30, check=False)
        if res.returncode != 0:
            raise BootError(reason=f"dnsmasq rejected its config: {(res.stderr or res.stdout).strip()}")

    def _binary(self) -> str:
        path = shutil.which(self.cfg.binary) or shutil.which(self.cfg.binary, path="/usr/sbin:/sbin")
        if path is None:
            raise BootError(reason="dnsmasq is not installed (Debian package dnsmasq-base)")
        return path

    def start(self) -> DnsmasqManager:
        with self._lock:
            self.check()
            self._spawn()
            self._stopping.clear()
            self._watcher = threading.Thread(target=self._watch, name="dnsmasq-watch", daemon=True)
            self._watcher.start()
        return self

    def _spawn(self) -> None:
        logf = open(self.cfg.log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc = subprocess.Popen(
                [self._binary(), "--keep-in-foreground", "--log-facility=-", f"--conf-file={self.cfg.conf_file}"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            logf.close()
        # dnsmasq binds (or fails) within milliseconds; a bad interface or port shows up as an exit
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BootError(reason=f"dnsmasq exited at start (status {self._proc.returncode}): "
                                       f"{self.log_tail()}")
            time.sleep(0.05)
        log.info("dhcp: dnsmasq pid %d on %s (%s mode)", self._proc.pid, self.cfg.interface, self.cfg.mode)

    def _watch(self) -> None:
        """Supervision: restart dnsmasq if it dies while we still want it (with backoff)."""
        backoff = 1.0
        while not self._stopping.wait(0.5):
            with self._lock:
                proc = self._proc
                if proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                log.error("dhcp: dnsmasq exited with %s; restarting in %.0f s: %s", proc.returncode, backoff,
                          self.log_tail())
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._spawn()
                    self.restarts += 1
                    backoff = 1.0
                except BootError as exc:
                    log.error("dhcp: restart failed: %s", exc.message)
                    backoff = min(backoff * 2, 60.0)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def running(self) -> bool:
        return self.pid is not None

    def reload(self) -> None:
        """SIGHUP: dnsmasq re-reads hosts.d (new, changed and deleted hosts), not the main config."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGHUP)

    def restart(self) -> None:
        """For main-config changes (range, mode, interface)."""
        with self._lock:
            self._terminate()
            self.check()
            self._spawn()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._lock:
            self._terminate(timeout)
        if self._watcher is not None:
            self._watcher.join(timeout)

    def _terminate(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._proc = None
        log.info("dhcp: dnsmasq stopped")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.cfg.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> DnsmasqManager:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _atomic_write(path: Path, text: str, tmp_dir: Path) -> None:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
