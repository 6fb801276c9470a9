"""Fault injection for GitOps input: hostile or broken inventory files are refused, fast, at file:line.

Every case goes through the loader and through the real CLI (``prov inventory validate``,
``prov plan -f``, ``prov apply -f``) against a recording stub controller. Each must finish
within a second, say ``FILE:LINE: reason`` on exactly one stderr line with exit code 1, and
send the controller no request at all (so nothing can be applied). The cases are described by
what they do (an alias bomb of any shape, any tag outside plain YAML, any duplicate key...);
the expected line is where the problem is written.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

import provisioner.cli.gitops
import provisioner.cli.importer  # noqa: F401  (registers plan/apply/inventory and host import)
from provisioner.cli.groups import app
from provisioner.gitops import inventory as inv_mod
from provisioner.gitops import yamlsafe
from provisioner.gitops.inventory import InventoryError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "inventory"
HEADER = "apiVersion: prov/v1\n"
# seconds: every refusal is immediate, whatever the payload would have cost (an unbounded alias
# bomb or 10 MB file runs for minutes); 1 s failed once on a loaded 2-core CI machine
FAST = 5.0


@dataclass(frozen=True)
class Case:
    id: str
    content: bytes
    lines: frozenset[int]  # where the problem is written (one line, or any line of an alias chain)
    reason: str  # regex the reason must match


def case(id: str, text: str | bytes, line: int | set[int], reason: str) -> Case:
    content = text.encode() if isinstance(text, str) else text
    return Case(id, content, frozenset({line} if isinstance(line, int) else line), reason)


def at(id: str, text: str, needle: str, reason: str) -> Case:
    """A case whose problem is on the line holding ``needle``."""
    return case(id, text, line_of(text, needle), reason)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [i + 1 for i, ln in enumerate(text.splitlines()) if needle in ln]
    return hits[nth - 1]


def alias_lines(text: str) -> set[int]:
    return {i + 1 for i, ln in enumerate(text.splitlines()) if "*" in ln}


# --------------------------------------------------------------------------- alias bombs, several shapes
def bomb_lists_in_params(levels: int = 9, width: int = 9) -> str:
    """The classic 'billion laughs', hidden in a profile's free-form params (which accept anything)."""
    out = HEADER + "profiles:\n  - name: p\n    params:\n"
    out += f"      l0: &l0 [{', '.join(['lol'] * width)}]\n"
    for i in range(1, levels):
        out += f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]\n"
    return out


def bomb_mappings_in_racks(levels: int = 9, width: int = 9) -> str:
    """Mapping-shaped levels, each anchored in one rack entry and expanded by the next."""
    out = HEADER + f"defaults:\n  playbooks: &l0 [{', '.join(['x'] * width)}]\nracks:\n"
    for i in range(1, levels):
        refs = ", ".join(f"k{j}: *l{i - 1}" for j in range(width))
        out += f"  - {{name: r{i}, site: &l{i} {{{refs}}}}}\n"
    return out


def bomb_nested_in_host(levels: int = 9, width: int = 9) -> str:
    """Block style, deep inside hosts[0].bmc.options, each level a nested mapping of aliases."""
    out = HEADER + "hosts:\n  - name: h1\n    bmc:\n      address: 10.0.0.1\n      options:\n"
    out += "        l0: &l0\n" + "".join(f"          k{j}: lol\n" for j in range(width))
    for i in range(1, levels):
        out += f"        l{i}: &l{i}\n" + "".join(f"          k{j}: *l{i - 1}\n" for j in range(width))
    return out


def bomb_wide(nodes: int = 5000, uses: int = 200) -> str:
    """No nesting at all: one big anchor, aliased many times."""
    out = HEADER + "profiles:\n  - name: p\n    params:\n"
    out += f"      big: &big [{', '.join(['x'] * nodes)}]\n      copies:\n"
    out += "".join("        - *big\n" for _ in range(uses))
    return out


def bomb_merge_keys(levels: int = 9, width: int = 9) -> str:
    """Merge keys (<<) stacked: each level merges the previous one into several keys."""
    out = HEADER + "profiles:\n  - name: p\n    params:\n"
    out += "      l0: &l0 {" + ", ".join(f"a{j}: lol" for j in range(width)) + "}\n"
    for i in range(1, levels):
        out += f"      l{i}: &l{i} {{" + ", ".join(f"k{j}: {{<<: *l{i - 1}}}" for j in range(width)) + "}\n"
    return out


RECURSIVE = HEADER + "profiles:\n  - name: p\n    params:\n      loop: &loop [1, *loop]\n"


# --------------------------------------------------------------------------- the other hostile shapes
def oversized(total: int) -> str:
    """A well-formed inventory (racks) that is simply too big."""
    one = "  - {name: rack-%07d, site: dc1, size_u: 42}\n"
    n = total // len(one % 0) + 1
    return HEADER + "racks:\n" + "".join(one % i for i in range(n))


def block_nesting(depth: int) -> str:
    """A nested mapping, one level per line, inside params."""
    body = "".join("  " * (3 + i) + f"k{i}:\n" for i in range(depth))
    return HEADER + "profiles:\n  - name: p\n    params:\n" + body + "  " * (3 + depth) + "leaf: 1\n"


DUP_TOP = HEADER + "racks:\n  - name: r1\nhosts: []\nracks:\n  - name: r2\n"
DUP_HOST = HEADER + "racks:\n  - name: r1\n  - name: r2\nhosts:\n  - name: h1\n    rack: r1\n    u_position: 3\n" \
    "    rack: r2\n"
DUP_FLOW = HEADER + "hosts:\n  - {name: h1, name: h2}\n"
DUP_NESTED = HEADER + "profiles:\n  - name: p\n    params:\n      a:\n        b: 1\n        c: 2\n        b: 3\n"
DUP_EQUAL_VALUES = HEADER + "profiles:\n  - name: p\n    params:\n      1: one\n      1.0: also one\n"

BIG_INT = "9" * 5000
LATIN1 = (HEADER + "racks:\n  - name: r1\n    site: ").encode() + "Zürich\n".encode("latin-1")


def cases() -> list[Case]:
    limits = yamlsafe.LIMITS
    deep_text = block_nesting(limits.max_depth + 10)
    out = [
        case("alias-bomb-lists-in-params", bomb_lists_in_params(), alias_lines(bomb_lists_in_params()), "alias"),
        case("alias-bomb-mappings-in-racks", bomb_mappings_in_racks(), alias_lines(bomb_mappings_in_racks()),
             "alias"),
        case("alias-bomb-nested-in-host", bomb_nested_in_host(), alias_lines(bomb_nested_in_host()), "alias"),
        case("alias-bomb-wide", bomb_wide(), alias_lines(bomb_wide()), "alias"),
        case("alias-bomb-merge-keys", bomb_merge_keys(), alias_lines(bomb_merge_keys()), "alias"),
        case("alias-recursive", RECURSIVE, line_of(RECURSIVE, "*loop"), "alias .*recursive"),
        case("oversized-just-over", oversized(limits.max_bytes + 1), 1, "larger than"),
        case("oversized-10MB", oversized(10 * 1024 * 1024), 1, "larger than"),
        case("deep-flow-lists", HEADER + "hosts:\n  - name: a\n    roles: " + "[" * 5000 + "]" * 5000 + "\n", 4,
             "nest"),
        case("deep-flow-mappings",
             HEADER + "defaults:\n  bmc:\n    options: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", 4, "nest"),
        case("deep-block-sequences", HEADER + "racks:\n  " + "- " * 3000 + "x\n", 3, "nest"),
        case("deep-block-mappings", deep_text, set(range(1, len(deep_text.splitlines()) + 1)), "nest"),
        case("duplicate-top-level-racks", DUP_TOP, line_of(DUP_TOP, "racks:", 2),
             rf"duplicate key 'racks' \(first on line {line_of(DUP_TOP, 'racks:')}\)"),
        case("duplicate-host-key", DUP_HOST, line_of(DUP_HOST, "rack: r2"),
             rf"duplicate key 'rack' \(first on line {line_of(DUP_HOST, 'rack: r1')}\)"),
        case("duplicate-flow-key", DUP_FLOW, 3, "duplicate key 'name'"),
        case("duplicate-nested-params", DUP_NESTED, line_of(DUP_NESTED, "b: 3"), "duplicate key 'b'"),
        case("duplicate-equal-keys", DUP_EQUAL_VALUES, line_of(DUP_EQUAL_VALUES, "1.0:"), "duplicate key"),
        case("tag-include", HEADER + "racks:\n  - name: r1\nhosts: !include hosts.yaml\n", 4, "tag !include"),
        at("tag-python-apply", HEADER + "profiles:\n  - name: p\n    params:\n"
           "      x: !!python/object/apply:os.system ['touch /tmp/prov-hostile-pwned']\n", "!!python",
           "tag !!python/object/apply:os.system"),
        case("tag-python-name", HEADER + "racks:\n  - name: !!python/name:os.system\n", 3, "tag !!python/name"),
        at("tag-custom-local", HEADER + "hosts:\n  - name: a\n    bmc:\n      username: !vault |\n"
           "        $ANSIBLE_VAULT;1.1;AES256\n", "!vault", "tag !vault"),
        case("tag-custom-verbatim", HEADER + "racks:\n  - name: r1\n    site: !<tag:example.com,2000:site> x\n", 4,
             "tag tag:example.com,2000:site"),
        case("tag-custom-directive", "%TAG !e! tag:example.com,2000:\n---\n" + HEADER + "racks: !e!list []\n", 4,
             "tag tag:example.com,2000:list"),
        case("tag-on-mapping", HEADER + "defaults: !!set {a, b}\n", 2, "tag !!set"),
        case("tag-binary", HEADER + "racks:\n  - name: !!binary aGk=\n", 3, "tag !!binary"),
        at("tag-omap", HEADER + "profiles:\n  - name: p\n    params: !!omap [a: 1]\n", "!!omap", "tag !!omap"),
        case("tag-standard-misused", HEADER + "racks:\n  - name: r1\n    size_u: !!int forty\n", 4,
             "cannot read 'forty' as !!int"),
        case("not-utf8-latin1", LATIN1, 4, rf"not UTF-8 \(byte offset {LATIN1.index(0xFC)}\)"),
        case("not-utf8-utf16", "apiVersion: prov/v1\n".encode("utf-16"), 1, r"not UTF-8 \(byte offset 0\)"),
        case("big-int-field", HEADER + "racks:\n  - name: r1\n    size_u: " + BIG_INT + "\n", 4, "integer longer"),
        at("big-int-params", HEADER + "profiles:\n  - name: p\n    params:\n      n: -" + BIG_INT + "\n", "n: -",
           "integer longer"),
        case("big-int-sexagesimal", HEADER + "racks:\n  - name: r1\n    size_u: " + "1:" * 3000 + "1\n", 4,
             "integer longer"),
        case("empty-file", "", 1, "apiVersion"),
        case("comments-only", "# nothing here\n\n", 1, "apiVersion"),
        case("a-list-not-a-mapping", "# hosts\n- name: a\n- name: b\n", 2, "must be a mapping"),
        case("a-scalar-not-a-mapping", "just some text\n", 1, "must be a mapping"),
        # our own: more ways a file goes wrong on a bad day
        case("two-documents", HEADER + "racks: []\n---\n" + HEADER, 3, "second document"),
        case("control-character", HEADER + "racks:\n  - name: r1\x1b[2J\n", 3, "control characters"),
        case("undefined-alias", HEADER + "racks:\n  - name: r1\n    site: *nowhere\n", 4, r"alias \*nowhere"),
        case("duplicate-anchor", HEADER + "racks:\n  - &a {name: r1}\n  - &a {name: r2}\n", 4,
             "anchor &a defined twice"),
        case("complex-key", HEADER + "racks:\n  - ? [name]\n    : r1\n", 3, "key must be a plain value"),
        case("merge-of-a-scalar", HEADER + "racks:\n  - {<<: 5, name: r1}\n", 3, "<< merges a mapping"),
        case("syntax-error", HEADER + "hosts:\n  - name: [unclosed\n", 3, "YAML:"),
    ]
    return out


CASES = cases()
IDS = [c.id for c in CASES]


def expect(c: Case, message: str, name: str) -> None:
    m = re.match(rf"{re.escape(name)}:(\d+): (.*)$", message)
    assert m, f"not 'file:line: reason': {message!r}"
    assert int(m.group(1)) in c.lines, f"line {m.group(1)}, expected {sorted(c.lines)[:5]}...: {message}"
    assert re.search(c.reason, m.group(2)), message
    assert "\n" not in message and len(message) < 400, message


# --------------------------------------------------------------------------- the loader
@pytest.mark.timeout(20)
@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_loader_refuses_at_file_line_quickly(c: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inv.yaml").write_bytes(c.content)
    start = time.perf_counter()
    with pytest.raises(InventoryError) as ei:
        inv_mod.load("inv.yaml")
    assert time.perf_counter() - start < FAST
    expect(c, ei.value.message, "inv.yaml")
    assert not Path("/tmp/prov-hostile-pwned").exists()


@pytest.mark.timeout(20)
def test_a_hostile_file_in_a_directory_names_that_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "inv"
    d.mkdir()
    for f in EXAMPLES.glob("*.yaml"):
        (d / f.name).write_bytes(f.read_bytes())
    (d / "zz-extra.yaml").write_text(bomb_lists_in_params().replace("name: p", "name: p2"))
    with pytest.raises(InventoryError) as ei:
        inv_mod.load(d)
    assert ei.value.message.startswith("inv/zz-extra.yaml:") and "alias" in ei.value.message


# --------------------------------------------------------------------------- the CLI, against a stub controller
@dataclass
class Stub:
    url: str
    seen: list[tuple[str, str]]


class _Recorder(BaseHTTPRequestHandler):
    """Records every request and refuses it: the hostile cases must never get this far."""

    def _any(self) -> None:
        self.server.seen.append((self.command, self.path))  # type: ignore[attr-defined]
        body = json.dumps({"error": {"code": "stub", "message": "stub controller", "details": {}}}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Stub(f"http://127.0.0.1:{server.server_address[1]}", server.seen)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


Prov = Callable[..., Result]


@pytest.fixture
def prov(stub: Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Prov:
    monkeypatch.chdir(tmp_path)
    stub.seen.clear()
    env = {"PROV_URL": stub.url, "PROV_TOKEN": "stub-token", "PROV_CLIENT_CONFIG": str(tmp_path / "client.yaml")}

    def run(*args: str) -> Result:
        return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)

    return run


def one_error_line(r: Result) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line: {r.stderr!r}"
    assert lines[0].startswith("error: ") and "Traceback" not in r.output, lines[0]
    return lines[0].removeprefix("error: ")


COMMANDS = {
    "validate": ("inventory", "validate", "inv.yaml"),
    "plan": ("plan", "-f", "inv.yaml"),
    "apply": ("apply", "-f", "inv.yaml", "--allow-delete"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_cli_refuses_with_one_line_exit_1_and_sends_nothing(c: Case, command: str, prov: Prov, stub: Stub) -> None:
    Path("inv.yaml").write_bytes(c.content)
    start = time.perf_counter()
    r = prov(*COMMANDS[command])
    assert time.perf_counter() - start < FAST
    assert r.exit_code == 1, r.output
    expect(c, one_error_line(r), "inv.yaml")
    assert stub.seen == []  # not even a GET: the file is refused before the controller is asked


# ``prov host import`` reads operator YAML too, through the same loader. The inventory-only cases
# (an empty file, a bare list: the importer accepts a list of hosts) and 1 vs 1.0 (distinct JSON keys
# once keys are strings, as the importer makes them) do not apply.
IMPORT_CASES = [c for c in CASES if c.id not in {"empty-file", "comments-only", "a-list-not-a-mapping",
                                                  "a-scalar-not-a-mapping", "duplicate-equal-keys"}]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("c", IMPORT_CASES, ids=[c.id for c in IMPORT_CASES])
def test_host_import_refuses_the_same_files_and_sends_nothing(c: Case, prov: Prov, stub: Stub) -> None:
    Path("hosts.yaml").write_bytes(c.content)
    start = time.perf_counter()
    r = prov("host", "import", "hosts.yaml")
    assert time.perf_counter() - start < FAST
    assert r.exit_code == 2, r.output  # the importer's exit code for a file it cannot read
    expect(c, one_error_line(r), "hosts.yaml")
    assert stub.seen == []


def test_the_stub_does_see_a_legitimate_plan(prov: Prov, stub: Stub) -> None:
    """The 'no request' assertions above are not vacuous: a good inventory does reach the controller."""
    r = prov("plan", "-f", str(EXAMPLES))
    assert r.exit_code == 1  # the stub answers 503 to everything
    assert stub.seen and all(method == "GET" for method, _ in stub.seen)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("payload", [
    pytest.param(b"[" * 200_000 + b"]" * 200_000, id="deep-json"),
    pytest.param(b'{"actions": [], "x": "' + b"a" * (yamlsafe.LIMITS.max_bytes + 1) + b'"}', id="oversized"),
    pytest.param(b'{"actions": "\xff"}', id="not-utf8"),
    pytest.param(b'["not", "a", "plan"]', id="a-list"),
    pytest.param(b'{"actions": [], "inventory_digest": 1' + b"0" * 5000 + b"}", id="big-int"),
])
def test_a_hostile_plan_file_is_refused_before_the_controller_is_asked(
        payload: bytes, prov: Prov, stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R1_BMC_PW", "unused")
    Path("plan.json").write_bytes(payload)
    start = time.perf_counter()
    r = prov("apply", "-f", str(EXAMPLES), "--plan-file", "plan.json")
    assert time.perf_counter() - start < FAST
    assert r.exit_code == 1, r.output
    assert one_error_line(r).startswith("plan.json")
    assert stub.seen == []


# --------------------------------------------------------------------------- legitimate input is unchanged
def test_the_example_inventory_still_validates(prov: Prov) -> None:
    r = prov("inventory", "validate", str(EXAMPLES))
    assert r.exit_code == 0, r.output
    assert r.stdout == "ok: 1 racks, 3 hosts, 1 profiles\n"


@pytest.mark.parametrize("f", sorted(EXAMPLES.glob("*.yaml")), ids=lambda f: f.name)
def test_the_examples_read_exactly_as_safe_load_reads_them(f: Path) -> None:
    text = f.read_text()
    assert yamlsafe.parse(text).data == yaml.safe_load(text)


LEGIT = """\
# every ordinary YAML feature an operator may use reads as safe_load reads it
apiVersion: "prov/v1"
base: &base {kind: ipmi, username: admin, port: 623}
other:
  <<: *base
  port: 624
several:
  <<: [{a: 1, b: 1}, {a: 2, c: 2}]
  c: 3
block: |
  line one
  line two
folded: >
  folded
  text
quoted: ["007", '0x10', "yes", 'null']
plain: [007, 0x10, 0o17, 1_000, yes, No, on, ~, null, .inf, -.5, 1e3, 2024-01-02, 2024-01-02T03:04:05Z]
explicit: [!!str 123, !!int "7", !!float 1, !!bool "true", !!null "", !!timestamp 2024-05-06]
anchors: [&x 1, *x, &y {z: [1, 2]}, *y]
empty: {}
nothing: []
"""


def test_ordinary_yaml_features_read_as_safe_load_reads_them() -> None:
    assert yamlsafe.parse(LEGIT).data == yaml.safe_load(LEGIT)
    assert yamlsafe.parse("\ufeff" + LEGIT).data == yaml.safe_load(LEGIT)  # a byte-order mark is fine
    assert yamlsafe.parse("---\n" + LEGIT + "...\n").data == yaml.safe_load(LEGIT)


def test_line_numbers_point_at_keys_items_and_aliases() -> None:
    loaded = yamlsafe.parse(LEGIT)
    lines = LEGIT.splitlines()
    assert lines[loaded.lines[("other",)] - 1].startswith("other:")
    assert lines[loaded.lines[("other", "port")] - 1] == "  port: 624"
    assert lines[loaded.lines[("block",)] - 1].startswith("block:")
    assert loaded.lines[("anchors", 3)] == line_of(LEGIT, "anchors:")


@pytest.mark.timeout(60)
def test_a_large_legitimate_inventory_with_aliases_loads(tmp_path: Path) -> None:
    """The bounds leave room for real sites: 3,000 hosts, each sharing its BMC settings through an alias."""
    hosts = "".join(f"  - name: h{i:05d}\n    rack: r1\n    u_position: {i % 40 + 1}\n"
                    f"    nics: [{{mac: '52:54:00:00:{i >> 8:02x}:{i & 255:02x}', boot: true}}]\n"
                    f"    bmc: {{<<: *bmc, address: 10.1.{i >> 8}.{i & 255}}}\n" for i in range(3000))
    text = HEADER + "defaults:\n  bmc: &bmc {kind: ipmi, username: admin, port: 623}\n" \
        "racks:\n  - {name: r1, size_u: 42}\n" "hosts:\n" + hosts
    p = tmp_path / "big.yaml"
    p.write_text(text)
    inv = inv_mod.load(p)
    assert len(inv.hosts) == 3000
    h = inv.hosts["h02999"]
    assert h.bmc is not None and (h.bmc.kind, h.bmc.username, h.bmc.port, h.bmc.address) == \
        ("ipmi", "admin", 623, "10.1.11.183")
    assert str(inv.origin["hosts/h02999"]).endswith(f":{line_of(text, 'name: h02999')}")
