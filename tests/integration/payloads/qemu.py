"""QEMU guests for the payload tests: one process, its serial console in a file."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

QEMU = "qemu-system-x86_64"


def start_guest(args: list[str], console: Path, memory: str = "256") -> Guest:
    """Start ``qemu-system-x86_64 -accel tcg -nographic ARGS``; the console goes to ``console``."""
    with console.open("wb") as out:
        # -no-reboot: a guest reboot ends QEMU, so "powered off/rebooted" is observable.
        cmd = [QEMU, "-accel", "tcg", "-nographic", "-no-reboot", "-m", memory, *args]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    return Guest(proc=proc, console=console)


@dataclass
class Guest:
    """One QEMU process; its serial console (stdout of -nographic) goes to a file."""

    proc: subprocess.Popen[bytes]
    console: Path
    started: float = field(default_factory=time.monotonic)

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.MULTILINE)
        while True:
            m = rx.search(self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.proc.returncode}) before {pattern!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"guest still running after {timeout}s:\n{self.tail()}") from None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
