"""``prov host import FILE.yaml|FILE.csv``: enrol many hosts at once, all or nothing.

Everything is checked before anything is written: every row against the API's
own request model (provisioner.schemas.HostCreate, so the rules are the
server's), duplicates inside the file (names, MACs, BMC address+port), then
against the controller (racks and profiles exist, names/MACs/BMC endpoints not
taken). Every problem is reported as ``FILE:LINE: path: reason``. Only a file
without problems is imported; if the controller still refuses a row (another
client won a race), the hosts and racks created so far are deleted again.

YAML (same shape as the API's host body and the GitOps inventory)::

    apiVersion: prov/v1          # optional
    racks:                       # optional: created if missing
      - {name: r1, site: dc1}
    hosts:
      - name: web01
        rack: r1
        u_position: 10           # or "u"
        nics: [{mac: "52:54:00:12:34:56", boot: true}]
        bmc: {kind: ipmi, address: 10.0.0.21, port: 623, username: admin,
              password: {env: R1_BMC_PW}}     # or {file: pw.txt}; never inline
        profile: debian12
        roles: [docker]

CSV: a header row with ``name, rack, u, macs, boot_mac, bmc_kind, bmc_address,
bmc_port, bmc_username, bmc_password_env, bmc_password_file, profile, roles``
(only ``name`` is required; ``macs`` and ``roles`` are separated by spaces or ``;``).
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from pydantic import ValidationError

from provisioner import schemas, validators
from provisioner.cli.groups import host_app
from provisioner.cli.host import register_secret
from provisioner.cli.output import OutputFormat, OutputOpt, client, emit, fail, handle_errors, items
from provisioner.client import ProvClient
from provisioner.errors import InvalidInput, NotFound, ProvError
from provisioner.gitops import yamlsafe

CSV_COLUMNS = (
    "name",
    "rack",
    "u",
    "macs",
    "boot_mac",
    "bmc_kind",
    "bmc_address",
    "bmc_port",
    "bmc_username",
    "bmc_password_env",
    "bmc_password_file",
    "profile",
    "roles",
)
_LIST_SEP = re.compile(r"[\s;|]+")
# The API's largest page; existing hosts are read in pages of this size.
PAGE = 1000


@dataclass
class Problem:
    line: int
    path: str
    reason: str


@dataclass
class Row:
    """One host (or rack) of the file: its API body and where each field came from."""

    index: int
    line: int
    body: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)  # field path -> line

    def line_of(self, path: str) -> int:
        # The most specific recorded path that prefixes ``path``.
        best = self.line
        best_len = -1
        for p, ln in self.lines.items():
            if (path == p or path.startswith(p + ".") or path.startswith(p + "[")) and len(p) > best_len:
                best, best_len = ln, len(p)
        return best


@dataclass
class Parsed:
    racks: list[Row] = field(default_factory=list)
    hosts: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def flag(self, row: Row, sub: str, reason: str) -> None:
        """A problem with field ``sub`` of a host row, at that field's line."""
        self.problems.append(Problem(row.line_of(sub), f"hosts[{row.index}].{sub}", reason))


# --------------------------------------------------------------------------- YAML with line numbers
def _dotted(path: tuple[Any, ...]) -> str:
    """("hosts", 0, "nics") -> "hosts[0].nics", the paths Row.line_of looks up."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def load_yaml(text: str) -> tuple[Any, dict[str, int]]:
    """Plain data plus each path's line, through the bounded loader (aliases, depth, tags, duplicates)."""
    try:
        loaded = yamlsafe.parse(text, str_keys=True)
    except yamlsafe.YamlError as exc:
        raise _FileError(exc.line, exc.reason.replace("YAML:", "not valid YAML:", 1)) from None
    return loaded.data, {_dotted(p): ln for p, ln in loaded.lines.items()}


class _FileError(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _sub_lines(lines: dict[str, int], prefix: str) -> dict[str, int]:
    """Paths under ``prefix`` (e.g. ``hosts[3]``) re-rooted to the entry itself."""
    out: dict[str, int] = {}
    for p, ln in lines.items():
        if p.startswith(prefix + "."):
            out[p[len(prefix) + 1 :]] = ln
        elif p.startswith(prefix + "["):
            out[p[len(prefix) :]] = ln
    return out


def parse_yaml(text: str) -> Parsed:
    data, lines = load_yaml(text)
    parsed = Parsed()
    if isinstance(data, list):
        data, lines = {"hosts": data}, {("hosts" + k if k.startswith("[") else k): v for k, v in lines.items()}
    if not isinstance(data, dict):
        raise _FileError(1, "expected a mapping with 'hosts:' (or a list of hosts)")
    unknown = sorted(set(data) - {"apiVersion", "kind", "racks", "hosts"})
    for key in unknown:
        reason = "unknown top-level key (expected apiVersion, racks, hosts)"
        parsed.problems.append(Problem(lines.get(key, 1), key, reason))
    version = data.get("apiVersion")
    if version is not None and version != "prov/v1":
        parsed.problems.append(Problem(lines.get("apiVersion", 1), "apiVersion", f"unsupported: {version!r}"))
    for kind in ("racks", "hosts"):
        entries = data.get(kind) or []
        if not isinstance(entries, list):
            parsed.problems.append(Problem(lines.get(kind, 1), kind, "must be a list"))
            continue
        target = parsed.racks if kind == "racks" else parsed.hosts
        for i, entry in enumerate(entries):
            prefix = f"{kind}[{i}]"
            line = lines.get(prefix, 1)
            if not isinstance(entry, dict):
                parsed.problems.append(Problem(line, prefix, "must be a mapping"))
                continue
            target.append(Row(index=i, line=line, body=entry, lines=_sub_lines(lines, prefix)))
    return parsed


# --------------------------------------------------------------------------- CSV
def parse_csv(text: str) -> Parsed:
    parsed = Parsed()
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    if "name" not in header:
        known = ", ".join(CSV_COLUMNS)
        raise _FileError(1, f"the header row must name the columns; 'name' is required (known: {known})")
    for col in header:
        if col and col not in CSV_COLUMNS:
            parsed.problems.append(Problem(1, col, f"unknown column (known: {', '.join(CSV_COLUMNS)})"))
    reader.fieldnames = header
    for i, raw in enumerate(reader):
        # line_num is the physical line after the record (quoted fields may span lines).
        line = reader.line_num
        rec = {k: (v or "").strip() for k, v in raw.items() if k}
        if not any(rec.values()):
            continue
        body: dict[str, Any] = {"name": rec.get("name", "")}
        if rec.get("rack"):
            body["rack"] = rec["rack"]
        if rec.get("u"):
            body["u_position"] = _int_or_str(rec["u"])
        macs = [m for m in _LIST_SEP.split(rec.get("macs", "")) if m]
        boot = _mac_key(rec.get("boot_mac") or (macs[0] if macs else ""))
        body["nics"] = [{"mac": m, "boot": _mac_key(m) == boot} for m in macs]
        if rec.get("boot_mac") and boot not in {_mac_key(m) for m in macs}:
            parsed.problems.append(Problem(line, f"hosts[{i}].boot_mac", "is not one of the row's macs"))
        bmc: dict[str, Any] = {}
        for col, key in (("bmc_kind", "kind"), ("bmc_address", "address"), ("bmc_username", "username")):
            if rec.get(col):
                bmc[key] = rec[col]
        if rec.get("bmc_port"):
            bmc["port"] = _int_or_str(rec["bmc_port"])
        refs = {k: rec[c] for c, k in (("bmc_password_env", "env"), ("bmc_password_file", "file")) if rec.get(c)}
        if refs:
            bmc["password"] = refs
        if bmc:
            body["bmc"] = bmc
        if rec.get("profile"):
            body["profile"] = rec["profile"]
        if rec.get("roles"):
            body["roles"] = [r for r in _LIST_SEP.split(rec["roles"]) if r]
        parsed.hosts.append(Row(index=i, line=line, body=body))
    return parsed


def _mac_key(v: str) -> str:
    """A MAC in canonical form for comparison; invalid ones are left for the model to report."""
    try:
        return validators.normalize_mac(v)
    except ValueError:
        return v.lower()


def _int_or_str(v: str) -> int | str:
    return int(v) if v.isdigit() else v  # a non-number is left for the model to reject by name


# --------------------------------------------------------------------------- checks
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


# --------------------------------------------------------------------------- command
def _report(label: str, problems: list[Problem]) -> None:
    for p in sorted(problems, key=lambda p: p.line):
        typer.echo(f"{label}:{p.line}: {p.path}: {' '.join(p.reason.split())}", err=True)


@host_app.command("import")
@handle_errors
def import_(
    file: Annotated[Path, typer.Argument(help="hosts in YAML (.yaml/.yml) or CSV (.csv)", dir_okay=False)],
    check_only: Annotated[bool, typer.Option("--check", help="validate everything, import nothing")] = False,
    output: OutputFormat = OutputOpt,
) -> None:
    """Enrol many hosts from a YAML or CSV file: everything is checked first, then all or nothing."""
    label = str(file)
    try:
        text = yamlsafe.read_text(file)  # size-bounded, UTF-8 (a BOM, as spreadsheet exports write, is dropped)
    except OSError as exc:
        raise fail(f"{file}: {exc.strerror or exc}", 2) from None
    except yamlsafe.YamlError as exc:
        raise fail(f"{label}:{exc.line}: {exc.reason}", 2) from None
    try:
        parsed = parse_csv(text) if file.suffix.lower() == ".csv" else parse_yaml(text)
    except _FileError as exc:
        raise fail(f"{label}:{exc.line}: {exc.reason}", 2) from None
    checked = check_rows(parsed, file.parent)
    hosts = [b for b in checked if "row" in b]
    racks = {b["name"]: b for b in checked if "row" not in b}
    with client() as c:
        if not parsed.problems:
            racks_to_create = check_server(c, parsed, checked)
        if parsed.problems:
            _report(label, parsed.problems)
            n = len(parsed.problems)
            summary = f"{label}: {n} problem{'s' if n != 1 else ''} found; nothing was imported"
            raise fail(summary, InvalidInput.exit_code)
        if check_only:
            typer.echo(f"{label}: {len(hosts)} hosts and {len(racks_to_create)} new racks would be imported")
            return
        created = _create_all(c, label, [racks[r] for r in racks_to_create], hosts)
    if output == OutputFormat.table:
        names = ", ".join(h.get("name", "?") for h in created)
        typer.echo(f"imported {len(created)} hosts from {label}" + (f": {names}" if names else ""))
    else:
        emit(created, output)


def _create_all(
    c: ProvClient, label: str, racks: list[dict[str, Any]], hosts: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    made_racks: list[str] = []
    made_hosts: list[dict[str, Any]] = []
    current = ""
    try:
        for rb in racks:
            current = f"racks {rb['name']}"
            c.post("/api/v1/racks", json=rb)
            made_racks.append(rb["name"])
        for hb in hosts:
            row: Row = hb["row"]
            current = f"{label}:{row.line}: hosts[{row.index}]"
            made_hosts.append(c.post("/api/v1/hosts", json=hb["body"]))
    except ProvError as exc:
        _rollback(c, made_hosts, made_racks)
        raise type(exc)(f"{current}: {exc.message}; nothing was imported (rolled back)") from None
    except BaseException:
        _rollback(c, made_hosts, made_racks)
        raise
    return made_hosts


def _rollback(c: ProvClient, hosts: list[dict[str, Any]], racks: list[str]) -> None:
    for h in reversed(hosts):
        try:
            c.delete(f"/api/v1/hosts/{quote(str(h.get('name')), safe='')}")
        except ProvError as exc:
            typer.echo(f"warning: could not roll back host {h.get('name')}: {exc.message}", err=True)
    for name in reversed(racks):
        try:
            c.delete(f"/api/v1/racks/{quote(name, safe='')}")
        except ProvError as exc:
            typer.echo(f"warning: could not roll back rack {name}: {exc.message}", err=True)
