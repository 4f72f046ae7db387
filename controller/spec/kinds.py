"""The user's spec language as typed, frozen objects.

Owns the three kinds (``Model``, ``GPUPool``, ``RolloutPolicy``, described in
DESIGN.md and defined field by field in ``schemas/``), the enums of their
closed vocabularies, :class:`Desired` (the valid objects of one repository
snapshot) and the builders that turn a schema-valid document into an object.
Quantities are parsed here once (durations to seconds, memory to bytes) so
nothing downstream handles strings.

Pure. Built by :mod:`controller.spec.loader`; read by everything that plans.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from controller.spec.documents import Document
from controller.spec.units import format_bytes, parse_duration, parse_memory, parse_share

__all__ = [
    "BUILDERS",
    "LATENCY_THRESHOLD_MAX",
    "SPEC_DIRS",
    "Analysis",
    "Artifact",
    "Check",
    "ClusterNodes",
    "Desired",
    "Discovery",
    "DriftWatch",
    "GPUGroup",
    "GPUPool",
    "Judge",
    "LatencyBound",
    "Metric",
    "MlflowVersion",
    "Model",
    "Monitor",
    "MonitorMetric",
    "Node",
    "ObjectRef",
    "Objective",
    "OutputKind",
    "Preview",
    "PreviewOutput",
    "Probe",
    "PromoteOn",
    "PythonDependencies",
    "Quota",
    "Resources",
    "RolloutPolicy",
    "Sampling",
    "Sharing",
    "Step",
    "StepKind",
    "parse_cpu",
]

SPEC_DIRS = ("models", "pools", "rollouts")


class Sharing(StrEnum):
    WHOLE = "Whole"
    FRACTIONAL = "Fractional"


class Discovery(StrEnum):
    NVML = "NVML"
    DECLARED = "Declared"


class StepKind(StrEnum):
    SET_WEIGHT = "setWeight"
    PAUSE = "pause"
    ANALYSIS = "analysis"


#: The largest latency threshold the sequential judge can compare: the router's
#: largest histogram bound (``controller.core.traffic.BUCKETS``; a test keeps them equal)
LATENCY_THRESHOLD_MAX = 10.0


class Judge(StrEnum):
    THRESHOLD = "threshold"  # each interval's checks against their bounds
    SEQUENTIAL = "sequential"  # evidence over the whole canary, against stable


class Metric(StrEnum):
    ERROR_RATE = "errorRate"
    LATENCY_P50 = "latencyP50"
    LATENCY_P90 = "latencyP90"
    LATENCY_P99 = "latencyP99"
    REQUEST_RATE = "requestRate"


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class MlflowVersion:
    """A registered model's version in MLflow (``artifact.mlflow``): ``version`` is
    MLflow's number as text; ``alias`` is kept only so validation can refuse it."""

    model: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.model}/{self.version}"


@dataclass(frozen=True)
class Artifact:
    """Exactly one of ``path`` (in the repo), ``url`` + ``sha256``, ``bento_model``,
    ``mlflow``."""

    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    bento_model: str | None = None
    mlflow: MlflowVersion | None = field(default=None, metadata={"hash": "unless-default"})


@dataclass(frozen=True)
class PromoteOn:
    """``spec.promoteOn``: the registry alias, or tag (``key`` with ``value``, any
    value when None), whose newest version a pull request should propose."""

    alias: str | None = None
    tag: str | None = None
    value: str | None = None

    def describe(self) -> str:
        if self.alias:
            return f"alias {self.alias!r}"
        return f"tag {self.tag}={self.value}" if self.value is not None else f"tag {self.tag}"


@dataclass(frozen=True)
class PythonDependencies:
    """``spec.python``: requirement lines, and a requirements file in the repo."""

    packages: tuple[str, ...] = ()
    requirements: str | None = None


@dataclass(frozen=True)
class Resources:
    """Per replica: ``gpu`` (whole count or fraction) or ``gpu_memory`` bytes, or
    neither: a CPU-only model, which holds no GPU. ``cpu``
    (cores) and ``memory`` (bytes) are what a replica says it needs of the host."""

    gpu: float | None
    gpu_memory: int | None
    replicas: int
    cpu: float | None = None
    memory: int | None = None

    @property
    def whole_gpus(self) -> int:
        """Whole GPUs per replica; 0 for a fractional, memory or CPU-only request."""
        return int(self.gpu) if self.gpu is not None and self.gpu >= 1 else 0

    @property
    def cpu_only(self) -> bool:
        """Whether it asks for no GPU at all (neither ``gpu`` nor ``gpuMemory``)."""
        return self.gpu is None and self.gpu_memory is None

    def describe(self) -> str:
        if self.cpu_only:
            host = [f"{self.cpu:g} CPU"] if self.cpu is not None else []
            host += [format_bytes(self.memory)] if self.memory is not None else []
            each = "CPU only" + (f" ({', '.join(host)})" if host else "")
        elif self.gpu is not None:
            each = f"{self.gpu:g} GPU"
        else:
            each = f"{format_bytes(self.gpu_memory or 0)} GPU memory"
        return each if self.replicas == 1 else f"{self.replicas} x {each}"


def parse_cpu(value: float | int | str) -> float:
    """CPU cores as Kubernetes writes them: a number (``2``, ``0.5``) or
    millicores (``"500m"``)."""
    if isinstance(value, str) and value.endswith("m"):
        return int(value[:-1]) / 1000
    return float(value)


@dataclass(frozen=True)
class Probe:
    """A real request that proves a release answers."""

    path: str
    body: Mapping[str, Any]
    timeout: float = 5.0
    interval: float = 10.0
    failure_threshold: int = 3


class MonitorMetric(StrEnum):
    ERROR_RATE = "errorRate"
    LATENCY_P50 = "latencyP50"
    LATENCY_P90 = "latencyP90"
    LATENCY_P99 = "latencyP99"
    GPU_MEMORY_HEADROOM = "gpuMemoryHeadroom"
    GPU_UTILIZATION = "gpuUtilization"


@dataclass(frozen=True)
class Objective:
    name: str
    metric: MonitorMetric
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class DriftWatch:
    field: str  # dotted keys into a response; lists on the way are walked
    threshold: float = 0.2  # population stability index
    baseline: float = 600.0  # seconds after promotion
    window: float = 600.0
    min_samples: int = 500


@dataclass(frozen=True)
class Sampling:
    share: float
    max_bytes: int = 64 * 2**20
    sensitive: tuple[str, ...] = ()


class OutputKind(StrEnum):
    """What a model's output field holds, which says how two answers are compared."""

    LABEL = "label"  # agree when equal
    NUMBER = "number"  # agree within ``tolerance``; the differences are summarised
    RANKING = "ranking"  # a list, best first: the overlap of the top ``top``


@dataclass(frozen=True)
class PreviewOutput:
    """How a model's answers are compared in a preview (``spec.preview`` of a Model)."""

    field: str  # dotted keys into a response, as ``monitor.drift.field``
    kind: OutputKind = OutputKind.LABEL
    top: int = 10  # k of a ranking's top k
    tolerance: float = 0.0  # numbers that differ by at most this agree
    sensitive: tuple[str, ...] = ()  # request and answer keys never kept in a pair


@dataclass(frozen=True)
class Preview:
    """A policy's bounds on a pull request's preview (``spec.preview`` of a
    RolloutPolicy): the share of the stable's requests mirrored to it, and what
    its comparison with the stable must show for ``mdc/preview`` to pass."""

    share: int = 50  # percent of the stable's requests mirrored
    min_pairs: int = 500
    min_agreement: float = 0.95
    max_latency_ratio: float = 1.3  # the preview's p90 over the stable's
    max_error_rate: float = 0.01


@dataclass(frozen=True)
class Monitor:
    """What mdc keeps judging after promotion (``spec.monitor``)."""

    objectives: tuple[Objective, ...] = ()
    window: float = 300.0
    interval: float = 30.0
    min_requests: int = 20
    breach_after: int = 2
    recover_after: int = 3
    drift: DriftWatch | None = None
    sampling: Sampling | None = None


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    team: str
    artifact: Artifact
    service_module: str  # path of the .py file inside the repo
    service_class: str
    resources: Resources
    pool: str
    rollout: str
    description: str
    source: Document = field(repr=False, compare=False)
    ready_timeout: float = 120.0
    probe: Probe | None = None
    monitor: Monitor | None = None  # spec.monitor, as written (no defaults from the policy)
    python: PythonDependencies = field(
        default=PythonDependencies(), metadata={"hash": "unless-default"}
    )
    promote_on: PromoteOn | None = None  # not part of what runs (see core.plan)
    #: how answers are compared in a pull request's preview (field and sensitive keys
    #: default to the monitor's); None: spec.preview and monitor.drift both absent
    preview: PreviewOutput | None = None  # not part of what runs


@dataclass(frozen=True)
class GPUGroup:
    product: str
    memory: int
    count: int


@dataclass(frozen=True)
class Node:
    name: str
    discovery: Discovery
    gpus: tuple[GPUGroup, ...]

    @property
    def gpu_count(self) -> int:
        return sum(group.count for group in self.gpus)


@dataclass(frozen=True)
class ClusterNodes:
    """A pool whose nodes come from the runtime's cluster: every live node that
    carries all of ``selector``'s labels, with those values."""

    discovery: Discovery
    selector: Mapping[str, str]

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.selector.items())


@dataclass(frozen=True)
class Quota:
    team: str
    guaranteed: float
    limit: float
    priority: int


@dataclass(frozen=True)
class GPUPool:
    name: str
    sharing: Sharing
    nodes: tuple[Node, ...]
    quotas: tuple[Quota, ...]
    source: Document = field(repr=False, compare=False)
    cluster: ClusterNodes | None = None  # nodes chosen from the cluster, by label

    @property
    def declared_gpus(self) -> int | None:
        """GPUs written in the spec, or None when an NVML node declares none (or the
        nodes come from the cluster)."""
        if self.cluster is not None or not self.nodes or any(not n.gpus for n in self.nodes):
            return None
        return sum(node.gpu_count for node in self.nodes)

    def quota(self, team: str) -> Quota | None:
        return next((q for q in self.quotas if q.team == team), None)


@dataclass(frozen=True)
class Step:
    kind: StepKind
    weight: int | None = None  # setWeight
    duration: float | None = None  # pause; None = wait for a person
    intervals: int | None = None  # analysis


@dataclass(frozen=True)
class Check:
    name: str
    metric: Metric | None  # None: a PromQL ``query`` instead
    min: float | None
    max: float | None
    min_ratio_to_stable: float | None
    max_ratio_to_stable: float | None
    query: str | None = None


@dataclass(frozen=True)
class LatencyBound:
    """The sequential judge's latency comparison: the share of requests slower
    than ``threshold`` seconds; ``max_ratio`` the smallest slowdown that matters."""

    threshold: float
    max_ratio: float


@dataclass(frozen=True)
class Analysis:
    interval: float
    failure_limit: int
    min_requests: int
    checks: tuple[Check, ...]
    judge: Judge = Judge.THRESHOLD
    false_rollback: float = 0.01  # the sequential judge's budgets
    missed_regression: float = 0.01
    error_increase: float | None = None  # errorRate.maxIncrease
    latency: LatencyBound | None = None

    @property
    def compared(self) -> tuple[str, ...]:
        """The rates the sequential judge compares with the stable version."""
        if self.judge is not Judge.SEQUENTIAL:
            return ()
        return (("errorRate",) if self.error_increase is not None else ()) + (
            ("latency",) if self.latency is not None else ()
        )


@dataclass(frozen=True)
class RolloutPolicy:
    name: str
    steps: tuple[Step, ...]
    analysis: Analysis | None
    progress_deadline: float | None
    warmup_timeout: float | None
    warmup_hold: float | None
    source: Document = field(repr=False, compare=False)
    preview: Preview | None = None  # None: pull requests are not previewed


@dataclass(frozen=True)
class Desired:
    """The valid objects of a repository, by name."""

    models: Mapping[str, Model]
    pools: Mapping[str, GPUPool]
    policies: Mapping[str, RolloutPolicy]


# -- builders: schema-valid document -> typed object --------------------------


def _model(doc: Document) -> Model:
    spec = doc.data["spec"]
    art = spec["artifact"]
    res = spec["resources"]
    module, cls = spec["service"].rsplit(":", 1)
    serving = spec.get("serving", {})
    probe = serving.get("probe")
    return Model(
        name=doc.data["metadata"]["name"],
        version=spec["version"],
        team=spec["team"],
        artifact=Artifact(
            art.get("path"),
            art.get("url"),
            art.get("sha256"),
            art.get("bentoModel"),
            _mlflow(art.get("mlflow")),
        ),
        service_module=_module_file(module),
        service_class=cls,
        resources=Resources(
            gpu=float(res["gpu"]) if "gpu" in res else None,
            gpu_memory=parse_memory(res["gpuMemory"]) if "gpuMemory" in res else None,
            replicas=res.get("replicas", 1),
            cpu=parse_cpu(res["cpu"]) if "cpu" in res else None,
            memory=parse_memory(res["memory"]) if "memory" in res else None,
        ),
        pool=spec["pool"],
        rollout=spec["rollout"],
        description=spec.get("description", ""),
        source=doc,
        ready_timeout=_maybe_duration(serving.get("readyTimeout")) or 120.0,
        probe=None
        if probe is None
        else Probe(
            path=probe["path"],
            body=probe.get("body", {}),
            timeout=_maybe_duration(probe.get("timeout")) or 5.0,
            interval=_maybe_duration(probe.get("interval")) or 10.0,
            failure_threshold=probe.get("failureThreshold", 3),
        ),
        monitor=_monitor(spec.get("monitor")),
        python=PythonDependencies(
            tuple(spec.get("python", {}).get("packages", ())),
            spec.get("python", {}).get("requirements"),
        ),
        promote_on=_promote_on(spec.get("promoteOn")),
        preview=_preview_output(spec.get("preview"), spec.get("monitor")),
    )


def _preview_output(
    raw: Mapping[str, Any] | None, monitor: Mapping[str, Any] | None
) -> PreviewOutput | None:
    monitor = monitor or {}
    raw = raw or {}
    path = raw.get("field") or monitor.get("drift", {}).get("field")
    if path is None:
        return None
    return PreviewOutput(
        field=path,
        kind=OutputKind(raw.get("kind", "label")),
        top=raw.get("top", 10),
        tolerance=float(raw.get("tolerance", 0.0)),
        sensitive=tuple(raw.get("sensitive", monitor.get("sampling", {}).get("sensitive", ()))),
    )


def _preview(raw: Mapping[str, Any] | None) -> Preview | None:
    if raw is None:
        return None
    return Preview(
        share=raw.get("share", 50),
        min_pairs=raw.get("minPairs", 500),
        min_agreement=parse_share(raw.get("minAgreement", 0.95)),
        max_latency_ratio=float(raw.get("maxLatencyRatio", 1.3)),
        max_error_rate=parse_share(raw.get("maxErrorRate", 0.01)),
    )


def _promote_on(raw: Mapping[str, Any] | None) -> PromoteOn | None:
    if raw is None:
        return None
    if "alias" in raw:
        return PromoteOn(alias=raw["alias"])
    key, eq, value = str(raw["tag"]).partition("=")
    return PromoteOn(tag=key, value=value if eq else None)


def _mlflow(raw: Mapping[str, Any] | None) -> MlflowVersion | None:
    if raw is None:
        return None
    version = raw.get("version")
    return MlflowVersion(raw["model"], None if version is None else str(version), raw.get("alias"))


def _monitor(raw: Mapping[str, Any] | None) -> Monitor | None:
    if raw is None:
        return None
    drift = raw.get("drift")
    sampling = raw.get("sampling")
    return Monitor(
        objectives=tuple(
            Objective(o["name"], MonitorMetric(o["metric"]), o.get("min"), o.get("max"))
            for o in raw.get("objectives", ())
        ),
        window=_maybe_duration(raw.get("window")) or 300.0,
        interval=_maybe_duration(raw.get("interval")) or 30.0,
        min_requests=raw.get("minRequests", 20),
        breach_after=raw.get("breachAfter", 2),
        recover_after=raw.get("recoverAfter", 3),
        drift=None
        if drift is None
        else DriftWatch(
            drift["field"],
            float(drift.get("threshold", 0.2)),
            _maybe_duration(drift.get("baseline")) or 600.0,
            _maybe_duration(drift.get("window")) or 600.0,
            drift.get("minSamples", 500),
        ),
        sampling=None
        if sampling is None
        else Sampling(
            float(sampling["share"]),
            parse_memory(sampling["maxBytes"]) if "maxBytes" in sampling else 64 * 2**20,
            tuple(sampling.get("sensitive", ())),
        ),
    )


def _module_file(module: str) -> str:
    return module if module.endswith(".py") else module + ".py"


def _pool(doc: Document) -> GPUPool:
    spec = doc.data["spec"]
    return GPUPool(
        name=doc.data["metadata"]["name"],
        sharing=Sharing(spec["sharing"]),
        nodes=tuple(
            Node(
                name=node["name"],
                discovery=Discovery(node["discovery"]),
                gpus=tuple(
                    GPUGroup(g["product"], parse_memory(g["memory"]), g.get("count", 1))
                    for g in node.get("gpus", ())
                ),
            )
            for node in spec.get("nodes", ())
        ),
        quotas=tuple(
            Quota(q["team"], float(q["guaranteed"]), float(q["limit"]), q.get("priority", 100))
            for q in spec["quotas"]
        ),
        source=doc,
        cluster=_cluster(spec.get("cluster")),
    )


def _cluster(cluster: Mapping[str, Any] | None) -> ClusterNodes | None:
    if cluster is None:
        return None
    return ClusterNodes(Discovery(cluster["discovery"]), dict(cluster.get("nodeSelector", {})))


def _policy(doc: Document) -> RolloutPolicy:
    spec = doc.data["spec"]
    steps = tuple(_step(raw) for raw in spec["steps"])
    analysis = spec.get("analysis")
    warmup = spec.get("warmup", {})
    return RolloutPolicy(
        name=doc.data["metadata"]["name"],
        steps=steps,
        analysis=None
        if analysis is None
        else Analysis(
            interval=parse_duration(analysis["interval"]),
            failure_limit=analysis.get("failureLimit", 0),
            min_requests=analysis.get("minRequests", 10),
            judge=Judge(analysis.get("judge", "threshold")),
            false_rollback=parse_share(analysis.get("falseRollback", 0.01)),
            missed_regression=parse_share(analysis.get("missedRegression", 0.01)),
            error_increase=parse_share(analysis["errorRate"]["maxIncrease"])
            if "errorRate" in analysis
            else None,
            latency=LatencyBound(
                parse_duration(analysis["latency"]["threshold"]),
                float(analysis["latency"]["maxRatio"]),
            )
            if "latency" in analysis
            else None,
            checks=tuple(
                Check(
                    name=c["name"],
                    metric=Metric(c["metric"]) if "metric" in c else None,
                    min=c.get("min"),
                    max=c.get("max"),
                    min_ratio_to_stable=c.get("minRatioToStable"),
                    max_ratio_to_stable=c.get("maxRatioToStable"),
                    query=c.get("query"),
                )
                for c in analysis.get("checks", ())
            ),
        ),
        progress_deadline=_maybe_duration(spec.get("progressDeadline")),
        warmup_timeout=_maybe_duration(warmup.get("timeout")),
        warmup_hold=_maybe_duration(warmup.get("holdFor")),
        source=doc,
        preview=_preview(spec.get("preview")),
    )


def _step(raw: dict[str, Any]) -> Step:
    if "setWeight" in raw:
        return Step(StepKind.SET_WEIGHT, weight=raw["setWeight"])
    if "pause" in raw:
        return Step(StepKind.PAUSE, duration=_maybe_duration(raw["pause"].get("duration")))
    return Step(StepKind.ANALYSIS, intervals=raw["analysis"].get("intervals", 1))


def _maybe_duration(text: str | None) -> float | None:
    return None if text is None else parse_duration(text)


#: Spec kind -> the builder for a schema-valid document of that kind.
BUILDERS: Mapping[str, Callable[[Document], Model | GPUPool | RolloutPolicy]] = {
    "Model": _model,
    "GPUPool": _pool,
    "RolloutPolicy": _policy,
}
