"""A ``prov serve`` subprocess for tests that must really kill the controller.

``testing.controller.live_controller`` runs the app in a thread of the test
process: it cannot be SIGKILLed. ``ServeProcess`` runs the real command
(``python -m provisioner.cli.main serve``) with its own data directory and
loopback port, so a test can ``kill()`` it (SIGKILL: no shutdown code runs,
exactly like a crash or an OOM kill) and ``start()`` it again on the same data
directory and port, which is what an operator's restart does. The operator
token is the admin token the first start prints, read from its log.

The environment is built from scratch for the ``PROV_*`` part: variables of
the test's own environment (PROV_URL, PROV_TOKEN, a developer's PROV_DATA_DIR)
never leak into the controller. TFTP, DHCP and power sync are off unless
overridden: they would touch the machine or add BMC traffic the test did not ask for.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import httpx

from provisioner.client import ProvClient

_DEFAULTS = {
    "tftp_enabled": "false",
    "dhcp_enabled": "false",
    "power_sync_enabled": "false",
    "log_json": "false",
    "log_level": "INFO",
}


# cli/serve.py prints it indented on its own line after this sentence.
_FIRST_TOKEN = re.compile(r"admin API token was created\. It is shown only now:\s+(\S+)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """One controller process; ``start()``/``kill()``/``stop()`` may be called repeatedly."""

    def __init__(self, data_dir: Path, *, port: int | None = None, host: str = "127.0.0.1",
                 settings: Mapping[str, object] | None = None) -> None:
        """``settings``: Settings field names and values, passed as PROV_<NAME> variables."""
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log: IO[bytes] | None = None
        values = {**_DEFAULTS, **{k: _env_value(v) for k, v in (settings or {}).items()}}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
        env.update({f"PROV_{k.upper()}": v for k, v in values.items()})
        env.update(PROV_DATA_DIR=str(data_dir), PROV_HOST=host, PROV_PORT=str(self.port),
                   PROV_CONFIG=str(data_dir / "prov.yaml"))  # ours, never a developer's config
        self.env = env
        data_dir.mkdir(parents=True, exist_ok=True)
        self.token = ""  # the admin token ``prov serve`` prints on its first start

    def _read_first_start_token(self) -> str:
        match = _FIRST_TOKEN.search(self.log_tail(chars=1_000_000))
        if match is None:
            raise RuntimeError(f"prov serve did not print its first-start admin token: {self.log_tail()}")
        return match.group(1)

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> ServeProcess:
        if self.running:
            raise RuntimeError("controller already running")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self._log.write(f"\n===== start #{self.starts + 1} =====\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "provisioner.cli.main", "serve"], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.data_dir, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._reap()
                raise RuntimeError(f"prov serve exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    if not self.token:
                        self.token = self._read_first_start_token()
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"prov serve did not answer on {self.url} within {timeout:g}s: "
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the controller gets no chance to clean up (a crash, an OOM kill, a power cut)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reap()

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if it does not go within 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reap()

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def client(self, **kw: Any) -> ProvClient:
        return ProvClient(self.url, self.token, **kw)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
