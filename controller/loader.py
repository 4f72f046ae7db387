"""Loading a spec repository into :class:`~controller.spec.Desired`, with
every problem reported at once.

Owns :func:`load_desired`, which turns any :class:`~controller.tree.Tree`
(a directory, or a commit read from git) into the valid objects plus
:class:`~controller.documents.Diagnostic` values, and the semantic rules
the schemas cannot express: unique names, references that resolve (pool,
policy, team quota, service module and class, artifact), rising canary
weights, a GPU request that fits some node of its pool, and consistent
quotas.

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

import ast
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from controller import API_VERSION
from controller.documents import Diagnostic, Document, Limits, Path, parse_yaml
from controller.errors import UnsafePath
from controller.schema import KINDS, suggest
from controller.schema import check as schema_check
from controller.spec import (
    BUILDERS,
    SPEC_DIRS,
    Desired,
    GPUPool,
    Model,
    ObjectRef,
    RolloutPolicy,
    Sharing,
    StepKind,
)
from controller.tree import EntryKind, Tree, clean_reference, resolve
from controller.units import format_bytes

__all__ = ["LoadResult", "ParseCache", "SnapshotLoader", "load_desired"]

_API_GROUP = API_VERSION.split("/")[0] + "/"
_MAX_SERVICE_BYTES = 1 << 20


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
    return _Loader(tree, limits or Limits(), cache).run()


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
    documents, parse_problems = parse_yaml(path, raw, limits)
    problems = list(parse_problems)
    objects: list[tuple[str, Any]] = []
    invalid: list[ObjectRef] = []
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
        objects.append((kind, BUILDERS[kind](document)))
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


class _Loader:
    def __init__(self, tree: Tree, limits: Limits, cache: ParseCache | None) -> None:
        self.tree: Tree = _Memo(tree)
        self.limits = limits
        self.cache = cache
        self.problems: list[Diagnostic] = []
        self.invalid: set[ObjectRef] = set()
        self.unreadable: set[str] = set()
        self.seen: set[str] = set()
        self.modules: dict[str, list[str] | str] = {}
        self.resolved: dict[str, tuple[str, EntryKind | None] | UnsafePath] = {}

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
        if self.cache is not None:
            self.cache.end_load()

        pools = self.unique(by_kind["GPUPool"], "GPUPool")
        policies = self.unique(by_kind["RolloutPolicy"], "RolloutPolicy")
        models = self.unique(by_kind["Model"], "Model")
        for pool in list(pools.values()):
            self.drop_if(pool.source, "GPUPool", pool.name, self.check_pool(pool), pools)
        for policy in list(policies.values()):
            self.drop_if(
                policy.source, "RolloutPolicy", policy.name, self.check_policy(policy), policies
            )
        for model in list(models.values()):
            self.drop_if(
                model.source, "Model", model.name, self.check_model(model, pools, policies), models
            )

        self.problems.sort(key=lambda d: (d.file, d.line, d.column, d.rule))
        return LoadResult(
            Desired(models, pools, policies),
            tuple(self.problems),
            frozenset(self.invalid),
            frozenset(self.unreadable),
        )

    def resolve(self, reference: str) -> tuple[str, EntryKind | None]:
        """:func:`~controller.tree.resolve`, remembered: many models name the
        same service module, and every one is checked."""
        if reference not in self.resolved:
            try:
                self.resolved[reference] = resolve(self.tree, clean_reference(reference))
            except UnsafePath as exc:
                self.resolved[reference] = exc
        found = self.resolved[reference]
        if isinstance(found, UnsafePath):
            raise found
        return found

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
            target, kind = self.resolve(path)
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
        self,
        document: Document,
        kind: str,
        name: str,
        problems: list[Diagnostic],
        into: dict[str, Any],
    ) -> None:
        if problems:
            self.problems.extend(problems)
            self.invalid.add(ObjectRef(kind, name))
            del into[name]

    # -- semantic rules -----------------------------------------------------

    def check_pool(self, pool: GPUPool) -> list[Diagnostic]:
        doc = pool.source
        out: list[Diagnostic] = []
        out += _duplicates(doc, ("spec", "nodes"), [n.name for n in pool.nodes], "name", "node")
        out += _duplicates(doc, ("spec", "quotas"), [q.team for q in pool.quotas], "team", "team")
        for i, quota in enumerate(pool.quotas):
            if quota.guaranteed > quota.limit:
                out.append(
                    doc.diagnostic(
                        ("spec", "quotas", i, "guaranteed"),
                        f"guaranteed ({quota.guaranteed:g}) must not exceed "
                        f"limit ({quota.limit:g})",
                        "quota.limit",
                    )
                )
        capacity = pool.declared_gpus
        promised = sum(q.guaranteed for q in pool.quotas)
        if capacity is not None and promised > capacity:
            out.append(
                doc.diagnostic(
                    ("spec", "quotas"),
                    f"teams are guaranteed {promised:g} GPUs in total but the pool "
                    f"declares {capacity}",
                    "quota.capacity",
                )
            )
        return out

    def check_policy(self, policy: RolloutPolicy) -> list[Diagnostic]:
        doc = policy.source
        out: list[Diagnostic] = []
        last = 0
        for i, step in enumerate(policy.steps):
            if step.kind is StepKind.SET_WEIGHT and step.weight is not None:
                if step.weight <= last:
                    out.append(
                        doc.diagnostic(
                            ("spec", "steps", i, "setWeight"),
                            f"weights must rise from step to step ({step.weight} after {last})",
                            "steps.weight",
                        )
                    )
                last = max(last, step.weight)
            if step.kind is StepKind.ANALYSIS and policy.analysis is None:
                out.append(
                    doc.diagnostic(
                        ("spec", "steps", i, "analysis"),
                        "an analysis step needs spec.analysis with its interval and checks",
                        "steps.analysis",
                    )
                )
        if policy.analysis is not None:
            checks = policy.analysis.checks
            base: Path = ("spec", "analysis", "checks")
            out += _duplicates(doc, base, [c.name for c in checks], "name", "check")
            for i, chk in enumerate(checks):
                bounds = (chk.min, chk.max, chk.min_ratio_to_stable, chk.max_ratio_to_stable)
                if all(b is None for b in bounds):
                    out.append(
                        doc.diagnostic(
                            (*base, i),
                            "a check needs at least one of min, max, minRatioToStable, "
                            "maxRatioToStable",
                            "analysis.bounds",
                        )
                    )
                for low, high, names in (
                    (chk.min, chk.max, ("min", "max")),
                    (
                        chk.min_ratio_to_stable,
                        chk.max_ratio_to_stable,
                        ("minRatioToStable", "maxRatioToStable"),
                    ),
                ):
                    if low is not None and high is not None and low > high:
                        out.append(
                            doc.diagnostic(
                                (*base, i, names[0]),
                                f"{names[0]} ({low:g}) is above {names[1]} ({high:g})",
                                "analysis.bounds",
                            )
                        )
        return out

    def check_model(
        self, model: Model, pools: Mapping[str, GPUPool], policies: Mapping[str, RolloutPolicy]
    ) -> list[Diagnostic]:
        doc = model.source
        out: list[Diagnostic] = []
        out += self.check_artifact(model)
        out += self.check_service(model)
        res = model.resources
        res_path: Path = ("spec", "resources")
        if (res.gpu is None) == (res.gpu_memory is None):
            out.append(
                doc.diagnostic(
                    res_path,
                    "set exactly one of gpu (a count or fraction) or gpuMemory",
                    "resources.gpu",
                )
            )
        elif res.gpu is not None and res.gpu > 1 and res.gpu != int(res.gpu):
            out.append(
                doc.diagnostic(
                    (*res_path, "gpu"),
                    f"more than one GPU must be a whole number (got {res.gpu:g})",
                    "resources.gpu",
                )
            )
        if (
            model.rollout not in policies
            and ObjectRef("RolloutPolicy", model.rollout) not in self.invalid
        ):
            out.append(
                doc.diagnostic(
                    ("spec", "rollout"),
                    f"no RolloutPolicy named {model.rollout!r}"
                    f"{suggest(model.rollout, list(policies))}{_known(policies)}",
                    "ref.rollout",
                )
            )
        pool = pools.get(model.pool)
        if pool is None:
            if ObjectRef("GPUPool", model.pool) not in self.invalid:
                out.append(
                    doc.diagnostic(
                        ("spec", "pool"),
                        f"no GPUPool named {model.pool!r}{suggest(model.pool, list(pools))}"
                        + _known(pools),
                        "ref.pool",
                    )
                )
            return out
        if pool.quota(model.team) is None:
            teams = [q.team for q in pool.quotas]
            out.append(
                doc.diagnostic(
                    ("spec", "team"),
                    f"team {model.team!r} has no quota in pool {pool.name!r}"
                    f"{suggest(model.team, teams)} (teams: {', '.join(teams)})",
                    "ref.team",
                )
            )
        if not any(d.rule == "resources.gpu" for d in out):
            out += _check_fit(model, pool)
        return out

    def check_artifact(self, model: Model) -> list[Diagnostic]:
        doc, art = model.source, model.artifact
        base: Path = ("spec", "artifact")
        given = [
            n
            for n, v in (("path", art.path), ("url", art.url), ("bentoModel", art.bento_model))
            if v
        ]
        if len(given) != 1:
            got = ", ".join(given) or "none"
            return [
                doc.diagnostic(
                    base,
                    f"set exactly one of path, url or bentoModel (got {got})",
                    "artifact.source",
                )
            ]
        if art.sha256 and not art.url:
            return [
                doc.diagnostic((*base, "sha256"), "sha256 goes with url only", "artifact.source")
            ]
        if art.url:
            parts = urlsplit(art.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return [
                    doc.diagnostic(
                        (*base, "url"),
                        f"must be an http(s) URL with a host (got {art.url!r})",
                        "artifact.url",
                    )
                ]
            if parts.username or parts.password:
                return [
                    doc.diagnostic(
                        (*base, "url"),
                        "must not carry credentials; mdc reads tokens from its environment",
                        "artifact.url",
                    )
                ]
            return []
        if art.path:
            return self.check_in_repo(doc, (*base, "path"), art.path, "ref.artifact", "artifact")
        return []

    def check_in_repo(
        self, doc: Document, path: Path, ref: str, rule: str, what: str
    ) -> list[Diagnostic]:
        try:
            _, kind = self.resolve(ref)
        except UnsafePath as exc:
            return [doc.diagnostic(path, str(exc), "path.unsafe")]
        if kind is None:
            return [doc.diagnostic(path, f"{what} {ref!r} does not exist in the repo", rule)]
        if kind not in (EntryKind.FILE, EntryKind.DIR):
            return [
                doc.diagnostic(path, f"{what} {ref!r} is not a regular file or directory", rule)
            ]
        return []

    def classes_in(self, target: str, shown: str) -> list[str] | str:
        """Top-level class names of a Python module (parsed, never run), or why not."""
        if target not in self.modules:
            try:
                module = ast.parse(self.tree.read(target), filename=shown)
            except (SyntaxError, ValueError) as exc:
                line = getattr(exc, "lineno", None) or "?"
                self.modules[target] = f"cannot parse {shown} (line {line}): {exc}"
            else:
                self.modules[target] = [n.name for n in module.body if isinstance(n, ast.ClassDef)]
        return self.modules[target]

    def check_service(self, model: Model) -> list[Diagnostic]:
        doc, where = model.source, ("spec", "service")
        problems = self.check_in_repo(
            doc, where, model.service_module, "ref.service", "service module"
        )
        if problems:
            return problems
        target, kind = self.resolve(model.service_module)
        if kind is not EntryKind.FILE:
            return [
                doc.diagnostic(
                    where, f"service module {model.service_module!r} is not a file", "ref.service"
                )
            ]
        if self.tree.size(target) > _MAX_SERVICE_BYTES:
            return [
                doc.diagnostic(
                    where,
                    f"service module {model.service_module!r} is over {_MAX_SERVICE_BYTES} bytes",
                    "ref.service",
                )
            ]
        classes = self.classes_in(target, model.service_module)
        if isinstance(classes, str):
            return [doc.diagnostic(where, classes, "ref.service")]
        if model.service_class not in classes:
            return [
                doc.diagnostic(
                    where,
                    f"{model.service_module} defines no class {model.service_class!r}"
                    f"{suggest(model.service_class, classes)} "
                    f"(classes: {', '.join(classes) or 'none'})",
                    "ref.service",
                )
            ]
        return []


def _check_fit(model: Model, pool: GPUPool) -> list[Diagnostic]:
    res, doc = model.resources, model.source
    fractional = res.gpu_memory is not None or (res.gpu is not None and res.gpu < 1)
    if fractional and pool.sharing is Sharing.WHOLE:
        return [
            doc.diagnostic(
                ("spec", "resources"),
                f"asks for a share of a GPU ({res.describe()}) but pool {pool.name!r} "
                "shares whole GPUs only",
                "fit.sharing",
            )
        ]
    known = [node for node in pool.nodes if node.gpus]
    if len(known) < len(pool.nodes):
        return []  # an NVML node may have anything: the ledger decides at run time
    if res.gpu_memory is not None:
        biggest = max((g.memory for n in known for g in n.gpus), default=0)
        if res.gpu_memory > biggest:
            return [
                doc.diagnostic(
                    ("spec", "resources", "gpuMemory"),
                    f"needs {format_bytes(res.gpu_memory)} on one GPU; the largest GPU in pool "
                    f"{pool.name!r} has {format_bytes(biggest)}",
                    "fit.node",
                )
            ]
    elif res.whole_gpus:
        largest = max(known, key=lambda n: n.gpu_count)
        if res.whole_gpus > largest.gpu_count:
            return [
                doc.diagnostic(
                    ("spec", "resources", "gpu"),
                    f"needs {res.whole_gpus} GPUs on one node; the largest node of pool "
                    f"{pool.name!r} has {largest.gpu_count} ({largest.name})",
                    "fit.node",
                )
            ]
    return []


def _duplicates(
    doc: Document, base: Path, names: list[str], field_name: str, what: str
) -> list[Diagnostic]:
    seen: dict[str, int] = {}
    out = []
    for i, name in enumerate(names):
        if name in seen:
            out.append(
                doc.diagnostic(
                    (*base, i, field_name),
                    f"{what} {name!r} appears twice (also at {base[-1]}[{seen[name]}])",
                    f"spec.unique-{what}",
                )
            )
        else:
            seen[name] = i
    return out


def _known(objects: Mapping[str, Any]) -> str:
    return f" (known: {', '.join(sorted(objects))})" if objects else " (none is defined)"


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/")[:-1])
