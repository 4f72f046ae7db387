"""After promotion: the running version's service levels, the drift of its
predictions, and its hourly and daily rollups.

Owns :func:`judge` (an objective's state -- ok, at risk, breached -- with
hysteresis: ``breachAfter`` judgements in a row out of bounds to breach,
``recoverAfter`` in a row within bounds to recover, so one slow minute does not
flap), :func:`default_objectives` (without ``spec.monitor.objectives``, the
absolute bounds of the rollout policy's checks), and :class:`ModelMonitor`,
one per running stable release: fed the router's counters, the held GPUs'
NVML reading and the sampled predictions once a pass,
it judges every ``interval`` (the drift through :mod:`controller.core.drift`) and
closes rollups at the hour and the day. How ``mdc monitor`` shows it is
:mod:`controller.ui.monitor_view`.

What is committed (:meth:`ModelMonitor.record`) holds only what people act on
-- the breached objectives and the drift -- so nothing is written or posted
while nothing changes; at-risk states and live values are in
:meth:`ModelMonitor.live` (``mdc monitor --controller``, the dashboard).

Pure: no I/O, time is a parameter. Called by :mod:`controller.app.reconciler`;
tested table-first in ``tests/unit/test_monitor.py``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from controller.core.drift import DriftTracker
from controller.core.timestamps import epoch, iso
from controller.core.traffic import BackendStats, ObservedTraffic
from controller.spec.kinds import Metric, Monitor, MonitorMetric, Objective, RolloutPolicy

__all__ = [
    "AT_RISK_MARGIN",
    "GPUReading",
    "Level",
    "ModelMonitor",
    "MonitorChange",
    "ObjectiveState",
    "Rollup",
    "default_objectives",
    "judge",
    "period_start",
    "traffic_from_rollups",
]

#: Within this share of a bound (and not over it), an objective is at risk.
AT_RISK_MARGIN = 0.1
#: Rollups kept in a model's monitor file (git keeps the rest).
HOURS_KEPT, DAYS_KEPT = 48, 30


class Level(StrEnum):
    UNKNOWN = "unknown"  # not judged yet (too little traffic, no NVML)
    OK = "ok"
    AT_RISK = "at risk"
    BREACHED = "breached"


_WORST = {Level.UNKNOWN: 0, Level.OK: 1, Level.AT_RISK: 2, Level.BREACHED: 3}


@dataclass(frozen=True)
class ObjectiveState:
    name: str
    level: Level = Level.UNKNOWN
    value: float | None = None
    bad: int = 0  # judgements in a row out of bounds
    good: int = 0  # judgements in a row within bounds
    since: float | None = None  # when the level last changed


def _out_of_bounds(value: float, low: float | None, high: float | None) -> bool:
    return (high is not None and value > high) or (low is not None and value < low)


def _near(value: float, low: float | None, high: float | None) -> bool:
    return (high is not None and value > high * (1 - AT_RISK_MARGIN)) or (
        low is not None and value < low * (1 + AT_RISK_MARGIN)
    )


def judge(  # noqa: PLR0917
    state: ObjectiveState,
    value: float | None,
    low: float | None,
    high: float | None,
    now: float,
    breach_after: int,
    recover_after: int,
) -> ObjectiveState:
    """The next state of an objective given this judgement's ``value`` (None: no
    data; the state stays). Breached after ``breach_after`` judgements in a row
    out of bounds (at risk until then, and when near a bound); ok again after
    ``recover_after`` in a row within bounds."""
    if value is None or math.isnan(value):
        return state
    bad = _out_of_bounds(value, low, high)
    counts = replace(
        state,
        value=value,
        bad=state.bad + 1 if bad else 0,
        good=0 if bad else state.good + 1,
    )
    if state.level is Level.BREACHED:
        level = Level.BREACHED
        if counts.good >= recover_after:
            level = Level.AT_RISK if _near(value, low, high) else Level.OK
    elif counts.bad >= breach_after:
        level = Level.BREACHED
    elif bad or _near(value, low, high):
        level = Level.AT_RISK
    else:
        level = Level.OK
    if level is state.level:
        return counts
    return replace(counts, level=level, since=now)


# -- what is judged -----------------------------------------------------------------

_FROM_CHECK = {
    Metric.ERROR_RATE: MonitorMetric.ERROR_RATE,
    Metric.LATENCY_P50: MonitorMetric.LATENCY_P50,
    Metric.LATENCY_P90: MonitorMetric.LATENCY_P90,
    Metric.LATENCY_P99: MonitorMetric.LATENCY_P99,
}


def default_objectives(
    monitor: Monitor | None, policy: RolloutPolicy | None
) -> tuple[Objective, ...]:
    """The model's objectives, or -- when it declares none -- the absolute bounds
    of its rollout policy's checks (ratios to the stable mean nothing after
    promotion; request rates are traffic, not a service level)."""
    if monitor is not None and monitor.objectives:
        return monitor.objectives
    if policy is None or policy.analysis is None:
        return ()
    out = []
    for check in policy.analysis.checks:
        metric = _FROM_CHECK.get(check.metric) if check.metric is not None else None
        if metric is not None and (check.min is not None or check.max is not None):
            out.append(Objective(check.name, metric, check.min, check.max))
    return tuple(out)


@dataclass(frozen=True)
class GPUReading:
    """The GPUs a release holds, as NVML saw them at one moment."""

    memory_total: int
    memory_used: int
    utilization: float | None  # 0..1, over NVML's last sample period


_QUANTILE = {
    MonitorMetric.LATENCY_P50: 0.5,
    MonitorMetric.LATENCY_P90: 0.9,
    MonitorMetric.LATENCY_P99: 0.99,
}


def _value(
    metric: MonitorMetric, window: BackendStats, min_requests: int, gpus: GPUReading | None
) -> float | None:
    if metric is MonitorMetric.GPU_MEMORY_HEADROOM:
        if gpus is None or gpus.memory_total <= 0:
            return None
        return 1 - gpus.memory_used / gpus.memory_total
    if metric is MonitorMetric.GPU_UTILIZATION:
        return None if gpus is None else gpus.utilization
    if window.requests < min_requests:
        return None
    if metric is MonitorMetric.ERROR_RATE:
        return window.errors / window.requests
    return window.quantile(_QUANTILE[metric])


def _describe(objective: Objective, value: float | None) -> str:
    bounds = " and ".join(
        f"{word} {bound:g}"
        for word, bound in (("min", objective.min), ("max", objective.max))
        if bound is not None
    )
    shown = "no data" if value is None else f"{value:.4g}"
    return f"{objective.name}: {objective.metric} {shown} (bounds: {bounds})"


# -- rollups ------------------------------------------------------------------------


_SIZE = {"hour": 3600, "day": 86400}


def period_start(at: float, period: str) -> float:
    """The start (epoch seconds, UTC) of the hour or day ``at`` falls in."""
    size = _SIZE[period]
    return math.floor(at / size) * size


@dataclass
class _Tally:
    period: str
    start: float
    stats: BackendStats = field(default_factory=BackendStats)
    gpu_seconds: float = 0.0
    worst: dict[str, Level] = field(default_factory=dict)
    drift: float | None = None
    seen: bool = False  # anything observed in it at all


@dataclass(frozen=True)
class Rollup:
    """One closed hour or day of a model's running version."""

    model: str
    version: str
    period: str  # "hour" or "day"
    start: float
    requests: int
    errors: int
    latency: Mapping[str, float | None]  # p50, p90, p99 in seconds
    gpu_hours: float
    objectives: Mapping[str, str]  # the worst level each objective reached
    drift: float | None  # the last drift score of the period

    @property
    def end(self) -> float:
        return self.start + (3600 if self.period == "hour" else 86400)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "version": self.version,
            "requests": self.requests,
            "errorRate": round(self.errors / self.requests, 6) if self.requests else None,
            "latency": {k: None if v is None else round(v, 6) for k, v in self.latency.items()},
            "gpuHours": round(self.gpu_hours, 4),
            "objectives": dict(self.objectives),
            "driftScore": None if self.drift is None else round(self.drift, 4),
        }

    def describe(self) -> str:
        rate = f"{100 * self.errors / self.requests:.2f}% errors" if self.requests else "no traffic"
        p99 = self.latency.get("p99")
        latency = f", p99 {1000 * p99:.0f}ms" if p99 is not None else ""
        return f"{self.requests} requests, {rate}{latency}, {self.gpu_hours:.2f} GPU-hours"


@dataclass(frozen=True)
class MonitorChange:
    """A change people act on: an objective breached or recovered, drift or not."""

    event: str  # ObjectiveBreached, ObjectiveRecovered, DriftDetected, DriftRecovered
    message: str


# -- one model's monitor -----------------------------------------------------------------


class ModelMonitor:
    """The running version of one model, judged after promotion (module docstring)."""

    def __init__(  # noqa: PLR0917
        self,
        model: str,
        version: str,
        release: str,
        monitor: Monitor | None,
        objectives: Sequence[Objective],
        started: float,
    ) -> None:
        self.model, self.version, self.release = model, version, release
        self.spec = monitor or Monitor()
        self.objectives = tuple(objectives)
        self.started = started
        self.states = {o.name: ObjectiveState(o.name) for o in self.objectives}
        self.drift = DriftTracker(self.spec.drift, started) if self.spec.drift is not None else None
        self.drift_state = ObjectiveState("drift")
        self.drift_score: float | None = None
        self.snapshots: deque[tuple[float, BackendStats]] = deque()
        self.last: tuple[float, BackendStats] | None = None
        self.next_judgement = started + self.spec.interval
        self.tallies = {p: _Tally(p, period_start(started, p)) for p in ("hour", "day")}
        self.born = started  # when this controller began watching the model

    def restore(self, record: Mapping[str, Any]) -> None:
        """After a controller restart: the breaches and drift its status file
        recorded hold until they recover (so the recovery is seen and reported)."""
        for name, since in (record.get("breached") or {}).items():
            if name in self.states:
                self.states[name] = ObjectiveState(
                    name, Level.BREACHED, None, self.spec.breach_after, 0, epoch(since)
                )
        drifting = record.get("drifting") or {}
        if drifting and self.spec.drift is not None and self.spec.drift.field in drifting:
            self.drift_state = ObjectiveState(
                "drift",
                Level.BREACHED,
                None,
                self.spec.breach_after,
                0,
                epoch(drifting[self.spec.drift.field]),
            )

    def traffic(self, now: float) -> ObservedTraffic | None:
        """The stable's traffic over the day so far (None before a minute of it)."""
        day = self.tallies["day"]
        seconds = now - max(day.start, self.born)
        if seconds < 60 or not day.seen:
            return None
        stats = day.stats
        return ObservedTraffic(
            stats.requests / seconds,
            stats.errors / stats.requests if stats.requests else 0.0,
            tuple(stats.buckets),
        )

    def switch(self, version: str, release: str, now: float) -> None:
        """A new version took over (promotion): its objectives and drift are judged
        afresh, from a new baseline; the rollups go on."""
        self.version, self.release, self.started = version, release, now
        self.states = {o.name: ObjectiveState(o.name) for o in self.objectives}
        if self.spec.drift is not None:
            self.drift = DriftTracker(self.spec.drift, now)
        self.drift_state, self.drift_score = ObjectiveState("drift"), None
        self.snapshots.clear()
        self.next_judgement = now + self.spec.interval

    def reconfigure(
        self, monitor: Monitor | None, objectives: Sequence[Objective], now: float
    ) -> None:
        """The spec changed: objectives that did not change keep their state; a new
        drift watch starts a new baseline."""
        spec = monitor or Monitor()
        objectives = tuple(objectives)
        if spec == self.spec and objectives == self.objectives:
            return
        old = {o.name: o for o in self.objectives}
        self.states = {
            o.name: self.states[o.name] if old.get(o.name) == o else ObjectiveState(o.name)
            for o in objectives
        }
        if spec.drift != self.spec.drift:
            self.drift = DriftTracker(spec.drift, now) if spec.drift is not None else None
            self.drift_state, self.drift_score = ObjectiveState("drift"), None
        self.spec, self.objectives = spec, objectives

    def observe(
        self,
        now: float,
        stats: BackendStats,
        *,
        gpu_share: float = 0.0,
        gpus: GPUReading | None = None,
        values: Sequence[float | str] = (),
    ) -> tuple[list[MonitorChange], list[Rollup]]:
        """One pass's observation: the router's counters of the stable backend (since
        it started), the GPU share held and its NVML reading, and the predictions
        sampled since the last pass. Returns the changes and the closed rollups."""
        then = self.last[0] if self.last is not None else None
        if self.last is not None and then is not None:  # (then, now] counts in then's period
            before = self.last[1]
            delta = stats.minus(before) if stats.requests >= before.requests else stats.copy()
            for tally in self.tallies.values():
                tally.stats = _add(tally.stats, delta)
                end = tally.start + _SIZE[tally.period]
                tally.gpu_seconds += gpu_share * max(0.0, min(now, end) - then)
                tally.seen = True
        closed = self._close(now)
        if closed and then is not None:  # GPU time after the boundary is the new period's
            for tally in self.tallies.values():
                if tally.start > then:
                    tally.gpu_seconds += gpu_share * max(0.0, now - tally.start)
        self.last = (now, stats.copy())
        self.snapshots.append((now, stats.copy()))
        while len(self.snapshots) > 1 and self.snapshots[1][0] <= now - self.spec.window:
            self.snapshots.popleft()
        if self.drift is not None and values:
            self.drift.add(now, values)
        changes: list[MonitorChange] = []
        if now >= self.next_judgement:
            self.next_judgement = now + self.spec.interval
            changes = self._judge(now, stats, gpus)
        for tally in self.tallies.values():
            for name, state in self.states.items():
                if _WORST[state.level] > _WORST[tally.worst.get(name, Level.UNKNOWN)]:
                    tally.worst[name] = state.level
            if self.drift_score is not None:
                tally.drift = self.drift_score
        return changes, closed

    def _judge(
        self, now: float, stats: BackendStats, gpus: GPUReading | None
    ) -> list[MonitorChange]:
        base = self.snapshots[0][1]
        window = stats.minus(base) if stats.requests >= base.requests else stats.copy()
        changes = []
        for objective in self.objectives:
            value = _value(objective.metric, window, self.spec.min_requests, gpus)
            before = self.states[objective.name]
            after = judge(
                before,
                value,
                objective.min,
                objective.max,
                now,
                self.spec.breach_after,
                self.spec.recover_after,
            )
            self.states[objective.name] = after
            was, now_breached = before.level is Level.BREACHED, after.level is Level.BREACHED
            if now_breached and not was:
                changes.append(
                    MonitorChange(
                        "ObjectiveBreached",
                        f"{_describe(objective, value)} over the last {self.spec.window:g}s",
                    )
                )
            elif was and not now_breached:
                changes.append(MonitorChange("ObjectiveRecovered", _describe(objective, value)))
        if self.drift is not None and self.spec.drift is not None:
            score = self.drift.score()
            self.drift_score = score if score is not None else self.drift_score
            before = self.drift_state
            after = judge(
                before,
                score,
                None,
                self.spec.drift.threshold,
                now,
                self.spec.breach_after,
                self.spec.recover_after,
            )
            self.drift_state = after
            detail = (
                f"{self.spec.drift.field}: PSI {score if score is not None else 0:.3f} "
                f"(threshold {self.spec.drift.threshold:g}; {len(self.drift.baseline)} baseline "
                f"and {len(self.drift.recent)} recent predictions)"
            )
            if after.level is Level.BREACHED and before.level is not Level.BREACHED:
                changes.append(MonitorChange("DriftDetected", detail))
            elif before.level is Level.BREACHED and after.level is not Level.BREACHED:
                changes.append(MonitorChange("DriftRecovered", detail))
        return changes

    def _close(self, now: float) -> list[Rollup]:
        closed = []
        for period, tally in list(self.tallies.items()):
            start = period_start(now, period)
            if start <= tally.start:  # the same period (or the clock went back): go on
                continue
            if tally.seen:
                closed.append(self._rollup(tally))
            self.tallies[period] = _Tally(period, start)
        return closed

    def _rollup(self, tally: _Tally) -> Rollup:
        return Rollup(
            self.model,
            self.version,
            tally.period,
            tally.start,
            tally.stats.requests,
            tally.stats.errors,
            {f"p{round(q * 100)}": tally.stats.quantile(q) for q in (0.5, 0.9, 0.99)},
            tally.gpu_seconds / 3600,
            {name: str(level) for name, level in sorted(tally.worst.items())},
            tally.drift,
        )

    # -- what is shown -------------------------------------------------------------------

    def record(self) -> dict[str, Any] | None:
        """What the status file holds: which objectives are breached and whether the
        predictions drift, each since when (None: all is well). It changes only when
        something breaches or recovers; the numbers are in the history's events."""
        out: dict[str, Any] = {}
        breached = {
            name: iso(state.since) if state.since else None
            for name, state in sorted(self.states.items())
            if state.level is Level.BREACHED
        }
        if breached:
            out["breached"] = breached
        if self.drift_state.level is Level.BREACHED and self.spec.drift is not None:
            since = self.drift_state.since
            out["drifting"] = {self.spec.drift.field: iso(since) if since else None}
        return out or None

    def live(self) -> dict[str, Any]:
        """Everything, for ``mdc monitor`` and the dashboard: every objective's level
        and last value, and the drift score."""
        by_name = {o.name: o for o in self.objectives}
        return {
            "model": self.model,
            "version": self.version,
            "release": self.release,
            "objectives": [
                {
                    "name": name,
                    "metric": str(by_name[name].metric),
                    "min": by_name[name].min,
                    "max": by_name[name].max,
                    "state": str(state.level),
                    "value": _round(state.value),
                    "since": iso(state.since) if state.since else None,
                }
                for name, state in self.states.items()
            ],
            "drift": None
            if self.spec.drift is None
            else {
                "field": self.spec.drift.field,
                "threshold": self.spec.drift.threshold,
                "state": str(self.drift_state.level),
                "score": _round(self.drift_score),
                "baseline": len(self.drift.baseline) if self.drift else 0,
                "recent": len(self.drift.recent) if self.drift else 0,
            },
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _add(a: BackendStats, b: BackendStats) -> BackendStats:
    codes = dict(a.codes)
    for code, n in b.codes.items():
        codes[code] = codes.get(code, 0) + n
    return BackendStats(
        codes, [x + y for x, y in zip(a.buckets, b.buckets, strict=True)], a.seconds + b.seconds
    )


def traffic_from_rollups(doc: Mapping[str, Any]) -> ObservedTraffic | None:
    """A model's traffic from its ``monitor/MODEL.yaml`` on the status branch: the
    newest hourly rollup with requests (None when there is none, or it is not
    one). What ``mdc plan --base --head`` sizes a canary's verdict time with."""
    hourly = doc.get("hourly") if isinstance(doc, Mapping) else None
    for entry in hourly if isinstance(hourly, list) else ():
        if not isinstance(entry, Mapping):
            continue
        requests, errors = entry.get("requests"), entry.get("errorRate")
        if not isinstance(requests, int) or isinstance(requests, bool) or requests <= 0:
            continue
        rate = errors if isinstance(errors, float | int) and 0 <= errors <= 1 else 0.0
        return ObservedTraffic(requests / 3600, float(rate))
    return None
