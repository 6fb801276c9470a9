"""Bounded YAML for files an operator (or an attacker with commit rights) hands us.

``yaml.safe_load`` is safe from code execution, not from the rest of a bad day:
a 9-level alias bomb expands to 10^9 nodes downstream, a 10 MB file never
finishes, duplicate keys silently keep the last one, and ``!include``, non-UTF-8
or a 5,000-digit int end in a traceback. This loader builds plain data straight
from LibYAML's event stream, one pass, with every bound checked as it goes, and
reports each refusal as ``YamlError(line, reason)`` (1-based line).

Why events and not ruamel.yaml or a composed node graph: LibYAML's C composer
shares an aliased node, so the graph cannot say where an alias was used, and
ruamel's round-trip loader is pure Python (several times slower on a 10,000-host
inventory) and would still need this walk for the alias budget, depth and
digits. The event stream gives the exact line of every key, item and alias.

What a file may hold: mappings, sequences and the standard scalars (str, int,
float, bool, null, timestamp), written plainly or with those ``!!`` tags; merge
keys (``<<: *base``) and aliases within a budget. Everything else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # LibYAML's parser when available: ~10x faster

_T = "tag:yaml.org,2002:"
STR, INT, MAP, SEQ, MERGE = f"{_T}str", f"{_T}int", f"{_T}map", f"{_T}seq", f"{_T}merge"
# The scalar types of YAML's core/JSON schemas plus timestamp (safe_load has always given dates for
# 2024-01-01; pydantic then refuses them where a string belongs). binary/set/omap/pairs are left out:
# they build bytes/sets/pair lists that no inventory field takes, and python/* and local tags build
# nothing at all.
SCALAR_TAGS = frozenset(f"{_T}{t}" for t in ("str", "int", "float", "bool", "null", "timestamp"))


@dataclass(frozen=True)
class Limits:
    # 4 MiB: a 10,000-host inventory in one file (bench/gitops) is ~2.1 MB, and parsing stays
    # a few seconds; bigger sites split the inventory into a directory of files.
    max_bytes: int = 4 * 1024 * 1024
    # Real inventories nest ~6 deep (hosts[0].bmc.options.x); 64 leaves params plenty of room.
    max_depth: int = 64
    # Nodes that aliases may add, in total: as many as a big plain file holds, never the 10^9 of a
    # "billion laughs" file (each alias counts the whole subtree it stands for).
    max_alias_nodes: int = 100_000
    # Python's own default int-conversion limit, fixed here so PYTHONINTMAXSTRDIGITS cannot lift it.
    max_int_digits: int = 4300


LIMITS = Limits()


class YamlError(Exception):
    """``reason`` of a syntax error starts with ``YAML:``; the rest are bounds and refused content."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"{line}: {reason}")
        self.line, self.reason = line, reason


@dataclass
class Loaded:
    data: Any  # None for an empty file
    # path -> 1-based line: a mapping entry's key line, a sequence item's line; () is the root.
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)


def read_text(path: Path, limits: Limits = LIMITS) -> str:
    """A file's text, refused when too big (checked before reading) or not UTF-8. OSError passes."""
    with path.open("rb") as fh:
        raw = fh.read(limits.max_bytes + 1)
    if len(raw) > limits.max_bytes:
        raise YamlError(1, f"file is larger than {limits.max_bytes} bytes; split it into several files")
    try:
        return raw.decode("utf-8-sig")  # -sig: a leading byte-order mark is allowed and dropped
    except UnicodeDecodeError as exc:
        raise YamlError(raw.count(b"\n", 0, exc.start) + 1, f"not UTF-8 (byte offset {exc.start})") from None


def load_file(path: Path, limits: Limits = LIMITS, *, str_keys: bool = False) -> Loaded:
    return parse(read_text(path, limits), limits, str_keys=str_keys)


def parse(text: str, limits: Limits = LIMITS, *, str_keys: bool = False) -> Loaded:
    """One YAML document -> plain data plus line numbers; YamlError on anything out of bounds.

    ``str_keys`` turns every mapping key into its string (``1:`` -> ``"1"``), as a JSON body needs.
    """
    if len(text) > limits.max_bytes:  # characters <= bytes: a cheap first check for callers with text
        raise YamlError(1, f"file is larger than {limits.max_bytes} bytes; split it into several files")
    builder = _Builder(limits, str_keys)
    try:
        for event in yaml.parse(text, Loader=_Loader):
            builder.feed(event)
    except yaml.reader.ReaderError as exc:
        # LibYAML counts the position in UTF-8 bytes, the pure-Python reader in characters.
        before = text.encode()[: exc.position] if _Loader is not yaml.SafeLoader else text[: exc.position].encode()
        raise YamlError(before.count(b"\n") + 1, f"YAML: {exc.reason}") from None
    except yaml.MarkedYAMLError as exc:
        # The context mark (start of the construct being parsed) beats the problem mark,
        # which for unclosed brackets points past the end of the file.
        mark = exc.context_mark or exc.problem_mark
        why = f"{exc.problem}" + (f" ({exc.context})" if exc.context else "")
        raise YamlError(mark.line + 1 if mark else 1, f"YAML: {why}") from None
    return Loaded(builder.root, builder.lines)


def _short(tag: str) -> str:
    return "!!" + tag[len(_T):] if tag.startswith(_T) else tag


@dataclass
class _Frame:
    path: tuple[Any, ...]
    anchor: str | None
    line: int
    items: list[Any] | None = None  # a sequence
    entries: dict[Any, Any] | None = None  # a mapping
    key: Any = None
    has_key: bool = False
    merging: bool = False
    merges: list[dict[Any, Any]] = field(default_factory=list)
    size: int = 1


class _Builder:
    """Turns parser events into data, checking every bound on the way."""

    def __init__(self, limits: Limits, str_keys: bool) -> None:
        self.limits, self.str_keys = limits, str_keys
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # name -> (value, nodes, line)
        self.alias_nodes = 0
        self.documents = 0
        self.root: Any = None
        self.lines: dict[tuple[Any, ...], int] = {}
        self.resolver = yaml.resolver.Resolver()
        self.constructor = yaml.constructor.SafeConstructor()

    def feed(self, ev: yaml.Event) -> None:
        line = ev.start_mark.line + 1 if ev.start_mark is not None else 1
        if isinstance(ev, ScalarEvent):
            self._scalar(ev, line)
        elif isinstance(ev, MappingStartEvent | SequenceStartEvent):
            self._open(ev, line)
        elif isinstance(ev, MappingEndEvent | SequenceEndEvent):
            self._close()
        elif isinstance(ev, AliasEvent):
            self._alias(str(ev.anchor), line)
        elif isinstance(ev, DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise YamlError(line, "YAML: a second document (---) in one file; give each its own file")

    # ------------------------------------------------------------------ nodes
    def _scalar(self, ev: ScalarEvent, line: int) -> None:
        tag, value = self._construct(ev, line)
        self._anchor(ev.anchor, value, 1, line)
        self._put(value, 1, line, leaf=True, merge_key=tag == MERGE)

    def _open(self, ev: MappingStartEvent | SequenceStartEvent, line: int) -> None:
        is_map = isinstance(ev, MappingStartEvent)
        if ev.tag not in (None, "!", MAP if is_map else SEQ):
            raise YamlError(line, f"tag {_short(str(ev.tag))} is not allowed (only plain YAML data)")
        if self.stack and self._is_key_slot():
            raise YamlError(line, "a mapping key must be a plain value, not a list or mapping")
        if len(self.stack) >= self.limits.max_depth:
            raise YamlError(line, f"nested deeper than {self.limits.max_depth} levels")
        if ev.anchor is not None:
            self._check_new_anchor(str(ev.anchor), line)
        path = self._child_path(line)
        frame = _Frame(path=path, anchor=ev.anchor, line=line)
        if is_map:
            frame.entries = {}
        else:
            frame.items = []
        self.stack.append(frame)

    def _close(self) -> None:
        frame = self.stack.pop()
        value: Any
        if frame.items is not None:
            value = frame.items
        else:
            entries = frame.entries if frame.entries is not None else {}
            if frame.merges:
                value = {}
                for m in frame.merges:
                    value.update(m)
                value.update(entries)
            else:
                value = entries
        self._anchor(frame.anchor, value, frame.size, frame.line)
        self._put(value, frame.size, frame.line, leaf=False)

    def _alias(self, name: str, line: int) -> None:
        if name not in self.anchors:
            if any(f.anchor == name for f in self.stack):
                raise YamlError(line, f"alias *{name} refers to a node that contains it (recursive)")
            raise YamlError(line, f"alias *{name} has no anchor &{name} before it")
        value, nodes, _ = self.anchors[name]
        self.alias_nodes += nodes
        if self.alias_nodes > self.limits.max_alias_nodes:
            raise YamlError(line, f"aliases expand to more than {self.limits.max_alias_nodes} nodes "
                                  f"(*{name} alone stands for {nodes})")
        if self.stack and self._is_key_slot() and isinstance(value, dict | list):
            raise YamlError(line, "a mapping key must be a plain value, not a list or mapping")
        self._put(value, nodes, line, leaf=True)

    # ------------------------------------------------------------------ placing a finished node
    def _is_key_slot(self) -> bool:
        top = self.stack[-1]
        return top.entries is not None and not top.has_key

    def _child_path(self, line: int) -> tuple[Any, ...]:
        """The path of the node now starting (its key was seen already), recording an item's line."""
        if not self.stack:
            self.lines[()] = line
            return ()
        top = self.stack[-1]
        if top.items is not None:
            path = (*top.path, len(top.items))
            self.lines[path] = line
            return path
        return (*top.path, top.key)

    def _put(self, value: Any, nodes: int, line: int, *, leaf: bool, merge_key: bool = False) -> None:
        """Place a finished node; ``leaf``: a scalar or an alias, whose line was not recorded yet."""
        if not self.stack:
            if leaf:
                self.lines[()] = line
            self.root = value
            return
        top = self.stack[-1]
        top.size += nodes
        if top.items is not None:
            if leaf:
                self.lines[(*top.path, len(top.items))] = line
            top.items.append(value)
            return
        assert top.entries is not None
        if not top.has_key:
            self._key(top, value, line, merge=merge_key)
            return
        top.has_key = False
        if top.merging:
            top.merging = False
            sources = value if isinstance(value, list) else [value]
            if not sources or not all(isinstance(s, dict) for s in sources):
                raise YamlError(line, "<< merges a mapping or a list of mappings")
            # As PyYAML: within one << list the first mapping wins; explicit keys beat all merged ones.
            top.merges.extend(reversed(sources))
            return
        top.entries[top.key] = value

    def _key(self, top: _Frame, key: Any, line: int, merge: bool) -> None:
        assert top.entries is not None
        top.has_key = True
        if merge:
            top.merging, top.key = True, "<<"
            return
        if self.str_keys and not isinstance(key, str):
            key = str(key)
        path = (*top.path, key)
        if key in top.entries:
            raise YamlError(line, f"duplicate key {key!r} (first on line {self.lines.get(path, top.line)}); "
                                  "YAML would keep only the last one")
        top.key = key
        self.lines[path] = line

    # ------------------------------------------------------------------ scalars and anchors
    def _construct(self, ev: ScalarEvent, line: int) -> tuple[str, Any]:
        """The scalar's tag (resolved as safe_load would) and its value."""
        tag = ev.tag
        value = ev.value
        if tag is None:
            tag = self.resolver.resolve(yaml.ScalarNode, value, ev.implicit)
        elif tag == "!":
            tag = STR  # the non-specific tag: a string, whatever it looks like
        elif tag not in SCALAR_TAGS:
            raise YamlError(line, f"tag {_short(tag)} is not allowed (only plain YAML data)")
        if tag == STR or tag not in SCALAR_TAGS:  # merge (<<) and value (=) read as text outside keys
            return tag, value
        if tag == INT and len(value) > self.limits.max_int_digits:
            raise YamlError(line, f"integer longer than {self.limits.max_int_digits} digits")
        try:
            return tag, self.constructor.yaml_constructors[tag](self.constructor, yaml.ScalarNode(tag, value))
        except Exception:  # a hostile value may break any of safe_load's scalar readers; name it instead
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise YamlError(line, f"cannot read {shown!r} as {_short(tag)}") from None

    def _check_new_anchor(self, name: str, line: int) -> None:
        if name in self.anchors:
            raise YamlError(line, f"anchor &{name} defined twice (first on line {self.anchors[name][2]})")

    def _anchor(self, name: str | None, value: Any, nodes: int, line: int) -> None:
        if name is None:
            return
        if name in self.anchors:  # scalars are checked here; collections when they open
            self._check_new_anchor(name, line)
        self.anchors[name] = (value, nodes, line)
