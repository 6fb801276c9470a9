"""``prov lab up|down|status``: the virtual lab rack (provisioner/lab/lab.py).

Runs on the controller's machine, as root (bridge, libvirt system guests,
the boot root); enrols the hosts through the API like any other client.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from provisioner.cli.groups import lab_app
from provisioner.cli.output import (
    Columns,
    NoHeadersOpt,
    OutputFormat,
    OutputOpt,
    YesOpt,
    client,
    confirm,
    emit,
    handle_errors,
)
from provisioner.errors import LabError

if TYPE_CHECKING:
    from provisioner.settings import Settings

_COLUMNS = Columns(table=("host", "state", "guest", "ip", "mac", "bmc"), drop=("guest", "bmc"))


class LabVirtType(enum.StrEnum):
    kvm = "kvm"
    qemu = "qemu"


def _settings() -> Settings:
    from provisioner.settings import get_settings  # pydantic-settings: only for the lab commands

    return get_settings()


def _lab_dir(value: Path | None) -> Path:
    return value or _settings().data_dir / "lab"


LabDirOpt = typer.Option(None, "--lab-dir", help="where the lab keeps its state (default: $PROV_DATA_DIR/lab)")


@lab_app.command("up")
@handle_errors
def lab_up(
    hosts: int = typer.Option(3, "--hosts", "-n", help="number of guests (1-64)"),
    memory: int = typer.Option(1024, "--memory", help="MiB per guest"),
    disk: int = typer.Option(8, "--disk", help="GiB per guest disk"),
    subnet: str = typer.Option("10.213.0.0/24", "--subnet", help="provisioning network (bridge gets .1)"),
    bridge: str = typer.Option("prov-lab0", "--bridge", help="name of the lab's bridge (made by lab up)"),
    uri: str = typer.Option("", "--uri", help="libvirt URI for the guests (default: qemu:///system if a "
                                             "libvirtd serves it, else the lab runs its own)"),
    virt_type: LabVirtType | None = typer.Option(None, "--virt-type",
                                                 help="guest acceleration (default: the host pre-flight decides)"),
    lab_dir: Path | None = LabDirOpt,
    output: OutputFormat = OutputOpt,
    no_headers: NoHeadersOpt = False,
) -> None:
    """Build the virtual rack: guests, BMCs, network, DHCP/HTTP, apt cache; enrol them as rack `lab`."""
    from provisioner.lab.lab import Lab, LabSpec

    api = client()
    spec = LabSpec(hosts=hosts, memory_mib=memory, disk_gib=disk, subnet=subnet, bridge=bridge, uri=uri,
                   virt_type=virt_type.value if virt_type else "", controller_url=api.url)
    lab = Lab(_lab_dir(lab_dir), _settings())

    def say(msg: str) -> None:
        sys.stderr.write(f"lab: {msg}\n")
        sys.stderr.flush()

    out = lab.up(spec, api, progress=say)
    say(f"up in {out['seconds']} s; admin SSH key {out['admin_key']}")
    say("next: prov rack provision lab")
    emit(out["hosts"], output, columns=_COLUMNS, headers=not no_headers)


@lab_app.command("status")
@handle_errors
def lab_status(
    lab_dir: Path | None = LabDirOpt, output: OutputFormat = OutputOpt, no_headers: NoHeadersOpt = False
) -> None:
    """The lab's guests, BMC ports and controller states."""
    from provisioner.lab.lab import Lab

    lab = Lab(_lab_dir(lab_dir), _settings())
    if not lab.state.exists:
        raise LabError(reason=f"no lab in {lab.dir} (prov lab up --hosts N)")
    if not lab.daemon_alive():
        sys.stderr.write("lab: warning: the lab daemon (dnsmasq, BMCs, apt cache) is not running\n")
    emit(lab.status(client()), output, columns=_COLUMNS, headers=not no_headers)


@lab_app.command("down")
@handle_errors
def lab_down(lab_dir: Path | None = LabDirOpt, yes: YesOpt = False) -> None:
    """Remove everything `prov lab up` made: hosts, guests, volumes, bridge, BMCs, dnsmasq, boot files."""
    from provisioner.lab.lab import Lab

    lab = Lab(_lab_dir(lab_dir), _settings())
    if not lab.state.exists:
        sys.stderr.write(f"lab: nothing to remove in {lab.dir}\n")
        return
    confirm(f"Remove the lab in {lab.dir} (its hosts, guests and disks)?", yes)
    failed = lab.down(client())
    if failed:
        raise LabError(reason="not everything could be removed: " + "; ".join(failed))
    sys.stderr.write("lab: removed\n")
