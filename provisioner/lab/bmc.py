"""The lab's virtual BMCs: one OpenIPMI ``ipmi_sim`` per guest, on a loopback UDP port.

Why ipmi_sim and not virtualbmc: virtualbmc is built on pyghmi's server side,
whose 1.6.19 session handling fails against pyghmi's own client (cipher suite
17 then a RAKP2 parse error) and lets stale sessions kill every BMC of the
process (docs/field-notes.md, "BMC simulators"). ipmi_sim is a complete IPMI 2.0 LAN BMC that
``ipmitool -I lanplus -C 3`` and prov's IPMI driver both drive; it delegates
chassis control to a program: ``templates/lab/chassis.sh.j2`` (power through
``virsh``: ipmi_sim waits for the program on every chassis command, and a
Python start costs seconds on a loaded 2-core machine), which hands the rare
boot-device changes to this module:

    python -m provisioner.lab.bmc chassis BMC.json set boot pxe

acting through prov's own libvirt power driver (``drivers/power/libvirt.py``):
the boot device is the domain's persistent boot order, applied at the next
power-on like a BIOS boot override.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from provisioner.drivers.power.base import BmcSpec, BootDevice, BootSetting, PowerAction, PowerState
from provisioner.errors import LabError

# ipmi_sim's chassis "boot" values (OpenIPMI lanserv) <-> prov boot devices.
_BOOT_TO_PROV = {"pxe": BootDevice.PXE, "default": BootDevice.DISK, "none": BootDevice.DISK,
                 "cdrom": BootDevice.CDROM}
_PROV_TO_BOOT = {BootDevice.PXE: "pxe", BootDevice.DISK: "default", BootDevice.CDROM: "cdrom"}


@dataclass(frozen=True)
class BmcConfig:
    name: str  # the guest's libvirt domain
    port: int  # UDP, on 127.0.0.1
    username: str
    password: str
    uri: str  # libvirt URI of the guest
    state_dir: str

    @property
    def dir(self) -> Path:
        return Path(self.state_dir)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_password() -> str:
    return secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")  # ipmi_sim: 16 bytes max, no quoting


def write_config(cfg: BmcConfig) -> None:
    # imported here: the chassis program runs this module on every boot-device change,
    # and the renderer's settings/pydantic imports would double its start-up time
    from provisioner.render import render

    cfg.dir.mkdir(parents=True, exist_ok=True)
    (cfg.dir / "state").mkdir(exist_ok=True)
    bmc_json = cfg.dir / "bmc.json"
    bmc_json.write_text(json.dumps({"uri": cfg.uri, "domain": cfg.name}))
    script = cfg.dir / "chassis.sh"
    script.write_text(render("lab/chassis.sh.j2", {"uri": cfg.uri, "domain": cfg.name, "python": sys.executable,
                                                    "bmc_json": str(bmc_json), "state_dir": str(cfg.dir)}))
    script.chmod(0o755)
    command = str(script)
    conf = cfg.dir / "lan.conf"
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    conf.write_text(render("lab/ipmi_sim.conf.j2", {
        "name": cfg.name, "port": cfg.port, "guid": uuid.uuid4().hex, "chassis_command": command,
        "username": cfg.username, "password": cfg.password,
    }))
    (cfg.dir / "sim.emu").write_text(render("lab/ipmi_sim.emu.j2", {}))
    (cfg.dir / "config.json").write_text(json.dumps({k: v for k, v in asdict(cfg).items() if k != "password"}))


def command(cfg: BmcConfig) -> list[str]:
    return ["ipmi_sim", "-c", str(cfg.dir / "lan.conf"), "-f", str(cfg.dir / "sim.emu"),
            "-s", str(cfg.dir / "state"), "-n"]


def wait_ready(cfg: BmcConfig, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    """Until ``ipmitool -C 3 mc info`` answers: an RMCP+ session works (an .emu error leaves ipmi_sim
    mute, not dead). ``mc info`` does not involve the guest, which may not exist yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LabError(reason=f"ipmi_sim for {cfg.name} exited with {proc.returncode}")
        if ipmitool(cfg, "mc", "info", timeout=3).returncode == 0:
            return
        time.sleep(0.2)
    raise LabError(reason=f"the BMC of {cfg.name} (udp 127.0.0.1:{cfg.port}) did not answer within {timeout:.0f} s")


def ipmitool(cfg: BmcConfig, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """An independent IPMI client: -C 3 (ipmi_sim has no suite 17), -E (password from the environment)."""
    env = {"IPMI_PASSWORD": cfg.password, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        return subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(cfg.port),
                               "-U", cfg.username, "-E", *args], capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", "ipmitool timed out")


# --------------------------------------------------------------------------- chassis control
def _driver(bmc_json: Path):  # type: ignore[no-untyped-def]
    from provisioner.drivers.power.libvirt import LibvirtPower

    data = json.loads(bmc_json.read_text())
    return LibvirtPower(BmcSpec(kind="libvirt", address=data["domain"],
                                options={"uri": data["uri"], "domain": data["domain"]}))


def chassis(bmc_json: Path, argv: list[str]) -> list[str]:
    """ipmi_sim's chassis_control protocol: ``get KEY...`` prints ``KEY:VALUE`` lines; ``set KEY VALUE...``."""
    drv = _driver(bmc_json)
    out: list[str] = []
    if argv and argv[0] == "get":
        for key in argv[1:]:
            if key == "power":
                out.append(f"power:{1 if drv.get_power_state() == PowerState.ON else 0}")
            elif key == "boot":
                setting = drv.get_boot_device()
                out.append(f"boot:{_PROV_TO_BOOT.get(setting.device, 'default') if setting else 'default'}")
        return out
    if argv and argv[0] == "set":
        pairs = argv[1:]
        for key, value in zip(pairs[0::2], pairs[1::2], strict=False):
            if key == "power":
                # Real chassis accept "off" when off and "on" when on; libvirt refuses both.
                want = PowerState.ON if value == "1" else PowerState.OFF
                if drv.get_power_state() != want:
                    drv.set_power_state(PowerAction.ON if want == PowerState.ON else PowerAction.OFF)
            elif key == "reset" and value == "1":
                drv.set_power_state(PowerAction.RESET)
            elif key == "shutdown" and value == "1":
                drv.set_power_state(PowerAction.SOFT_OFF, soft_timeout=30)
            elif key == "boot":
                dev = _BOOT_TO_PROV.get(value)
                if dev is not None:
                    drv.set_boot_device(BootSetting(dev, persistent=True))
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "chassis":
        sys.stderr.write("usage: python -m provisioner.lab.bmc chassis BMC.json get|set ...\n")
        return 2
    try:
        for line in chassis(Path(args[1]), args[2:]):
            sys.stdout.write(line + "\n")
    except Exception as exc:  # ipmi_sim only sees the exit code; the reason goes to its log
        sys.stderr.write(f"prov lab bmc: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
