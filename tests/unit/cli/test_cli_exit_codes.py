"""One exit-code table (cli/exitcodes.py), the README's copy of it, and the codes commands really exit with."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from provisioner import errors
from provisioner.cli import exitcodes
from provisioner.client import ApiError, ControllerUnreachable
from tests.support.helpers import free_port
from tests.unit.cli.conftest import one_error_line

README = Path(__file__).resolve().parents[3] / "README.md"


def _readme_rows() -> dict[int, str]:
    text = README.read_text()
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    return {int(code): meaning.strip() for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def test_readme_table_is_the_module_table() -> None:
    assert _readme_rows() == exitcodes.MEANING
    # right before "## Configuration", as the issue asks
    headings = re.findall(r"^## (.+)$", README.read_text(), re.M)
    assert headings[headings.index("Exit codes") + 1] == "Configuration"


def test_codes_are_distinct() -> None:
    names = ["OK", "ERROR", "USAGE", "NOT_FOUND", "CONFLICT", "AUTH", "PEER", "UNREACHABLE", "DRIFT", "TIMEOUT",
             "WARNED", "NOT_CONFIRMED", "INTERRUPTED"]
    codes = [getattr(exitcodes, n) for n in names]
    assert len(set(codes)) == len(codes) and set(codes) == set(exitcodes.MEANING)
    assert exitcodes.UNREACHABLE != exitcodes.PEER and exitcodes.DRIFT != exitcodes.ERROR


def _subclasses(cls: type[errors.ProvError]) -> list[type[errors.ProvError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


# Every family of errors and its code: a new class lands in its family's code without an edit.
FAMILIES: dict[type[errors.ProvError], int] = {
    errors.InvalidInput: exitcodes.USAGE,
    errors.NotFound: exitcodes.NOT_FOUND,
    errors.Conflict: exitcodes.CONFLICT,
    errors.Unauthorized: exitcodes.AUTH,
    errors.Forbidden: exitcodes.AUTH,
    errors.DriverError: exitcodes.PEER,
    ControllerUnreachable: exitcodes.UNREACHABLE,
}


def test_every_error_class_maps_to_its_family() -> None:
    import provisioner.conductor.install
    import provisioner.drivers.power.manual
    import provisioner.gitops.inventory  # noqa: F401  (error classes defined beside their layer)

    seen = 0
    for family, code in FAMILIES.items():
        for cls in [family, *_subclasses(family)]:
            assert exitcodes.for_error(cls("x")) == code, cls
            seen += 1
    assert seen > 15
    assert exitcodes.for_error(errors.BmcTimeout("x")) == exitcodes.PEER  # a BMC failing is a peer's failure
    assert exitcodes.for_error(errors.ProvError("x")) == exitcodes.ERROR


def test_api_errors_this_client_has_no_class_for() -> None:
    # a code known to the table (the conductor's class is not imported by the CLI)
    assert exitcodes.for_error(ApiError("x", error_code="install_failed", http_status=502)) == exitcodes.PEER
    # a code from a newer controller: by the HTTP status
    assert exitcodes.for_error(ApiError("x", error_code="brand_new", http_status=404)) == exitcodes.NOT_FOUND
    assert exitcodes.for_error(ApiError("x", error_code="brand_new", http_status=503)) == exitcodes.ERROR


@pytest.mark.parametrize(("task", "code"), [
    ({"status": "failed", "result": {"error": {"error": "bmc_timeout", "message": "m"}}}, exitcodes.PEER),
    ({"status": "failed", "result": {"error": {"error": "virt_error"}}}, exitcodes.PEER),
    ({"status": "failed", "result": {}}, exitcodes.ERROR),
    ({"status": "cancelled", "result": None}, exitcodes.ERROR),
])
def test_a_finished_task_exits_with_its_error(task: dict[str, Any], code: int) -> None:
    assert exitcodes.for_task(task) == code


def test_commands_exit_with_the_table(tmp_path: Path) -> None:
    # No controller here (the not-found, conflict and token cases run against one in test_cli_racks/hosts):
    # this module runs before test_cli_guests, whose in-process API must be the first to start a task runner.
    from typer.testing import CliRunner

    from provisioner.cli.main import app

    env = {"PROV_URL": f"http://127.0.0.1:{free_port()}", "PROV_TOKEN": "prov_x",
           "PROV_CLIENT_CONFIG": str(tmp_path / "c.yaml")}

    def prov(*args: str) -> Any:
        return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)

    r = prov("host", "list", "--state", "bogus")  # a usage error is one line too, under CliRunner as in a shell
    assert r.exit_code == exitcodes.USAGE and "--state" in one_error_line(r)
    r = prov("host", "add", "h1", "--mac", "not-a-mac")  # refused before anything is sent
    assert r.exit_code == exitcodes.USAGE and "--mac" in one_error_line(r)
    r = prov("rack", "list")
    assert r.exit_code == exitcodes.UNREACHABLE and "cannot reach the prov controller" in one_error_line(r)
    r = prov("drift")
    assert r.exit_code == exitcodes.UNREACHABLE  # gitops commands keep 7 too


def test_giving_up_waiting_is_9(capsys: pytest.CaptureFixture[str]) -> None:
    from provisioner.cli import guests
    from provisioner.cli.output import OutputFormat

    class Stuck:
        def get(self, path: str) -> dict[str, Any]:
            return {"id": 7, "status": "running", "step": "define", "progress": 10}

    with pytest.raises(typer.Exit) as exc:
        guests._follow(Stuck(), {"id": 7, "status": "running", "step": "", "progress": 0},  # type: ignore[arg-type]
                       "g1", OutputFormat.json, timeout=0.0)
    assert exc.value.exit_code == exitcodes.TIMEOUT
    assert "prov task show 7" in capsys.readouterr().err
