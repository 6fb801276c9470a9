"""Install parameters from plain values: per-family defaults, and no directive injection."""

from __future__ import annotations

import pytest

from provisioner.drivers.deploy.params import install_params, param
from provisioner.errors import InvalidInput


def test_family_defaults_and_overrides():
    rhel = install_params("rhel", None)
    assert rhel["mirror"].startswith("https://dl.rockylinux.org/") and rhel["release"] == "9"
    deb = install_params("unknown-family", {"mirror": "http://mirror.lan/debian", "packages": "vim"})
    assert (deb["mirror_scheme"], deb["mirror_host"], deb["mirror_dir"]) == ("http", "mirror.lan", "/debian")
    assert deb["release"] == "bookworm" and deb["packages"] == ["vim"] and deb["admin_user"] == "prov"


@pytest.mark.parametrize(("key", "value"), [("admin_user", "root\nx"), ("mirror", "http://x/ y"),
                                            ("packages", ["vim; reboot"]), ("disk", "/dev/sda /dev/sdb")])
def test_a_parameter_that_would_inject_a_directive_is_refused_by_name(key, value):
    with pytest.raises(InvalidInput) as exc:
        install_params("debian", {key: value})
    assert f"profile.params.{key}" in exc.value.message or key in exc.value.message


def test_domain_rule():
    assert param({"domain": "lab.example"}, "domain", "localdomain") == "lab.example"
    with pytest.raises(InvalidInput):
        param({"domain": "Lab Example"}, "domain", "localdomain")
