"""Host lifecycle states and events: readable constants only.

The transition table lives in lifecycle.py; this module only names things so
that every other module spells them the same way. The power enums are here
too: the API accepts them, the conductor passes them on, the drivers act on them.
"""

from __future__ import annotations

import enum

# --- stable states (nothing runs; a host can stay here forever) ----------------
ENROLLED = "enrolled"  # known to prov, BMC not yet verified
AVAILABLE = "available"  # BMC verified, ready to install
ACTIVE = "active"  # installed (and configured, if the profile asks for it)
MAINTENANCE = "maintenance"  # taken out of service by an operator

# --- transient states (a task is working; each has a deadline) -----------------
VERIFYING = "verifying"  # checking BMC credentials / power status
INSTALLING = "installing"  # controller drives power + boot device + netboot
INSTALL_WAIT = "install-wait"  # waiting for the installer/deploy ramdisk callbacks
BOOTING = "booting"  # installed; booting from disk, waiting for SSH
CONFIGURING = "configuring"  # Ansible playbooks running
DECOMMISSIONING = "decommissioning"  # power off, netboot off, wipe (if asked)

# --- failure states (one per phase; each has a way back: retry or maintenance) ---
VERIFY_FAILED = "verify-failed"
INSTALL_FAILED = "install-failed"
CONFIGURE_FAILED = "configure-failed"
DECOMMISSION_FAILED = "decommission-failed"

STABLE = frozenset({ENROLLED, AVAILABLE, ACTIVE, MAINTENANCE})
TRANSIENT = frozenset({VERIFYING, INSTALLING, INSTALL_WAIT, BOOTING, CONFIGURING, DECOMMISSIONING})
FAILED = frozenset({VERIFY_FAILED, INSTALL_FAILED, CONFIGURE_FAILED, DECOMMISSION_FAILED})
ALL = STABLE | TRANSIENT | FAILED

# Pseudo-target used in the table: "go back to the stable state recorded when
# the host entered maintenance".
PREVIOUS = "<previous>"

# --- events --------------------------------------------------------------------
VERIFY = "verify"
INSTALL = "install"
CONFIGURE = "configure"
DECOMMISSION = "decommission"
WAIT = "wait"  # the controller's part is done, now wait for the host
DONE = "done"  # the current phase finished successfully
FAIL = "fail"  # the current phase failed
TIMEOUT = "timeout"  # the current phase's deadline passed
ABORT = "abort"  # an operator stopped the current phase
RETRY = "retry"  # re-run the failed phase
MAINTAIN = "maintain"  # take out of service
UNMAINTAIN = "unmaintain"  # back to where it was before maintenance

EVENTS = frozenset(
    {VERIFY, INSTALL, CONFIGURE, DECOMMISSION, WAIT, DONE, FAIL, TIMEOUT, ABORT, RETRY, MAINTAIN, UNMAINTAIN}
)

# --- power ---------------------------------------------------------------------
POWER_ON = "on"
POWER_OFF = "off"
POWER_UNKNOWN = "unknown"


class PowerState(enum.StrEnum):
    ON = POWER_ON
    OFF = POWER_OFF
    UNKNOWN = POWER_UNKNOWN


class PowerAction(enum.StrEnum):
    ON = "on"
    OFF = "off"  # hard off
    SOFT_OFF = "soft-off"  # ACPI shutdown, then hard off after a timeout
    CYCLE = "cycle"  # off then on (or reset if already on)
    RESET = "reset"


class BootDevice(enum.StrEnum):
    PXE = "pxe"
    DISK = "disk"
    CDROM = "cdrom"
    BIOS = "bios"  # firmware setup
    DEFAULT = "default"  # no override


# --- tasks ---------------------------------------------------------------------
TASK_PENDING = "pending"
TASK_RUNNING = "running"
TASK_SUCCEEDED = "succeeded"
TASK_FAILED = "failed"
TASK_CANCELLED = "cancelled"
TASK_DONE = frozenset({TASK_SUCCEEDED, TASK_FAILED, TASK_CANCELLED})
