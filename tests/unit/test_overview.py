"""The plan summary: GPU use per team against quota, and policy timelines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.core.demand import (
    canary_checks,
    gpu_equivalent,
    policy_timeline,
    summarize,
    team_usage,
)
from controller.spec.kinds import Desired
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO


@pytest.fixture(scope="module")
def example() -> Desired:
    return load_desired(DirTree(EXAMPLE_REPO)).desired


def test_example_team_usage(example: Desired) -> None:
    rows = {(r.pool, r.team): r for r in team_usage(example)}
    fraud = rows[("shared-a100", "fraud")]
    assert (fraud.requested, fraud.canary_peak, fraud.verdict) == (2.0, 4.0, "ok")
    search = rows[("shared-a100", "search")]
    # 10Gi on the smallest GPU that holds it (40Gi) is a quarter GPU
    assert (search.requested, search.canary_peak) == (0.25, 0.5)
    assert search.models == ("search-ranker",)


@pytest.mark.parametrize(
    ("gpu", "replicas", "verdict"),
    [
        ("1", 1, "ok"),  # 1 held, 2 at peak; guaranteed 1, limit 2
        ("2", 1, "canary may wait"),  # 2 held (borrows), 4 at peak > limit 2
        ("0.75", 2, "canary may wait"),  # 1.5 held, 3 at peak
        ("0.5", 1, "ok"),
    ],
)
def test_verdicts(make_repo: Callable[..., Path], gpu: str, replicas: int, verdict: str) -> None:
    repo = make_repo()
    model = repo / "models" / "model.yaml"
    model.write_text(model.read_text().replace("gpu: 1", f"gpu: {gpu}\n    replicas: {replicas}"))
    result = load_desired(DirTree(repo))
    assert result.ok, result.diagnostics
    (row,) = team_usage(result.desired)
    assert row.verdict == verdict


def test_over_limit_verdict(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    model = repo / "models" / "model.yaml"
    model.write_text(model.read_text().replace("gpu: 1", "gpu: 2\n    replicas: 2"))
    (row,) = team_usage(load_desired(DirTree(repo)).desired)
    assert (row.requested, row.verdict) == (4.0, "over limit")


def test_example_timelines(example: Desired) -> None:
    standard = policy_timeline(example.policies["standard-canary"])
    # 3x15s + 2m + 3x15s + 5x15s = 4m45s, and one approval
    assert (standard.min_seconds, standard.approvals) == (285.0, 1)
    assert standard.steps[0] == "10%"
    assert "wait for approval" in standard.steps
    assert standard.describe().endswith("(at least 4m45s + 1 approval)")
    fast = policy_timeline(example.policies["fast"])
    assert (fast.min_seconds, fast.approvals) == (20.0, 0)
    assert (
        fast.describe() == "20% -> analyse 2x5s -> 60% -> analyse 2x5s -> promote  (at least 20s)"
    )


def test_gpu_equivalent_of_memory_request(example: Desired) -> None:
    pool = example.pools["shared-a100"]
    assert gpu_equivalent(example.models["search-ranker"], pool) == 0.25
    assert gpu_equivalent(example.models["fraud-scorer"], pool) == 2.0


def test_summary_is_json_ready(example: Desired) -> None:
    data = json.loads(json.dumps(summarize(example)))
    assert [p["name"] for p in data["pools"]] == ["shared-a100"]
    assert data["pools"][0]["nodes"][1]["gpus"] == [
        {"product": "NVIDIA A100-SXM4-40GB", "memory": "40Gi", "count": 4}
    ]
    assert {m["name"]: m["gpus"] for m in data["models"]} == {
        "fraud-scorer": 2.0,
        "search-ranker": 0.25,
    }


def test_example_canaries_fit(example: Desired) -> None:
    checks = {c.model: c for c in canary_checks(example)}
    assert checks["fraud-scorer"].fits
    assert checks["fraud-scorer"].gpu_hours_per_day == 48.0
    assert checks["search-ranker"].fits
    assert checks["search-ranker"].preempted == ()


@pytest.mark.parametrize(
    ("resources", "fits", "words"),
    [
        ("gpu: 1", True, "fits beside the stable release (+24 GPU-h/day"),
        ("gpu: 1\n    replicas: 2", False, "team team-a: 2 of limit 2 GPUs held"),
        ("gpu: 0.5\n    replicas: 2", True, "+24 GPU-h/day"),
    ],
)
def test_canary_check_of_a_tight_pool(
    make_repo: Callable[..., Path], resources: str, fits: bool, words: str
) -> None:
    repo = make_repo()
    model = repo / "models" / "model.yaml"
    model.write_text(model.read_text().replace("gpu: 1", resources))
    result = load_desired(DirTree(repo))
    assert result.ok, result.diagnostics
    (check,) = canary_checks(result.desired)
    assert check.fits is fits
    assert words in check.describe()
