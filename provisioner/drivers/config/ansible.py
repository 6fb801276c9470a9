"""Run prov's playbooks with ansible-runner. The only module that imports ``ansible_runner``.

One call = one run in its own private data dir under ``settings.runs_dir``:
``inventory/hosts.json`` (built from the database by conductor/inventory.py, plus the
connection variables), ``env/extravars`` holding a single key, ``prov`` (so run
inputs never collide with role variables), ``env/envvars`` (pipelining,
ControlPersist, host-key checking) and the SSH key copied to ``ssh/id`` with
mode 0600, referenced from the inventory (``ansible_ssh_private_key_file``) and
never put on a command line; the copy is deleted when the run ends.

Every runner event is handed to ``on_event`` as a ``RunEvent`` (task, host,
ok/changed/failed/unreachable); the caller turns them into task progress and
host history. Failures of ansible-runner itself become ``ConfigRunError``.
``AnsibleConfig`` offers all this as base.py's ``ConfigInterface``; the run's
types (``RunSpec``, ``RunResult``...) are base.py's, importable from here too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ansible_runner

from provisioner.drivers.config.base import (
    CHANGED,
    FAILED,
    OK,
    SKIPPED,
    UNREACHABLE,
    CancelledFn,
    ConfigInterface,
    EventFn,
    HostResult,
    RunEvent,
    RunResult,
    RunSpec,
)
from provisioner.errors import ConfigRunError, InvalidInput
from provisioner.secret_store import mask
from provisioner.settings import Settings

log = logging.getLogger(__name__)

# Names the API and CLI accept, mapped to files under settings.playbooks_dir.
PLAYBOOKS: dict[str, str] = {
    "site": "site.yml",
    "harden": "harden.yml",
    "container-engine": "container-engine.yml",
}
ENGINES = ("docker", "podman", "none")
# Per-run variables may set role switches, never connection settings.
_VAR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


# --------------------------------------------------------------------------- validation
def validate_playbooks(names: list[str]) -> list[str]:
    if not names:
        raise InvalidInput(field="playbooks", reason="at least one playbook is required")
    unknown = [n for n in names if n not in PLAYBOOKS]
    if unknown:
        raise InvalidInput(
            field="playbooks",
            reason=f"unknown playbook(s) {', '.join(map(repr, unknown))}; known: {', '.join(PLAYBOOKS)}",
        )
    return list(dict.fromkeys(names))


def validate_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise InvalidInput(field="engine", reason=f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    return engine


def validate_vars(run_vars: dict[str, Any]) -> dict[str, Any]:
    for key in run_vars:
        if not _VAR_NAME.match(key) or key.startswith("ansible_") or key == "prov":
            raise InvalidInput(
                field=f"vars.{key}",
                reason="variable names are lower-case identifiers and may not start with ansible_ or be prov",
            )
    return dict(run_vars)


# --------------------------------------------------------------------------- keys
def default_key_path(settings: Settings) -> Path:
    return settings.ansible_ssh_key or settings.data_dir / "ssh" / "id_ed25519"


def ensure_ssh_key(settings: Settings) -> Path:
    """The controller's SSH key; created (ed25519, 0600) on first use when the default path is empty."""
    path = default_key_path(settings)
    if not path.exists():
        if settings.ansible_ssh_key is not None:
            raise ConfigRunError(reason=f"SSH key {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        proc = subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "prov-controller", "-f", str(path)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise ConfigRunError(reason=f"ssh-keygen failed: {proc.stderr.strip()}")
    return path


def public_key(private_key: Path) -> str:
    pub = private_key.with_name(private_key.name + ".pub")
    if pub.exists():
        return pub.read_text().strip()
    proc = subprocess.run(["ssh-keygen", "-y", "-f", str(private_key)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigRunError(reason=f"cannot read the public half of {private_key}")
    return proc.stdout.strip()


# --------------------------------------------------------------------------- the run
def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def to_static(dynamic: dict[str, Any]) -> dict[str, Any]:
    """Dynamic-inventory JSON (``_meta.hostvars``) -> the static YAML/JSON shape ansible reads from a file."""
    hostvars = (dynamic.get("_meta") or {}).get("hostvars") or {}
    children: dict[str, Any] = {}
    for name, group in dynamic.items():
        if name in ("_meta", "all", "ungrouped") or not isinstance(group, dict):
            continue
        children[name] = {"hosts": {h: None for h in group.get("hosts", [])}}
    return {"all": {"hosts": {h: dict(v) for h, v in hostvars.items()}, "children": children}}


def _connection_inventory(spec: RunSpec, key_file: Path, known_hosts: Path) -> dict[str, Any]:
    inv = to_static(spec.inventory)
    all_group = inv["all"]
    all_vars = dict(spec.run_vars)
    all_vars.update(
        {
            "ansible_user": spec.user,
            "ansible_ssh_private_key_file": str(key_file),
            "ansible_become": True,
            # Unknown host keys are learnt on first contact (accept-new) into this
            # run's own known_hosts; a recorded key that changed is refused.
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=accept-new"
            " -o IdentitiesOnly=yes -o BatchMode=yes",
            "ansible_python_interpreter": "/usr/bin/python3",
        }
    )
    all_group["vars"] = all_vars
    return inv


def _known_hosts_text(spec: RunSpec) -> str:
    lines = []
    for name, hv in (spec.inventory.get("_meta", {}).get("hostvars", {}) or {}).items():
        addr = hv.get("ansible_host", name)
        # recorded as ssh-keyscan lines ("addr type key") or bare "type key" lines
        for line in str(hv.get("prov_ssh_host_key") or "").splitlines():
            parts = line.split()
            if len(parts) >= 3 and not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
                parts = parts[1:3]
            if len(parts) >= 2:
                lines.append(f"{addr} {parts[0]} {parts[1]}")
    return "\n".join(lines) + ("\n" if lines else "")


def _main_playbook(settings: Settings, names: list[str]) -> str:
    plays = []
    for n in names:
        path = (settings.playbooks_dir / PLAYBOOKS[n]).resolve()
        if not path.is_file():
            raise ConfigRunError(reason=f"playbook file {path} is missing")
        plays.append({"name": f"prov: {n}", "ansible.builtin.import_playbook": str(path)})
    return json.dumps(plays, indent=2)


def _event_message(data: dict[str, Any]) -> str:
    res = data.get("res") or {}
    if not isinstance(res, dict):
        return ""
    msg = res.get("msg") or res.get("stderr") or ""
    if not msg and isinstance(res.get("results"), list):  # loops: the first failing item's message
        for item in res["results"]:
            if isinstance(item, dict) and (item.get("failed") or item.get("unreachable")):
                msg = item.get("msg") or item.get("stderr") or ""
                break
    text = msg if isinstance(msg, str) else json.dumps(msg, default=str)
    return mask(" ".join(text.split()))[:400]


def _playbook_binary() -> str:
    """ansible-playbook from the same environment as this interpreter (a venv need not be on PATH)."""
    import sys

    local = Path(sys.executable).parent / "ansible-playbook"
    if local.exists():
        return str(local)
    found = shutil.which("ansible-playbook")
    if not found:
        raise ConfigRunError(reason="ansible-playbook is not installed (pip install ansible-core)")
    return found


def _controller_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def sweep_dead_runs(runs_dir: Path) -> list[Path]:
    """Delete the key copies (and temp dirs) that runs of a dead controller left behind.

    A controller killed mid-run (SIGKILL, OOM, power cut) never reaches ``run()``'s
    ``finally``, so that run's ``ssh/id`` copy of the controller's private key would
    stay on disk for good. Run dirs are named ``<label>-<stamp>-<pid>-<thread>``; a
    dir whose pid is not this process and no longer exists belongs to a dead
    controller. (Its ``ansible-playbook`` is gone too: see ``run()``.) The artifacts
    stay for the operator. A pid reused by an unrelated process only postpones the
    sweep to a later run: the safe side.
    """
    removed: list[Path] = []
    if not runs_dir.is_dir():
        return removed
    me = os.getpid()
    for pdd in runs_dir.iterdir():
        parts = pdd.name.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not pdd.is_dir():
            continue
        pid = int(parts[1])
        key = pdd / "ssh" / "id"
        if pid == me or not (key.exists() or (pdd / "tmp").exists()) or _controller_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            key.unlink()
            removed.append(key)
        shutil.rmtree(pdd / "tmp", ignore_errors=True)
    if removed:
        log.warning("removed %d SSH key cop%s left by runs of a controller that died: %s", len(removed),
                    "y" if len(removed) == 1 else "ies", ", ".join(str(k.parent.parent.name) for k in removed))
    return removed


def run(
    spec: RunSpec,
    settings: Settings,
    *,
    on_event: Callable[[RunEvent], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> RunResult:
    """Run ``spec.playbooks`` against ``spec.inventory``; blocks until done, timed out or cancelled."""
    names = validate_playbooks(spec.playbooks)
    validate_vars(spec.run_vars)
    key_src = spec.ssh_key or ensure_ssh_key(settings)
    if not key_src.is_file():
        raise ConfigRunError(reason=f"SSH key {key_src} does not exist")
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    sweep_dead_runs(settings.runs_dir)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    pdd = settings.runs_dir / f"{spec.label}-{stamp}-{os.getpid()}-{threading.get_ident() % 10000}"
    pdd.mkdir(parents=True, exist_ok=False, mode=0o700)
    key_file = pdd / "ssh" / "id"
    known_hosts = pdd / "ssh" / "known_hosts"
    _write(key_file, key_src.read_text())
    _write(known_hosts, _known_hosts_text(spec))
    _write(pdd / "inventory" / "hosts.json", json.dumps(_connection_inventory(spec, key_file, known_hosts), indent=2))
    _write(pdd / "project" / "main.yml", _main_playbook(settings, names))
    envvars = {
        "ANSIBLE_PIPELINING": "True",  # one SSH round trip per task instead of three
        "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=60s",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_FORCE_COLOR": "False",
        "ANSIBLE_TIMEOUT": "20",  # SSH connect timeout: an unreachable host fails fast
        # A freshly installed system's cloud-init may restart sshd just after the port first answers
        # (seen in the e2e lab: "Data could not be sent", ssh exit 255, one second after wait-ssh):
        # retry a failed connection with the ssh plugin's backoff (1, 3, 7, 15 s) before calling it unreachable.
        "ANSIBLE_SSH_RETRIES": "4",
        "ANSIBLE_LOCAL_TEMP": str(pdd / "tmp"),
        "TMPDIR": str(settings.runs_dir / ".cache"),  # where container_verify caches its tarball
        # the venv's bin first, so ansible's own helpers resolve without an activated venv
        "PATH": f"{Path(_playbook_binary()).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    (settings.runs_dir / ".cache").mkdir(exist_ok=True)
    hosts: dict[str, HostResult] = {
        name: HostResult() for name in (spec.inventory.get("_meta", {}).get("hostvars") or {})
    }
    failures: list[dict[str, str]] = []
    lock = threading.Lock()

    def handle(event: dict[str, Any]) -> bool:
        etype = str(event.get("event", ""))
        data = event.get("event_data") or {}
        task = str(data.get("task") or data.get("name") or "")
        host = data.get("host")
        kind: str | None = None
        if etype == "playbook_on_task_start":
            kind = "task_start"
        elif etype == "runner_on_ok":
            kind = CHANGED if (data.get("res") or {}).get("changed") else OK
        elif etype == "runner_on_failed":
            kind = FAILED
        elif etype == "runner_on_unreachable":
            kind = UNREACHABLE
        elif etype == "runner_on_skipped":
            kind = SKIPPED
        elif etype == "playbook_on_stats":
            with lock:
                for attr, key in (("ok", "ok"), ("changed", "changed"), ("failed", "failures"),
                                  ("unreachable", "dark"), ("skipped", "skipped")):
                    for h, n in (data.get(key) or {}).items():
                        setattr(hosts.setdefault(h, HostResult()), attr, int(n))
            return True
        if kind is None:
            return True
        ignored = bool(data.get("ignore_errors"))
        # debug and assert results carry a sentence meant for people (skip reasons, verifications)
        speaks = str(data.get("task_action", "")).endswith(("debug", "assert"))
        msg = _event_message(data) if kind in (FAILED, UNREACHABLE) else ""
        if kind in (FAILED, UNREACHABLE) and host and not ignored:
            with lock:
                hr = hosts.setdefault(str(host), HostResult())
                if hr.failed_task is None:
                    hr.failed_task, hr.message = task, msg
                    failures.append({"host": str(host), "task": task, "status": kind, "message": msg})
        if kind == OK and speaks:
            res = data.get("res") or {}
            msg = mask(str(res.get("msg", "")))[:400] if isinstance(res, dict) else ""
        if on_event is not None:
            try:
                on_event(RunEvent(kind, task, str(host) if host else None, msg, ignored))
            except Exception as exc:  # reporting must never break the run (cancel goes via cancel_callback)
                log.warning("configure event handler failed: %s", exc)
        return True

    started = time.monotonic()
    try:
        # ansible-runner starts ansible-playbook through pexpect, i.e. on a pty in its own
        # session whose master end only this process holds (the fd is not inherited across
        # exec, PEP 446, and the controller forks nothing without exec). If the controller
        # dies, even by SIGKILL,
        # the kernel hangs the pty up and SIGHUPs the playbook and its forks, so a killed
        # controller's run never keeps working on hosts next to the run a restarted
        # controller starts (tests/integration/install/test_configure_killed.py).
        runner = ansible_runner.run(
            private_data_dir=str(pdd),
            playbook="main.yml",
            # an explicit binary puts the runner in "raw" mode, which does not
            # append the playbook: it goes in through cmdline instead
            binary=_playbook_binary(),
            # (ansible-runner shlex-splits it: quoted, a data dir with a space still works)
            cmdline=shlex.join([str(pdd / "project" / "main.yml"), *(["--check", "--diff"] if spec.check else [])]),
            inventory=str(pdd / "inventory" / "hosts.json"),
            extravars={"prov": spec.prov},
            envvars=envvars,
            forks=max(1, spec.forks),
            timeout=int(spec.timeout) if spec.timeout else None,
            event_handler=handle,
            cancel_callback=(lambda: bool(cancelled and cancelled())),
            quiet=True,
            json_mode=False,
        )
    except Exception as exc:  # ansible_runner's own errors never leave this module
        raise ConfigRunError(reason=f"ansible-runner failed: {exc.__class__.__name__}: {mask(str(exc))}") from exc
    finally:
        # the key copy lives only as long as the run
        with contextlib.suppress(FileNotFoundError):
            key_file.unlink()
        shutil.rmtree(pdd / "tmp", ignore_errors=True)
    duration = time.monotonic() - started
    tail = ""
    try:
        out = runner.stdout.read() if runner.stdout else ""
        tail = mask(" | ".join(line.strip() for line in out.strip().splitlines()[-6:] if line.strip()))[:600]
    except (OSError, ValueError):
        pass
    return RunResult(
        status=str(runner.status),
        rc=int(runner.rc if runner.rc is not None else -1),
        hosts=hosts,
        artifact_dir=str(runner.config.artifact_dir),
        failures=failures,
        duration=duration,
        output_tail=tail,
    )


def raise_for_result(result: RunResult) -> None:
    if not result.ok:
        raise ConfigRunError(reason=result.summary(), failures=result.failures, artifact_dir=result.artifact_dir)


class AnsibleConfig(ConfigInterface):
    """``ConfigInterface`` over this module's functions (the conductor's configuration engine)."""

    def ensure_ssh_key(self, settings: Settings) -> Path:
        return ensure_ssh_key(settings)

    def public_key(self, private_key: Path) -> str:
        return public_key(private_key)

    def run(self, spec: RunSpec, settings: Settings, *, on_event: EventFn | None = None,
            cancelled: CancelledFn | None = None) -> RunResult:
        return run(spec, settings, on_event=on_event, cancelled=cancelled)

    def cleanup(self, settings: Settings) -> list[Path]:
        return sweep_dead_runs(settings.runs_dir)
