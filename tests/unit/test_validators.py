from __future__ import annotations

import pytest

from provisioner import validators as v


@pytest.mark.parametrize(
    "raw",
    ["52:54:00:AB:cd:EF", "52-54-00-ab-cd-ef", "5254.00ab.cdef", "525400abcdef", " 52:54:00:ab:cd:ef "],
)
def test_mac_forms(raw: str) -> None:
    assert v.normalize_mac(raw) == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize("raw", ["", "52:54:00:ab:cd", "52:54:00:ab:cd:ef:00", "52:54-00:ab:cd:ef", "gg:54:00:ab:cd:ef",
                                 "5254.00ab.cde", "52:54:00:ab:cd:e"])
def test_mac_bad(raw: str) -> None:
    with pytest.raises(ValueError, match="MAC"):
        v.normalize_mac(raw)


@pytest.mark.parametrize("raw,out", [("web01", "web01"), ("WEB-01", "web-01"), ("a", "a"), ("1web", "1web"),
                                     ("a" * 63, "a" * 63)])
def test_hostname_ok(raw: str, out: str) -> None:
    assert v.validate_hostname(raw) == out


@pytest.mark.parametrize("raw", ["", "-web", "web-", "we_b", "web.example", "a" * 64, "123", "wéb", "web 01"])
def test_hostname_bad(raw: str) -> None:
    with pytest.raises(ValueError):
        v.validate_hostname(raw)


def test_ip_and_address() -> None:
    assert v.validate_ip("10.0.0.1") == "10.0.0.1"
    assert v.validate_ip("FE80::1") == "fe80::1"
    for bad in ("10.0.0.256", "1.2.3", "x"):
        with pytest.raises(ValueError):
            v.validate_ip(bad)
    assert v.validate_address("bmc-01.Example.com.") == "bmc-01.example.com"
    assert v.validate_address("127.0.0.1") == "127.0.0.1"
    for bad in ("not an address", "a..b", "-a.b", "a" * 254):
        with pytest.raises(ValueError):
            v.validate_address(bad)


def test_port_and_slug() -> None:
    assert v.validate_port(623) == 623
    for bad in (0, 65536, -1, True):
        with pytest.raises(ValueError):
            v.validate_port(bad)  # type: ignore[arg-type]
    assert v.validate_slug("Ubuntu-22.04") == "ubuntu-22.04"
    for bad in ("", ".x", "a b", "12", "x" * 64):
        with pytest.raises(ValueError):
            v.validate_slug(bad)


def test_annotated_types_in_models() -> None:
    from pydantic import ValidationError

    from provisioner.schemas import HostCreate

    h = HostCreate.model_validate({"name": "Web01", "nics": [{"mac": "AA-BB-CC-DD-EE-FF"}, {"mac": "aabbccddee00"}]})
    assert h.name == "web01" and [n.mac for n in h.nics] == ["aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:00"]
    assert [n.boot for n in h.nics] == [True, False]  # the first NIC boots unless told otherwise
    with pytest.raises(ValidationError):
        HostCreate.model_validate({"name": "w", "nics": [{"mac": "aa:bb:cc:dd:ee:ff", "boot": True},
                                                         {"mac": "aa:bb:cc:dd:ee:00", "boot": True}]})
    with pytest.raises(ValidationError):
        HostCreate.model_validate({"name": 12})
