"""The inventory plugin prov.provisioner.prov: the real ``ansible-inventory`` against a real ``prov serve``.

The collection is found where ``prov ansible collections-path`` says (the package's own copy,
exactly what a wheel installs); racks, profiles and hosts are made through the API; every
Ansible command runs in a scrubbed environment (own HOME, no PROV_*/ANSIBLE_* of the caller).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helpers import free_port
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent  # .venv/bin: ansible-core is a dependency of prov
PLUGIN = "prov.provisioner.prov"
BAD_TOKEN = "prov_not-a-real-token-0123456789abcdef"


@dataclass
class Lab:
    serve: ServeProcess
    tmp: Path
    env: dict[str, str]  # for ansible-*: PROV_URL/PROV_TOKEN of the controller, the collection path

    def source(self, name: str = "inv.prov.yml", **options: Any) -> Path:
        path = self.tmp / name
        path.write_text(yaml.safe_dump({"plugin": PLUGIN, **options}))
        return path

    def ansible(self, tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / tool), *args], env={**self.env, **(env or {})}, cwd=self.tmp,
                              capture_output=True, text=True, timeout=60)

    def inventory(self, source: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        out = self.ansible("ansible-inventory", "-i", str(source), "--list", *args, env=env)
        assert out.returncode == 0 and "WARNING" not in out.stderr, out.stderr
        return dict(_plain(json.loads(out.stdout)))


def _plain(data: Any) -> Any:
    """--list marks every value from the controller untrusted ({"__ansible_unsafe": value}): unwrap it."""
    if isinstance(data, dict):
        if set(data) == {"__ansible_unsafe"}:
            return data["__ansible_unsafe"]
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def _hosts(inv: dict[str, Any], group: str) -> set[str]:
    return set(inv.get(group, {}).get("hosts", []))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("inventory-plugin")
    with ServeProcess(tmp / "data") as serve, serve.client() as c:
        for rack in ("r1", "edge-2"):
            c.post("/api/v1/racks", json={"name": rack})
        c.post("/api/v1/profiles", json={"name": "debian12", "os_family": "debian", "params": {"ansible_vars": {
            # a role switch is a host variable; what Ansible connects with and prov's own facts are not
            "hardening_auditd": False, "ansible_user": "intruder", "prov_state": "forged",
            "motd": "{{ lookup('pipe', 'id') }}"}}})
        c.post("/api/v1/profiles", json={"name": "rocky9", "os_family": "rhel", "install_method": "kickstart"})
        c.post("/api/v1/hosts", json={"name": "web01", "rack": "r1", "u_position": 3, "roles": ["docker", "web"],
                                      "profile": "debian12",
                                      "nics": [{"mac": "52:54:00:00:00:02", "ip": "10.0.0.60"},
                                               {"mac": "52:54:00:00:00:01", "boot": True, "ip": "10.0.0.50"}]})
        c.post("/api/v1/hosts", json={"name": "web02", "rack": "edge-2", "roles": ["web"], "profile": "rocky9",
                                      "ip_address": "10.0.0.51"})
        c.post("/api/v1/hosts", json={"name": "db01"})
        c.post("/api/v1/hosts", json={"name": "maint01", "rack": "r1", "profile": "debian12"})
        c.post("/api/v1/hosts/maint01/transition", json={"event": "maintain", "message": "disk swap"})
        prov = subprocess.run([str(BIN / "prov"), "ansible", "collections-path"], capture_output=True, text=True,
                              timeout=60, check=True)
        collections = prov.stdout.strip()
        assert (Path(collections) / "ansible_collections/prov/provisioner/galaxy.yml").is_file(), collections
        home = tmp / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROV_", "ANSIBLE_")) and k.lower() not in ("http_proxy", "https_proxy")}
        env.update(HOME=str(home), ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1",
                   PROV_URL=serve.url, PROV_TOKEN=serve.token)
        yield Lab(serve, tmp, env)


def test_graph_groups_by_rack_role_state_profile_and_os(lab: Lab) -> None:
    out = lab.ansible("ansible-inventory", "-i", str(lab.source(page_size=2)), "--graph")  # 3 pages of hosts
    assert out.returncode == 0 and "WARNING" not in out.stderr, out.stderr
    graph: dict[str, set[str]] = {}
    group = ""
    for line in out.stdout.splitlines():
        name = line.strip(" |-")
        if name.startswith("@"):
            group = name[1:].rstrip(":")
            graph.setdefault(group, set())
        elif name:
            graph[group].add(name)
    expected = {
        "rack_r1": {"web01", "maint01"}, "rack_edge_2": {"web02"},  # edge-2: sanitized
        "role_docker": {"web01"}, "role_web": {"web01", "web02"},
        "state_enrolled": {"web01", "web02", "db01"}, "state_maintenance": {"maint01"},
        "profile_debian12": {"web01", "maint01"}, "profile_rocky9": {"web02"},
        "os_debian": {"web01", "maint01"}, "os_rhel": {"web02"},
    }
    assert {g: graph.get(g) for g in expected} == expected, out.stdout
    assert graph["ungrouped"] == set(), out.stdout  # db01 is in state_enrolled


def test_list_hostvars(lab: Lab) -> None:
    inv = lab.inventory(lab.source())
    hv = inv["_meta"]["hostvars"]
    assert set(hv) == {"web01", "web02", "db01", "maint01"}
    web01 = hv["web01"]
    assert web01["ansible_host"] == "10.0.0.50"  # the boot NIC's address, as the script inventory
    assert {k: web01[k] for k in ("prov_state", "prov_rack", "prov_u_position", "prov_roles", "prov_profile",
                                  "prov_os", "prov_os_family", "prov_boot_mac")} == {
        "prov_state": "enrolled", "prov_rack": "r1", "prov_u_position": 3, "prov_roles": ["docker", "web"],
        "prov_profile": "debian12", "prov_os": "debian", "prov_os_family": "debian",
        "prov_boot_mac": "52:54:00:00:00:01"}
    assert sorted(web01["prov_macs"]) == ["52:54:00:00:00:01", "52:54:00:00:00:02"]
    assert isinstance(web01["prov_host_id"], int) and web01["prov_power_state"] == "unknown"
    # the profile's ansible_vars, but neither an ansible_* connection variable nor a prov_* fact
    assert web01["hardening_auditd"] is False and "ansible_user" not in web01
    assert hv["maint01"]["prov_state"] == "maintenance"
    assert hv["web02"]["ansible_host"] == "10.0.0.51" and hv["web02"]["prov_os"] == "rhel"
    assert hv["db01"]["ansible_host"] == "db01" and hv["db01"]["prov_rack"] is None


def test_controller_values_are_not_templated(lab: Lab) -> None:
    out = lab.ansible("ansible", "-i", str(lab.source()), "web01", "-c", "local", "-m", "debug", "-a", "var=motd")
    # Untrusted (data from the controller): shown as the text it is, the lookup never runs.
    assert out.returncode == 0 and "{{ lookup('pipe', 'id') }}" in out.stdout and "uid=" not in out.stdout, out


def test_state_filter_and_constructed_features(lab: Lab) -> None:
    source = lab.source("active.prov.yml", states=["maintenance", "enrolled"], compose={"slot": "prov_u_position"},
                        groups={"dockerized": "'docker' in prov_roles"},
                        keyed_groups=[{"key": "prov_power_state", "prefix": "power"}])
    inv = lab.inventory(source)
    assert _hosts(inv, "dockerized") == {"web01"}
    assert _hosts(inv, "power_unknown") == {"web01", "web02", "db01", "maint01"}
    assert inv["_meta"]["hostvars"]["web01"]["slot"] == 3
    only = lab.inventory(lab.source("maint.prov.yml", state=["maintenance"]))  # the alias
    assert set(only["_meta"]["hostvars"]) == {"maint01"}


def test_login_profile_file(lab: Lab) -> None:
    client_file = lab.tmp / "client.yaml"
    client_file.write_text(yaml.safe_dump({"current": "lab", "profiles": {
        "lab": {"url": lab.serve.url, "token": lab.serve.token},
        "other": {"url": "http://127.0.0.1:9", "token": lab.serve.token}}}))
    env = {"PROV_URL": "", "PROV_TOKEN": "", "PROV_CLIENT_CONFIG": str(client_file)}
    inv = lab.inventory(lab.source(), env=env)
    assert "web01" in inv["_meta"]["hostvars"]
    # A profile's token goes only to that profile's own URL: the controller asks for one.
    out = lab.ansible("ansible-inventory", "-i", str(lab.source(url=lab.serve.url)), "--list",
                      env={**env, "PROV_PROFILE": "other"})
    assert "asks for a token (HTTP 401" in out.stderr, out.stderr


def _error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The plugin's message: one line, whatever Ansible wraps around it."""
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if "prov inventory:" in ln]
    assert lines, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0][lines[0].index("prov inventory:"):]


def test_a_refused_token_is_one_readable_line_and_fails_the_run(lab: Lab) -> None:
    source = lab.source()
    env = {"PROV_TOKEN": BAD_TOKEN}
    # Ansible's default: the source is skipped with a warning that says why.
    warned = lab.ansible("ansible-inventory", "-i", str(source), "--list", env=env)
    assert "refused the token (HTTP 401" in _error_line(warned)
    failed = lab.ansible("ansible-inventory", "-i", str(source), "--list",
                         env={**env, "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"})
    assert failed.returncode != 0
    line = _error_line(failed)
    assert line.startswith(f"prov inventory: {lab.serve.url} refused the token (HTTP 401"), line
    assert BAD_TOKEN not in failed.stdout + failed.stderr + warned.stdout + warned.stderr


def test_an_unreachable_controller(lab: Lab) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = lab.ansible("ansible-inventory", "-i", str(lab.source(url=url, timeout=5)), "--list",
                      env={"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"})
    assert out.returncode != 0
    assert re.match(rf"prov inventory: cannot reach the prov controller at {re.escape(url)}: .*refused",
                    _error_line(out)), out.stderr
    assert lab.serve.token not in out.stdout + out.stderr


def test_the_cache_serves_until_flushed(lab: Lab) -> None:
    source = lab.source("cached.prov.yml", cache=True, cache_plugin="jsonfile",
                        cache_connection=str(lab.tmp / "cache"), cache_timeout=3600)
    with lab.serve.client() as c:
        c.post("/api/v1/hosts", json={"name": "cache01", "roles": ["old"]})
        assert _hosts(lab.inventory(source), "role_old") == {"cache01"}
        c.patch("/api/v1/hosts/cache01", json={"roles": ["new"]})
        assert _hosts(lab.inventory(source), "role_old") == {"cache01"}  # from the cache
        # The same file pointed at another controller does not answer from this one's cache.
        elsewhere = lab.ansible("ansible-inventory", "-i", str(source), "--list",
                                env={"PROV_URL": f"http://127.0.0.1:{free_port()}"})
        assert "cannot reach the prov controller" in _error_line(elsewhere)
        fresh = lab.inventory(source, "--flush-cache")
        assert _hosts(fresh, "role_new") == {"cache01"} and "role_old" not in fresh
        c.delete("/api/v1/hosts/cache01")
    cached = [path.read_text() for path in (lab.tmp / "cache").iterdir()]
    assert cached and not any(lab.serve.token in text or "bmc" in text for text in cached)


def test_ansible_doc_parses_the_documentation(lab: Lab) -> None:
    out = lab.ansible("ansible-doc", "-t", "inventory", "--json", PLUGIN)
    assert out.returncode == 0 and "WARNING" not in out.stderr, out.stderr
    doc = json.loads(out.stdout)[PLUGIN]["doc"]
    options = doc["options"]
    for name in ("url", "token", "validate_certs", "timeout", "states", "client_config", "profile",
                 "compose", "groups", "keyed_groups", "cache", "cache_plugin"):
        assert name in options, name
    assert options["token"]["env"] == [{"name": "PROV_TOKEN"}] and options["url"]["env"] == [{"name": "PROV_URL"}]
    assert options["plugin"]["choices"] == [PLUGIN]
    text = lab.ansible("ansible-doc", "-t", "inventory", PLUGIN)
    assert text.returncode == 0 and "rack_<rack>" in text.stdout, text.stderr
    # galaxy.yml is a valid collection manifest: ansible-galaxy builds the collection from it.
    coll = Path(lab.env["ANSIBLE_COLLECTIONS_PATH"]) / "ansible_collections/prov/provisioner"
    built = lab.ansible("ansible-galaxy", "collection", "build", str(coll), "--output-path", str(lab.tmp / "dist"))
    assert built.returncode == 0, built.stderr
    assert [p.name for p in (lab.tmp / "dist").iterdir()] == ["prov-provisioner-0.1.0.tar.gz"]


def test_ansible_lint_passes_the_collection(lab: Lab) -> None:
    # On a copy: ansible-lint treats its cwd as a project and may write into it.
    src = Path(lab.env["ANSIBLE_COLLECTIONS_PATH"]) / "ansible_collections/prov/provisioner"
    copy = lab.tmp / "lint/ansible_collections/prov/provisioner"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    # galaxy[no-repository]: prov has no public repository URL to name; the collection ships in its wheel.
    out = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--nocolor", "--profile", "production",
                          "--skip-list", "galaxy[no-repository]"], cwd=copy, env=lab.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
