"""GPU-hours from status records: accrued, held now, per day; canary apart."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.core.costs import hold_hours, model_cost, per_day, team_totals
from controller.core.status import GPUHold, ModelStatus, Phase

T0 = "2026-11-27T10:00:00Z"
NOW = datetime(2026, 11, 27, 16, 0, tzinfo=UTC).timestamp()  # six hours later


@pytest.mark.parametrize(
    ("hold", "hours"),
    [
        (GPUHold("n", "g", 1.0, "stable", T0), 6.0),
        (GPUHold("n", "g", 0.25, "canary", T0), 1.5),
        (GPUHold("n", "g", 1.0, "stable", None), 0.0),  # start unknown: nothing claimed
        (GPUHold("n", "g", 1.0, "stable", "2026-11-27T17:00:00+00:00"), 0.0),  # future: 0
    ],
)
def test_hold_hours(hold: GPUHold, hours: float) -> None:
    assert hold_hours(hold, NOW) == pytest.approx(hours)


def test_model_cost_keeps_the_canary_apart() -> None:
    status = ModelStatus(
        "fraud-scorer",
        Phase.PROGRESSING,
        team="fraud",
        gpus=(
            GPUHold("a", "g0", 1.0, "stable", T0),
            GPUHold("a", "g1", 1.0, "stable", T0),
            GPUHold("b", "g2", 0.5, "canary", "2026-11-27T15:00:00Z"),
        ),
        gpu_hours={"stable": 100.0, "canary": 3.0},
    )
    cost = model_cost(status, NOW)
    assert (cost.stable_gpus, cost.canary_gpus) == (2.0, 0.5)
    assert cost.stable_hours == pytest.approx(112.0)  # 100 + 2 GPUs x 6 h
    assert cost.canary_hours == pytest.approx(3.5)  # 3 + 0.5 x 1 h
    assert cost.per_day == 60.0


def test_team_totals() -> None:
    a = model_cost(
        ModelStatus("a", Phase.HEALTHY, team="t", gpus=(GPUHold("n", "g", 1, "stable", T0),)), NOW
    )
    b = model_cost(ModelStatus("b", Phase.HEALTHY, team="t", gpu_hours={"canary": 2.0}), NOW)
    assert team_totals([a, b]) == {
        "t": {"gpus": 1.0, "stableHours": 6.0, "canaryHours": 2.0, "perDay": 24.0}
    }
    assert per_day(0.25) == 6.0
