"""The fixed sets of values CLI options accept, as enums: help lists them and a typo is a usage error.

Each mirrors the API's own definition (schemas.py's Literals, states.py, the
template kinds, the playbooks that ship); tests/unit/cli/test_cli_help.py checks
they stay equal. They are spelled out here rather than imported so that the CLI
loads no pydantic/SQLModel model to print its help.
"""

from __future__ import annotations

import enum


class BmcKind(enum.StrEnum):
    ipmi = "ipmi"
    redfish = "redfish"
    libvirt = "libvirt"
    manual = "manual"


class OsFamily(enum.StrEnum):
    debian = "debian"
    ubuntu = "ubuntu"
    rhel = "rhel"


class InstallMethod(enum.StrEnum):
    kickstart = "kickstart"
    preseed = "preseed"
    autoinstall = "autoinstall"
    image = "image"


class ContainerEngine(enum.StrEnum):
    docker = "docker"
    podman = "podman"
    none = "none"


class Playbook(enum.StrEnum):
    site = "site"
    harden = "harden"
    container_engine = "container-engine"


class TemplateKind(enum.StrEnum):
    kickstart = "kickstart"
    preseed = "preseed"
    autoinstall = "autoinstall"
    ipxe = "ipxe"
    pxelinux = "pxelinux"
    grub = "grub"


class HostState(enum.StrEnum):
    enrolled = "enrolled"
    available = "available"
    active = "active"
    maintenance = "maintenance"
    verifying = "verifying"
    installing = "installing"
    install_wait = "install-wait"
    booting = "booting"
    configuring = "configuring"
    decommissioning = "decommissioning"
    verify_failed = "verify-failed"
    install_failed = "install-failed"
    configure_failed = "configure-failed"
    decommission_failed = "decommission-failed"


class PowerState(enum.StrEnum):
    on = "on"
    off = "off"
    unknown = "unknown"


class TaskStatus(enum.StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


def values(choices: list[enum.StrEnum] | None) -> list[str]:
    return [c.value for c in choices or []]
