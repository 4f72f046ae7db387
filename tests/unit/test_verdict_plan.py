"""How long the sequential judge needs, as the plan and the PR comment say it:
the estimate from a model's observed traffic, the warning when it is past the
progress deadline, and the traffic read back from the status branch's rollups."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.core.demand import verdict_estimate
from controller.core.evidence import expected_requests
from controller.core.monitor import ModelMonitor, traffic_from_rollups
from controller.core.pr_plan import plan_change, render_markdown, render_text
from controller.core.traffic import BUCKETS, BackendStats, ObservedTraffic
from controller.demo_previews import previews_on
from controller.spec.kinds import RolloutPolicy
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO


def _policies() -> dict[str, RolloutPolicy]:
    return dict(load_desired(DirTree(EXAMPLE_REPO)).desired.policies)


@pytest.mark.parametrize(
    ("policy", "rate", "errors", "weight", "waits"),
    [
        ("standard-canary", 50.0, 0.005, 10, False),  # about 2 minutes at 5 req/s
        ("standard-canary", 2.0, 0.005, 10, True),  # 0.2 req/s: hours
        ("fast", 40.0, 0.0, 20, False),
        ("fast", 1.0, 0.0, 20, True),
    ],
)
def test_the_estimate_is_wald_at_the_first_analysis_weight(
    policy: str, rate: float, errors: float, weight: int, waits: bool
) -> None:
    chosen = _policies()[policy]
    assert chosen.analysis is not None
    assert chosen.analysis.error_increase is not None
    estimate = verdict_estimate(chosen, ObservedTraffic(rate, errors))
    assert estimate is not None
    assert estimate.weight == weight
    # no histogram: the latency comparison needs its floor margin from a zero share
    assert estimate.requests >= expected_requests(
        errors, chosen.analysis.error_increase, chosen.analysis.missed_regression
    )
    assert math.isclose(estimate.seconds, estimate.requests / (rate * weight / 100))
    assert estimate.waits is waits
    text = estimate.describe()
    assert f"at {weight}% of {rate:.3g} req/s" in text
    assert ("canary will wait for traffic" in text) is waits


def test_no_estimate_without_traffic_or_for_the_threshold_judge() -> None:
    policy = _policies()["fast"]
    assert verdict_estimate(policy, None) is None
    assert verdict_estimate(policy, ObservedTraffic(0.0, 0.0)) is None
    assert policy.analysis is not None
    threshold = RolloutPolicy(
        policy.name,
        policy.steps,
        type(policy.analysis)(5.0, 0, 10, policy.analysis.checks),
        policy.progress_deadline,
        None,
        None,
        policy.source,
    )
    assert verdict_estimate(threshold, ObservedTraffic(10.0, 0.0)) is None


def test_a_slower_histogram_needs_fewer_requests_than_none() -> None:
    """With the stable's histogram the latency margin is what a 1.5x slowdown does
    to the share over the threshold, not the floor."""
    example = _policies()["standard-canary"]
    assert example.analysis is not None
    policy = replace(example, analysis=replace(example.analysis, error_increase=None))
    buckets = [0] * (len(BUCKETS) + 1)
    buckets[BUCKETS.index(0.2)] = 800  # (0.15, 0.2]: 1.5x pushes them over 250ms
    buckets[BUCKETS.index(0.1)] = 200
    known = verdict_estimate(policy, ObservedTraffic(50.0, 0.0, tuple(buckets)))
    blind = verdict_estimate(policy, ObservedTraffic(50.0, 0.0))
    assert known is not None
    assert blind is not None
    assert known.requests < blind.requests


def _bump(repo: Path) -> None:
    spec = repo / "models" / "search-ranker.yaml"
    text = spec.read_text()
    spec.write_text(
        text.replace("artifacts/search-ranker/v1.json", "artifacts/search-ranker/v2.json")
    )


@pytest.mark.parametrize(("rate", "warned"), [(200.0, False), (0.5, True)])
def test_the_pr_plan_says_how_long_and_warns_past_the_deadline(
    tmp_path: Path, rate: float, warned: bool
) -> None:
    base, head = tmp_path / "base", tmp_path / "head"
    shutil.copytree(EXAMPLE_REPO, base)
    shutil.copytree(EXAMPLE_REPO, head)
    _bump(head)
    traffic = {"search-ranker": ObservedTraffic(rate, 0.001)}
    plan = plan_change(DirTree(base), DirTree(head), "a", "b", traffic)
    (ranker,) = [m for m in plan.models if m.model == "search-ranker"]
    assert ranker.change == "changed"
    assert ranker.verdict is not None
    assert "the judge needs about" in ranker.verdict
    assert ranker.verdict_waits is warned
    markdown = render_markdown(plan)
    assert f"- verdict: {ranker.verdict}" in markdown
    assert ("**Warnings**" in markdown) is warned
    assert plan.applicable  # a warning, not a reason to refuse
    assert "verdict: the judge needs" in render_text(plan)
    unknown = plan_change(DirTree(base), DirTree(head), "a", "b")
    assert all(m.verdict is None for m in unknown.models)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"hourly": [{"requests": 36000, "errorRate": 0.01}]}, ObservedTraffic(10.0, 0.01)),
        (
            {"hourly": [{"requests": 0}, {"requests": 7200, "errorRate": None}]},
            ObservedTraffic(2.0, 0.0),
        ),
        ({"hourly": [{"requests": "many"}, {"requests": True}]}, None),
        ({"hourly": "not a list"}, None),
        ({"daily": [{"requests": 100}]}, None),
        ({"hourly": [{"requests": 3600, "errorRate": 7}]}, ObservedTraffic(1.0, 0.0)),
    ],
)
def test_traffic_from_the_status_branchs_rollups(
    doc: dict[str, Any], expected: ObservedTraffic | None
) -> None:
    assert traffic_from_rollups(doc) == expected


def test_the_monitor_reports_the_days_traffic_after_a_minute() -> None:
    monitor = ModelMonitor("m", "1", "m/stable", None, (), 1_000_000.0)
    stats = BackendStats()
    monitor.observe(1_000_000.0, stats)
    assert monitor.traffic(1_000_030.0) is None  # under a minute of it
    for _ in range(600):
        stats.observe(200, 0.05)
    for _ in range(6):
        stats.observe(500, 0.05)
    monitor.observe(1_000_060.0, stats)
    observed = monitor.traffic(1_000_060.0)
    assert observed is not None
    assert observed.rate == pytest.approx(606 / 60)
    assert observed.error_rate == pytest.approx(6 / 606)
    assert observed.requests == 606


@pytest.mark.parametrize("previewed", [True, False])
def test_the_pr_plan_gives_a_preview_its_own_quota_line(tmp_path: Path, previewed: bool) -> None:
    base, head = tmp_path / "base", tmp_path / "head"
    shutil.copytree(EXAMPLE_REPO, base)
    shutil.copytree(EXAMPLE_REPO, head)
    if previewed:
        for repo in (base, head):
            previews_on(repo)
    _bump(head)
    plan = plan_change(DirTree(base), DirTree(head), "a", "b")
    (ranker,) = [m for m in plan.models if m.model == "search-ranker"]
    search = next(t for t in plan.teams if t["team"] == "search")
    markdown, text = render_markdown(plan), render_text(plan)
    if not previewed:
        assert ranker.preview is None
        assert search["preview"] == 0.0
        assert "| preview |" not in markdown
        return
    assert ranker.preview == ranker.gpus == 0.25
    assert search["preview"] == 0.25
    assert "| team | pool | requested | canary peak | preview | limit | headroom |" in markdown
    assert "| search | shared-a100 | 0.25 | 0.5 | 0.25 | 4 | 3.5 |" in markdown
    assert "- preview: 0.25 GPU while the PR is open, on free GPUs only" in markdown
    assert "preview 0.25 (free GPUs only)" in text
