"""The rules a spec repository must keep that a JSON Schema cannot say.

Owns the cross-object and cross-file checks run after every document passed
its schema: unique names inside a pool and a policy, references that resolve
(pool, rollout policy, team quota, service module and class, artifact),
rising canary weights, analysis steps that have checks to run, checks with
bounds, a GPU request that fits some node of its pool, and quotas that add up.
Service modules are parsed with :mod:`ast`, never imported or run; paths go
through :func:`~controller.spec.tree.resolve`, so nothing is read outside the repo.

Pure apart from reading the :class:`~controller.spec.tree.Tree` it is given. Called
by :mod:`controller.spec.loader`, one :class:`Rules` per load.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Set
from typing import Any
from urllib.parse import urlsplit

from controller.errors import UnsafePath
from controller.spec.documents import Diagnostic, Document, Path
from controller.spec.kinds import (
    LATENCY_THRESHOLD_MAX,
    Analysis,
    GPUPool,
    Judge,
    MlflowVersion,
    Model,
    ObjectRef,
    RolloutPolicy,
    Sharing,
    StepKind,
)
from controller.spec.pysource import MAX_MODULE_BYTES, parse_module
from controller.spec.requirements import requirement_lines, split_requirements_file
from controller.spec.schema import suggest
from controller.spec.tree import MAX_BLOB_BYTES, EntryKind, Tree, clean_reference, resolve
from controller.spec.units import format_bytes

__all__ = ["Rules"]

_MAX_SERVICE_BYTES = MAX_MODULE_BYTES


class Rules:
    """The semantic checks over one snapshot; remembers resolved paths and parsed
    modules, since many models name the same ones."""

    def __init__(self, tree: Tree, invalid: Set[ObjectRef]) -> None:
        self.tree = tree
        self.invalid = invalid  # objects already known bad: no cascade of errors about them
        self.modules: dict[str, list[str] | str] = {}
        self.resolved: dict[str, tuple[str, EntryKind | None] | UnsafePath] = {}

    def resolve(self, reference: str) -> tuple[str, EntryKind | None]:
        """:func:`~controller.spec.tree.resolve`, remembered: many models name the
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

    def check_pool(self, pool: GPUPool) -> list[Diagnostic]:
        doc = pool.source
        out: list[Diagnostic] = []
        if pool.cluster is not None and pool.nodes:
            out.append(
                doc.diagnostic(
                    ("spec", "cluster"),
                    "give nodes (the machines, listed) or cluster (nodes chosen from the "
                    "cluster by label), not both",
                    "pool.nodes",
                )
            )
        elif pool.cluster is None and not pool.nodes:
            out.append(
                doc.diagnostic(
                    ("spec",),
                    "the pool has no nodes: list them under nodes, or choose them from the "
                    "cluster under cluster",
                    "pool.nodes",
                )
            )
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
                if (chk.metric is None) == (chk.query is None):
                    out.append(
                        doc.diagnostic(
                            (*base, i),
                            "a check needs exactly one of metric or query",
                            "analysis.metric",
                        )
                    )
                elif chk.query is not None and (
                    chk.min_ratio_to_stable is not None or chk.max_ratio_to_stable is not None
                ):
                    out.append(
                        doc.diagnostic(
                            (*base, i),
                            "a query check takes min and max only (bounds relative to stable "
                            "need a built-in metric)",
                            "analysis.metric",
                        )
                    )
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
            out += _check_judge(doc, policy.analysis)
            if policy.analysis.judge is Judge.SEQUENTIAL:
                out += _check_weights_compared(policy)
        return out

    def check_model(
        self, model: Model, pools: Mapping[str, GPUPool], policies: Mapping[str, RolloutPolicy]
    ) -> list[Diagnostic]:
        doc = model.source
        out: list[Diagnostic] = []
        out += self.check_artifact(model)
        out += self.check_service(model)
        out += self.check_python(model)
        if model.promote_on is not None and model.artifact.mlflow is None:
            out.append(
                doc.diagnostic(
                    ("spec", "promoteOn"),
                    "promoteOn watches an MLflow registered model: it needs artifact.mlflow",
                    "promoteOn.artifact",
                )
            )
        out += _check_monitor(model)
        res = model.resources
        res_path: Path = ("spec", "resources")
        out += _check_resources(model)
        if res.gpu is not None and res.gpu > 1 and res.gpu != int(res.gpu):
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
            for n, v in (
                ("path", art.path),
                ("url", art.url),
                ("bentoModel", art.bento_model),
                ("mlflow", art.mlflow),
            )
            if v
        ]
        if len(given) != 1:
            got = ", ".join(given) or "none"
            return [
                doc.diagnostic(
                    base,
                    f"set exactly one of path, url, bentoModel or mlflow (got {got})",
                    "artifact.source",
                )
            ]
        if art.mlflow is not None:
            return _check_mlflow(doc, art.mlflow)
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
            found = self.check_in_repo(doc, (*base, "path"), art.path, "ref.artifact", "artifact")
            if found:
                return found
            target, kind = self.resolve(art.path)
            if kind is EntryKind.FILE and self.tree.size(target) > MAX_BLOB_BYTES:
                return [
                    doc.diagnostic(
                        (*base, "path"),
                        f"artifact {art.path!r} is over {MAX_BLOB_BYTES} bytes; "
                        "serve it over https with a sha256",
                        "artifact.size",
                    )
                ]
        return []

    def check_python(self, model: Model) -> list[Diagnostic]:
        """``spec.python``: each package a PEP 508 requirement by name; the
        requirements file in the repo, small, and of requirements too."""
        doc, deps = model.source, model.python
        base: Path = ("spec", "python")
        out = [
            doc.diagnostic((*base, "packages", r.index), f"{r.text!r}: {r.why}", "python.packages")
            for r in requirement_lines(deps.packages)[1]
        ]
        if deps.requirements is None:
            return out
        where: Path = (*base, "requirements")
        found = self.check_in_repo(doc, where, deps.requirements, "ref.requirements", "file")
        if found:
            return out + found
        target, kind = self.resolve(deps.requirements)
        if kind is not EntryKind.FILE or self.tree.size(target) > MAX_REQUIREMENTS_FILE:
            return [
                *out,
                doc.diagnostic(
                    where,
                    f"{deps.requirements!r} must be a file of at most "
                    f"{format_bytes(MAX_REQUIREMENTS_FILE)}",
                    "python.requirements",
                ),
            ]
        lines = split_requirements_file(self.tree.read(target).decode("utf-8", "replace"))
        for r in requirement_lines(line for _, line in lines)[1]:
            number = lines[r.index][0] if r.index < len(lines) else 0
            out.append(
                doc.diagnostic(
                    where,
                    f"{deps.requirements}:{number}: {r.text!r}: {r.why}",
                    "python.requirements",
                )
            )
        return out

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
            module = parse_module(self.tree.read(target), shown)
            if isinstance(module, str):
                self.modules[target] = module
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


#: metrics whose values are shares: their bounds lie in [0, 1]
_SHARES = frozenset({"errorRate", "gpuMemoryHeadroom", "gpuUtilization"})


def _check_monitor(model: Model) -> list[Diagnostic]:
    monitor, doc = model.monitor, model.source
    if monitor is None:
        return []
    out: list[Diagnostic] = []
    base: Path = ("spec", "monitor")
    seen: dict[str, int] = {}
    for i, objective in enumerate(monitor.objectives):
        where: Path = (*base, "objectives", i)
        if objective.min is None and objective.max is None:
            out.append(
                doc.diagnostic(
                    where,
                    f"objective {objective.name!r} needs a bound: min, max or both",
                    "monitor.bounds",
                )
            )
        elif (
            objective.min is not None
            and objective.max is not None
            and (objective.min > objective.max)
        ):
            out.append(
                doc.diagnostic(
                    (*where, "min"),
                    f"min ({objective.min:g}) must not exceed max ({objective.max:g})",
                    "monitor.bounds",
                )
            )
        for bound in ("min", "max"):
            value = getattr(objective, bound)
            if value is None:
                continue
            if objective.metric in _SHARES and not 0 <= value <= 1:
                out.append(
                    doc.diagnostic(
                        (*where, bound),
                        f"{objective.metric} is a share between 0 and 1 (got {value:g})",
                        "monitor.bounds",
                    )
                )
            elif value < 0:
                out.append(
                    doc.diagnostic(
                        (*where, bound),
                        f"{objective.metric} is never negative (got {value:g})",
                        "monitor.bounds",
                    )
                )
        if objective.name in seen:
            out.append(
                doc.diagnostic(
                    (*where, "name"),
                    f"objective {objective.name!r} appears twice "
                    f"(also at objectives[{seen[objective.name]}])",
                    "spec.unique-objective",
                )
            )
        seen.setdefault(objective.name, i)
    if monitor.drift is not None and monitor.sampling is None:
        out.append(
            doc.diagnostic(
                (*base, "drift"),
                "the drift watch reads sampled responses: add monitor.sampling "
                "(for example share: 0.05)",
                "monitor.drift",
            )
        )
    return out


def _check_resources(model: Model) -> list[Diagnostic]:
    """A GPU request (one of gpu or gpuMemory) or a CPU-only one (neither, with
    cpu and/or memory); the amounts above 0."""
    res, doc = model.resources, model.source
    base: Path = ("spec", "resources")
    out: list[Diagnostic] = []
    if res.gpu is not None and res.gpu_memory is not None:
        out.append(
            doc.diagnostic(
                base, "set only one of gpu (a count or fraction) or gpuMemory", "resources.gpu"
            )
        )
    elif res.gpu is None and res.gpu_memory is None and res.cpu is None and res.memory is None:
        out.append(
            doc.diagnostic(
                base,
                "say what each replica needs: gpu (a count or fraction) or gpuMemory, or "
                "cpu and/or memory for a CPU-only model (such as cpu: 2, memory: 2Gi)",
                "resources.gpu",
            )
        )
    if res.cpu is not None and not 0 < res.cpu <= 1024:
        out.append(
            doc.diagnostic(
                (*base, "cpu"),
                f"must be more than 0 and at most 1024 CPU cores (got {res.cpu:g})",
                "resources.cpu",
            )
        )
    if res.memory is not None and res.memory <= 0:
        out.append(
            doc.diagnostic(
                (*base, "memory"), "must be more than 0 bytes (got 0)", "resources.memory"
            )
        )
    return out


def _check_fit(model: Model, pool: GPUPool) -> list[Diagnostic]:
    res, doc = model.resources, model.source
    if res.cpu_only:
        return []  # no GPU: it fits any pool
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
    if pool.cluster is not None or not known or len(known) < len(pool.nodes):
        return []  # an NVML or cluster node may have anything: the ledger decides at run time
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


_SEQUENTIAL_ONLY = ("falseRollback", "missedRegression", "errorRate", "latency")


#: A requirements file larger than this is refused.
MAX_REQUIREMENTS_FILE = 64 * 1024


def _check_mlflow(doc: Document, ref: MlflowVersion) -> list[Diagnostic]:
    """A version is immutable, so git names exactly what runs; an alias moves."""
    base: Path = ("spec", "artifact", "mlflow")
    if ref.alias is not None:
        return [
            doc.diagnostic(
                (*base, "alias"),
                f"an alias ({ref.alias!r}) moves without a commit, so git would no longer say "
                "what runs: name the version it points to (version: N), or declare "
                f"promoteOn: {{alias: {ref.alias}}} and let `mdc registry watch` open a pull "
                "request for each version the alias reaches",
                "artifact.mlflow",
            )
        ]
    if ref.version is None:
        return [
            doc.diagnostic(
                base, "version is required (MLflow's number: 1, 2, ...)", "artifact.mlflow"
            )
        ]
    number = ref.version
    if not (number.isascii() and number.isdigit() and len(number) <= 9 and int(number) >= 1):
        return [
            doc.diagnostic(
                (*base, "version"),
                f"must be MLflow's version number (1, 2, ...), not {ref.version!r}; "
                "an alias or stage moves and is refused",
                "artifact.mlflow",
            )
        ]
    return []


def _check_weights_compared(policy: RolloutPolicy) -> list[Diagnostic]:
    """An analysis step at weight 100 leaves the stable version nothing to compare."""
    out: list[Diagnostic] = []
    weight = 0
    for i, step in enumerate(policy.steps):
        if step.kind is StepKind.SET_WEIGHT:
            weight = step.weight or 0
        elif step.kind is StepKind.ANALYSIS and weight >= 100:
            out.append(
                policy.source.diagnostic(
                    ("spec", "steps", i, "analysis"),
                    "an analysis step at weight 100 leaves the stable version no traffic to "
                    "compare with: the sequential judge needs the weight below 100 (the "
                    "canary is promoted after the last step anyway)",
                    "analysis.judge",
                )
            )
    return out


def _check_judge(doc: Document, analysis: Analysis) -> list[Diagnostic]:
    """The combinations of ``spec.analysis`` a judge cannot honour."""
    out: list[Diagnostic] = []
    raw = doc.data["spec"]["analysis"]
    base: Path = ("spec", "analysis")
    if analysis.judge is Judge.THRESHOLD:
        if not analysis.checks:
            out.append(
                doc.diagnostic(
                    base,
                    "the threshold judge needs checks (or set judge: sequential and say "
                    "what it compares: errorRate, latency)",
                    "analysis.judge",
                )
            )
        for key in _SEQUENTIAL_ONLY:
            if key in raw:
                out.append(
                    doc.diagnostic(
                        (*base, key),
                        f"{key} is read by the sequential judge only; set judge: sequential "
                        "(the threshold judge promises no false-rollback budget)",
                        "analysis.judge",
                    )
                )
        return out
    if not analysis.compared:
        out.append(
            doc.diagnostic(
                base,
                "the sequential judge needs errorRate (maxIncrease) or latency (threshold, "
                "maxRatio): what it compares with the stable version",
                "analysis.judge",
            )
        )
    for key, value, top in (
        ("falseRollback", analysis.false_rollback, 0.2),
        ("missedRegression", analysis.missed_regression, 0.2),
    ):
        if not 0 < value <= top:
            out.append(
                doc.diagnostic(
                    (*base, key),
                    f"{key} must be above 0 and at most {top:.0%} (got {value * 100:g}%)",
                    "analysis.budget",
                )
            )
    if analysis.error_increase is not None and not 0 < analysis.error_increase <= 0.5:
        out.append(
            doc.diagnostic(
                (*base, "errorRate", "maxIncrease"),
                "errorRate.maxIncrease must be above 0 and at most 50% "
                f"(got {analysis.error_increase * 100:g}%)",
                "analysis.budget",
            )
        )
    if analysis.latency is not None and not 0 < analysis.latency.threshold <= LATENCY_THRESHOLD_MAX:
        out.append(
            doc.diagnostic(
                (*base, "latency", "threshold"),
                f"latency.threshold must be above 0 and at most {LATENCY_THRESHOLD_MAX:g}s, "
                f"the router's largest latency bucket (got {analysis.latency.threshold:g}s)",
                "analysis.budget",
            )
        )
    for i, chk in enumerate(analysis.checks):
        if chk.min_ratio_to_stable is not None or chk.max_ratio_to_stable is not None:
            out.append(
                doc.diagnostic(
                    ("spec", "analysis", "checks", i),
                    "with judge: sequential a check is a guardrail with min and max only; the "
                    "comparison with stable is the judge's (errorRate.maxIncrease, "
                    "latency.maxRatio)",
                    "analysis.judge",
                )
            )
    return out
