"""The controller's ``/metrics`` in the Prometheus text format (0.0.4).

Data in, text out: pass counters and the pass-duration histogram, each
model's phase and canary weight, canary verdicts, GPUs held and in each pool,
and (after promotion) objective states and values and drift scores. The text
is written by ``prometheus_client`` from metric families built afresh for
each render, so names, label escaping and HELP/TYPE lines follow the
library's conventions. Pure; called by :func:`controller.app.daemon.metrics_text`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from controller.core.ledger import Ledger
from controller.core.status import ModelStatus, Phase

__all__ = ["OBJECTIVE_STATES", "controller_metrics", "render"]

#: The states ``mdc_objective_state`` has a sample for, per objective.
OBJECTIVE_STATES = ("unknown", "ok", "at risk", "breached")


class _Families(Collector):
    """A collector of ready-built families: what one render exports."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render(families: Sequence[Metric]) -> str:
    """``families`` in the Prometheus text format, in the order given."""
    return generate_latest(_Families(families)).decode()


def controller_metrics(
    *,
    passes: int,
    failures: int,
    pass_buckets: Mapping[float, int],
    pass_seconds: float,
    statuses: Iterable[ModelStatus],
    verdicts: Mapping[tuple[str, str], int],
    pools: Mapping[str, Ledger],
    monitor: Iterable[Mapping[str, Any]] = (),
    push_failures: int = 0,
    commits_pending: int = 0,
    faults: Iterable[tuple[str, str]] = (),
) -> str:
    """The controller's metrics as Prometheus text.

    ``pass_buckets`` maps each upper bound (seconds) to the passes that took at
    most that long (cumulative; ``+Inf`` is ``passes``). ``verdicts`` counts
    analysis intervals by (model, outcome); ``pools`` is each pool's ledger;
    ``monitor`` is the monitor's view of each running model; ``push_failures``
    counts status pushes that failed since start and ``commits_pending`` the
    status commits not yet on the remote; ``faults`` are the controller's own
    faults now, as (condition type, reason).
    """
    families: list[Metric] = [
        CounterMetricFamily("mdc_reconcile_passes_total", "Reconcile passes run.", value=passes),
        CounterMetricFamily(
            "mdc_reconcile_pass_failures_total",
            "Passes in which something failed.",
            value=failures,
        ),
        HistogramMetricFamily(
            "mdc_reconcile_pass_duration_seconds",
            "How long a pass took.",
            buckets=[
                *((f"{bound:g}", count) for bound, count in sorted(pass_buckets.items())),
                ("+Inf", passes),
            ],
            sum_value=pass_seconds,
        ),
        CounterMetricFamily(
            "mdc_status_push_failures_total",
            "Pushes of the status branch that failed (the commits are kept and pushed later).",
            value=push_failures,
        ),
        GaugeMetricFamily(
            "mdc_status_commits_pending",
            "Status commits made but not yet pushed to the remote.",
            value=commits_pending,
        ),
    ]
    fault = GaugeMetricFamily(
        "mdc_controller_fault",
        "1 for each fault of the controller now (git, status, GitHub, lease), by reason.",
        labels=("type", "reason"),
    )
    for kind, reason in sorted(set(faults)):
        fault.add_metric([kind, reason], 1)
    families.append(fault)
    families += _model_families(sorted(statuses, key=lambda s: s.name), verdicts)
    families += _pool_families(pools)
    families += _monitor_families(monitor)
    return render(families)


def _model_families(
    statuses: Sequence[ModelStatus], verdicts: Mapping[tuple[str, str], int]
) -> list[Metric]:
    phase = GaugeMetricFamily(
        "mdc_model_phase", "1 for each model's current phase.", labels=("model", "phase")
    )
    weight = GaugeMetricFamily(
        "mdc_canary_weight_percent", "Traffic on each model's canary.", labels=("model",)
    )
    for status in statuses:
        for each in Phase:
            phase.add_metric((status.name, str(each)), int(status.phase is each))
    for status in statuses:
        weight.add_metric((status.name,), status.weight)
    judged = CounterMetricFamily(
        "mdc_canary_verdicts_total",
        "Analysis intervals judged, by outcome.",
        labels=("model", "outcome"),
    )
    for (model, outcome), count in sorted(verdicts.items()):
        judged.add_metric((model, str(outcome)), count)
    return [phase, weight, judged]


def _pool_families(pools: Mapping[str, Ledger]) -> list[Metric]:
    held = GaugeMetricFamily(
        "mdc_gpus_held",
        "GPUs held, by pool, team and release kind.",
        labels=("pool", "team", "release"),
    )
    total = GaugeMetricFamily("mdc_gpus_total", "GPUs in each pool.", labels=("pool",))
    for name, ledger in sorted(pools.items()):
        by_holder: dict[tuple[str, str], float] = {}
        for allocation in ledger.allocations.values():
            key = (allocation.team, str(allocation.kind))
            by_holder[key] = by_holder.get(key, 0.0) + allocation.gpus
        for (team, kind), gpus in sorted(by_holder.items()):
            held.add_metric((name, team, kind), gpus)
        total.add_metric((name,), len(ledger.gpus))
    return [held, total]


def _monitor_families(views: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """After promotion: each objective's state and value, and each drift score."""
    states = GaugeMetricFamily(
        "mdc_objective_state",
        "1 for each objective's current state (running versions).",
        labels=("model", "objective", "state"),
    )
    values = GaugeMetricFamily(
        "mdc_objective_value",
        "The value each objective was last judged on.",
        labels=("model", "objective"),
    )
    drift = GaugeMetricFamily(
        "mdc_drift_score",
        "The population stability index of each drift watch.",
        labels=("model", "field"),
    )
    for view in views:
        model = str(view.get("model"))
        for objective in view.get("objectives") or []:
            name = str(objective.get("name"))
            for level in OBJECTIVE_STATES:
                states.add_metric((model, name, level), int(objective.get("state") == level))
            if objective.get("value") is not None:
                values.add_metric((model, name), float(objective["value"]))
        watch = view.get("drift")
        if watch and watch.get("score") is not None:
            drift.add_metric((model, str(watch.get("field"))), float(watch["score"]))
    return [states, values, drift]
