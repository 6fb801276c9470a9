"""A configuration engine for tests: records every run and answers with the result it is told.

No SSH, no Ansible: ``FakeConfig.run`` keeps the ``RunSpec`` it got, replays
``events`` through ``on_event`` and returns ``result`` (default: every host of
the inventory ``ok``), or raises ``error``. Like the real engine it polls
``cancelled`` all along (before each event and at the end) and stops with
status ``canceled`` once it turns true.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.drivers.config.base import (
    CancelledFn,
    ConfigInterface,
    EventFn,
    HostResult,
    RunEvent,
    RunResult,
    RunSpec,
)
from provisioner.errors import ConfigRunError
from provisioner.settings import Settings

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeControllerKeyForTests0123456789abcd prov-controller"


def all_ok(spec: RunSpec) -> RunResult:
    """Every host of the inventory ran one task, unchanged."""
    hosts = {name: HostResult(ok=1) for name in (spec.inventory.get("_meta", {}).get("hostvars") or {})}
    return RunResult(status="successful", rc=0, hosts=hosts, artifact_dir="", failures=[], duration=0.0)


@dataclass
class FakeConfig(ConfigInterface):
    result: RunResult | Callable[[RunSpec], RunResult] = all_ok
    events: list[RunEvent] = field(default_factory=list)
    error: ConfigRunError | None = None  # raised by run(), as a broken engine would
    runs: list[RunSpec] = field(default_factory=list)
    cleanups: int = 0

    def ensure_ssh_key(self, settings: Settings) -> Path:
        return settings.data_dir / "ssh" / "id_fake"  # never read: nothing connects

    def public_key(self, private_key: Path) -> str:
        return PUBLIC_KEY

    def run(self, spec: RunSpec, settings: Settings, *, on_event: EventFn | None = None,
            cancelled: CancelledFn | None = None) -> RunResult:
        self.runs.append(spec)
        if self.error is not None:
            raise self.error
        for event in [*self.events, None]:
            if cancelled is not None and cancelled():
                return RunResult(status="canceled", rc=-1, hosts={}, artifact_dir="", failures=[], duration=0.0)
            if event is not None and on_event is not None:
                on_event(event)
        return self.result(spec) if callable(self.result) else self.result

    def cleanup(self, settings: Settings) -> list[Path]:
        self.cleanups += 1
        return []
