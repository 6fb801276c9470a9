"""deploy/container-entrypoint.sh: a data directory the user cannot write is refused with one line.

The image test (tests/integration/deploy/test_container_image.py) proves it in
a container; this runs the script itself, fast, as an unprivileged user with a
stub ``prov`` that only reports its arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[3] / "deploy" / "container-entrypoint.sh"
NOBODY = 65534


def _run(tmp_path: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "prov").write_text('#!/bin/sh\necho "prov $*"\n')
    (bindir / "prov").chmod(0o755)
    argv = [str(ENTRYPOINT), *args]
    if os.geteuid() == 0:  # as the image does: an unprivileged uid, not root (root writes anywhere)
        argv = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", *argv]
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PROV_DATA_DIR": str(data_dir)}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def tmp() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700, and the unprivileged user must reach the
    # stub and the data directory.
    path = Path(tempfile.mkdtemp(prefix="prov-entrypoint-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_writable_data_directory_runs_prov(tmp: Path) -> None:
    data = tmp / "data"
    data.mkdir()
    shutil.chown(data, NOBODY if os.geteuid() == 0 else None, NOBODY if os.geteuid() == 0 else None)
    out = _run(tmp, data, "serve", "--host", "0.0.0.0")
    assert out.returncode == 0 and out.stdout == "prov serve --host 0.0.0.0\n", out
    assert list(data.iterdir()) == []  # the probe file is gone again


def test_an_unwritable_data_directory_is_refused_in_one_line(tmp: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the script as another user")
    data = tmp / "data"
    data.mkdir(mode=0o755)  # root's, as a host directory mounted into the container would be
    out = _run(tmp, data, "serve")
    assert out.returncode == 78, out
    assert out.stdout == "" and out.stderr.count("\n") == 1
    assert f"prov: the data directory {data} is not writable by uid {NOBODY}" in out.stderr


def test_client_commands_do_not_need_the_data_directory(tmp: Path) -> None:
    out = _run(tmp, tmp / "missing", "--version")
    assert out.returncode == 0 and out.stdout == "prov --version\n", out
