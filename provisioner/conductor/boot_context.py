"""The template context of one host: host, NIC(s), network, profile, install params, token and URLs.

Built here, from the database, for every boot config, install file and deploy
agent prov renders for a host; the drivers only ever see the plain dicts and
lists it returns, never ORM objects.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from provisioner import crud, netspec, netview
from provisioner.drivers.boot.configs import boot_file_url, installer_urls
from provisioner.drivers.deploy.base import RAMDISK_INITRD, RAMDISK_KERNEL
from provisioner.drivers.deploy.params import install_params, param
from provisioner.errors import InvalidInput
from provisioner.models import Host, Nic, Profile
from provisioner.settings import Settings, get_settings
from provisioner.validators import normalize_mac

# Shown instead of a real token in previews: rendering a preview must not
# invalidate the token of an install in progress.
PREVIEW_TOKEN = "PREVIEW-TOKEN"  # noqa: S105 - a placeholder, not a secret


def _boot_nic(nics: list[Nic], mac: str | None) -> Nic | None:
    if mac:
        for n in nics:
            if n.mac == mac:
                return n
    for n in nics:
        if n.boot:
            return n
    return nics[0] if nics else None


def _nic_dict(n: Nic) -> dict[str, Any]:
    return {"mac": n.mac, "mac_hyphen": n.mac.replace(":", "-"), "name": n.name, "ip": n.ip or "", "boot": n.boot}


def _profile_dict(profile: Profile, base: str) -> dict[str, Any]:
    return {
        "name": profile.name,
        "os_family": profile.os_family,
        "install_method": profile.install_method,
        "kernel_url": profile.kernel_url,
        "initrd_url": profile.initrd_url,
        "image_url": boot_file_url(profile.image_url, base),
        "image_checksum": profile.image_checksum,
        "kernel_args": profile.kernel_args,
        "container_engine": profile.container_engine,
    }


def _with_controller_key(keys: list[str], settings: Settings) -> list[str]:
    """``keys`` and the controller's own SSH key, for a profile whose install ends with playbooks.

    The install's configure step logs in with that key (conductor/configure.py), so the
    installed system must hold it; until issue 19 only profiles that listed it by hand (the
    lab's) got it, and every other profile with playbooks installed a host it could not
    configure. The configuration engine (a fake in unit tests) owns the key.
    """
    from provisioner.conductor import configure  # the workflow module imports this one's users

    engine = configure.driver
    own = engine.public_key(engine.ensure_ssh_key(settings))
    return list(dict.fromkeys([*keys, own]))


def network_context(host: Host, nics: list[Nic], boot: Nic, profile: Profile | None) -> dict[str, Any]:
    """``network``: the installed OS's interfaces (provisioner/netview.py); InvalidInput names a field
    the host's spec gets wrong, or one its profile's installer cannot express (kickstart)."""
    network = netspec.network_of(host.network_bonds, host.network_vlans)
    view = netview.view(nics, network, boot_mac=boot.mac)
    if profile is not None and profile.install_method == "kickstart":
        netspec.raise_invalid(netview.kickstart_problems(view, nics, network))
    return view


def boot_context(
    session: Session,
    host: Host,
    settings: Settings | None = None,
    *,
    token: str | None = None,
    mac: str | None = None,
) -> dict[str, Any]:
    """The template context for ``host`` (booting from ``mac``, or its boot NIC).

    ``token`` is the plain one-time token when rendering for a real boot or a
    real installer request; without it a placeholder is used (previews).
    """
    s = settings or get_settings()
    base = s.base_url
    assert host.id is not None
    nics = crud.host_nics(session, host_id=host.id)
    nic = _boot_nic(nics, normalize_mac(mac) if mac else None)
    if nic is None:
        raise InvalidInput(field="nics", reason=f"host {host.name} has no NIC to boot from")
    profile = session.get(Profile, host.profile_id) if host.profile_id is not None else None
    tok = token or PREVIEW_TOKEN
    install_base = f"{base}/install/v1/{tok}"
    ctx: dict[str, Any] = {
        "base_url": base,
        "token": tok,
        "mac": nic.mac,
        "nic": _nic_dict(nic),
        "nics": [_nic_dict(n) for n in nics],
        "urls": {
            "config": f"{install_base}/config",
            "nocloud": f"{install_base}/",
            "events": f"{install_base}/events",
            "report": f"{install_base}/report",
            "boot_script": f"{base}/boot/ipxe/{nic.mac}",
        },
    }
    domain = "localdomain"
    if profile is not None:
        ctx["install"] = install_params(profile.os_family, profile.params)
        if profile.playbooks:
            ctx["install"]["ssh_authorized_keys"] = _with_controller_key(ctx["install"]["ssh_authorized_keys"], s)
        domain = param(dict(profile.params or {}), "domain", domain)
        kernel_url, initrd_url = profile.kernel_url, profile.initrd_url
        if profile.install_method == "image":
            # The deploy ramdisk's /init fetches and runs prov.run (the per-host agent script).
            kernel_url, initrd_url = kernel_url or RAMDISK_KERNEL, initrd_url or RAMDISK_INITRD
            ctx["urls"]["agent"] = f"{install_base}/agent.sh"
        ctx["urls"].update(installer_urls(kernel_url, initrd_url, base))
        ctx["profile"] = _profile_dict(profile, base)
    ctx["network"] = network_context(host, nics, nic, profile)
    ctx["host"] = {
        "id": host.id,
        "name": host.name,
        "hostname": host.name,
        "domain": domain,
        "fqdn": f"{host.name}.{domain}",
        "roles": list(host.roles or []),
        "ip": host.ip_address or nic.ip or "",
    }
    return ctx
