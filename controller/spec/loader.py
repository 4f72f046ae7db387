"""Loading a spec repository into :class:`~controller.spec.kinds.Desired`, with
every problem reported at once.

Owns :func:`load_desired`, which turns any :class:`~controller.spec.tree.Tree`
(a directory, or a commit read from git) into the valid objects plus
:class:`~controller.spec.documents.Diagnostic` values: which files are specs,
parsing (:mod:`controller.spec.documents`), schema checks (:mod:`controller.spec.schema`),
names unique per kind, then the cross-object rules of :mod:`controller.spec.rules`;
and the caches that make a repeated load cheap (:class:`ParseCache`,
:class:`SnapshotLoader`).

Which files are read: every ``*.yaml``/``*.yml`` outside dot-directories.
Files under ``models/``, ``pools/`` and ``rollouts/`` must hold only mdc specs;
YAML elsewhere (bentofiles, CI workflows, Helm templates) is read only when it
mentions ``mdc.dev/``, and then only its mdc documents count.

One bad file never hides the others, and an object with any problem is left
out of :attr:`Desired` (its name goes to :attr:`LoadResult.invalid`), so the
reconciler can hold what runs instead of acting on half-valid input.

Pure: no I/O beyond the ``Tree`` it is given. Called by the CLI and the
reconciler.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from controller import API_VERSION
from controller.errors import UnsafePath
from controller.spec.documents import Diagnostic, Document, Limits, Path, parse_yaml
from controller.spec.kinds import (
    BUILDERS,
    SPEC_DIRS,
    Desired,
    ObjectRef,
)
from controller.spec.rules import Rules
from controller.spec.schema import KINDS, suggest
from controller.spec.schema import check as schema_check
from controller.spec.tree import EntryKind, Tree

__all__ = ["LoadResult", "ParseCache", "SnapshotLoader", "load_desired"]

_API_GROUP = API_VERSION.split("/")[0] + "/"

#: The largest magnitude a number in a spec may have (NaN and infinities are
#: refused too): every field's own bound is far below it.
MAX_SPEC_NUMBER = 1e15


@dataclass(frozen=True)
class LoadResult:
    desired: Desired
    diagnostics: tuple[Diagnostic, ...]
    #: Objects declared in the repo but left out of ``desired`` for a problem.
    invalid: frozenset[ObjectRef]
    #: Files that could not be read at all (their objects are unknown).
    unreadable: frozenset[str]

    @property
    def ok(self) -> bool:
        return not self.diagnostics


def load_desired(
    tree: Tree, limits: Limits | None = None, cache: ParseCache | None = None
) -> LoadResult:
    """Read every spec in ``tree``, validate it, and report all problems.

    With a :class:`ParseCache` shared between calls, files whose bytes did not
    change since the previous call are not parsed or schema-checked again; the
    cross-object rules always run over everything.
    """
    limits = limits or Limits()
    if limits.max_number is None:
        limits = dataclasses.replace(limits, max_number=MAX_SPEC_NUMBER)
    return _Loader(tree, limits, cache).run()


@dataclass(frozen=True)
class _Prepared:
    """One file parsed, classified and schema-checked: a pure function of its
    path and bytes, so it can be reused while the bytes stay the same."""

    problems: tuple[Diagnostic, ...]
    unreadable: bool
    objects: tuple[tuple[str, Any], ...]  # (kind, built object) for schema-valid documents
    invalid: tuple[ObjectRef, ...]


class SnapshotLoader:
    """Loads successive snapshots of one repository as cheaply as they allow.

    The same tree id as last time returns the last result without reading
    anything (a no-op poll); otherwise only files whose bytes changed are
    parsed again (see :class:`ParseCache`).
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits
        self.cache = ParseCache()
        self._last: tuple[str, LoadResult] | None = None

    def load(self, tree: Tree, tree_id: str) -> LoadResult:
        if self._last is not None and self._last[0] == tree_id:
            return self._last[1]
        result = load_desired(tree, self.limits, self.cache)
        self._last = (tree_id, result)
        return result


class ParseCache:
    """Prepared files by (path, content digest), kept for the last load only."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, bytes], _Prepared] = {}
        self._used: set[tuple[str, bytes]] = set()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, bytes]) -> _Prepared | None:
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            self._used.add(key)
        return found

    def put(self, key: tuple[str, bytes], value: _Prepared) -> None:
        self.misses += 1
        self._entries[key] = value
        self._used.add(key)

    def end_load(self) -> None:
        self._entries = {k: v for k, v in self._entries.items() if k in self._used}
        self._used = set()

    def __len__(self) -> int:
        return len(self._entries)


def _prepare(path: str, raw: bytes, strict: bool, limits: Limits) -> _Prepared:
    refused: list[tuple[str, str]] = []
    documents, parse_problems = parse_yaml(path, raw, limits, refused)
    problems = list(parse_problems)
    objects: list[tuple[str, Any]] = []
    # an object refused for a value it holds is invalid (shown, held), not unknown
    invalid = [ObjectRef(kind, name) for kind, name in refused if kind in KINDS]
    for document in documents:
        kind, why = _classify(document, strict)
        if why is not None:
            problems.append(why)
        if kind is None or kind not in KINDS:
            if kind is not None:
                invalid.extend(_ref_of(document, kind))
            continue
        schema_problems = schema_check(kind, document)
        if schema_problems:
            problems.extend(schema_problems)
            invalid.extend(_ref_of(document, kind))
            continue
        try:
            objects.append((kind, BUILDERS[kind](document)))
        except (ValueError, TypeError, KeyError, ArithmeticError, RecursionError) as exc:
            # a value the schema let through that the builder cannot use: this
            # object is refused, never the whole pass
            problems.append(
                document.diagnostic(("spec",), f"a value cannot be used: {exc}"[:300], "spec.value")
            )
            invalid.extend(_ref_of(document, kind))
    return _Prepared(
        tuple(problems), bool(parse_problems) and not documents, tuple(objects), tuple(invalid)
    )


def _classify(document: Document, strict: bool) -> tuple[str | None, Diagnostic | None]:
    """The document's kind (None when it is not an mdc spec) and a problem, if any.

    An unknown kind of ours comes back as-is, with a problem, so the caller
    can still name the object as invalid.
    """
    data = document.data
    api = data.get("apiVersion") if isinstance(data, dict) else None
    kind = data.get("kind") if isinstance(data, dict) else None
    ours = (isinstance(api, str) and api.startswith(_API_GROUP)) or kind in KINDS
    if not ours:
        if not strict:
            return None, None
        return None, document.diagnostic(
            (),
            f"not an mdc spec: files under {', '.join(d + '/' for d in SPEC_DIRS)} "
            f"must set apiVersion: {API_VERSION} and a kind ({', '.join(KINDS)})",
            "spec.kind",
        )
    if kind not in KINDS:
        where: Path = ("kind",) if isinstance(data, dict) and "kind" in data else ()
        return str(kind), document.diagnostic(
            where,
            f"unknown kind {kind!r}{suggest(str(kind), list(KINDS))}; mdc knows {', '.join(KINDS)}",
            "spec.kind",
        )
    return str(kind), None


def _ref_of(document: Document, kind: str) -> list[ObjectRef]:
    data = document.data
    meta = data.get("metadata") if isinstance(data, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return [ObjectRef(kind, name)] if isinstance(name, str) else []


class _Memo:
    """One load reads one snapshot: remember what each path is, since
    :func:`resolve` asks again for the same parent directories."""

    def __init__(self, tree: Tree) -> None:
        self.inner = tree
        self.kinds: dict[str, EntryKind | None] = {}

    def walk(self) -> Iterator[str]:
        return self.inner.walk()

    def kind(self, path: str) -> EntryKind | None:
        if path not in self.kinds:
            self.kinds[path] = self.inner.kind(path)
        return self.kinds[path]

    def size(self, path: str) -> int:
        return self.inner.size(path)

    def read(self, path: str) -> bytes:
        return self.inner.read(path)

    def readlink(self, path: str) -> str:
        return self.inner.readlink(path)

    def refusals(self) -> list[tuple[str, str]]:
        return self.inner.refusals()


class _Loader:
    def __init__(self, tree: Tree, limits: Limits, cache: ParseCache | None) -> None:
        self.tree: Tree = _Memo(tree)
        self.limits = limits
        self.cache = cache
        self.problems: list[Diagnostic] = []
        self.invalid: set[ObjectRef] = set()
        self.unreadable: set[str] = set()
        self.seen: set[str] = set()
        self.rules = Rules(self.tree, self.invalid)

    # -- files and documents ------------------------------------------------

    def run(self) -> LoadResult:
        by_kind: dict[str, list[Any]] = {kind: [] for kind in KINDS}
        for path in self.tree.walk():
            if not path.endswith((".yaml", ".yml")) or _hidden(path):
                continue
            strict = path.split("/", 1)[0] in SPEC_DIRS
            raw = self.read(path, strict)
            if raw is None:
                continue
            prepared = self.prepare(path, raw, strict)
            self.problems.extend(prepared.problems)
            self.invalid.update(prepared.invalid)
            if prepared.unreadable:
                self.unreadable.add(path)
            for kind, obj in prepared.objects:
                by_kind[kind].append(obj)
        for path, why in self.tree.refusals():
            self.problems.append(Diagnostic(path, 1, 1, "", why, "tree.limit"))
        if self.cache is not None:
            self.cache.end_load()

        pools = self.unique(by_kind["GPUPool"], "GPUPool")
        policies = self.unique(by_kind["RolloutPolicy"], "RolloutPolicy")
        models = self.unique(by_kind["Model"], "Model")
        rules = self.rules
        for pool in list(pools.values()):
            self.drop_if("GPUPool", pool.name, rules.check_pool(pool), pools)
        for policy in list(policies.values()):
            self.drop_if("RolloutPolicy", policy.name, rules.check_policy(policy), policies)
        for model in list(models.values()):
            self.drop_if("Model", model.name, rules.check_model(model, pools, policies), models)
        for model in list(models.values()):
            # a model whose pool or policy is invalid is held with it (its own spec
            # may be fine: no second error about it, but nothing acts on it)
            needs = (ObjectRef("GPUPool", model.pool), ObjectRef("RolloutPolicy", model.rollout))
            if any(ref in self.invalid for ref in needs):
                self.invalid.add(ObjectRef("Model", model.name))
                del models[model.name]

        self.problems.sort(key=lambda d: (d.file, d.line, d.column, d.rule))
        return LoadResult(
            Desired(models, pools, policies),
            tuple(self.problems),
            frozenset(self.invalid),
            frozenset(self.unreadable),
        )

    def prepare(self, path: str, raw: bytes, strict: bool) -> _Prepared:
        if self.cache is None:
            return _prepare(path, raw, strict, self.limits)
        key = (path, hashlib.blake2b(raw, digest_size=16).digest())
        found = self.cache.get(key)
        if found is None:
            found = _prepare(path, raw, strict, self.limits)
            self.cache.put(key, found)
        return found

    def read(self, path: str, strict: bool) -> bytes | None:
        def refuse(message: str, rule: str) -> None:
            self.problems.append(Diagnostic(path, 1, 1, "", message, rule))
            self.unreadable.add(path)

        try:
            target, kind = self.rules.resolve(path)
        except UnsafePath as exc:
            if strict:
                refuse(str(exc), "path.symlink")
            return None
        if target in self.seen:  # a symlink and its target are one file
            return None
        self.seen.add(target)
        if kind is not EntryKind.FILE:
            if strict:
                refuse(f"{path} is not a regular file", "file.type")
            return None
        size = self.tree.size(target)
        if size > self.limits.max_file_bytes:
            refuse(
                f"file is {size} bytes, over the limit of {self.limits.max_file_bytes} bytes",
                "file.size",
            )
            return None
        raw = self.tree.read(target)
        if not strict and _API_GROUP.encode() not in raw:
            return None
        return raw

    def unique(self, objects: list[Any], kind: str) -> dict[str, Any]:
        """Objects by name; a name defined twice makes both invalid."""
        out: dict[str, Any] = {}
        for obj in objects:
            if obj.name in out:
                first = out[obj.name].source
                where = first.locate(("metadata", "name"))
                self.problems.append(
                    obj.source.diagnostic(
                        ("metadata", "name"),
                        f"{kind} {obj.name!r} is already defined at {first.file}:{where.line}",
                        "spec.unique-name",
                    )
                )
                self.invalid.add(ObjectRef(kind, obj.name))
                continue
            out[obj.name] = obj
        for name in [n for n in out if ObjectRef(kind, n) in self.invalid]:
            del out[name]
        return out

    def drop_if(
        self, kind: str, name: str, problems: list[Diagnostic], into: dict[str, Any]
    ) -> None:
        """Leave an object with problems out of the desired state, and name it invalid."""
        if problems:
            self.problems.extend(problems)
            self.invalid.add(ObjectRef(kind, name))
            del into[name]

    # -- semantic rules -----------------------------------------------------


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/")[:-1])
