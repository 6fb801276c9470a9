"""CLI integration: the real ``prov`` console script against a live ``prov serve`` on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.support.cli import ServeProcess, prov_executable, start_prov_serve

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with start_prov_serve(tmp_path_factory.mktemp("prov-cli-serve")) as proc:
        yield proc


@pytest.fixture
def prov(serve: ServeProcess) -> Run:
    exe = prov_executable()

    def run(
        *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *args], env=serve.env(**(env or {})), input=input, capture_output=True, text=True, timeout=60
        )

    return run


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one error line, got {proc.stderr!r}"
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]
