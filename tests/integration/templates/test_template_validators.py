"""Every rendered install file passes its real validator.

kickstart   -> pykickstart's ``ksvalidator`` console script (RHEL 8, 9, 10 and Fedora 40 grammars)
preseed     -> ``debconf-set-selections -c`` (Debian's debconf-utils)
autoinstall -> ``cloud-init schema`` (Debian's cloud-init package) on the user-data and on its
               embedded cloud-init ``user-data``, plus the autoinstall section against the keys
               Subiquity documents (our own JSON schema below, written from its reference docs)
grub        -> ``grub-script-check`` (grub-common)
Each validator is also shown a broken file, to prove it really validates.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from provisioner import templates_catalog as cat
from provisioner.render import render
from provisioner.settings import Settings
from tests.support.helpers import require_binary
from tests.support.install import make_settings

pytestmark = pytest.mark.integration

KSVALIDATOR = str(Path(sys.executable).with_name("ksvalidator"))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("validators-data"))


def variants(method: str) -> list[dict[str, Any]]:
    """The sample context plus the edge cases: no disk, no proxy, no packages, several keys, no keys."""
    base = cat.sample_context(method)
    bare = copy.deepcopy(base)
    bare["install"].update(disk="", proxy="", packages=[], ssh_authorized_keys=[])
    many = copy.deepcopy(base)
    many["install"]["ssh_authorized_keys"] = [cat.SAMPLE_KEY, "ecdsa-sha2-nistp256 AAAAE2VjZHNh second@example"]
    many["install"]["admin_user"] = "ops_admin"
    return [base, bare, many]


def run(cmd: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- kickstart
@pytest.mark.parametrize("version", ["RHEL8", "RHEL9", "RHEL10", "F40"])
def test_kickstart_passes_ksvalidator(shipped, tmp_path, version):
    require_binary(KSVALIDATOR)
    for i, ctx in enumerate(variants("kickstart")):
        f = tmp_path / f"ks{i}.cfg"
        f.write_text(render("kickstart/default.j2", ctx, shipped))
        r = run([KSVALIDATOR, "-e", "-v", version], f)
        assert r.returncode == 0, f"{version} variant {i}: {r.stdout}{r.stderr}"
    bad = tmp_path / "bad.ks"
    bad.write_text("rootpw\nnosuchcommand --x\n")
    assert run([KSVALIDATOR, "-v", version], bad).returncode != 0


# --------------------------------------------------------------------------- preseed
def test_preseed_passes_debconf_set_selections(shipped, tmp_path):
    require_binary("debconf-set-selections")
    for i, ctx in enumerate(variants("preseed")):
        f = tmp_path / f"preseed{i}.cfg"
        text = render("preseed/default.j2", ctx, shipped)
        f.write_text(text)
        r = run(["debconf-set-selections", "-c"], f)
        assert r.returncode == 0 and not r.stderr.strip(), f"variant {i}: {r.stderr}"
        # every non-comment logical line is "owner question type value"
        logical = text.replace("\\\n", " ")
        for line in logical.splitlines():
            if line.strip() and not line.startswith("#"):
                assert len(line.split(None, 3)) >= 3, line
    bad = tmp_path / "bad.cfg"
    bad.write_text("d-i passwd/root-login\n")
    assert run(["debconf-set-selections", "-c"], bad).returncode != 0


# --------------------------------------------------------------------------- autoinstall
_STR_LIST = {"type": "array", "items": {"type": ["string", "array"]}}
# Top-level keys of Subiquity's autoinstall reference (version 1), with the
# types of those our template uses. Unknown keys are an error, as in Subiquity.
SUBIQUITY_AUTOINSTALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version"],
    "additionalProperties": False,
    "properties": {
        "version": {"type": "integer", "minimum": 1, "maximum": 1},
        "interactive-sections": {"type": "array", "items": {"type": "string"}},
        "early-commands": _STR_LIST,
        "late-commands": _STR_LIST,
        "error-commands": _STR_LIST,
        "locale": {"type": "string"},
        "refresh-installer": {"type": "object", "additionalProperties": False,
                              "properties": {"update": {"type": "boolean"}, "channel": {"type": "string"}}},
        "keyboard": {"type": "object", "required": ["layout"], "additionalProperties": False,
                     "properties": {"layout": {"type": "string"}, "variant": {"type": "string"},
                                    "toggle": {"type": ["string", "null"]}}},
        "source": {"type": "object"},
        "network": {"type": "object", "properties": {"version": {"const": 2}}, "required": ["version"]},
        "proxy": {"type": ["string", "null"]},
        "apt": {"type": "object", "properties": {"preserve_sources_list": {"type": "boolean"},
                                                 "primary": {"type": "array"}, "geoip": {"type": "boolean"},
                                                 "sources": {"type": "object"}}},
        "storage": {"type": "object"},
        "identity": {"type": "object", "required": ["username", "hostname", "password"]},
        "active-directory": {"type": "object"},
        "ubuntu-pro": {"type": "object"},
        "ssh": {"type": "object", "additionalProperties": False,
                "properties": {"install-server": {"type": "boolean"}, "allow-pw": {"type": "boolean"},
                               "authorized-keys": {"type": "array", "items": {"type": "string"}}}},
        "codecs": {"type": "object"},
        "drivers": {"type": "object"},
        "oem": {"type": "object"},
        "snaps": {"type": "array"},
        "debconf-selections": {"type": "string"},
        "packages": {"type": "array", "items": {"type": "string"}},
        "kernel": {"type": "object"},
        "kernel-crash-dumps": {"type": "object"},
        "timezone": {"type": "string"},
        "updates": {"enum": ["security", "all"]},
        "shutdown": {"enum": ["reboot", "poweroff"]},
        "reporting": {"type": "object"},
        "user-data": {"type": "object"},
    },
    # Subiquity needs a user: either "identity" or cloud-init "user-data".
    "anyOf": [{"required": ["identity"]}, {"required": ["user-data"]}],
}


def test_autoinstall_user_data_passes_cloud_init_and_subiquity_schemas(shipped, tmp_path):
    require_binary("cloud-init")
    for i, ctx in enumerate(variants("autoinstall")):
        text = render("autoinstall/user-data.j2", ctx, shipped)
        f = tmp_path / f"user-data{i}"
        f.write_text(text)
        r = run(["cloud-init", "schema", "--config-file"], f)
        assert r.returncode == 0, f"variant {i}: {r.stdout}{r.stderr}"
        doc = yaml.safe_load(text)
        ai = doc["autoinstall"]
        jsonschema.validate(ai, SUBIQUITY_AUTOINSTALL_SCHEMA)
        # the cloud-init config Subiquity hands to the installed system
        inner = tmp_path / f"inner{i}"
        inner.write_text("#cloud-config\n" + yaml.safe_dump(ai["user-data"]))
        r = run(["cloud-init", "schema", "--config-file"], inner)
        assert r.returncode == 0, f"variant {i} user-data: {r.stdout}{r.stderr}"
        assert ai["ssh"]["allow-pw"] is False and ai["user-data"]["ssh_pwauth"] is False
        assert ai["user-data"]["users"][0]["lock_passwd"] is True
        assert "identity" not in ai  # no password hash shipped at all
    for name in ("vendor-data",):
        f = tmp_path / name
        f.write_text(render(f"autoinstall/{name}.j2", cat.sample_context("autoinstall"), shipped))
        assert run(["cloud-init", "schema", "--config-file"], f).returncode == 0
    meta = yaml.safe_load(render("autoinstall/meta-data.j2", cat.sample_context("autoinstall"), shipped))
    assert meta == {"instance-id": "prov-web01", "local-hostname": "web01"}
    bad = tmp_path / "bad"
    bad.write_text("#cloud-config\nusers: 5\n")
    assert run(["cloud-init", "schema", "--config-file"], bad).returncode != 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 1, "user-data": {}, "identiy": {}}, SUBIQUITY_AUTOINSTALL_SCHEMA)


# --------------------------------------------------------------------------- grub
@pytest.mark.parametrize("method", cat.INSTALL_METHODS)
def test_grub_configs_pass_grub_script_check(shipped, tmp_path, method):
    require_binary("grub-script-check")
    for name in ("install", "local", "discover"):
        f = tmp_path / f"{name}.cfg"
        f.write_text(render(f"grub/{name}.j2", cat.context_for("grub", name, method), shipped))
        r = run(["grub-script-check"], f)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
    bad = tmp_path / "bad.cfg"
    bad.write_text("menuentry 'x' {\n")
    assert run(["grub-script-check"], bad).returncode != 0


def test_validators_are_the_real_programs():
    """Guard against a PATH shim: the validators resolve to packaged binaries."""
    for prog in ("debconf-set-selections", "cloud-init", "grub-script-check"):
        path = shutil.which(prog)
        if path is not None:
            assert path.startswith(("/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/")), path
