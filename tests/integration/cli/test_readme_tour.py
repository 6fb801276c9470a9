"""The README's tour, run as written (issue 19, item 2): a newcomer's commands must not fail.

Every ``sh`` block of the tour (from "## A 60-second tour" to "## Host lifecycle") is marked:
``<!-- tour -->`` blocks run here, literally and in order, in one bash (as a newcomer's one
shell: what a block exports, the next one sees), against a fresh ``prov serve`` on its own data
directory, from a stand-in for the clone (its ``.venv`` and ``examples``), with a HOME of its
own and only ``PROV_URL``/``PROV_TOKEN`` set: the token is the admin token the first start
prints, as the set-up says. ``<!-- tour: skip (REASON) -->`` blocks need a real machine or the
virtual lab and are not run. A command that exits non-zero fails the test unless its README line
documents that code (``prov plan``: 2, changes pending).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.helpers import require_binary
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"
TOUR_START, TOUR_END = "## A 60-second tour", "## Host lifecycle"
_BLOCK = re.compile(r"^(?:<!-- tour(?P<skip>: skip \((?P<reason>.+?)\))? -->\n)?```sh\n(?P<code>.*?)^```$",
                    re.M | re.S)
# Non-zero exits the README documents on the command's own line (and in its "Exit codes" table).
DOCUMENTED = {"prov plan ": {2}}
# What the tour's password line writes (the test checks it never reaches the controller's log).
PASSWORD_FILE = "web01.pw"


@dataclass(frozen=True)
class Block:
    line: int
    code: str
    marked: bool
    skip: str | None


def tour_blocks(text: str | None = None) -> list[Block]:
    text = README.read_text() if text is None else text
    start = text.index(TOUR_START)
    end = text.index(TOUR_END, start)
    out = []
    for m in _BLOCK.finditer(text, start, end):
        line = text.count("\n", 0, m.start("code"))  # 1-based line of the ```sh fence
        marked = m.group(0).startswith("<!--")
        out.append(Block(line, m.group("code"), marked, m.group("reason") if m.group("skip") else None))
    return out


def test_every_tour_block_is_marked() -> None:
    blocks = tour_blocks()
    unmarked = [b.line for b in blocks if not b.marked]
    assert not unmarked, f"README.md lines {unmarked}: mark each tour block <!-- tour --> or " \
                         f"<!-- tour: skip (REASON) -->"
    assert sum(1 for b in blocks if b.skip is None) >= 3
    assert all(b.skip for b in blocks if "prov host install" in b.code or "prov lab up" in b.code)


def test_the_block_parser() -> None:
    text = (f"{TOUR_START}\n\n<!-- tour -->\n```sh\necho a\n```\n\n<!-- tour: skip (needs a (real) box) -->\n"
            f"```sh\necho b\n```\n\n```sh\necho c\n```\n{TOUR_END}\n```sh\necho d\n```\n")
    blocks = tour_blocks(text)
    assert [(b.code, b.marked, b.skip) for b in blocks] == [
        ("echo a\n", True, None), ("echo b\n", True, "needs a (real) box"), ("echo c\n", False, None)]


def _script(blocks: list[Block]) -> str:
    # fd 3 is the harness's log: each command that fails, with its status (bash's ERR trap
    # fires for a simple command or subshell that exits non-zero, not inside && lists or ifs).
    parts = ['exec 3>>"$TOUR_LOG"', """trap 'printf "exit %s: %s\\n" "$?" "$BASH_COMMAND" >&3' ERR"""]
    for i, b in enumerate(blocks):
        parts += [f"printf 'block {i} (README.md line {b.line})\\n' >&3", b.code.rstrip("\n"),
                  f"printf 'end {i}\\n' >&3"]
    return "\n".join(parts) + "\n"


def _clone(tmp: Path) -> Path:
    """What the tour needs of a clone: the venv deploy/install.sh made and the example inventory."""
    clone = tmp / "clone"
    clone.mkdir()
    for name in (".venv", "examples"):
        (clone / name).symlink_to(REPO / name)
    return clone


def test_readme_tour_runs_literally(tmp_path: Path) -> None:
    require_binary("bash", "curl")
    if not (REPO / ".venv" / "bin" / "prov").exists():
        pytest.skip("no .venv/bin/prov: the tour runs the venv deploy/install.sh makes")
    blocks = [b for b in tour_blocks() if b.skip is None]
    home = tmp_path / "home"
    home.mkdir()
    clone = _clone(tmp_path)
    log = tmp_path / "tour.log"
    started = time.monotonic()
    with ServeProcess(tmp_path / "data") as serve:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROV_", "XDG_", "VIRTUAL_ENV", "PYTHON"))}
        env.update(HOME=str(home), PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   PROV_URL=serve.url, PROV_TOKEN=serve.token, TOUR_LOG=str(log), TERM="dumb", COLUMNS="120")
        run = subprocess.run(["bash", "--noprofile", "--norc"], input=_script(blocks), cwd=clone, env=env,
                             capture_output=True, text=True, timeout=180)
        with serve.client() as c:
            hosts = {h["name"]: h for h in c.get("/api/v1/hosts")["data"]}
        serve_log = serve.log_tail(chars=10_000_000)
    took = time.monotonic() - started
    trail = log.read_text() if log.exists() else ""
    where = f"\n--- harness log\n{trail}\n--- stdout\n{run.stdout[-6000:]}\n--- stderr\n{run.stderr[-6000:]}"
    assert run.returncode == 0, where
    for i in range(len(blocks)):
        assert f"end {i}\n" in trail, f"block {i} did not run to its end" + where
    failed = [line for line in trail.splitlines() if line.startswith("exit ")]
    for line in failed:
        rc, _, command = line.removeprefix("exit ").partition(": ")
        allowed = next((codes for prefix, codes in DOCUMENTED.items() if command.startswith(prefix)), set())
        assert int(rc) in allowed, f"{command!r} exited {rc}" + where
    assert [ln for ln in failed if ln.split(": ", 1)[1].startswith("prov plan ")], "prov plan found no changes"
    # nothing a newcomer did not cause: no error line, no traceback; the render's warnings are there
    assert "Traceback" not in run.stderr and not re.search(r"^error:", run.stderr, re.M), where
    assert "warning: profile debian12 installs with image: the host is never served a preseed" in run.stderr, where
    assert "PROV_PUBLIC_URL is unset" in run.stderr, where
    # what the tour made, and the secrets it handled
    assert {"web01", "web02"} <= set(hosts), hosts
    assert hosts["web01"]["bmc"]["address"] == "10.0.0.21" and hosts["web02"]["bmc"]["address"] == "10.0.0.22"
    pw_file = home / PASSWORD_FILE
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    password = pw_file.read_text().splitlines()[0]
    assert password and password not in serve_log and password not in run.stdout + run.stderr
    assert not (clone / "host.json").exists()
    print(f"README tour: {len(blocks)} blocks in {took:.1f} s (prov serve start included)")
