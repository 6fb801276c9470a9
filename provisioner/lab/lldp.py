"""An LLDP neighbour for the lab: Debian's lldpd in its own network namespace,
plugged into a bridge through a veth pair, announcing a switch name and port.

The lab bridge then looks like a switch port to every guest on it: the
inspection ramdisk hears (chassis id = the veth's MAC, port id, system name)
and reports it per NIC. lldpd sends every ``tx_interval`` seconds (802.1AB's
msgTxInterval, 30 s by default; the lab and the tests shorten it so a guest
that starts listening late still hears one within a second or two).

A Linux bridge does not forward the LLDP group address (01:80:c2:00:00:0e,
bit 14 of ``group_fwd_mask``) by default: ``start`` sets that bit on the
bridge, otherwise the frames stop at the bridge.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import BootError

LLDP_GROUP_FWD_BIT = 1 << 0x0E  # 01:80:c2:00:00:0e
_PRIVSEP_CHROOT = Path("/run/lldpd")  # compiled into Debian's lldpd
# The control socket and the config lldpcli reads: lldpd's unprivileged side must
# reach them, so not below a 0700 directory (pytest's tmp_path is one).
RUN_DIR = Path("/run/prov-lldp")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BootError(reason=f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class LldpNeighbour:
    """One running lldpd; ``chassis_id`` is its veth's MAC (lldpd's default chassis id)."""

    netns: str
    host_if: str
    proc: subprocess.Popen[bytes]
    chassis_id: str
    port_id: str
    system_name: str
    workdir: Path
    run_dir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def lldpd_binary() -> str | None:
    return shutil.which("lldpd") or (str(Path("/usr/sbin/lldpd")) if Path("/usr/sbin/lldpd").exists() else None)


def allow_lldp_through(bridge: str) -> None:
    """Let ``bridge`` forward LLDP frames between its ports (bit 14 of group_fwd_mask)."""
    mask_file = Path(f"/sys/class/net/{bridge}/bridge/group_fwd_mask")
    mask = int(mask_file.read_text().strip(), 0)
    mask_file.write_text(str(mask | LLDP_GROUP_FWD_BIT))


def start(bridge: str, workdir: Path, *, system_name: str = "prov-lab-switch", port_id: str = "Ethernet1/7",
          tx_interval: int = 1) -> LldpNeighbour:
    """Start lldpd in a new namespace, its veth's peer a port of ``bridge``."""
    lldpd = lldpd_binary()
    if lldpd is None:
        raise BootError(reason="lldpd is not installed (apt-get install lldpd)")
    tag = secrets.token_hex(3)
    netns, host_if = f"prov-lldp-{tag}", f"plldp{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = RUN_DIR / tag
    RUN_DIR.mkdir(mode=0o755, exist_ok=True)
    run_dir.mkdir(mode=0o755)
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "lldp0", "netns", netns)
        _ip("link", "set", host_if, "master", bridge, "up")
        _ip("-n", netns, "link", "set", "lldp0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        allow_lldp_through(bridge)
        mac = subprocess.run(["ip", "-n", netns, "-brief", "link", "show", "lldp0"], capture_output=True,
                             text=True, check=True).stdout.split()[2]
        conf = run_dir / "lldpd.conf"
        conf.write_text(f"configure system hostname {system_name}\n"
                        f"configure lldp tx-interval {tx_interval}\n"
                        f"configure ports lldp0 lldp portidsubtype local {port_id}\n")
        _PRIVSEP_CHROOT.mkdir(mode=0o755, exist_ok=True)
        log = (workdir / "lldpd.log").open("wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, lldpd, "-d", "-I", "lldp0", "-u", str(run_dir / "lldpd.socket"),
             "-O", str(conf), "-S", "prov lab LLDP neighbour"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
    except BaseException:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    neighbour = LldpNeighbour(netns=netns, host_if=host_if, proc=proc, chassis_id=mac.lower(), port_id=port_id,
                              system_name=system_name, workdir=workdir, run_dir=run_dir)
    time.sleep(0.2)
    if proc.poll() is not None:
        neighbour.stop()
        tail = (workdir / "lldpd.log").read_text(errors="replace")[-800:]
        raise BootError(reason=f"lldpd exited at once ({proc.returncode}): {tail}")
    return neighbour
