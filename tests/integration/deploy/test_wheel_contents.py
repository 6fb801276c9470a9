"""The wheel the Dockerfile's build stage makes carries everything ``prov serve`` needs.

deploy/Dockerfile installs prov from a wheel (not from the checkout), so data
files that only exist in the source tree would silently be missing in the
image: above all the Alembic revisions that ``prov serve`` applies on start.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def test_wheel_has_migrations_and_console_script(tmp_path: Path) -> None:
    if not (ROOT / "README.md").exists():
        pytest.fail("README.md is missing: pyproject.toml names it as the readme, so no wheel (and no image) builds")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("provisioner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    src = ROOT / "provisioner"
    needed = [p.relative_to(ROOT).as_posix() for p in (src / "migrations" / "versions").glob("*.py")]
    needed += ["provisioner/migrations/env.py", "provisioner/migrations/script.py.mako", "provisioner/py.typed"]
    assert len(needed) > 3
    missing = [n for n in needed if n not in names]
    assert not missing, f"not in the wheel: {missing}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "prov = provisioner.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
