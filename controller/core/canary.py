"""The canary state machine: one model's rollout from warm-up to promotion or
rollback, as a pure function of the policy, the last state, what was observed
and the time.

Owns the semantics of a :class:`~controller.spec.kinds.RolloutPolicy`:

* **Warm-up.** No traffic until the canary is ready, has answered a smoke
  request, and has stayed so for ``warmup.holdFor``; not within
  ``warmup.timeout`` (default 5m) is a rollback.
* **Steps.** ``setWeight`` sends that share of traffic and moves on;
  ``pause`` with a duration holds the weight that long; ``pause`` without one
  waits for a person (``resume`` or ``promote``); ``analysis`` holds until that
  many analysis intervals have *passed* at the current weight. After the last
  step the canary is promoted.
* **Analysis.** Once the canary takes traffic, every check is judged each
  ``analysis.interval``, whatever the step. An interval where the canary
  served fewer than ``minRequests`` is *no verdict yet*, neither pass nor
  failure. A failed interval counts toward ``failureLimit``; one more than the
  limit rolls back in the same tick. A check whose metric could not be read
  fails (a blind canary never passes).
* **Deadline.** A canary that makes no progress (no step done, no passed
  interval) for ``progressDeadline`` is rolled back; waiting for a person is
  exempt.
* **Manual commands**: promote, abort, pause, resume.

:func:`advance` returns the next :class:`CanaryState` and the
:class:`Action` values the driver must carry out in order (set a weight,
promote, roll back). The state is plain data, recorded after every change,
so a controller killed at any point resumes at the same step and weight.

Pure: no I/O, no clock, no adapters. Called by the rollout driver.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from controller.core.traffic import BackendWindow
from controller.spec.kinds import Check, RolloutPolicy, StepKind

__all__ = [
    "Action",
    "ActionKind",
    "CanaryPhase",
    "CanaryState",
    "CheckResult",
    "Command",
    "IntervalVerdict",
    "Observation",
    "Outcome",
    "advance",
    "analysis_due",
    "judge",
    "start",
    "state_from_dict",
    "state_to_dict",
]

DEFAULT_WARMUP_TIMEOUT = 300.0
VERDICTS_KEPT = 10


class CanaryPhase(StrEnum):
    WARMING = "warming"
    STEPPING = "stepping"
    WAITING_FOR_APPROVAL = "waiting-for-approval"  # a pause without a duration
    PAUSED = "paused"  # a person paused it
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"

    @property
    def done(self) -> bool:
        return self in (CanaryPhase.PROMOTED, CanaryPhase.ROLLED_BACK)


class Command(StrEnum):
    PROMOTE = "promote"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no-data"


@dataclass(frozen=True)
class Observation:
    """What the driver saw since the last call."""

    canary_ready: bool = False
    smoke_ok: bool = False
    canary: BackendWindow | None = None  # None: metrics could not be read
    stable: BackendWindow | None = None
    #: values of PromQL checks, by check name (None or absent: could not be read)
    custom: Mapping[str, float | None] = field(default_factory=dict)
    #: the canary is gone for good (its node left the cluster, it failed): judged failed
    canary_lost: str | None = None


@dataclass(frozen=True)
class CheckResult:
    check: str
    outcome: Outcome
    value: float | None
    message: str


@dataclass(frozen=True)
class IntervalVerdict:
    at: float
    outcome: Outcome
    weight: int
    checks: tuple[CheckResult, ...]


class ActionKind(StrEnum):
    SET_WEIGHT = "set-weight"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    weight: int = 0
    reason: str = ""


@dataclass(frozen=True)
class CanaryState:
    spec_hash: str
    phase: CanaryPhase
    step: int = 0  # index of the current step
    weight: int = 0
    started: float = 0.0
    step_started: float = 0.0
    progress_at: float = 0.0  # last progress, for the deadline
    ready_since: float | None = None
    failures: int = 0
    passed_in_step: int = 0  # passed intervals in the current analysis step
    last_interval: float | None = None  # when the last analysis interval ended
    paused_from: CanaryPhase | None = None
    reason: str = ""
    verdicts: tuple[IntervalVerdict, ...] = ()


def state_to_dict(state: CanaryState) -> dict[str, Any]:
    """The state as plain JSON-ready data, for status files."""
    return asdict(state)


def state_from_dict(data: Mapping[str, Any]) -> CanaryState:
    """The inverse of :func:`state_to_dict`; raises ``ValueError`` on bad data."""
    try:
        verdicts = tuple(
            IntervalVerdict(
                float(v["at"]),
                Outcome(v["outcome"]),
                int(v["weight"]),
                tuple(
                    CheckResult(c["check"], Outcome(c["outcome"]), c["value"], c["message"])
                    for c in v["checks"]
                ),
            )
            for v in data.get("verdicts", ())
        )
        paused = data.get("paused_from")
        return CanaryState(
            **{
                **data,
                "phase": CanaryPhase(data["phase"]),
                "paused_from": CanaryPhase(paused) if paused else None,
                "verdicts": verdicts,
            }
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a canary state: {exc}") from None


def start(spec_hash: str, now: float) -> CanaryState:
    """A new canary: warming up, no traffic."""
    return CanaryState(
        spec_hash, CanaryPhase.WARMING, started=now, step_started=now, progress_at=now
    )


def judge(
    checks: Sequence[Check],
    canary: BackendWindow | None,
    stable: BackendWindow | None,
    min_requests: int,
    custom: Mapping[str, float | None] | None = None,
) -> tuple[Outcome, tuple[CheckResult, ...]]:
    """One analysis interval: every check, then the interval's outcome.

    Unreadable canary metrics fail every check. Fewer canary requests than
    ``min_requests`` is no verdict. A relative bound with no stable value to
    compare with gives no verdict for that check, never a pass.
    """
    if canary is None:
        results = tuple(
            CheckResult(c.name, Outcome.FAIL, None, "metrics could not be read") for c in checks
        )
        return Outcome.FAIL, results
    if canary.requests < min_requests:
        results = tuple(
            CheckResult(
                c.name,
                Outcome.NO_DATA,
                None,
                f"{canary.requests} requests, fewer than {min_requests}",
            )
            for c in checks
        )
        return Outcome.NO_DATA, results
    results = tuple(_judge_check(c, canary, stable, custom or {}) for c in checks)
    outcomes = {r.outcome for r in results}
    if Outcome.FAIL in outcomes:
        return Outcome.FAIL, results
    if Outcome.NO_DATA in outcomes:
        return Outcome.NO_DATA, results
    return Outcome.PASS, results


def _judge_check(
    check: Check,
    canary: BackendWindow,
    stable: BackendWindow | None,
    custom: Mapping[str, float | None],
) -> CheckResult:
    label = str(check.metric) if check.metric is not None else f"query {check.name!r}"
    value = canary.value(check.metric) if check.metric is not None else custom.get(check.name)
    if value is None or math.isnan(value):
        return CheckResult(check.name, Outcome.FAIL, None, f"{label} could not be read")
    shown = f"{label} {value:.4g}"
    if check.max is not None and value > check.max:
        return CheckResult(check.name, Outcome.FAIL, value, f"{shown} > max {check.max:g}")
    if check.min is not None and value < check.min:
        return CheckResult(check.name, Outcome.FAIL, value, f"{shown} < min {check.min:g}")
    if check.max_ratio_to_stable is not None or check.min_ratio_to_stable is not None:
        base = stable.value(check.metric) if stable is not None and check.metric else None
        if base is None:
            return CheckResult(
                check.name, Outcome.NO_DATA, value, f"{shown}; no stable value to compare with"
            )
        if check.max_ratio_to_stable is not None and value > check.max_ratio_to_stable * base:
            return CheckResult(
                check.name,
                Outcome.FAIL,
                value,
                f"{shown} > {check.max_ratio_to_stable:g} x stable {base:.4g}",
            )
        if check.min_ratio_to_stable is not None and value < check.min_ratio_to_stable * base:
            return CheckResult(
                check.name,
                Outcome.FAIL,
                value,
                f"{shown} < {check.min_ratio_to_stable:g} x stable {base:.4g}",
            )
        return CheckResult(check.name, Outcome.PASS, value, f"{shown} (stable {base:.4g})")
    return CheckResult(check.name, Outcome.PASS, value, shown)


def analysis_due(policy: RolloutPolicy, state: CanaryState, now: float) -> bool:
    """Whether :func:`advance` judges an interval at ``now`` (so the driver reads
    slow sources, such as PromQL checks, only then)."""
    if policy.analysis is None or state.weight <= 0 or state.phase.done:
        return False
    since = state.last_interval if state.last_interval is not None else state.step_started
    return now - since >= policy.analysis.interval


def _rollback(
    state: CanaryState, now: float, reason: str
) -> tuple[CanaryState, tuple[Action, ...]]:
    done = replace(state, phase=CanaryPhase.ROLLED_BACK, weight=0, reason=reason, step_started=now)
    return done, (Action(ActionKind.SET_WEIGHT, 0, reason), Action(ActionKind.ROLLBACK, 0, reason))


def _promote(state: CanaryState, now: float, reason: str) -> tuple[CanaryState, tuple[Action, ...]]:
    done = replace(state, phase=CanaryPhase.PROMOTED, weight=100, reason=reason, step_started=now)
    return done, (
        Action(ActionKind.SET_WEIGHT, 100, reason),
        Action(ActionKind.PROMOTE, 100, reason),
    )


def advance(
    policy: RolloutPolicy,
    state: CanaryState,
    observed: Observation,
    now: float,
    command: Command | None = None,
) -> tuple[CanaryState, tuple[Action, ...]]:
    """The next state, and the actions to carry out in order."""
    if state.phase.done:
        return state, ()
    if command is Command.ABORT:
        return _rollback(state, now, "aborted by a person")
    if observed.canary_lost:  # never promoted on partial data
        return _rollback(state, now, f"the canary was lost: {observed.canary_lost}")
    if command is Command.PROMOTE:
        if state.phase is CanaryPhase.WARMING and not observed.canary_ready:
            return replace(state, reason="promote refused: the canary is not ready"), ()
        return _promote(state, now, "promoted by a person")
    if command is Command.PAUSE and state.phase is not CanaryPhase.PAUSED:
        return replace(
            state, phase=CanaryPhase.PAUSED, paused_from=state.phase, reason="paused by a person"
        ), ()
    if state.phase is CanaryPhase.PAUSED:
        if command is not Command.RESUME:
            return state, ()
        resumed = state.paused_from or CanaryPhase.STEPPING
        if resumed is CanaryPhase.WAITING_FOR_APPROVAL:
            resumed = CanaryPhase.STEPPING  # resume also approves a waiting pause
            state = replace(state, step=state.step + 1)
        # the time spent paused does not count against the deadline or a timed pause
        state = replace(
            state,
            phase=resumed,
            paused_from=None,
            progress_at=now,
            step_started=now,
            reason="resumed by a person",
        )
        command = None

    if state.phase is CanaryPhase.WARMING:
        return _warm(policy, state, observed, now)

    actions: list[Action] = []
    # analysis runs every interval while the canary takes traffic
    if policy.analysis is not None and state.weight > 0:
        interval = policy.analysis.interval
        since = state.last_interval if state.last_interval is not None else state.step_started
        if now - since >= interval:
            outcome, results = judge(
                policy.analysis.checks,
                observed.canary,
                observed.stable,
                policy.analysis.min_requests,
                observed.custom,
            )
            verdict = IntervalVerdict(now, outcome, state.weight, results)
            state = replace(
                state, last_interval=now, verdicts=(*state.verdicts, verdict)[-VERDICTS_KEPT:]
            )
            if outcome is Outcome.FAIL:
                state = replace(state, failures=state.failures + 1)
                if state.failures > policy.analysis.failure_limit:
                    failed = "; ".join(r.message for r in results if r.outcome is Outcome.FAIL)
                    return _rollback(
                        state,
                        now,
                        f"{state.failures} failed analysis intervals (limit "
                        f"{policy.analysis.failure_limit}): {failed}",
                    )
            elif outcome is Outcome.PASS:
                state = replace(state, progress_at=now, passed_in_step=state.passed_in_step + 1)

    if state.phase is CanaryPhase.WAITING_FOR_APPROVAL:
        if command is Command.RESUME:
            state = _next_step(state, now, "approved by a person")
        else:
            return state, tuple(actions)

    deadline = policy.progress_deadline
    if deadline is not None and now - state.progress_at > deadline:
        return _rollback(
            state,
            now,
            f"no progress for {now - state.progress_at:.0f}s (progress deadline {deadline:g}s)",
        )

    # walk the steps as far as they allow in this tick
    for _ in range(len(policy.steps) + 1):
        if state.step >= len(policy.steps):
            promoted, more = _promote(state, now, "all steps passed")
            return promoted, (*actions, *more)
        current = policy.steps[state.step]
        if current.kind is StepKind.SET_WEIGHT:
            weight = current.weight or 0
            actions.append(Action(ActionKind.SET_WEIGHT, weight, f"step {state.step + 1}"))
            state = replace(state, weight=weight)
            state = _next_step(state, now, f"weight {weight}%")
            continue
        if current.kind is StepKind.PAUSE:
            if current.duration is None:
                state = replace(
                    state,
                    phase=CanaryPhase.WAITING_FOR_APPROVAL,
                    reason=f"step {state.step + 1}: waiting for a person",
                )
                return state, tuple(actions)
            if now - state.step_started >= current.duration:
                state = _next_step(state, now, "pause over")
                continue
            return state, tuple(actions)
        # an analysis step: enough passed intervals at this weight?
        if state.passed_in_step >= (current.intervals or 1):
            state = _next_step(state, now, "analysis passed")
            continue
        return state, tuple(actions)
    return state, tuple(actions)  # pragma: no cover - the loop always returns


def _next_step(state: CanaryState, now: float, reason: str) -> CanaryState:
    return replace(
        state,
        phase=CanaryPhase.STEPPING,
        step=state.step + 1,
        step_started=now,
        progress_at=now,
        passed_in_step=0,
        reason=reason,
    )


def _warm(
    policy: RolloutPolicy, state: CanaryState, observed: Observation, now: float
) -> tuple[CanaryState, tuple[Action, ...]]:
    timeout = policy.warmup_timeout or DEFAULT_WARMUP_TIMEOUT
    healthy = observed.canary_ready and observed.smoke_ok
    if not healthy:
        if now - state.started > timeout:
            return _rollback(state, now, f"not ready and answering within {timeout:g}s (warm-up)")
        return replace(state, ready_since=None, reason="warming up"), ()
    ready_since = state.ready_since if state.ready_since is not None else now
    if now - ready_since < (policy.warmup_hold or 0.0):
        return replace(state, ready_since=ready_since, reason="ready; holding before traffic"), ()
    state = replace(
        state,
        phase=CanaryPhase.STEPPING,
        ready_since=ready_since,
        step_started=now,
        progress_at=now,
        reason="warm",
    )
    return advance(policy, state, observed, now)
