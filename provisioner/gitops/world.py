"""What the controller knows now: racks, profiles, hosts (and guests), read through the REST API."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from provisioner.client import ProvClient
from provisioner.errors import NotFound

PAGE = 1000  # hosts per request; the API's listing is paginated


@dataclass
class World:
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    racks: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    guests: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # host -> name -> guest
    applied: dict[str, Any] | None = None  # last applied inventory record, if any
    # host -> fingerprint of its stored BMC password, for hosts the applied record does not
    # cover (GET /gitops/fingerprints; None: the host has no password)
    stored_passwords: dict[str, str | None] = field(default_factory=dict)

    def stored_password(self, host: str) -> str | None:
        """The controller's fingerprint of ``host``'s stored BMC password (the record's is current:
        the controller checks it against the stored ciphertext on every read)."""
        entry = ((self.applied or {}).get("fingerprints") or {}).get(f"host/{host}") or {}
        if "password" in entry:
            return str(entry["password"])
        return self.stored_passwords.get(host)

    def fingerprint(self, names: set[str] | None = None) -> str:
        """A digest of everything a plan depends on, to refuse a stale saved plan."""
        def pick(d: dict[str, dict[str, Any]], prefix: str) -> dict[str, Any]:
            return {k: _stable(v) for k, v in d.items() if names is None or f"{prefix}/{k}" in names}

        blob = {
            "profiles": pick(self.profiles, "profile"),
            "racks": pick(self.racks, "rack"),
            "hosts": pick(self.hosts, "host"),
            "guests": {h: g for h, g in self.guests.items() if names is None or f"host/{h}" in names},
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


# Fields that change on their own (timestamps, checks) and must not make a plan stale.
_VOLATILE = {"updated_at", "power_checked_at", "state_entered_at", "state_deadline", "bmc_error", "bmc_reachable"}


def _stable(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in _VOLATILE}


def _list_all(client: ProvClient, path: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = client.get(path, params={"limit": PAGE, "offset": offset})
        data = page["data"] if isinstance(page, dict) else page
        out.extend(data)
        count = page.get("count", len(out)) if isinstance(page, dict) else len(out)
        offset += len(data)
        if not data or offset >= count:
            return out


FINGERPRINT_PAGE = 100  # hosts per GET /gitops/fingerprints (its bound; keeps the URL short)


def fetch_password_fingerprints(client: ProvClient, world: World, hosts: list[str]) -> None:
    """Ask the controller for the stored-password fingerprints the applied record lacks."""
    for i in range(0, len(hosts), FINGERPRINT_PAGE):
        try:
            page = client.get("/api/v1/gitops/fingerprints", params={"host": hosts[i:i + FINGERPRINT_PAGE]})
        except NotFound:  # an older controller: the record is all there is
            return
        world.stored_passwords.update(page.get("fingerprints") or {})


def fetch(client: ProvClient, *, with_guests_for: set[str] | None = None) -> World:
    world = World()
    world.profiles = {p["name"]: p for p in _list_all(client, "/api/v1/profiles")}
    world.racks = {r["name"]: r for r in _list_all(client, "/api/v1/racks")}
    world.hosts = {h["name"]: h for h in _list_all(client, "/api/v1/hosts")}
    for name in sorted(with_guests_for or ()):
        if name not in world.hosts:
            continue
        try:
            page = client.get(f"/api/v1/hosts/{name}/guests")
        except NotFound:
            continue
        data = page["data"] if isinstance(page, dict) else page
        world.guests[name] = {g["name"]: g for g in data}
    try:
        world.applied = client.get("/api/v1/gitops/applied")
    except NotFound:
        world.applied = None
    return world
