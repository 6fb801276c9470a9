# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""Hostile ids are refused, never a 500 (issue 18, item 8).

An install token is ``<host id>.<secret>``: an id that overflows the database's integer
(``99999999999999999999``) or that ``str.isdigit`` accepts and ``int`` refuses (``²``) gave 500
on every install route. They get exactly the 403 a wrong token gets (the install routes must not
tell a missing host from a wrong secret) and change nothing. Ids in operator paths are typed
and bounded: out of range is a 422 that names the field.
"""

from __future__ import annotations

import secrets

import pytest

from provisioner import states as S
from provisioner.conductor import install_tokens
from tests.support.install import add_host, api, db, settings, snapshot  # noqa: F401

HOSTILE_IDS = [
    "99999999999999999999",  # beyond int64
    "9223372036854775808",  # 2**63
    "2147483648",  # 2**31: beyond the 32-bit id columns
    "²",  # isdigit() is true, int() refuses it
    "٣",  # an Arabic-Indic digit: int() accepts it, it is no ASCII id
    "0",
    "-1",
    "+1",
    " 1",
    "1_000",
    "",
]
# The seven install-time routes, as an installer calls them.
INSTALL_ROUTES = [
    ("GET", "config", {}),
    ("GET", "agent.sh", {}),
    ("GET", "user-data", {}),
    ("GET", "meta-data", {}),
    ("GET", "vendor-data", {}),
    ("POST", "events", {"json": {"event": "progress", "message": "hi", "progress": 5}}),
    ("GET", "report", {"params": {"event": "progress"}}),
]


def _secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.mark.parametrize("host_id", HOSTILE_IDS)
def test_hostile_token_ids_get_the_wrong_token_answer(api, db, settings, host_id) -> None:
    host = add_host(db, method="autoinstall", state=S.INSTALLING)
    install_tokens.mint(db, host, settings)
    before = snapshot(db)
    for method, what, kw in INSTALL_ROUTES:
        wrong = api.client.request(method, f"/install/v1/{host.id}.{_secret()}/{what}", **kw)
        assert wrong.status_code == 403, (what, wrong.text)
        r = api.client.request(method, f"/install/v1/{host_id}.{_secret()}/{what}", **kw)
        assert r.status_code == 403, (what, host_id, r.text)
        assert r.content == wrong.content, (what, host_id)
    assert snapshot(db) == before


@pytest.mark.parametrize("host_id", HOSTILE_IDS)
def test_verify_refuses_hostile_ids_without_raising_anything_else(db, host_id) -> None:
    from provisioner.errors import Forbidden

    with pytest.raises(Forbidden):
        install_tokens.verify(db, f"{host_id}.{_secret()}")


_OUT_OF_RANGE = ["99999999999999999999", "2147483648", "-5"]
OPERATOR_CASES = [
    *[("GET", f"/api/v1/configure/{bad}", "task_id") for bad in [*_OUT_OF_RANGE, "0"]],
    *[("GET", f"/api/v1/tasks/{bad}", "task_id") for bad in [*_OUT_OF_RANGE, "0"]],
    *[("POST", f"/api/v1/tasks/{bad}/cancel", "task_id") for bad in [*_OUT_OF_RANGE, "0"]],
    *[("GET", f"/api/v1/configure/1?after={bad}", "after") for bad in _OUT_OF_RANGE],
]


@pytest.mark.parametrize(("method", "path", "field"), OPERATOR_CASES)
def test_operator_ids_out_of_range_are_422_naming_the_field(api, method, path, field) -> None:
    r = api.client.request(method, path, headers=api.auth)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.text


@pytest.mark.parametrize("path", ["/api/v1/configure/²", "/api/v1/tasks/²", "/api/v1/tasks/1e3"])
def test_operator_ids_that_are_not_numbers_are_422(api, path) -> None:
    r = api.client.get(path, headers=api.auth)
    assert r.status_code == 422 and r.json()["field"] == "task_id", r.text


def test_in_range_ids_that_name_nothing_are_404(api) -> None:
    for path in ("/api/v1/configure/2147483647", "/api/v1/tasks/2147483647"):
        r = api.client.get(path, headers=api.auth)
        assert r.status_code == 404, r.text
