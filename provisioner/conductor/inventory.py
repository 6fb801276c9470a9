"""The Ansible inventory, generated from the database.

One function builds the JSON shape Ansible's dynamic-inventory protocol uses
(``ansible-inventory -i script --list``): groups by rack (``rack_<name>``) and by
role (``role_<name>``), and per-host variables under ``_meta.hostvars``. The
API's ``GET /inventory/ansible``, ``prov inventory ansible`` and every
configure run use this same function, so what an operator inspects is what
the playbooks get. It reads the database, so it lives in the conductor; the
Ansible adapter (drivers/config/ansible.py) only receives the JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlmodel import Session, select

from provisioner import crud, netspec
from provisioner.models import Host, Profile, Rack

_GROUP_SAFE = re.compile(r"[^a-z0-9_]")


def group_name(prefix: str, value: str) -> str:
    """Ansible group names must be identifiers; ``rack-1`` becomes ``rack_rack_1``."""
    return f"{prefix}_{_GROUP_SAFE.sub('_', value.lower())}"


def host_address(session: Session, host: Host) -> str:
    """Where SSH reaches the host: its recorded address, a boot NIC's address, or its name."""
    if host.ip_address:
        return host.ip_address
    if host.id is not None:
        for nic in crud.host_nics(session, host_id=host.id):
            if address := netspec.reachable_at(nic):  # its static address, else its reservation
                return address
    return host.name


def host_vars(session: Session, host: Host, racks: dict[int, Rack], profiles: dict[int, Profile]) -> dict[str, Any]:
    rack = racks.get(host.rack_id) if host.rack_id is not None else None
    profile = profiles.get(host.profile_id) if host.profile_id is not None else None
    hv: dict[str, Any] = {
        "ansible_host": host_address(session, host),
        "prov_host_id": host.id,
        "prov_state": host.state,
        "prov_rack": rack.name if rack else None,
        "prov_roles": list(host.roles or []),
        "prov_profile": profile.name if profile else None,
    }
    if host.ssh_host_key:  # recorded at install time: pin it (see drivers/config/ansible.py known_hosts)
        hv["prov_ssh_host_key"] = host.ssh_host_key.strip()
    if profile is not None:
        hv["prov_os_family"] = profile.os_family
        hv["prov_container_engine"] = profile.container_engine
        # Operators put role switches (e.g. hardening_auditd: false) in the profile.
        extra = (profile.params or {}).get("ansible_vars") or {}
        if isinstance(extra, dict):
            hv.update({str(k): v for k, v in extra.items() if not str(k).startswith("ansible_")})
    return hv


def build_inventory(session: Session, hosts: Iterable[Host] | None = None) -> dict[str, Any]:
    """Dynamic-inventory JSON for ``hosts`` (default: every host)."""
    host_list = list(hosts) if hosts is not None else list(session.exec(select(Host).order_by(Host.name)).all())  # type: ignore[arg-type]
    racks = {r.id: r for r in session.exec(select(Rack)).all() if r.id is not None}
    profiles = {p.id: p for p in session.exec(select(Profile)).all() if p.id is not None}
    inv: dict[str, Any] = {"_meta": {"hostvars": {}}, "all": {"children": ["ungrouped"]}, "ungrouped": {"hosts": []}}
    groups: dict[str, list[str]] = {}
    for host in host_list:
        inv["_meta"]["hostvars"][host.name] = host_vars(session, host, racks, profiles)
        member_of = []
        rack = racks.get(host.rack_id) if host.rack_id is not None else None
        if rack is not None:
            member_of.append(group_name("rack", rack.name))
        member_of.extend(group_name("role", role) for role in host.roles or [])
        if not member_of:
            inv["ungrouped"]["hosts"].append(host.name)
        for g in member_of:
            groups.setdefault(g, []).append(host.name)
    for g in sorted(groups):
        inv[g] = {"hosts": groups[g]}
        inv["all"]["children"].append(g)
    return inv
