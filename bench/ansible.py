"""bench/ansible: harden + configure 1, 4 and 8 real SSH hosts; prov's runner vs plain ansible-playbook.

Run as root:  .venv/bin/python bench/ansible.py [--sizes 1,4,8] [--engine docker] [--repeat 2]

1. Scaling: fresh namespace hosts (tests.support.nshost) configured by the
   real configure path (API-less: conductor.configure.submit -> task runner ->
   ansible-runner, history written to SQLite). Prints t(N) and t(8)/t(1)
   (target <= 2).
2. Overhead: on the 8 hosts just configured (so both do identical, idempotent
   work), alternate prov's runner and a plain ``ansible-playbook`` with the same
   inventory, extra vars, forks and SSH settings. Prints the ratio of medians
   (target <= 1.1).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlmodel import Session, SQLModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provisioner import states as S  # noqa: E402
from provisioner.conductor import configure  # noqa: E402
from provisioner.conductor import engine as workflows  # noqa: E402
from provisioner.conductor.inventory import build_inventory  # noqa: E402
from provisioner.db import get_engine  # noqa: E402
from provisioner.drivers.config import ansible  # noqa: E402
from provisioner.models import Host, Task  # noqa: E402
from provisioner.settings import Settings  # noqa: E402
from tests.support import nshost  # noqa: E402


def prov_run(settings: Settings, names: list[str], playbooks: list[str], engine: str) -> tuple[float, Task]:
    with Session(get_engine(settings), expire_on_commit=False) as s:
        hosts = [s.exec(__import__("sqlmodel").select(Host).where(Host.name == n)).one() for n in names]
        t0 = time.monotonic()
        task = configure.submit(s, hosts, configure.ConfigureRequest(playbooks=playbooks, engine=engine),
                                settings=settings)
    assert task.id is not None
    workflows.wait(task.id)
    dt = time.monotonic() - t0
    with Session(get_engine(settings)) as s:
        done = s.get(Task, task.id)
        assert done is not None
        if done.status != S.TASK_SUCCEEDED:
            raise SystemExit(f"prov run failed: {done.error}")
        return dt, done


def plain_run(settings: Settings, names: list[str], playbooks: list[str], engine: str, workdir: Path) -> float:
    """The same run with plain ansible-playbook: same inventory, extra vars, forks, SSH settings."""
    key = settings.ansible_ssh_key
    assert key is not None
    with Session(get_engine(settings)) as s:
        hosts = [s.exec(__import__("sqlmodel").select(Host).where(Host.name == n)).one() for n in names]
        dyn = build_inventory(s, hosts)
    spec = ansible.RunSpec(playbooks=playbooks, inventory=dyn, user=settings.ansible_user)
    inv = ansible._connection_inventory(spec, key, workdir / "known_hosts")
    (workdir / "inv.json").write_text(json.dumps(inv))
    prov = {"playbooks": playbooks, "engine": engine, "admin_user": settings.ansible_user,
            "admin_keys": [ansible.public_key(key)]}
    (workdir / "extra.json").write_text(json.dumps({"prov": prov}))
    main = workdir / "main.yml"
    main.write_text(ansible._main_playbook(settings, playbooks))
    env = {**os.environ, "ANSIBLE_PIPELINING": "True",
           "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=60s",
           "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_NOCOLOR": "True", "ANSIBLE_TIMEOUT": "20",
           "TMPDIR": str(settings.runs_dir / ".cache"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    t0 = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(workdir / "inv.json"),
                           "-e", f"@{workdir / 'extra.json'}", "--forks", str(settings.ansible_forks), str(main)],
                          capture_output=True, text=True, env=env)
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"plain ansible-playbook failed: {proc.stdout[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,8")
    ap.add_argument("--engine", default="docker", choices=ansible.ENGINES)
    ap.add_argument("--playbooks", default="harden,container-engine")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs per side for the overhead ratio")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    playbooks = args.playbooks.split(",")
    work = Path(tempfile.mkdtemp(prefix="prov-bench-ansible-"))
    tag = secrets.token_hex(2)
    names = [f"b{tag}{i:02d}" for i in range(sum(sizes))]
    t0 = time.monotonic()
    lab = nshost.Lab.up(tag, names, work / "lab", proxy_port=nshost.free_low_port())
    print(f"{len(names)} namespace hosts up in {time.monotonic() - t0:.1f} s")
    try:
        settings = Settings(data_dir=work / "data", ansible_ssh_key=lab.key, ansible_user=nshost.ADMIN_USER,
                            log_json=False)
        settings.ensure_dirs()
        SQLModel.metadata.create_all(get_engine(settings))
        workflows.stop()
        with Session(get_engine(settings)) as s:
            for name, h in zip(names, lab.hosts, strict=True):
                s.add(Host(name=name, ip_address=h.address, state=S.AVAILABLE, bmc_kind="manual"))
            s.commit()
        times: dict[int, float] = {}
        offset = 0
        for n in sizes:
            group = names[offset:offset + n]
            offset += n
            dt, task = prov_run(settings, group, playbooks, args.engine)
            changed = sum(h["changed"] for h in task.result["hosts"].values())
            times[n] = dt
            print(f"t({n}) = {dt:6.1f} s   (fresh hosts, {changed} changes)")
        if 1 in times and max(sizes) in times:
            print(f"t({max(sizes)})/t(1) = {times[max(sizes)] / times[1]:.2f}   (target <= 2)")
        big = names[offset - max(sizes):offset] if sizes[-1] == max(sizes) else names[:max(sizes)]
        ours, plain = [], []
        for _ in range(args.repeat):
            ours.append(prov_run(settings, big, playbooks, args.engine)[0])
            plain.append(plain_run(settings, big, playbooks, args.engine, work))
        mo, mp = statistics.median(ours), statistics.median(plain)
        print(f"idempotent run on {len(big)} hosts: prov runner {mo:.1f} s (runs {[round(x, 1) for x in ours]}), "
              f"plain ansible-playbook {mp:.1f} s (runs {[round(x, 1) for x in plain]})")
        print(f"overhead prov/plain = {mo / mp:.2f}   (target <= 1.1)")
    finally:
        workflows.stop()
        lab.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
