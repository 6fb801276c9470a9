"""sweep_dead_runs: key copies left by a killed controller's runs are removed, live runs' are not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from provisioner.drivers.config.ansible import sweep_dead_runs


def _run_dir(runs: Path, pid: int, label: str = "task7") -> Path:
    pdd = runs / f"{label}-20260101T000000-{pid}-1234"
    (pdd / "ssh").mkdir(parents=True)
    (pdd / "tmp").mkdir()
    (pdd / "ssh" / "id").write_text("PRIVATE KEY")
    (pdd / "artifacts").mkdir()
    return pdd


def test_dead_controllers_key_copy_is_removed_live_ones_stay(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # a pid that no longer exists
    dead = _run_dir(tmp_path, proc.pid)
    mine = _run_dir(tmp_path, os.getpid(), label="task8")  # a run of this controller, in progress
    other = _run_dir(tmp_path, 1, label="run")  # pid 1 is alive: another controller's run
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / ".cache").mkdir()

    assert sweep_dead_runs(tmp_path) == [dead / "ssh" / "id"]
    assert not (dead / "ssh" / "id").exists() and not (dead / "tmp").exists()
    assert (dead / "artifacts").is_dir()  # the operator keeps the record of the killed run
    assert (mine / "ssh" / "id").exists() and (other / "ssh" / "id").exists()
    assert sweep_dead_runs(tmp_path) == []
    assert sweep_dead_runs(tmp_path / "missing") == []
