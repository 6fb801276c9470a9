"""``prov host import``'s checks: every row against the API's own models, the file against itself,
then against the controller. Each problem is added to the ``Parsed`` it was found in.

The rules are the server's (``provisioner.schemas.HostCreate``/``RackCreate``); what
only the whole file or the controller can tell is checked here: duplicate names, MACs
and BMC address+port inside the file, racks and profiles that must exist, names/MACs/BMC
endpoints already taken. Passwords are resolved from ``{env: VAR}``/``{file: PATH}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from provisioner import schemas
from provisioner.cli.host import register_secret
from provisioner.cli.import_formats import Parsed, Problem, Row
from provisioner.cli.output import items
from provisioner.client import ProvClient
from provisioner.errors import NotFound

# The API's largest page; existing hosts are read in pages of this size.
PAGE = 1000


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def resolve_password(ref: Any, base: Path) -> str:
    """``{env: VAR}`` or ``{file: PATH}`` (relative to the import file). Inline strings are refused."""
    if isinstance(ref, str):
        raise ValueError("inline passwords are refused (files get shared); use {env: VAR} or {file: PATH}")
    if not isinstance(ref, dict) or len(ref) != 1 or next(iter(ref)) not in ("env", "file"):
        raise ValueError("expected exactly one of {env: VAR} or {file: PATH}")
    ((kind, value),) = ref.items()
    if kind == "env":
        if str(value) not in os.environ:
            raise ValueError(f"environment variable {value} is not set")
        secret = os.environ[str(value)]
    else:
        path = Path(str(value))
        path = path if path.is_absolute() else base / path
        try:
            text = path.read_text()
            secret = text.splitlines()[0] if text else ""  # the first line, like --bmc-password-file
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ValueError("password is empty")
    register_secret(secret)
    return secret


def check_rows(parsed: Parsed, base: Path) -> list[dict[str, Any]]:
    """Validate every row with the API's own models; returns the request bodies (passwords resolved)."""
    bodies: list[dict[str, Any]] = []
    for row in parsed.racks:
        prefix = f"racks[{row.index}]"
        try:
            bodies.append(schemas.RackCreate.model_validate(row.body).model_dump())
        except ValidationError as exc:
            _add_validation(parsed, row, prefix, exc)
    host_bodies: list[dict[str, Any]] = []
    for row in parsed.hosts:
        prefix = f"hosts[{row.index}]"
        body = dict(row.body)
        if "u" in body and "u_position" not in body:
            body["u_position"] = body.pop("u")
        bmc = dict(body.get("bmc") or {}) if isinstance(body.get("bmc"), dict) else body.get("bmc")
        if isinstance(bmc, dict) and "password" in bmc:
            try:
                bmc["password"] = resolve_password(bmc["password"], base)
            except ValueError as exc:
                parsed.problems.append(Problem(row.line_of("bmc.password"), f"{prefix}.bmc.password", str(exc)))
                bmc.pop("password")
            body["bmc"] = bmc
        try:
            model = schemas.HostCreate.model_validate(body)
        except ValidationError as exc:
            _add_validation(parsed, row, prefix, exc)
            continue
        host_bodies.append({"row": row, "body": model.model_dump(mode="json", exclude_none=True)})
    _check_duplicates(parsed, host_bodies)
    return bodies + host_bodies


def _add_validation(parsed: Parsed, row: Row, prefix: str, exc: ValidationError) -> None:
    for err in exc.errors():
        path = _path(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        full = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
        parsed.problems.append(Problem(row.line_of(path) if path else row.line, full, msg))


def _check_duplicates(parsed: Parsed, host_bodies: list[dict[str, Any]]) -> None:
    seen_name: dict[str, int] = {}
    seen_mac: dict[str, int] = {}
    seen_bmc: dict[tuple[str, int], int] = {}
    for hb in host_bodies:
        row: Row = hb["row"]
        body = hb["body"]
        name = body["name"]
        if name in seen_name:
            parsed.flag(row, "name", f"{name} also on line {seen_name[name]}")
        seen_name.setdefault(name, row.line_of("name"))
        for j, nic in enumerate(body.get("nics", [])):
            mac, where = nic["mac"], f"nics[{j}].mac"
            if mac in seen_mac:
                parsed.flag(row, where, f"{mac} also on line {seen_mac[mac]}")
            seen_mac.setdefault(mac, row.line_of(where))
        bmc = body.get("bmc") or {}
        if bmc.get("address"):
            key = (bmc["address"], int(bmc.get("port") or schemas.DEFAULT_BMC_PORT.get(bmc.get("kind", "ipmi"), 0)))
            if key in seen_bmc:
                parsed.flag(row, "bmc.address", f"BMC {key[0]}:{key[1]} also on line {seen_bmc[key]}")
            seen_bmc.setdefault(key, row.line_of("bmc.address"))


def _exists(c: ProvClient, path: str) -> bool:
    try:
        c.get(path)
    except NotFound:
        return False
    return True


def check_server(c: ProvClient, parsed: Parsed, checked: list[dict[str, Any]]) -> list[str]:
    """Check references and uniqueness against the controller. Returns the racks to create."""
    file_racks = {b["name"] for b in checked if "row" not in b}
    racks_to_create = [name for name in sorted(file_racks) if not _exists(c, f"/api/v1/racks/{quote(name, safe='')}")]
    known_racks: dict[str, bool] = {name: True for name in file_racks}
    known_profiles: dict[str, bool] = {}
    taken_names: set[str] = set()
    taken_macs: set[str] = set()
    taken_bmcs: set[tuple[str, int]] = set()
    offset = 0
    while True:  # every existing host once, a page at a time
        page = c.get("/api/v1/hosts", params={"limit": PAGE, "offset": offset, "sort": "id"})
        rows = items(page)
        for h in rows:
            taken_names.add(str(h.get("name")))
            taken_macs.update(n.get("mac") for n in h.get("nics") or [])
            bmc = h.get("bmc") or {}
            if bmc.get("address") and bmc.get("port"):
                taken_bmcs.add((bmc["address"], int(bmc["port"])))
        offset += len(rows)
        count = page.get("count") if isinstance(page, dict) else None
        if not rows or len(rows) < PAGE or (isinstance(count, int) and offset >= count):
            break
    for hb in (b for b in checked if "row" in b):
        row: Row = hb["row"]
        body = hb["body"]
        rack = body.get("rack")
        if rack and rack not in known_racks:
            known_racks[rack] = _exists(c, f"/api/v1/racks/{quote(rack, safe='')}")
        if rack and not known_racks[rack]:
            parsed.flag(row, "rack", f"rack {rack!r} not found")
        prof = body.get("profile")
        if prof and prof not in known_profiles:
            known_profiles[prof] = _exists(c, f"/api/v1/profiles/{quote(prof, safe='')}")
        if prof and not known_profiles[prof]:
            parsed.flag(row, "profile", f"profile {prof!r} not found")
        if body["name"] in taken_names:
            parsed.flag(row, "name", f"host {body['name']} already exists")
        for j, nic in enumerate(body.get("nics", [])):
            if nic["mac"] in taken_macs:
                parsed.flag(row, f"nics[{j}].mac", f"MAC {nic['mac']} already belongs to another host")
        bmc = body.get("bmc") or {}
        if bmc.get("address"):
            key = (bmc["address"], int(bmc.get("port") or schemas.DEFAULT_BMC_PORT.get(bmc.get("kind", "ipmi"), 0)))
            if key in taken_bmcs:
                parsed.flag(row, "bmc.address", f"BMC {key[0]}:{key[1]} is already enrolled")
    return racks_to_create
