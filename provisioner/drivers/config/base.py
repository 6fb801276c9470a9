"""What the conductor needs from a configuration engine, and the run's inputs and outcome.

``ConfigInterface`` is implemented by ``ansible.AnsibleConfig`` (ansible-runner)
and, for tests, ``fake.FakeConfig``. A run takes a ``RunSpec`` (playbooks, the
inventory JSON the conductor built, variables, SSH key, check mode), reports
every task result through ``on_event`` as a ``RunEvent``, polls ``cancelled``
to stop early, and answers with a ``RunResult``. Failures of the engine itself
raise ``ConfigRunError``; failed hosts are in the result, not raised.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.settings import Settings

# Host outcomes, worst first (a host that failed one task is "failed").
OK, CHANGED, FAILED, UNREACHABLE, SKIPPED = "ok", "changed", "failed", "unreachable", "skipped"


@dataclass(frozen=True)
class RunEvent:
    """One task result on one host (or a task start when ``host`` is None)."""

    kind: str  # task_start | ok | changed | failed | unreachable | skipped
    task: str
    host: str | None = None
    message: str = ""
    ignored: bool = False


@dataclass
class HostResult:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    failed_task: str | None = None
    message: str | None = None

    @property
    def status(self) -> str:
        if self.unreachable:
            return UNREACHABLE
        if self.failed:
            return FAILED
        return CHANGED if self.changed else OK


@dataclass
class RunSpec:
    playbooks: list[str]
    inventory: dict[str, Any]  # from conductor.inventory.build_inventory()
    prov: dict[str, Any] = field(default_factory=dict)  # becomes the one extra var, ``prov``
    run_vars: dict[str, Any] = field(default_factory=dict)  # role switches for this run (inventory all:vars)
    user: str = "prov"
    ssh_key: Path | None = None
    forks: int = 16
    timeout: float = 3600.0
    label: str = "run"
    # Check mode (``ansible-playbook --check --diff``): modules only report what they would
    # change, nothing is changed; used by config drift detection (conductor/drift_config.py).
    check: bool = False


@dataclass
class RunResult:
    status: str  # successful | failed | timeout | canceled
    rc: int
    hosts: dict[str, HostResult]
    artifact_dir: str
    failures: list[dict[str, str]]
    duration: float
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "successful" and not any(h.status in (FAILED, UNREACHABLE) for h in self.hosts.values())

    def summary(self) -> str:
        if self.failures:
            f = self.failures[0]
            more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            return f"host {f['host']}: task {f['task']!r} {f['status']}: {f['message']}{more}"
        if self.status == "timeout":
            return "ansible run timed out"
        if self.status == "canceled":
            return "ansible run was cancelled"
        if not self.ok:
            return f"ansible-playbook failed (rc={self.rc}): {self.output_tail}"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rc": self.rc,
            "artifact_dir": self.artifact_dir,
            "duration_s": round(self.duration, 2),
            "hosts": {
                name: {**{k: v for k, v in vars(h).items()}, "status": h.status} for name, h in self.hosts.items()
            },
            "failures": self.failures,
        }


EventFn = Callable[[RunEvent], None]
CancelledFn = Callable[[], bool]


class ConfigInterface(abc.ABC):
    @abc.abstractmethod
    def ensure_ssh_key(self, settings: Settings) -> Path:
        """The controller's private SSH key (created on first use where the engine may create it)."""

    @abc.abstractmethod
    def public_key(self, private_key: Path) -> str:
        """The OpenSSH public key line of ``private_key`` (installed on the hosts as an admin key)."""

    @abc.abstractmethod
    def run(self, spec: RunSpec, settings: Settings, *, on_event: EventFn | None = None,
            cancelled: CancelledFn | None = None) -> RunResult:
        """Run ``spec.playbooks`` against ``spec.inventory`` (in check mode if ``spec.check``).

        Blocks until done, timed out (``spec.timeout``: status ``timeout``) or
        cancelled (``cancelled()`` turned true: status ``canceled``). Whatever the
        run put on disk that holds a secret (the key copy) is gone when it returns.
        """

    def cleanup(self, settings: Settings) -> list[Path]:
        """Remove what runs of a dead controller left behind; returns what was removed."""
        return []
