"""CLI unit tests: CliRunner against the real API app served on a loopback port."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

# Only the modules under test: another area's half-written command must not break these tests.
import provisioner.cli.host
import provisioner.cli.importer
import provisioner.cli.login
import provisioner.cli.profile
import provisioner.cli.rack
import provisioner.cli.task  # noqa: F401  (registers commands)
from provisioner.cli.groups import app
from tests.support.cli import LiveServer, start_inprocess_server

Prov = Callable[..., Result]


@pytest.fixture(scope="session")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with start_inprocess_server(tmp_path_factory.mktemp("prov-cli-api")) as server:
        yield server


@pytest.fixture
def prov(live_api: LiveServer, tmp_path: Path) -> Prov:
    """Run ``prov ARGS...`` in-process; returns click's Result (exit_code, stdout, stderr)."""

    def run(*args: str, input: str | None = None, env: dict[str, str | None] | None = None) -> Result:
        full_env: dict[str, str | None] = {
            **live_api.env,
            "PROV_CLIENT_CONFIG": str(tmp_path / "client.yaml"),
            **(env or {}),
        }
        return CliRunner().invoke(app, list(args), input=input, env=full_env, catch_exceptions=False)

    return run


@pytest.fixture
def uid() -> str:
    """A short unique suffix: tests share one server and must not collide."""
    return uuid.uuid4().hex[:8]


def one_error_line(result: Result) -> str:
    """Assert the CLI's error contract: exactly one ``error: ...`` line on stderr, nothing like a traceback."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {result.stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]
