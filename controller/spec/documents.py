"""Safe YAML reading: bytes from an untrusted repository to documents that
remember the line and column of every key and value.

Owns the first line of defence for spec input (DESIGN.md, "Safety with
untrusted input"): files must be UTF-8 and under a size cap; YAML is parsed
with libyaml's C parser in the safe schema; only plain JSON-like values are
built (strings, numbers, booleans, null, lists, mappings), so Python tags,
``!!binary``, ``!!set`` and custom tags are refused; duplicate keys are errors;
aliases are allowed but the expanded size and depth are capped, which defuses
"billion laughs" and recursive aliases. Mapping keys are taken verbatim as
strings (``on:`` stays ``"on"``, never ``True``).

Also owns :class:`Diagnostic`, the one shape every spec problem takes, from
here through validation to ``mdc validate`` and status conditions.

Called by :mod:`controller.spec.kinds`; pure (no I/O).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "Diagnostic",
    "Document",
    "Limits",
    "Location",
    "Path",
    "format_path",
    "parse_yaml",
]

Path = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_MERGE = _TAG + "merge"


@dataclass(frozen=True)
class Location:
    """A 1-based line and column in a file."""

    line: int
    column: int


@dataclass(frozen=True)
class Diagnostic:
    """One problem in the spec repository, rendered like a compiler error.

    ``rule`` is a stable identifier (``yaml.duplicate-key``, ``ref.pool``...)
    for scripts and tests; ``message`` is a plain sentence for people.
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    rule: str

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, str | int]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "rule": self.rule,
        }


@dataclass(frozen=True)
class Limits:
    """Caps that keep a hostile file from exhausting the controller."""

    max_file_bytes: int = 1 << 20
    max_documents: int = 200
    max_nodes: int = 50_000
    max_depth: int = 64
    #: numbers beyond this magnitude, NaN and infinities are refused (None:
    #: allowed). The spec loader sets it: no spec field means anything near
    #: it, and bigger ones overflow arithmetic or compare false.
    max_number: float | None = None
    #: seconds one file may take to read, on ``clock``; past it the file is
    #: refused (the other caps keep a file far under it: this is the backstop).
    #: No clock (the default): no time budget, and parsing stays pure.
    max_seconds: float = 5.0
    clock: Callable[[], float] | None = field(default=None, compare=False)


@dataclass(frozen=True, eq=False)
class Document:
    """One YAML document of a file, with the location of each key and value."""

    file: str
    index: int
    data: Any
    start: Location
    values: dict[Path, Location] = field(repr=False)
    keys: dict[Path, Location] = field(repr=False)

    def locate(self, path: Path) -> Location:
        """Where ``path`` is written: its key if it has one, else its value,
        else the nearest enclosing value (a missing field points at its parent).
        """
        probe = tuple(path)
        while True:
            if probe in self.keys:
                return self.keys[probe]
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return self.start
            probe = probe[:-1]

    def diagnostic(self, path: Path, message: str, rule: str) -> Diagnostic:
        where = self.locate(path)
        return Diagnostic(self.file, where.line, where.column, format_path(path), message, rule)


def format_path(path: Path, limit: int = 12) -> str:
    """``("spec", "steps", 2, "setWeight")`` -> ``spec.steps[2].setWeight``.

    Paths deeper than ``limit`` parts (only hostile input makes them) are cut
    to their first parts and ``...``.
    """
    out = ""
    for part in path[:limit]:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out + "..." if len(path) > limit else out


def parse_yaml(
    file: str,
    raw: bytes,
    limits: Limits | None = None,
    refused: list[tuple[str, str]] | None = None,
) -> tuple[list[Document], list[Diagnostic]]:
    """Every well-formed document of ``raw`` and a diagnostic for each problem.

    A document with any problem is left out of the result, so nothing acts on
    half-read input; documents before a syntax error are still returned. With
    ``refused`` given, the (kind, name) of each document left out for a value it
    holds (one whose kind and name could still be read) is added to it, so the
    object can be shown as invalid rather than unknown.
    """
    limits = limits or Limits()
    if len(raw) > limits.max_file_bytes:
        return [], [
            Diagnostic(
                file,
                1,
                1,
                "",
                f"file is {len(raw)} bytes, over the limit of {limits.max_file_bytes} bytes",
                "file.size",
            )
        ]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        return [], [
            Diagnostic(
                file,
                line,
                column,
                "",
                f"file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                "file.encoding",
            )
        ]

    documents: list[Document] = []
    problems: list[Diagnostic] = []
    deadline = limits.clock() + limits.max_seconds if limits.clock else float("inf")
    nodes = yaml.compose_all(text, Loader=yaml.CSafeLoader)
    index = 0
    while True:
        try:
            node = next(nodes)
        except StopIteration:
            break
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            what = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
            problems.append(
                Diagnostic(file, line, column, "", f"YAML syntax: {what}", "yaml.syntax")
            )
            break
        except yaml.YAMLError as exc:
            problems.append(Diagnostic(file, 1, 1, "", f"YAML syntax: {exc}", "yaml.syntax"))
            break
        if index >= limits.max_documents:
            problems.append(
                Diagnostic(
                    file,
                    node.start_mark.line + 1,
                    1,
                    "",
                    f"more than {limits.max_documents} documents in one file",
                    "file.size",
                )
            )
            break
        if node is not None:
            builder = _Builder(file, index, limits, deadline)
            document = builder.build(node)
            problems.extend(builder.problems)
            if document is None and refused is not None:
                refused.extend(_identity(builder.partial))
            if document is not None and document.data is not None:  # skip empty documents
                documents.append(document)
        index += 1
    return documents, problems


def _identity(data: Any) -> list[tuple[str, str]]:
    """[(kind, name)] of a document's data, when both are plain strings."""
    if not isinstance(data, dict):
        return []
    kind, meta = data.get("kind"), data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return [(kind, name)] if isinstance(kind, str) and isinstance(name, str) else []


#: a number written with more characters than this is refused unread (int()
#: of thousands of digits is slow, or refused by Python)
_MAX_NUMBER_CHARS = 40


class _Abort(Exception):
    """The document is beyond a cap: stop building it."""


class _Builder:
    """Builds plain values from a composed node graph, recording locations."""

    def __init__(
        self, file: str, index: int, limits: Limits, deadline: float = float("inf")
    ) -> None:
        self.file = file
        self.index = index
        self.limits = limits
        self.deadline = deadline
        self.problems: list[Diagnostic] = []
        self.values: dict[Path, Location] = {}
        self.keys: dict[Path, Location] = {}
        self.count = 0
        self.scalars = SafeConstructor()
        self.partial: Any = None  # what was read of a document refused for a value

    def build(self, root: Node) -> Document | None:
        before = len(self.problems)
        try:
            data = self.value(root, (), 0)
        except _Abort:
            return None
        if len(self.problems) > before:
            self.partial = data
            return None
        return Document(self.file, self.index, data, _loc(root), self.values, self.keys)

    def refuse(self, node: Node, path: Path, message: str, rule: str) -> None:
        where = _loc(node)
        self.problems.append(
            Diagnostic(self.file, where.line, where.column, format_path(path), message, rule)
        )

    def tick(self, node: Node, path: Path) -> None:
        """Count one value (or one merged key) against the expansion budget."""
        self.count += 1
        if self.count > self.limits.max_nodes:
            self.refuse(
                node,
                path,
                f"document expands to more than {self.limits.max_nodes} values "
                "(aliases are expanded; is this an alias bomb?)",
                "yaml.alias-limit",
            )
            raise _Abort
        clock = self.limits.clock
        if self.count % 1024 == 0 and clock is not None and clock() > self.deadline:
            self.refuse(
                node,
                path,
                f"the file took more than {self.limits.max_seconds:g}s to read",
                "file.time",
            )
            raise _Abort

    def value(self, node: Node, path: Path, depth: int) -> Any:
        self.tick(node, path)
        if depth > self.limits.max_depth:
            self.refuse(
                node,
                path,
                f"nested deeper than {self.limits.max_depth} levels (a recursive alias?)",
                "yaml.depth-limit",
            )
            raise _Abort
        self.values.setdefault(path, _loc(node))
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != _TAG + "seq":
                self.refuse(node, path, f"YAML tag {node.tag!r} is not allowed", "yaml.tag")
                return None
            return [self.value(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != _TAG + "map":
                self.refuse(node, path, f"YAML tag {node.tag!r} is not allowed", "yaml.tag")
                return None
            return self.mapping(node, path, depth)
        self.refuse(node, path, "unsupported YAML node", "yaml.tag")  # pragma: no cover
        return None

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        tag = node.tag.removeprefix(_TAG)
        if tag in ("str", "timestamp"):
            return node.value
        if tag == "null":
            return None
        if tag == "bool":
            return self.scalars.construct_yaml_bool(node)
        if tag in ("int", "float"):
            return self.number(node, path, tag)
        self.refuse(node, path, f"YAML tag {node.tag!r} is not allowed", "yaml.tag")
        return None

    def number(self, node: ScalarNode, path: Path, tag: str) -> Any:
        """An int or float; with :attr:`Limits.max_number` set, one that is
        finite and within it (anything else is refused here, before it can
        overflow or compare false). Numbers written with more characters than
        any bound needs are refused unread either way."""
        bound = self.limits.max_number
        text = str(node.value)
        number: Any = None
        if len(text.replace("_", "")) <= _MAX_NUMBER_CHARS:
            try:
                if tag == "int":
                    number = self.scalars.construct_yaml_int(node)
                else:
                    number = self.scalars.construct_yaml_float(node)
            except (ValueError, OverflowError):
                number = None
        if number is not None and (
            bound is None or (math.isfinite(number) and abs(number) <= bound)
        ):
            return number
        shown = text if len(text) <= 40 else text[:37] + "..."
        limit = f" of magnitude at most {bound:g}" if bound is not None else ""
        self.refuse(node, path, f"must be a finite number{limit} (got {shown!r})", "yaml.number")
        return None

    def mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        explicit: set[str] = set()
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(self.merge_sources(value_node, path, depth))
                continue
            if not isinstance(key_node, ScalarNode):
                self.refuse(key_node, path, "mapping keys must be plain strings", "yaml.key")
                continue
            key = key_node.value
            if key in explicit:
                first = self.keys[(*path, key)]
                self.refuse(
                    key_node,
                    (*path, key),
                    f"duplicate key {key!r} (first defined at line {first.line})",
                    "yaml.duplicate-key",
                )
                continue
            explicit.add(key)
            self.keys[(*path, key)] = _loc(key_node)
            out[key] = self.value(value_node, (*path, key), depth + 1)
        for key_node, value_node in merged:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key is None or key in out:
                continue
            out[key] = self.value(value_node, (*path, key), depth + 1)
        return out

    def merge_sources(self, node: Node, path: Path, depth: int) -> Iterator[tuple[Node, Node]]:
        """The key/value pairs ``<<: node`` merges in, nested merges flattened.

        Every source and every pair counts against the same budget as the
        values aliases expand to (``<<: [*a, *a, ...]`` costs what it reads,
        even where its keys are already set), and nested merges against the
        depth cap.
        """
        if depth > self.limits.max_depth:
            self.refuse(
                node,
                path,
                f"merges nested deeper than {self.limits.max_depth} levels (a recursive alias?)",
                "yaml.depth-limit",
            )
            raise _Abort
        self.tick(node, path)
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            self.tick(source, path)
            if not isinstance(source, MappingNode):
                self.refuse(source, path, "'<<' merges only mappings", "yaml.merge")
                continue
            for key_node, value_node in source.value:
                self.tick(key_node, path)
                if key_node.tag == _MERGE:
                    yield from self.merge_sources(value_node, path, depth + 1)
                else:
                    yield key_node, value_node


def _loc(node: Node) -> Location:
    return Location(node.start_mark.line + 1, node.start_mark.column + 1)
