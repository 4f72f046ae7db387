"""Each model's rollout as the dashboard sees it: its row of ``mdc status``, its
policy's steps (each done, current, failed or pending), the canary state's
analysis intervals with every check, the status's own last verdicts and its
recent history.

Owns :func:`model_views` (one :class:`ModelView` per model, in the order of
:func:`~controller.ui.status_table.status_rows`), the view dataclasses and
:data:`HISTORY_SHOWN`. The views are plain data: the dashboard turns them into
JSON (:func:`controller.ui.dashboard.dashboard_json`) and into its page
(:mod:`controller.ui.dashboard_page`). Status files and specs are untrusted: a
malformed canary state is shown as absent and odd values as text. Pure.
Called by :mod:`controller.ui.dashboard` and :mod:`controller.ui.dashboard_page`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.core.canary import CanaryState
from controller.core.status import HistoryEntry, ModelStatus, Phase
from controller.spec.kinds import RolloutPolicy, Step, StepKind
from controller.spec.units import format_duration
from controller.ui.status_table import canary_state, status_rows
from controller.ui.values import as_int, as_number

__all__ = [
    "HISTORY_SHOWN",
    "CheckView",
    "IntervalView",
    "ModelView",
    "StepView",
    "model_views",
]

#: History entries the dashboard shows per model (the status file keeps more).
HISTORY_SHOWN = 8


@dataclass(frozen=True)
class StepView:
    """One step of a rollout policy."""

    index: int  # 1-based
    kind: str  # setWeight | pause | analysis (or "step" when the policy is unknown)
    label: str  # 25%, 2m, until approved, 3x30s
    state: str  # done | current | failed | pending


@dataclass(frozen=True)
class CheckView:
    """One check of an analysis interval, or one of the status's verdicts."""

    check: str
    outcome: str  # pass | fail | no-data
    value: float | None
    message: str


@dataclass(frozen=True)
class IntervalView:
    """One analysis interval of the canary state."""

    at: float  # epoch seconds
    weight: int
    outcome: str
    checks: tuple[CheckView, ...]


@dataclass(frozen=True)
class ModelView:
    """Everything the dashboard shows about one model."""

    status: ModelStatus
    row: Mapping[str, Any]  # its status_rows row
    policy: str | None  # its name, when known
    policy_known: bool
    timeline: tuple[StepView, ...]
    intervals: tuple[IntervalView, ...]  # newest first
    checks: tuple[CheckView, ...]  # the status's own last verdicts
    history: tuple[HistoryEntry, ...]
    reason: str | None
    failures: int | None


def _current_index(status: ModelStatus, state: CanaryState | None) -> int | None:
    """0-based index of the current step: the status's 1-based ``step``, else the
    canary state's."""
    step = as_int(status.step)
    if step is not None:
        return step - 1
    if state is not None:
        return as_int(state.step)
    return None


def _step_label(policy: RolloutPolicy, step: Step) -> str:
    """``25%``, ``2m`` or ``until approved``, ``3x30s``: what follows the step's kind."""
    if step.kind is StepKind.SET_WEIGHT:
        return f"{step.weight}%"
    if step.kind is StepKind.PAUSE:
        return "until approved" if step.duration is None else format_duration(step.duration)
    interval = policy.analysis.interval if policy.analysis is not None else 0.0
    return f"{step.intervals or 1}x{format_duration(interval)}"


def _timeline(
    policy: RolloutPolicy | None, status: ModelStatus, state: CanaryState | None
) -> tuple[StepView, ...]:
    if policy is not None:
        labels = tuple(_step_label(policy, step) for step in policy.steps)
        kinds = [str(step.kind) for step in policy.steps]
    else:  # the policy is unknown: only how many steps there are
        total = as_int(status.steps) or 0
        labels = ("",) * total
        kinds = ["step"] * total
    current = _current_index(status, state)
    steps = []
    for i, (kind, label) in enumerate(zip(kinds, labels, strict=True)):
        if status.phase is Phase.HEALTHY:  # the desired version serves everything
            where = "done"
        elif current is None:
            where = "pending"
        elif i < current:
            where = "done"
        elif i == current:
            where = "failed" if status.phase is Phase.ROLLED_BACK else "current"
        else:
            where = "pending"
        steps.append(StepView(i + 1, kind, label, where))
    return tuple(steps)


def _check(check: object, outcome: object, value: object, message: object) -> CheckView:
    return CheckView(str(check), str(outcome), as_number(value), str(message))


def _view(
    status: ModelStatus,
    row: Mapping[str, Any],
    policies: Mapping[str, RolloutPolicy],
    policy_of: Mapping[str, str],
) -> ModelView:
    state = canary_state(status)
    name = policy_of.get(status.name)
    policy = policies.get(name) if name is not None else None
    intervals = tuple(
        IntervalView(
            v.at,
            v.weight,
            str(v.outcome),
            tuple(_check(c.check, c.outcome, c.value, c.message) for c in v.checks),
        )
        for v in reversed(state.verdicts if state is not None else ())
    )
    return ModelView(
        status=status,
        row=row,
        policy=name,
        policy_known=policy is not None,
        timeline=_timeline(policy, status, state),
        intervals=intervals,
        checks=tuple(
            _check(v.check, "pass" if v.passed else "fail", v.value, v.message)
            for v in status.verdicts
        ),
        history=status.history[:HISTORY_SHOWN],
        reason=(str(state.reason) or None) if state is not None else None,
        failures=as_int(state.failures) if state is not None else None,
    )


def model_views(
    statuses: Sequence[ModelStatus],
    policies: Mapping[str, RolloutPolicy],
    now: float,
    policy_of: Mapping[str, str] | None,
) -> list[ModelView]:
    """One view per model, sorted by name. ``policies`` are keyed by policy
    name and ``policy_of`` maps a model to its policy's name (a status does not
    record it); a model without one still shows its step count."""
    ordered = sorted(statuses, key=lambda s: s.name)  # the order of status_rows
    return [
        _view(status, row, policies, policy_of or {})
        for status, row in zip(ordered, status_rows(ordered, now), strict=True)
    ]
