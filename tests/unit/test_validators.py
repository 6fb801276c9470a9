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


@pytest.mark.parametrize(("text", "code"), [("a\x00b", "U+0000 (NUL)"), ("\x1b[31m", "U+001B (ESC)"),
                                            ("x\x7f", "U+007F (DEL)"), ("x\x85", "U+0085"),
                                            ("abc\u202edef", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
                                            ("\u2066x", "U+2066"), ("\ud800", "U+D800 (lone surrogate)")])
def test_refused_characters_are_named_by_code_point(text: str, code: str) -> None:
    for multiline in (False, True):
        problem = v.text_problem(text, multiline=multiline)
        assert problem is not None and code in problem
        assert text not in problem  # the value itself is never echoed


def test_line_breaks_only_in_multiline_text() -> None:
    for brk in ("\n", "\r", "\u2028", "\u2029"):
        assert "line break" in (v.text_problem(f"a{brk}b") or "")
        assert v.text_problem(f"a{brk}b", multiline=True) is None
    assert v.text_problem("tab\tis fine") is None
    assert v.text_problem("Grüße, 東京, مرحبا") is None  # letters of any script are text


def test_names_refuse_control_characters_by_code_point() -> None:
    from pydantic import ValidationError

    from provisioner.schemas import HostCreate, RackCreate

    with pytest.raises(ValidationError, match="U\\+001B"):
        HostCreate.model_validate({"name": "web\x1b01"})
    with pytest.raises(ValidationError, match="U\\+202E"):
        RackCreate.model_validate({"name": "r1", "site": "dc\u202e1"})
    with pytest.raises(ValidationError, match="NIC name"):
        HostCreate.model_validate({"name": "w", "nics": [{"mac": "aa:bb:cc:dd:ee:ff", "name": "eth 0"}]})
    with pytest.raises(ValidationError, match="must be an integer"):
        HostCreate.model_validate({"name": "w", "bmc": {"address": "10.0.0.1", "port": "623"}})
    assert HostCreate.model_validate({"name": " web01\n"}).name == "web01"
