"""The monitor after promotion, pure and table-first: objective states with
hysteresis, default objectives from the rollout policy, what sampling keeps,
the population stability index, and one model's monitor fed by a clock."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from controller.core.drift import DriftTracker, predictions, psi, redact
from controller.core.monitor import (
    GPUReading,
    Level,
    ModelMonitor,
    ObjectiveState,
    Rollup,
    default_objectives,
    judge,
    period_start,
)
from controller.core.traffic import BackendStats
from controller.spec.kinds import DriftWatch, Monitor, MonitorMetric, Objective
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO

OK, RISK, BREACHED, UNKNOWN = Level.OK, Level.AT_RISK, Level.BREACHED, Level.UNKNOWN


def run(levels: list[float | None], high: float = 1.0) -> list[Level]:
    """The level after each value, against max ``high``, breach 2, recover 3."""
    state = ObjectiveState("o")
    out = []
    for t, value in enumerate(levels):
        state = judge(state, value, None, high, float(t), breach_after=2, recover_after=3)
        out.append(state.level)
    return out


@pytest.mark.parametrize(
    ("values", "levels"),
    [
        # within bounds
        ([0.1, 0.2], [OK, OK]),
        # no data leaves it as it was
        ([None, 0.1, None], [UNKNOWN, OK, OK]),
        # near the bound (within 10%): at risk, not breached
        ([0.95, 0.95, 0.95], [RISK, RISK, RISK]),
        # one slow judgement: at risk, then ok -- no flapping into breached
        ([0.1, 2.0, 0.1, 2.0, 0.1], [OK, RISK, OK, RISK, OK]),
        # two in a row: breached
        ([0.1, 2.0, 2.0], [OK, RISK, BREACHED]),
        # breached holds until three good judgements in a row
        ([2.0, 2.0, 0.1, 0.1, 2.0, 0.1, 0.1, 0.1], [RISK, BREACHED] + [BREACHED] * 5 + [OK]),
        # recovering near the bound: at risk
        ([2.0, 2.0, 0.95, 0.95, 0.95], [RISK, BREACHED, BREACHED, BREACHED, RISK]),
    ],
)
def test_judge_has_hysteresis(values: list[float | None], levels: list[Level]) -> None:
    assert run(values) == levels


def test_judge_with_a_lower_bound_and_since() -> None:
    state = ObjectiveState("headroom")
    state = judge(state, 0.5, 0.1, None, 10.0, 1, 1)
    assert (state.level, state.since) == (OK, 10.0)
    state = judge(state, 0.05, 0.1, None, 20.0, 1, 1)
    assert (state.level, state.since, state.value) == (BREACHED, 20.0, 0.05)
    state = judge(state, 0.04, 0.1, None, 30.0, 1, 1)
    assert state.since == 20.0  # still breached: since does not move


def test_default_objectives_are_the_policys_absolute_bounds() -> None:
    desired = load_desired(DirTree(EXAMPLE_REPO)).desired
    model = desired.models["search-ranker"]
    policy = desired.policies[model.rollout]
    objectives = default_objectives(None, policy)
    assert objectives  # the fast policy's error and latency bounds
    checks = {c.name: c for c in policy.analysis.checks}  # type: ignore[union-attr]
    for objective in objectives:
        check = checks[objective.name]
        assert (objective.min, objective.max) == (check.min, check.max)
        assert objective.min is not None or objective.max is not None
    declared = Monitor(objectives=(Objective("p99", MonitorMetric.LATENCY_P99, None, 0.3),))
    assert default_objectives(declared, policy) == declared.objectives
    assert default_objectives(None, None) == ()


@pytest.mark.parametrize(
    ("response", "path", "found"),
    [
        ({"score": 0.5}, "score", [0.5]),
        ([{"id": "a", "score": 1}, {"id": "b", "score": 2.5}], "score", [1.0, 2.5]),
        ({"result": {"label": "fraud"}}, "result.label", ["fraud"]),
        ({"scores": [0.1, 0.2]}, "scores", [0.1, 0.2]),
        ({"ok": True}, "ok", ["True"]),
        ({"score": float("nan")}, "score", []),
        ({"other": 1}, "score", []),
        ("not a mapping", "score", []),
    ],
)
def test_predictions(response: object, path: str, found: list[float | str]) -> None:
    assert predictions(response, path) == found


def test_redact_drops_sensitive_keys_at_any_depth() -> None:
    request = {
        "user_id": "u-1",
        "documents": [{"id": "a", "email": "x@y", "bm25": 0.3}],
        "meta": {"user_id": "u-2", "ip": "10.0.0.1"},
    }
    kept = redact(request, ["user_id", "email", "ip"])
    assert kept == {"documents": [{"id": "a", "bm25": 0.3}], "meta": {}}
    assert "u-1" not in repr(kept)
    assert redact(request, []) is request


def test_psi_tells_a_shift_from_noise() -> None:
    rng = random.Random(7)
    base = [rng.gauss(0, 1) for _ in range(2000)]
    same = [rng.gauss(0, 1) for _ in range(500)]
    shifted = [rng.gauss(1, 1) for _ in range(500)]
    assert psi(base, same) < 0.1
    assert psi(base, shifted) > 0.5
    labels = ["a"] * 80 + ["b"] * 20
    assert psi(labels, ["a"] * 40 + ["b"] * 10) < 0.01
    assert psi(labels, ["a"] * 20 + ["b"] * 80) > 1.0
    assert psi(labels, ["c"] * 10) > 1.0  # a label never seen before
    assert psi([], same) == 0.0


def test_drift_tracker_captures_the_baseline_after_promotion() -> None:
    watch = DriftWatch("score", 0.2, baseline=60.0, window=30.0, min_samples=20)
    tracker = DriftTracker(watch, started=1000.0)
    tracker.add(1010.0, [0.1] * 30)
    assert tracker.score() is None  # no recent window yet
    tracker.add(1070.0, [0.1] * 30)
    assert len(tracker.baseline) == 30
    assert tracker.score() == pytest.approx(0.0)
    tracker.add(1120.0, [0.9] * 30)  # the first recent values age out of the window
    assert [t for t, _ in tracker.recent] == [1120.0] * 30
    assert tracker.score() is not None
    assert tracker.score() > 1.0  # type: ignore[operator]


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
def test_the_trackers_running_bins_agree_with_psi(shift: float) -> None:
    rng = random.Random(9)
    watch = DriftWatch("score", 0.2, baseline=10.0, window=100.0, min_samples=100)
    tracker = DriftTracker(watch, started=0.0)
    base = [rng.gauss(0, 1) for _ in range(1000)]
    tracker.add(5.0, base)
    recent = [rng.gauss(shift, 1) for _ in range(600)]
    for i in range(6):
        tracker.add(20.0 + i, recent[i * 100 : (i + 1) * 100])
    assert tracker.score() == pytest.approx(psi(base, recent), rel=1e-9)
    labels = DriftTracker(watch, started=0.0)
    labels.add(1.0, ["a"] * 70 + ["b"] * 30)
    labels.add(50.0, ["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    expected = psi(["a"] * 70 + ["b"] * 30, ["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    assert labels.score() == pytest.approx(expected, rel=1e-9)


def stats(requests: int, errors: int = 0, latency: float = 0.01) -> BackendStats:
    counts = BackendStats()
    for i in range(requests):
        counts.observe(500 if i < errors else 200, latency)
    return counts


class Feed:
    """Cumulative router counters, fed to a monitor once a 'pass'."""

    def __init__(self, monitor: ModelMonitor, now: float) -> None:
        self.monitor, self.now, self.total = monitor, now, BackendStats()

    def step(
        self, seconds: float, requests: int, latency: float = 0.01, errors: int = 0, **kw: object
    ) -> tuple[list[str], list[Rollup]]:
        self.now += seconds
        more = stats(requests, errors, latency)
        self.total = BackendStats(
            {c: self.total.codes.get(c, 0) + more.codes.get(c, 0) for c in (200, 500)},
            [a + b for a, b in zip(self.total.buckets, more.buckets, strict=True)],
            self.total.seconds + more.seconds,
        )
        changes, rollups = self.monitor.observe(self.now, self.total, **kw)  # type: ignore[arg-type]
        return [c.event for c in changes], rollups


SLO = Monitor(
    objectives=(
        Objective("latency", MonitorMetric.LATENCY_P99, None, 0.3),
        Objective("errors", MonitorMetric.ERROR_RATE, None, 0.05),
        Objective("headroom", MonitorMetric.GPU_MEMORY_HEADROOM, 0.1, None),
    ),
    window=10.0,
    interval=1.0,
    min_requests=5,
    breach_after=2,
    recover_after=3,
)

T0 = 1_764_309_600.0  # 2025-11-28 06:00:00 UTC, the start of an hour


def test_a_slow_spell_breaches_once_and_recovers_once() -> None:
    monitor = ModelMonitor("m", "1", "m/abc", SLO, SLO.objectives, started=T0)
    feed = Feed(monitor, T0)
    events = []
    for _ in range(5):
        events += feed.step(1.0, 20)[0]
    assert events == []
    assert monitor.record() is None
    for _ in range(4):  # slow answers: at risk, then breached, once
        events += feed.step(1.0, 20, latency=0.6)[0]
    assert events == ["ObjectiveBreached"]
    record = monitor.record()
    assert record is not None
    assert list(record["breached"]) == ["latency"]
    assert record["breached"]["latency"].endswith("Z")
    for _ in range(2):  # still breached: the record does not move (nothing to commit)
        feed.step(1.0, 20, latency=0.9)
        assert monitor.record() == record
    live = {o["name"]: o for o in monitor.live()["objectives"]}
    assert live["latency"]["state"] == "breached"
    assert live["errors"]["state"] == "ok"
    assert live["headroom"]["state"] == "unknown"  # no NVML reading
    for _ in range(30):  # fast again: the slow answers leave the 10 s window, then 3 good
        events += feed.step(1.0, 20)[0]
    assert events == ["ObjectiveBreached", "ObjectiveRecovered"]
    assert monitor.record() is None


def test_too_little_traffic_is_not_judged() -> None:
    monitor = ModelMonitor("m", "1", "m/abc", SLO, SLO.objectives, started=T0)
    feed = Feed(monitor, T0)
    for _ in range(4):  # 3 requests in the window, fewer than the 5 it needs
        assert feed.step(1.0, 1, latency=2.0, errors=1)[0] == []
    assert {o["state"] for o in monitor.live()["objectives"]} == {"unknown"}


def test_gpu_headroom_from_nvml() -> None:
    monitor = ModelMonitor("m", "1", "m/abc", SLO, SLO.objectives, started=T0)
    feed = Feed(monitor, T0)
    tight = GPUReading(memory_total=100, memory_used=97, utilization=0.9)
    events = []
    for _ in range(3):
        events += feed.step(1.0, 10, gpus=tight)[0]
    assert events == ["ObjectiveBreached"]
    assert monitor.live()["objectives"][2]["value"] == pytest.approx(0.03)


def test_rollups_close_at_the_hour_and_the_day() -> None:
    start = period_start(T0, "day") + 22 * 3600 + 1800  # 22:30 UTC
    monitor = ModelMonitor("m", "1", "m/abc", SLO, SLO.objectives, started=start)
    feed = Feed(monitor, start)
    closed: list[Rollup] = []
    for _ in range(6):  # 22:30 -> 23:30, 100 requests a step, half a GPU
        closed += feed.step(600.0, 100, gpu_share=0.5)[1]
    assert [(r.period, r.start) for r in closed] == [("hour", start - 1800)]
    hour = closed[0]
    assert hour.requests == 200  # (22:40, 23:00]: the first pass is the start
    assert hour.gpu_hours == pytest.approx(0.5 * 20 / 60)
    assert hour.latency["p99"] is not None
    assert hour.to_dict()["end"].endswith("23:00:00Z")
    more: list[Rollup] = []
    for _ in range(4):  # past midnight: the 23:00 hour and the day close
        more += feed.step(600.0, 100, gpu_share=0.5)[1]
    assert sorted((r.period, r.requests) for r in more) == [("day", 800), ("hour", 600)]
    day = next(r for r in more if r.period == "day")
    assert day.objectives == {"errors": "ok", "latency": "ok"}
    assert "800 requests" in day.describe()


def test_a_restart_of_the_router_counters_is_not_negative_traffic() -> None:
    monitor = ModelMonitor("m", "1", "m/abc", SLO, SLO.objectives, started=T0)
    monitor.observe(T0 + 1, stats(50))
    monitor.observe(T0 + 2, stats(10))  # a new router: counters from zero
    assert monitor.tallies["hour"].stats.requests == 10


def test_drift_is_judged_with_hysteresis() -> None:
    watch = DriftWatch("score", 0.2, baseline=5.0, window=5.0, min_samples=300)
    spec = replace(SLO, objectives=(), drift=watch)
    outcomes = {}
    for seed, shift in ((1, 0.0), (2, 0.0), (3, 0.0), (4, 0.0), (5, 2.0)):
        rng = random.Random(seed)
        monitor = ModelMonitor("m", "1", "m/abc", spec, (), started=T0)
        feed = Feed(monitor, T0)
        events = []
        for step in range(40):
            centre = shift if step >= 10 else 0.0
            values = [rng.gauss(centre, 1) for _ in range(100)]
            events += feed.step(1.0, 30, values=values)[0]
        outcomes[seed] = (events, monitor.live()["drift"])
    for seed in (1, 2, 3, 4):  # unchanged, four runs: never flagged in 30 judgements each
        assert outcomes[seed][0] == []
        assert outcomes[seed][1]["state"] == "ok"
    moved = outcomes[5]
    assert moved[0] == ["DriftDetected"]  # flagged once, and it stays
    assert moved[1]["state"] == "breached"
    assert moved[1]["score"] > 0.2


def test_a_few_odd_values_among_numbers_are_not_drift() -> None:
    rng = random.Random(4)
    base: list[float | str] = [rng.gauss(0, 1) for _ in range(1000)] + ["n/a"] * 10
    same: list[float | str] = [rng.gauss(0, 1) for _ in range(1000)] + ["n/a"] * 10
    assert psi(base, same) < 0.05
    watch = DriftWatch("score", 0.2, baseline=1.0, window=100.0, min_samples=100)
    tracker = DriftTracker(watch, started=0.0)
    tracker.add(0.5, base)
    tracker.add(2.0, same)
    assert tracker.score() == pytest.approx(psi(base, same), rel=1e-9)


def test_the_baseline_waits_for_enough_predictions_and_labels_leave_the_window() -> None:
    watch = DriftWatch("label", 0.2, baseline=10.0, window=5.0, min_samples=50)
    tracker = DriftTracker(watch, started=0.0)
    tracker.add(5.0, ["a"] * 20)
    tracker.add(15.0, ["a"] * 20)  # past the baseline period, but too few yet: still baseline
    tracker.add(16.0, ["a"] * 20)
    assert len(tracker.baseline) == 60
    tracker.add(20.0, [f"new-{i}" for i in range(50)])
    assert len(tracker.counts) == 50
    tracker.add(30.0, ["a"] * 60)  # the new labels leave the window, and the counts
    assert tracker.counts == {"a": 60}
    assert tracker.score() == pytest.approx(0.0)


def test_predictions_skip_what_is_not_a_finite_number() -> None:
    assert predictions({"score": 10**400}, "score") == []
    assert predictions({"score": [1, float("inf"), 2]}, "score") == [1.0, 2.0]


def test_gpu_time_is_split_at_the_hour_and_a_clock_going_back_closes_nothing() -> None:
    start = T0 + 3600 - 60  # a minute before the hour ends
    monitor = ModelMonitor("m", "1", "m/abc", SLO, SLO.objectives, started=start)
    feed = Feed(monitor, start)
    feed.step(0.0, 10, gpu_share=1.0)
    _, closed = feed.step(120.0, 10, gpu_share=1.0)  # one minute each side of the hour
    (hour,) = [r for r in closed if r.period == "hour"]
    assert hour.gpu_hours == pytest.approx(60 / 3600)
    assert monitor.tallies["hour"].gpu_seconds == pytest.approx(60.0)
    _, closed = feed.step(-3600.0, 10, gpu_share=1.0)  # the clock steps back an hour
    assert closed == []


def test_a_restarted_monitor_keeps_recorded_breaches_until_they_recover() -> None:
    monitor = ModelMonitor("m", "1", "m/abc", SLO, SLO.objectives, started=T0)
    monitor.restore({"breached": {"latency": "2025-11-28T05:00:00Z"}})
    record = monitor.record()
    assert record == {"breached": {"latency": "2025-11-28T05:00:00Z"}}
    feed = Feed(monitor, T0)
    events: list[str] = []
    for _ in range(6):
        events += feed.step(1.0, 20)[0]
    assert events == ["ObjectiveRecovered"]
    assert monitor.record() is None
