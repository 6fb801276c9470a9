"""Static checks of the scaled-out deploy files (issue 14, item 5).

deploy/compose.cluster.yaml (PostgreSQL + 2 api + 2 conductors + 1 boot agent), the role units
deploy/systemd/prov-api.service, prov-conductor.service, prov-boot@.service and prov.target, and
README.md's "Scaling out" section. Every ``prov serve`` command these files run is parsed by the
real CLI (tests/support/deploy_roles.serve_problem) and its options are checked against
``prov serve --help``; the units go through ``systemd-analyze verify`` and ``security``; the
compose file through ``docker-compose config`` where that client is installed. The same
commands run as real processes on PostgreSQL in tests/integration/deploy/test_role_processes.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provisioner.settings import ALL_ROLES
from tests.support import deploy_roles as dr

ROOT = dr.ROOT
UNIT = dr.SYSTEMD / "prov.service"
TARGET = dr.SYSTEMD / "prov.target"
VARS = {"PROV_DB_PASSWORD": "test-only-pw", "PROV_SECRET_KEY": "test-only-key"}
NETWORK = "10.10.0.0/24"
INSTANCE = "10.10.0.0-24"  # systemd-escape 10.10.0.0/24
# What the roles may differ in from prov.service: capabilities (api and conductor need none, the
# boot agent DHCP's too), the boot agent's AF_PACKET (dnsmasq), and what each one runs.
ROLE_SPECIFIC = {"AmbientCapabilities", "CapabilityBoundingSet", "RestrictAddressFamilies", "ExecStart",
                 "Environment", "EnvironmentFile", "TimeoutStopSec"}
ROLE_CAPS = {"prov-api.service": "", "prov-conductor.service": "",
             "prov-boot@.service": "CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_NET_RAW"}


def _role_of(argv: list[str]) -> list[str]:
    return argv[argv.index("--role") + 1].split(",") if "--role" in argv else []


# --------------------------------------------------------------------------- compose
def test_compose_cluster_runs_two_api_two_conductors_one_boot_agent_on_postgresql() -> None:
    services = dr.compose_services(VARS)
    assert set(services) == {"db", *dr.PROV_SERVICES}
    db = services["db"].raw
    assert db["image"].startswith("postgres:15") and "pg_isready" in " ".join(db["healthcheck"]["test"])
    roles = [tuple(_role_of(services[name].command)) for name in dr.PROV_SERVICES]
    assert sorted(roles) == sorted([("api",), ("api",), ("conductor",), ("conductor",), ("boot",)])
    published = []
    for name in dr.PROV_SERVICES:
        svc = services[name]
        raw, env = svc.raw, svc.environment
        assert svc.command[0] == "serve", svc.command
        assert raw["depends_on"]["db"]["condition"] == "service_healthy", name
        assert env["PROV_DATABASE_URL"] == "postgresql+psycopg://prov:test-only-pw@db:5432/prov", name
        # One Fernet key and one data volume for every member: a BMC password one api stored,
        # any conductor decrypts; the boot root and Ansible's key are the same everywhere.
        assert env["PROV_SECRET_KEY"] == "test-only-key", name
        assert raw["volumes"] == ["provdata:/var/lib/prov"] and env["PROV_DATA_DIR"] == "/var/lib/prov", name
        assert (dr.COMPOSE_CLUSTER.parent / raw["build"]["context"] / raw["build"]["dockerfile"]).resolve() \
            == dr.DEPLOY / "Dockerfile"
        assert raw["read_only"] is True and raw["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in raw["security_opt"], name
        headless = "api" not in _role_of(svc.command)
        # The image's HEALTHCHECK asks /healthz, which only the api role serves.
        assert raw.get("healthcheck", {}).get("disable", False) is headless, name
        published += raw.get("ports", [])
    assert services["boot"].command[-2:] == ["--network", NETWORK]
    assert sorted(published) == ["127.0.0.1:8700:8700", "127.0.0.1:8701:8700", "69:69/udp"]
    # No secret is written in the file itself: each comes from a variable.
    text = dr.COMPOSE_CLUSTER.read_text()
    assert "test-only" not in text and not re.search(r"PASSWORD\w*:\s+[^$\s]", text)


def test_the_compose_secrets_file_is_never_committed_nor_sent_to_a_build() -> None:
    """deploy/.env (the README's compose commands write the cluster's secrets there) stays local."""
    assert "/deploy/.env" in (ROOT / ".gitignore").read_text().splitlines()
    assert "**/.env" in (ROOT / ".dockerignore").read_text().splitlines()


@pytest.mark.parametrize("missing", ["PROV_DB_PASSWORD", "PROV_SECRET_KEY"])
def test_compose_cluster_refuses_to_render_without_its_secrets(missing: str) -> None:
    with pytest.raises(dr.MissingVariable, match=missing):
        dr.compose_services({k: v for k, v in VARS.items() if k != missing})


def test_interpolation_follows_the_compose_rules() -> None:
    v = {"SET": "x", "EMPTY": ""}
    assert dr.interpolate("${SET}-${UNSET}-${UNSET:-d}-${EMPTY:-d}-${EMPTY-d}-$$SET-$SET", v) == "x--d-d--$SET-x"
    with pytest.raises(dr.MissingVariable):
        dr.interpolate("${EMPTY:?no}", v)
    assert dr.interpolate("${EMPTY?no}", v) == ""


def _compose_client() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def test_compose_cluster_as_the_compose_client_renders_it(tmp_path: Path) -> None:
    """``docker-compose config`` (no engine needed) accepts the file and renders what our reader
    does: the integration test runs our reader's commands, so they are compose's."""
    cmd = _compose_client()
    if cmd is None:
        pytest.skip("no compose client (docker-compose or the docker compose plugin) installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    env.update(VARS, DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    out = subprocess.run([*cmd, "-f", str(dr.COMPOSE_CLUSTER), "config"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)["services"]
    ours = dr.compose_services(VARS)
    assert set(rendered) == set(ours)
    for name, svc in ours.items():
        assert [str(c) for c in rendered[name].get("command") or []] == svc.command, name
        assert {k: str(v) for k, v in (rendered[name].get("environment") or {}).items()} == svc.environment, name
    for missing in VARS:
        out = subprocess.run([*cmd, "-f", str(dr.COMPOSE_CLUSTER), "config", "-q"],
                             env={k: v for k, v in env.items() if k != missing}, capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert out.returncode != 0 and missing in out.stderr, out.stderr


# --------------------------------------------------------------------------- systemd
def _unit_map(path: Path) -> dict[str, str]:
    return {k: v for k, v in dr.unit_entries(path)["Service"]}


def test_role_units_keep_prov_service_hardening() -> None:
    base = _unit_map(UNIT)
    hardening = {k: v for k, v in base.items() if k not in ROLE_SPECIFIC}
    for name, caps in ROLE_CAPS.items():
        path = dr.SYSTEMD / name
        svc = _unit_map(path)
        for key, value in hardening.items():
            assert svc.get(key) == value, f"{name}: {key}={svc.get(key)!r}, prov.service has {value!r}"
        assert svc["CapabilityBoundingSet"] == caps and svc.get("AmbientCapabilities", "") == caps, name
        assert set(base["RestrictAddressFamilies"].split()) <= set(svc["RestrictAddressFamilies"].split()), name
        # The cluster's settings come from a required file (a role without PROV_DATABASE_URL would
        # run on a private SQLite); no secret is in the unit or on the command line.
        files = dr.unit_values(path, "Service", "EnvironmentFile")
        assert files[0] == "/etc/prov/prov.env", name
        text = path.read_text()
        for secret in ("PROV_DATABASE_URL=", "PROV_SECRET_KEY=", "password", "postgresql+psycopg"):
            assert secret not in "\n".join(ln for ln in text.splitlines() if not ln.startswith("#")), (name, secret)
        unit = dict(dr.unit_entries(path)["Unit"])
        assert unit["PartOf"] == "prov.target" and unit["Conflicts"] == "prov.service", name
        assert dict(dr.unit_entries(path)["Install"])["WantedBy"] == "prov.target", name
    assert dict(dr.unit_entries(TARGET)["Install"])["WantedBy"] == "multi-user.target"
    assert dict(dr.unit_entries(TARGET)["Unit"])["Conflicts"] == "prov.service"
    # The boot agent's own network file comes after the cluster's (it overrides), and is optional.
    assert dr.unit_values(dr.SYSTEMD / "prov-boot@.service", "Service", "EnvironmentFile") == \
        ["/etc/prov/prov.env", "-/etc/prov/boot-%i.env"]


def test_role_units_run_the_roles() -> None:
    env_file = {"/etc/prov/prov.env": dr.SYSTEMD / "prov.env.example"}
    api = dr.unit_exec(dr.SYSTEMD / "prov-api.service", files=env_file)
    assert api.argv == ["/opt/prov/bin/prov", "serve", "--role", "api", "--workers", "2"]
    conductor = dr.unit_exec(dr.SYSTEMD / "prov-conductor.service", files=env_file)
    assert conductor.argv == ["/opt/prov/bin/prov", "serve", "--role", "conductor"]
    boot = dr.unit_exec(dr.SYSTEMD / "prov-boot@.service", INSTANCE, files=env_file)
    assert boot.argv == ["/opt/prov/bin/prov", "serve", "--role", "boot", "--network", NETWORK]
    assert boot.environment_files == ["/etc/prov/prov.env", f"-/etc/prov/boot-{INSTANCE}.env"]


def test_the_boot_instance_is_the_escaped_network() -> None:
    if not shutil.which("systemd-escape"):
        pytest.skip("systemd-escape not installed")
    out = subprocess.run(["systemd-escape", NETWORK], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == INSTANCE
    back = subprocess.run(["systemd-escape", "-u", INSTANCE], capture_output=True, text=True, timeout=30)
    assert back.stdout.strip() == dr.unescape_instance(INSTANCE) == NETWORK


def _verifiable_units(tmp_path: Path) -> list[Path]:
    # verify checks that ExecStart's program exists; the venv path does not on a build machine.
    # Only the program is replaced: the arguments (${PROV_API_WORKERS}, %I) are verified as written.
    out = []
    for name in (*ROLE_CAPS, "prov.target", "prov.service"):
        text = (dr.SYSTEMD / name).read_text().replace("ExecStart=/opt/prov/bin/prov ", "ExecStart=/bin/echo ")
        (tmp_path / name).write_text(text)
        out.append(tmp_path / name.replace("@.service", f"@{INSTANCE}.service"))
    return out


def test_role_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    units = _verifiable_units(tmp_path)
    out = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    # verify exits 0 on an unknown key or a bad value and only says so: any line about our files fails.
    ours = [ln for ln in (out.stdout + out.stderr).splitlines() if str(tmp_path) in ln or "prov" in ln]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


def _exposure(unit: Path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60, cwd=unit.parent)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert match, out.stdout[-2000:] + out.stderr
    return float(match.group(1))


def test_role_units_are_as_exposed_as_prov_service_at_most(tmp_path: Path) -> None:
    """``systemd-analyze security`` (0 = locked down, 10 = exposed): the api and conductor units
    keep no capability, so they score at most prov.service's; the boot agent's DHCP capabilities
    cost a little, still in systemd's "OK" band (below 3)."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    units = {p.name: p for p in _verifiable_units(tmp_path)}
    base = _exposure(units["prov.service"])
    scores = {name: _exposure(path) for name, path in units.items() if name.endswith(".service")}
    print("systemd-analyze security exposure:", scores)
    assert scores["prov-api.service"] <= base and scores["prov-conductor.service"] <= base, scores
    assert scores[f"prov-boot@{INSTANCE}.service"] < 3.0, scores


# --------------------------------------------------------------------------- README
def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end > 0 else None]


def _sh_blocks(section: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M)


def test_readme_scaling_out_names_real_files_and_keeps_secrets_off_command_lines() -> None:
    readme = (ROOT / "README.md").read_text()
    # The set-up's two commands stay exactly as they are.
    assert "\n./deploy/install.sh && .venv/bin/prov serve\n" in readme and "\n./tests/run.sh\n" in readme
    section = _section("Scaling out")
    blocks = _sh_blocks(section)
    assert blocks, "no sh block in README 'Scaling out'"
    code = "\n".join(blocks)
    made = set(re.findall(r">\s*(deploy/[\w./-]+)", code))  # files the commands write (deploy/.env)
    for path in sorted(set(re.findall(r"\bdeploy/[\w./@-]+[\w@]", section)) - made):
        assert (ROOT / path).exists(), f"README 'Scaling out' names {path}, which does not exist"
    for unit in ("prov-api.service", "prov-conductor.service", "prov-boot@", "prov.target"):
        assert unit in code, unit
    assert "compose.cluster.yaml" in code
    # Secrets are made and moved by builtins (printf, redirections) and files, never as arguments:
    # no literal password, no psql -c with one, no curl -H with a token.
    assert not re.search(r"PASSWORD '(?!%s)", code) and "psql -c" not in code
    assert not re.search(r"Bearer [A-Za-z0-9]", code) and "--token " not in code


def _serve_commands() -> list[tuple[str, list[str]]]:
    """Every prov serve command line deploy/ and the README's Scaling out run, after ``prov``."""
    found: list[tuple[str, list[str]]] = []
    for name, svc in dr.compose_services(VARS).items():
        if name in dr.PROV_SERVICES:
            found.append((f"compose {name}", svc.command))
    env_file = {"/etc/prov/prov.env": dr.SYSTEMD / "prov.env.example"}
    for name in ROLE_CAPS:
        argv = dr.unit_exec(dr.SYSTEMD / name, INSTANCE, files=env_file).argv
        found.append((name, argv[1:]))
    for line in "\n".join(_sh_blocks(_section("Scaling out"))).splitlines():
        m = re.search(r"\bprov (serve [^;&|#]*)", line)
        if m and "$" not in m.group(1):
            found.append(("README", m.group(1).split()))
    return found


def test_every_deploy_command_is_a_real_prov_serve_command_line() -> None:
    commands = _serve_commands()
    assert len(commands) >= 8
    for where, argv in commands:
        problem = dr.serve_problem(argv)
        assert problem is None, f"{where}: prov {' '.join(argv)}: {problem}"
        assert set(_role_of(argv)) <= set(ALL_ROLES) and _role_of(argv), (where, argv)
    # And by the CLI's own help, as an operator reads it.
    out = subprocess.run([sys.executable, "-m", "provisioner.cli.main", "serve", "--help"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for where, argv in commands:
        for opt in (a for a in argv if a.startswith("--")):
            assert re.search(rf"(^|\s){re.escape(opt)}\b", out.stdout, flags=re.M), f"{where}: {opt} not in help"


def test_readme_scaling_out_commands_are_shellcheck_clean(tmp_path: Path) -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (deploy/install.sh --dev installs it)")
    script = tmp_path / "scaling-out.sh"
    script.write_text("\n".join(_sh_blocks(_section("Scaling out"))))
    # SC1091: /etc/prov/prov.env, which the commands source, is not on the machine running the check.
    out = subprocess.run(["shellcheck", "--format=gcc", "-s", "bash", "-e", "SC1091", str(script)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_compose_secrets_command_makes_what_compose_reads(tmp_path: Path) -> None:
    """The README's first compose command, run as written in a copy of deploy/: deploy/.env is
    0600, its key is a Fernet key, and the compose client takes both secrets from it."""
    cmd = _compose_client()
    if cmd is None:
        pytest.skip("no compose client (docker-compose or the docker compose plugin) installed")
    from cryptography.fernet import Fernet

    first = next(b for b in _sh_blocks(_section("Scaling out")) if "deploy/.env" in b).splitlines()[0]
    assert first.startswith("(umask 077") and first.endswith(">deploy/.env)")
    (tmp_path / "deploy").mkdir()
    shutil.copy(dr.COMPOSE_CLUSTER, tmp_path / "deploy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    env["DOCKER_HOST"] = f"unix://{tmp_path}/none.sock"
    made = subprocess.run(["bash", "-euc", first], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0 and not made.stdout, made.stderr
    dotenv = dr.read_environment_file(tmp_path / "deploy" / ".env")
    assert (tmp_path / "deploy" / ".env").stat().st_mode & 0o777 == 0o600
    assert set(dotenv) == {"PROV_DB_PASSWORD", "PROV_SECRET_KEY"} and re.fullmatch(r"[0-9a-f]{32}",
                                                                                    dotenv["PROV_DB_PASSWORD"])
    Fernet(dotenv["PROV_SECRET_KEY"].encode())  # raises on anything but a Fernet key
    out = subprocess.run([*cmd, "-f", "deploy/compose.cluster.yaml", "config"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    api = yaml.safe_load(out.stdout)["services"]["api1"]["environment"]
    assert api["PROV_SECRET_KEY"] == dotenv["PROV_SECRET_KEY"]
    assert f":{dotenv['PROV_DB_PASSWORD']}@db:5432/" in api["PROV_DATABASE_URL"]


def test_readme_env_file_command_makes_a_0640_file_with_the_cluster_settings(tmp_path: Path) -> None:
    """The README's /etc/prov/prov.env line, run with /etc/prov/ moved into tmp_path (and the
    group change left out: no prov group on a build machine): mode 0640, the example's settings,
    then the database URL with the password of $pw and a Fernet key, none of it on stdout."""
    from cryptography.fernet import Fernet

    code = "\n".join(_sh_blocks(_section("Scaling out")))
    (line,) = [ln for ln in code.splitlines() if ">/etc/prov/prov.env" in ln]
    assert line.endswith(" && chgrp prov /etc/prov/prov.env")
    line = line.removesuffix(" && chgrp prov /etc/prov/prov.env").replace("/etc/prov/", f"{tmp_path}/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    made = subprocess.run(["bash", "-euc", f"pw=0123456789abcdef0123456789abcdef\n{line}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0 and not made.stdout, made.stderr
    path = tmp_path / "prov.env"
    assert path.stat().st_mode & 0o777 == 0o640
    values = dr.read_environment_file(path)
    assert values["PROV_DATABASE_URL"] == \
        "postgresql+psycopg://prov:0123456789abcdef0123456789abcdef@db.example:5432/prov"
    Fernet(values["PROV_SECRET_KEY"].encode())
    assert dr.read_environment_file(dr.SYSTEMD / "prov.env.example").items() <= values.items()
