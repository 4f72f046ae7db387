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
* **Sequential judge** (``analysis.judge: sequential``): each interval adds
  its windows to the evidence of :mod:`controller.core.evidence` (error rate,
  share of slow requests, canary against stable); evidence that the canary is
  worse past the ``falseRollback`` budget rolls back in the same tick, and an
  interval passes only once every compared rate is shown no worse. The checks
  are guardrails (absolute bounds, judged per interval as above).
* **Deadline.** A canary that makes no progress (no step done, no passed
  interval) for ``progressDeadline`` is rolled back; waiting for a person is
  exempt. Under the sequential judge a canary whose evidence is still neutral
  is not rolled back at the deadline (low traffic is not a verdict): it waits,
  and its reason says so and how long a verdict needs at this traffic.
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

from controller.core.evidence import (
    Decision,
    Evidence,
    Tally,
    evidence_from_dict,
    expected_requests,
    latency_margin,
    slow_count,
    weigh,
)
from controller.core.traffic import BackendWindow
from controller.spec.kinds import Analysis, Check, Judge, RolloutPolicy, StepKind

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
    "judge_pending",
    "start",
    "state_from_dict",
    "state_to_dict",
]

DEFAULT_WARMUP_TIMEOUT = 300.0
VERDICTS_KEPT = 10
#: said by a canary whose verdict needs more time than its progress deadline leaves
WILL_WAIT = "the canary will wait, not fail"


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
    evidence: tuple[Evidence, ...] = ()  # the sequential judge's, one per compared rate


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
                "evidence": tuple(evidence_from_dict(e) for e in data.get("evidence", ())),
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
            if policy.analysis.judge is Judge.SEQUENTIAL:
                outcome, results, state = _sequential(policy.analysis, state, observed, results)
            verdict = IntervalVerdict(now, outcome, state.weight, results)
            state = replace(
                state, last_interval=now, verdicts=(*state.verdicts, verdict)[-VERDICTS_KEPT:]
            )
            worse = [e for e in state.evidence if e.decision is Decision.WORSE]
            if worse:
                judged = results[: len(state.evidence)]  # the judge's own, before the guardrails
                return _rollback(
                    state,
                    now,
                    "the sequential judge found "
                    + " and ".join(e.metric for e in worse)
                    + " worse than stable: "
                    + "; ".join(r.message for r in judged if r.outcome is Outcome.FAIL),
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
        if not _neutral(state):
            return _rollback(
                state,
                now,
                f"no progress for {now - state.progress_at:.0f}s (progress deadline {deadline:g}s)",
            )
        state = replace(
            state,
            reason=f"progress deadline {deadline:g}s passed with the evidence neutral: "
            f"{_summary(policy.analysis, state)}; waiting for more traffic or a person",
        )

    # walk the steps as far as they allow in this tick
    for _ in range(len(policy.steps) + 1):
        if state.step >= len(policy.steps):
            why = "all steps passed"
            if state.evidence:
                why += f"; the sequential judge: {_summary(policy.analysis, state)}"
            promoted, more = _promote(state, now, why)
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
        if _neutral(state) and now - state.progress_at <= (deadline or math.inf):
            state = replace(state, reason=_deciding(policy, state, observed, now))
        elif state.evidence and state.reason.startswith("deciding:"):
            state = replace(
                state,
                reason=f"no worse than stable; {state.passed_in_step} of "
                f"{current.intervals or 1} intervals at {state.weight}%",
            )
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


def _sequential(
    analysis: Analysis,
    state: CanaryState,
    observed: Observation,
    guardrails: tuple[CheckResult, ...],
) -> tuple[Outcome, tuple[CheckResult, ...], CanaryState]:
    """One interval under the sequential judge: the guardrails' results (the
    checks, judged as the threshold judge does), then the evidence of each
    compared rate with this interval's windows added."""
    known = {e.metric: e for e in state.evidence}
    alpha = analysis.false_rollback / max(1, len(analysis.compared))
    beta = analysis.missed_regression
    canary, stable = observed.canary, observed.stable
    evidence: list[Evidence] = []
    results: list[CheckResult] = []
    for metric in analysis.compared:
        before = known.get(metric, Evidence(metric))
        after = before
        if canary is not None and stable is not None:
            after = _weigh_window(analysis, before, canary, stable, alpha=alpha, beta=beta)
        evidence.append(after)
        outcome = {
            Decision.WORSE: Outcome.FAIL,
            Decision.NO_WORSE: Outcome.PASS,
            Decision.UNDECIDED: Outcome.NO_DATA,
        }[after.decision]
        if canary is None or stable is None:
            message = f"{_label(metric, analysis)}: metrics could not be read"
        else:
            message = _evidence_text(analysis, after, alpha, beta)
        results.append(CheckResult(metric, outcome, after.canary_rate, message))
    state = replace(state, evidence=tuple(evidence))
    guard = {r.outcome for r in guardrails}
    if (
        canary is None
        or stable is None
        or Outcome.FAIL in guard
        or any(e.decision is Decision.WORSE for e in evidence)
    ):
        outcome = Outcome.FAIL
    elif canary.requests > 0 and all(e.decision is Decision.NO_WORSE for e in evidence):
        outcome = Outcome.PASS  # decided, and the canary served in this interval
    else:
        outcome = Outcome.NO_DATA
    return outcome, (*results, *guardrails), state


def _weigh_window(
    analysis: Analysis,
    evidence: Evidence,
    canary: BackendWindow,
    stable: BackendWindow,
    *,
    alpha: float,
    beta: float,
) -> Evidence:
    if evidence.metric == "errorRate":
        tally = Tally(canary.errors, canary.requests, stable.errors, stable.requests)
        return weigh(evidence, tally, analysis.error_increase or 0.0, alpha, beta)
    bound = analysis.latency
    if bound is None or not canary.buckets or not stable.buckets:
        return evidence  # no histogram (a metrics source without one): no latency evidence
    tally = Tally(
        slow_count(canary.buckets, bound.threshold),
        sum(canary.buckets),
        slow_count(stable.buckets, bound.threshold),
        sum(stable.buckets),
    )
    margin = latency_margin(evidence.stable_buckets, bound.threshold, bound.max_ratio)
    after = weigh(evidence, tally, margin, alpha, beta)
    seen = evidence.stable_buckets or (0,) * len(stable.buckets)
    return replace(
        after, stable_buckets=tuple(a + b for a, b in zip(seen, stable.buckets, strict=False))
    )


def _label(metric: str, analysis: Analysis) -> str:
    if metric == "latency" and analysis.latency is not None:
        return f"requests over {analysis.latency.threshold * 1000:g}ms"
    return "error rate"


def _evidence_text(analysis: Analysis, e: Evidence, alpha: float, beta: float) -> str:
    """``error rate 0.6% vs 0.5%: 12% of the way to a rollback, 64% of the way
    to a pass`` (or the decision, once made)."""
    label = _label(e.metric, analysis)
    if e.canary_rate is None or e.stable_rate is None:
        return f"{label}: no requests to compare yet"
    shown = f"{label} {e.canary_rate:.2%} vs {e.stable_rate:.2%} ({e.canary_requests} requests)"
    if e.decision is Decision.WORSE:
        return (
            f"{shown}: worse than stable (evidence {math.exp(min(e.log_worse, 700)):.3g} "
            f">= {1 / alpha:g}, budget {alpha:.2%} false rollbacks)"
        )
    way = (
        f"{e.toward_worse(alpha):.0%} of the way to a rollback, "
        f"{e.toward_no_worse(beta):.0%} of the way to a pass"
    )
    if e.decision is Decision.NO_WORSE:
        return f"{shown}: no worse than stable ({way})"
    return f"{shown}: {way}"


def judge_pending(policy: RolloutPolicy, state: CanaryState, now: float) -> tuple[bool, str] | None:
    """While the sequential judge still gathers evidence on a canary taking
    traffic: whether it is past its progress deadline (it waits for traffic),
    and the state's reason (the evidence, and how long a verdict needs). None
    once decided, before traffic, or under the threshold judge."""
    if state.phase.done or state.weight <= 0 or not _neutral(state):
        return None
    deadline = policy.progress_deadline
    waits = deadline is not None and (
        now - state.progress_at > deadline or WILL_WAIT in state.reason
    )
    return waits, state.reason


def _neutral(state: CanaryState) -> bool:
    """Whether the sequential judge still gathers evidence (nothing decided)."""
    return bool(state.evidence) and any(e.decision is Decision.UNDECIDED for e in state.evidence)


def _summary(analysis: Analysis | None, state: CanaryState) -> str:
    if analysis is None:
        return ""
    alpha = analysis.false_rollback / max(1, len(analysis.compared))
    return "; ".join(
        _evidence_text(analysis, e, alpha, analysis.missed_regression) for e in state.evidence
    )


def _deciding(policy: RolloutPolicy, state: CanaryState, observed: Observation, now: float) -> str:
    """The reason of a step waiting on the sequential judge, with how long a
    verdict needs at the canary's current traffic."""
    analysis = policy.analysis
    assert analysis is not None
    text = f"deciding: {_summary(analysis, state)}"
    canary = observed.canary
    rate = canary.requests / canary.seconds if canary is not None and canary.seconds > 0 else 0.0
    needed = 0.0
    for e in state.evidence:
        if e.decision is not Decision.UNDECIDED:
            continue
        base = e.stable_rate or 0.0
        margin = analysis.error_increase or 0.0
        if e.metric == "latency" and analysis.latency is not None:
            margin = latency_margin(
                e.stable_buckets, analysis.latency.threshold, analysis.latency.max_ratio
            )
        needed = max(
            needed,
            expected_requests(base, margin, analysis.missed_regression) - e.canary_requests,
        )
    if rate <= 0:
        return f"{text}; no canary traffic to judge"
    more = max(0.0, needed) / rate
    text += f"; about {_seconds(more)} more at {rate:.2g} req/s"
    deadline = policy.progress_deadline
    if deadline is not None and now - state.progress_at + more > deadline:
        text += f", past the {deadline:g}s progress deadline: {WILL_WAIT}"
    return text


def _seconds(seconds: float) -> str:
    if seconds == math.inf:
        return "forever"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
