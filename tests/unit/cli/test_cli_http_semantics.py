"""The CLI and the API's HTTP semantics (issue 19, item 6): ``prov rack list --site`` filters on the
server, and ``prov host set --add-role/--rm-role`` (a read-modify-write) sends If-Match, so a change
another client made between its read and its write is kept, never overwritten."""

from __future__ import annotations

import json
from typing import Any

import pytest

from provisioner.client import ProvClient
from provisioner.errors import PreconditionFailed
from tests.unit.cli.conftest import LiveServer, Prov, one_error_line


def test_rack_list_site_is_filtered_by_the_api(prov: Prov, uid: str) -> None:
    for name, site in ((f"s1-{uid}", f"a-{uid}"), (f"s2-{uid}", f"b-{uid}"), (f"s3-{uid}", f"b-{uid}")):
        assert prov("rack", "add", name, "--site", site).exit_code == 0
    r = prov("rack", "list", "--site", f"b-{uid}", "-o", "json")
    assert r.exit_code == 0, r.output
    assert [row["name"] for row in json.loads(r.stdout)] == [f"s2-{uid}", f"s3-{uid}"]
    r = prov("rack", "list", "--site", f"none-{uid}", "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []


def _meddle(monkeypatch: pytest.MonkeyPatch, live_api: LiveServer, name: str, times: int) -> list[dict[str, Any]]:
    """Before each of the first ``times`` PATCHes the CLI sends, another client adds a role of its own."""
    original = ProvClient.patch
    sent: list[dict[str, Any]] = []

    def patch(self: ProvClient, path: str, **kw: Any) -> Any:
        sent.append(kw.get("headers") or {})
        if len(sent) <= times:
            with ProvClient(live_api.url, live_api.token) as other:
                roles = other.get(f"/api/v1/hosts/{name}")["roles"]
                original(other, f"/api/v1/hosts/{name}", json={"roles": [*roles, f"other{len(sent)}"]})
        return original(self, path, **kw)

    monkeypatch.setattr(ProvClient, "patch", patch)
    return sent


def test_add_role_keeps_a_concurrent_change(prov: Prov, uid: str, live_api: LiveServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rmw-{uid}"
    assert prov("host", "add", name, "--bmc-kind", "manual", "--role", "base").exit_code == 0
    sent = _meddle(monkeypatch, live_api, name, times=1)
    r = prov("host", "set", name, "--add-role", "web", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["roles"] == ["base", "other1", "web"]  # the other client's role kept
    assert len(sent) == 2 and all(h.get("If-Match", "").startswith('"') for h in sent)


def test_add_role_gives_up_after_three_lost_races(prov: Prov, uid: str, live_api: LiveServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rmx-{uid}"
    assert prov("host", "add", name, "--bmc-kind", "manual").exit_code == 0
    _meddle(monkeypatch, live_api, name, times=3)
    r = prov("host", "set", name, "--rm-role", "other1")
    assert r.exit_code == 4  # conflict (cli/exitcodes.py: 409/412)
    assert "changed since it was read" in one_error_line(r)
    with ProvClient(live_api.url, live_api.token) as c:
        assert c.get(f"/api/v1/hosts/{name}")["roles"] == ["other1", "other2", "other3"]


def test_the_client_knows_the_412(live_api: LiveServer, uid: str) -> None:
    with ProvClient(live_api.url, live_api.token) as c:
        c.post("/api/v1/racks", json={"name": f"e-{uid}"})
        rack, tag = c.get_tagged(f"/api/v1/racks/e-{uid}")
        assert rack["name"] == f"e-{uid}" and tag
        c.patch(f"/api/v1/racks/e-{uid}", json={"site": "x"}, headers={"If-Match": tag})
        with pytest.raises(PreconditionFailed) as err:
            c.patch(f"/api/v1/racks/e-{uid}", json={"site": "y"}, headers={"If-Match": tag})
        assert err.value.details["http_status"] == 412
        assert c.update(f"/api/v1/racks/e-{uid}", lambda cur: None)["site"] == "x"  # nothing to change
