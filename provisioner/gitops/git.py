"""Check out an inventory at a commit (``prov apply --git URL|PATH --ref REF``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import InvalidInput

GIT_TIMEOUT = 120.0


@dataclass
class Checkout:
    path: Path  # the inventory inside the checkout
    commit: str  # full SHA
    workdir: Path

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _git(*args: str, cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=True,
            env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": tempfile.gettempdir()},
        )
    except FileNotFoundError:
        raise InvalidInput(field="git", reason="git is not installed") from None
    except subprocess.TimeoutExpired:
        raise InvalidInput(field="git", reason=f"git {args[0]} took longer than {GIT_TIMEOUT:.0f}s") from None
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()
        why = last[-1] if last else f"exit code {exc.returncode}"
        raise InvalidInput(field="git", reason=f"git {args[0]} failed: {why}") from None
    return out.stdout.strip()


def checkout(repo: str, ref: str = "main", subdir: str = "") -> Checkout:
    """Clone ``repo`` (URL or local path), check out ``ref`` detached, return the inventory path."""
    if ref.startswith("-") or repo.startswith("-"):
        raise InvalidInput(field="git", reason="repository and ref must not start with '-'")
    work = Path(tempfile.mkdtemp(prefix="prov-gitops-"))
    try:
        _git("clone", "--quiet", "--no-checkout", "--", repo, str(work / "repo"))
        wt = work / "repo"
        sha = ""
        for candidate in (f"origin/{ref}", ref):
            try:
                sha = _git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", cwd=wt)
                break
            except InvalidInput:
                continue
        if not sha:
            raise InvalidInput(field="ref", reason=f"no branch, tag or commit {ref!r} in {repo}")
        _git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha, cwd=wt)
        path = (wt / subdir).resolve() if subdir else wt
        if wt.resolve() not in (path, *path.parents):
            raise InvalidInput(field="path", reason="path leaves the repository")
        return Checkout(path=path, commit=sha, workdir=work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
