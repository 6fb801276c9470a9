"""What ``prov host import`` reads: YAML and CSV host files, parsed into rows that remember their lines.

Nothing here is checked beyond the file's shape: every row's body goes to
``import_checks`` (the API's own models, duplicates, the controller). Problems carry
the file line of the field they are about, so they print as ``FILE:LINE: path: reason``.

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
import re
from dataclasses import dataclass, field
from typing import Any

from provisioner import validators
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
        raise FileError(exc.line, exc.reason.replace("YAML:", "not valid YAML:", 1)) from None
    return loaded.data, {_dotted(p): ln for p, ln in loaded.lines.items()}


class FileError(Exception):
    """The file as a whole cannot be read as hosts (bad YAML, no CSV header): one line, exit 2."""

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
        raise FileError(1, "expected a mapping with 'hosts:' (or a list of hosts)")
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
        raise FileError(1, f"the header row must name the columns; 'name' is required (known: {known})")
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
