"""``prov virt check [HOST]``: the host virtualisation pre-flight as a table or JSON.

Without HOST the machine the CLI runs on is checked in-process (its /proc, /sys,
/dev/kvm and local libvirt). With HOST the controller checks that enrolled host
over SSH and stores the report on it (``GET /api/v1/hosts/{host}/virt?refresh=true``).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from provisioner.cli.groups import virt_app
from provisioner.cli.output import OutputFormat, OutputOpt, client, emit, handle_errors
from provisioner.errors import ProvError


def local_report(uri: str | None = None) -> dict[str, Any]:
    """The pre-flight of this machine; libvirt's view is added when its daemon answers."""
    # imported when a check runs, not with the CLI (libvirt, the settings stack)
    from provisioner.drivers.virt.libvirt import open_connection
    from provisioner.drivers.virt.preflight import collect_facts, evaluate
    from provisioner.settings import get_settings

    uri = uri or get_settings().virt_uri
    domcaps = None
    note = None
    try:
        with open_connection(uri) as conn:
            domcaps = conn.domain_capabilities()
    except ProvError as exc:
        note = f"libvirt at {uri} not reachable ({exc.message}); report from /proc and /sys only"
    report = evaluate(collect_facts("/"), domcaps)
    if note:
        report.warnings.append(note)
    return {"host": "local", "uri": uri, **report.to_dict()}


def print_report(data: dict[str, Any]) -> None:
    from provisioner.drivers.virt.preflight import VirtReport

    report = VirtReport.from_dict({k: v for k, v in data.items() if k in VirtReport.__dataclass_fields__})
    facts = report.facts
    cpu = facts.get("cpu", {})
    dev = facts.get("dev_kvm", {})
    lv = report.libvirt or {}
    huge = facts.get("hugepages", {})
    head = {
        "host": data.get("host", "?"),
        "cpu": f"{cpu.get('vendor', '?')} {cpu.get('model', '')}".strip(),
        "kvm module": report.kvm_module or "-",
        "/dev/kvm": "missing" if not dev.get("present") else f"API {dev.get('api_version')}"
        + (f" ({dev['error']})" if dev.get("error") else ""),
        "libvirt domain types": ",".join(lv.get("domain_types", [])) or "-",
        "libvirt host-model": lv.get("host_model") or "-",
        "vhost-net": "yes" if facts.get("vhost_net") else "no",
        "hugepages": f"{huge.get('total', 0)} x {huge.get('size_kb', 0)} kB",
        "kvm allowed": report.kvm_allowed,
        "nested allowed": report.nested_allowed,
    }
    emit(head, OutputFormat.table, title="virtualisation pre-flight")
    emit(report.rows(), OutputFormat.table, columns=["check", "verdict", "detail"])
    for w in report.warnings:
        typer.echo(f"warning: {w}")


@virt_app.command("check")
@handle_errors
def check(
    host: Annotated[str | None, typer.Argument(help="an enrolled host (default: this machine)")] = None,
    output: OutputFormat = OutputOpt,
    uri: Annotated[str | None, typer.Option("--uri", help="libvirt URI for the local check")] = None,
    stored: Annotated[bool, typer.Option("--stored", help="show the stored report instead of measuring")] = False,
) -> None:
    """Can this host run KVM guests? VT-x/AMD-V, SLAT, nested, IOMMU, SR-IOV and libvirt cross-check."""
    if host is None or host == "local":
        data = local_report(uri)
    else:
        refresh = "false" if stored else "true"
        data = client().request("GET", f"/api/v1/hosts/{quote(host, safe='')}/virt", params={"refresh": refresh})
    if output == OutputFormat.table:
        print_report(data)
    else:
        emit(data, output)
