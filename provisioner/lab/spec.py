"""What a lab is (LabSpec: size, addressing, ports) and what was made of it (LabState, ``state.json``).

Also :func:`run`, the command runner every part of the lab uses (its errors are LabErrors).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioner.errors import LabError
from provisioner.lab import bmc as labbmc

BRIDGE = "prov-lab0"
SUBNET = "10.213.0.0/24"
# QEMU's OUI; the two octets after it come from the subnet so two labs on one
# machine never share a MAC, and a rebuilt lab gets the same MACs again.
MAC_OUI = "52:54:00"
FIRST_HOST = 10  # .10, .11 ... (the DHCP pool for unknown MACs is .100-.199 and unused)
DEFAULT_ACNG_CACHE = Path("/var/cache/prov-lab/acng")


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


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(reason=f"{' '.join(cmd)}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc


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
