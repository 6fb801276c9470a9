"""What the conductor needs from a KVM host's libvirt: the ``VirtInterface``.

Two implementations: ``drivers/virt/libvirt.py`` (``VirtConnection``, libvirt-python:
a local libvirtd, ``qemu+ssh://`` to an enrolled KVM host, libvirt's ``test:///``
driver) and ``drivers/virt/fake.py`` (in memory, ``fake://`` URIs, for fast tests).
One instance is one open connection; use it as a context manager so it is closed.

Contract (the same for every implementation):
* ``plan_guest`` runs every check and has no side effect; it raises ``VirtRefused``
  (the host cannot, or was not asked properly), ``Conflict`` (a name, MAC, volume or
  address is taken), ``InvalidInput`` or ``NotFound`` with the reason.
* ``create_guest`` plans again, then makes the guest; a failure half-way (or an
  exception raised by ``on_step``, e.g. a cancelled task) rolls back what it made
  and re-raises. ``on_step`` is called with each ``STEP_*`` name as it begins.
* Everything raises only ``provisioner.errors`` classes; an unknown guest is ``NotFound``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Self

from provisioner.drivers.virt.preflight import VirtReport
from provisioner.drivers.virt.spec import GuestPlan, GuestSpec, NetworkSpec

# create_guest's steps, in order (networks and pools made on demand; disk volumes;
# the NoCloud seed ISO built and uploaded, only with a seed; define the domain; start it, unless asked not to)
STEP_NETWORKS = "networks and pools"
STEP_VOLUMES = "volumes"
STEP_SEED = "seed ISO"
STEP_DEFINE = "define domain"
STEP_START = "start"
CREATE_STEPS = (STEP_NETWORKS, STEP_VOLUMES, STEP_SEED, STEP_DEFINE, STEP_START)

StepFn = Callable[[str], None]


class VirtInterface(abc.ABC):
    """One connection to a KVM host's hypervisor and the guest operations prov uses."""

    uri: str

    # ------------------------------------------------------------------ connection
    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the host
    @abc.abstractmethod
    def domain_capabilities(self) -> dict[str, Any]:
        """Domain types offered for x86_64 and the host-model CPU (``domain_types``, ``host_model``...)."""

    @abc.abstractmethod
    def preflight(self) -> VirtReport:
        """A fresh verdict on what the host can run (facts cross-checked with ``domain_capabilities``)."""

    # ------------------------------------------------------------------ guests: create and delete
    @abc.abstractmethod
    def plan_guest(self, spec: GuestSpec, report: VirtReport | None = None, *,
                   auto_networks: dict[str, NetworkSpec] | None = None,
                   auto_pools: dict[str, str] | None = None) -> GuestPlan:
        """Every check, no side effect (``auto_*``: networks/pools made on demand when named and missing)."""

    @abc.abstractmethod
    def create_guest(self, spec: GuestSpec, report: VirtReport | None = None, *, start: bool = True,
                     auto_networks: dict[str, NetworkSpec] | None = None,
                     auto_pools: dict[str, str] | None = None, on_step: StepFn | None = None) -> dict[str, Any]:
        """Plan, then make the guest; returns ``guest_info`` plus the plan's ``warnings``."""

    @abc.abstractmethod
    def delete_guest(self, name: str, *, volumes: bool = True, release: bool = True) -> dict[str, Any]:
        """Destroy and undefine; ``{"name", "volumes_deleted", "reservations_released"}``."""

    # ------------------------------------------------------------------ guests: read
    @abc.abstractmethod
    def list_guests(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def guest_info(self, name: str) -> dict[str, Any]:
        """name, uuid, state, virt_type, vcpus, memory_mib, nics (with ``ip``), disks, console_log, managed."""

    @abc.abstractmethod
    def state(self, name: str) -> str:
        """running, shutoff, paused... (libvirt's domain state names)."""

    @abc.abstractmethod
    def console_tail(self, name: str, lines: int = 50) -> list[str]: ...

    # ------------------------------------------------------------------ guests: power
    @abc.abstractmethod
    def start(self, name: str) -> None: ...

    @abc.abstractmethod
    def shutdown(self, name: str, *, timeout: float = 60.0, poll: float = 0.2) -> str:
        """ACPI shutdown, destroy after ``timeout`` s: ``already-off``, ``shutdown`` or ``destroyed``."""

    @abc.abstractmethod
    def destroy(self, name: str) -> None: ...

    @abc.abstractmethod
    def reboot(self, name: str) -> None: ...
