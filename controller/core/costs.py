"""What GPUs cost, in GPU-hours: per model and per team, the canary's extra
share apart, from what status records.

Owns the arithmetic only. A model's status keeps the GPU-hours of shares
already given back (``gpu_hours`` by release kind) and, for each share still
held, when it was taken (``GPUHold.since``); the cost at any moment is the
first plus the time each held share has run. Nothing has to be written while
time passes, so status commits happen only when placements change.

A plan states a change's effect as GPU-hours per day: what the new version
holds once promoted, and what the canary adds while it runs.

Pure; ``now`` is a parameter. Called by ``mdc pool``, ``mdc plan`` and the
reconciler (which adds a share's hours to ``gpu_hours`` when it gives it back).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.core.status import GPUHold, ModelStatus
from controller.core.timestamps import epoch

__all__ = ["HOURS_PER_DAY", "ModelCost", "hold_hours", "model_cost", "per_day", "team_totals"]

HOURS_PER_DAY = 24.0


def hold_hours(hold: GPUHold, now: float) -> float:
    """GPU-hours a share still held has run up; 0 when its start is unknown."""
    if hold.since is None:
        return 0.0
    return max(0.0, now - (epoch(hold.since) or now)) / 3600 * hold.share


def per_day(gpus: float) -> float:
    return gpus * HOURS_PER_DAY


@dataclass(frozen=True)
class ModelCost:
    model: str
    team: str
    stable_gpus: float  # held now
    canary_gpus: float  # held now, on top
    stable_hours: float  # accrued in all
    canary_hours: float

    @property
    def per_day(self) -> float:
        """GPU-hours per day at the current holding."""
        return per_day(self.stable_gpus + self.canary_gpus)


def model_cost(status: ModelStatus, now: float) -> ModelCost:
    held = {"stable": 0.0, "canary": 0.0}
    hours = {
        "stable": status.gpu_hours.get("stable", 0.0),
        "canary": status.gpu_hours.get("canary", 0.0),
    }
    for hold in status.gpus:
        kind = "canary" if hold.release == "canary" else "stable"
        held[kind] += hold.share
        hours[kind] += hold_hours(hold, now)
    return ModelCost(
        status.name,
        status.team or "",
        round(held["stable"], 4),
        round(held["canary"], 4),
        round(hours["stable"], 4),
        round(hours["canary"], 4),
    )


def team_totals(costs: Iterable[ModelCost]) -> dict[str, dict[str, float]]:
    """Per team: GPUs held now, GPU-hours accrued (canary apart), GPU-hours per day."""
    out: dict[str, dict[str, float]] = {}
    for cost in costs:
        row = out.setdefault(
            cost.team,
            {"gpus": 0.0, "stableHours": 0.0, "canaryHours": 0.0, "perDay": 0.0},
        )
        row["gpus"] = round(row["gpus"] + cost.stable_gpus + cost.canary_gpus, 4)
        row["stableHours"] = round(row["stableHours"] + cost.stable_hours, 4)
        row["canaryHours"] = round(row["canaryHours"] + cost.canary_hours, 4)
        row["perDay"] = round(row["perDay"] + cost.per_day, 4)
    return out
