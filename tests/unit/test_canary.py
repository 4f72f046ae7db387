"""The canary state machine, table first: warm-up, every step kind, analysis
with no-data and failures, deadlines, manual gates, and restart anywhere."""

from __future__ import annotations

import json

import pytest

from controller.core.canary import (
    ActionKind,
    CanaryPhase,
    CanaryState,
    Command,
    Observation,
    Outcome,
    advance,
    judge,
    start,
    state_from_dict,
    state_to_dict,
)
from controller.core.traffic import BackendWindow
from controller.spec.kinds import Analysis, Check, Metric, RolloutPolicy, Step, StepKind


def W(weight: int) -> Step:
    return Step(StepKind.SET_WEIGHT, weight=weight)


def P(duration: float | None = None) -> Step:
    return Step(StepKind.PAUSE, duration=duration)


def A(intervals: int = 1) -> Step:
    return Step(StepKind.ANALYSIS, intervals=intervals)


CHECKS = (
    Check("errors", Metric.ERROR_RATE, None, 0.05, None, None),
    Check("latency", Metric.LATENCY_P99, None, None, None, 1.5),
)


def policy(
    *steps: Step,
    failure_limit: int = 1,
    deadline: float | None = None,
    hold: float | None = None,
    warmup_timeout: float | None = 60,
    analysis: bool = True,
) -> RolloutPolicy:
    return RolloutPolicy(
        "p",
        tuple(steps),
        Analysis(10.0, failure_limit, 10, CHECKS) if analysis else None,
        deadline,
        warmup_timeout,
        hold,
        source=None,  # type: ignore[arg-type]
    )


def window(requests: int = 100, errors: int = 0, p99: float = 0.1) -> BackendWindow:
    return BackendWindow(requests, errors, 10.0, {0.5: p99 / 2, 0.9: p99 * 0.8, 0.99: p99})


GOOD = Observation(True, True, window(), window())
ERRORS = Observation(True, True, window(errors=20), window())
SLOW = Observation(True, True, window(p99=0.3), window(p99=0.1))
QUIET = Observation(True, True, window(requests=3), window())
BLIND = Observation(True, True, None, window())
NOT_READY = Observation(False, False)

# Each scenario: policy, ticks of (now, observation, command), then the expected
# (phase, weight, step index, failed intervals) and the action kinds of the last tick.
SCENARIOS = {
    "warm-up holds traffic until ready": (
        policy(W(10), A(1)),
        [(5, NOT_READY, None)],
        (CanaryPhase.WARMING, 0, 0, 0),
        [],
    ),
    "warm-up timeout rolls back": (
        policy(W(10)),
        [(5, NOT_READY, None), (61, NOT_READY, None)],
        (CanaryPhase.ROLLED_BACK, 0, 0, 0),
        ["set-weight", "rollback"],
    ),
    "ready but holding before traffic": (
        policy(W(10), hold=30),
        [(5, GOOD, None), (20, GOOD, None)],
        (CanaryPhase.WARMING, 0, 0, 0),
        [],
    ),
    "ready: the first weight at once": (
        policy(W(10), A(1)),
        [(5, GOOD, None)],
        (CanaryPhase.STEPPING, 10, 1, 0),
        ["set-weight"],
    ),
    "a good canary walks every step and is promoted": (
        policy(W(10), A(1), W(50), P(20), A(2)),
        [
            (0, GOOD, None),
            (10, GOOD, None),
            (20, GOOD, None),
            (30, GOOD, None),
            (40, GOOD, None),
            (50, GOOD, None),
        ],
        (CanaryPhase.PROMOTED, 100, 5, 0),
        ["set-weight", "promote"],
    ),
    "no data is no verdict, not a pass": (
        policy(W(10), A(1)),
        [(0, GOOD, None), (10, QUIET, None), (20, QUIET, None)],
        (CanaryPhase.STEPPING, 10, 1, 0),
        [],
    ),
    "errors within the failure limit are tolerated": (
        policy(W(10), A(3), failure_limit=1),
        [(0, GOOD, None), (10, ERRORS, None)],
        (CanaryPhase.STEPPING, 10, 1, 1),
        [],
    ),
    "one failure over the limit rolls back in the same tick": (
        policy(W(10), A(3), failure_limit=1),
        [(0, GOOD, None), (10, ERRORS, None), (20, ERRORS, None)],
        (CanaryPhase.ROLLED_BACK, 0, 1, 2),
        ["set-weight", "rollback"],
    ),
    "latency relative to stable is judged": (
        policy(W(10), A(3), failure_limit=0),
        [(0, GOOD, None), (10, SLOW, None)],
        (CanaryPhase.ROLLED_BACK, 0, 1, 1),
        ["set-weight", "rollback"],
    ),
    "unreadable metrics fail, never pass": (
        policy(W(10), A(3), failure_limit=0),
        [(0, GOOD, None), (10, BLIND, None)],
        (CanaryPhase.ROLLED_BACK, 0, 1, 1),
        ["set-weight", "rollback"],
    ),
    "a timed pause holds, then goes on": (
        policy(W(10), P(30), W(40), A(1)),
        [(0, GOOD, None), (10, GOOD, None), (29, GOOD, None)],
        (CanaryPhase.STEPPING, 10, 1, 0),
        [],
    ),
    "after the pause the next weight": (
        policy(W(10), P(30), W(40), A(1)),
        [(0, GOOD, None), (10, GOOD, None), (30, GOOD, None)],
        (CanaryPhase.STEPPING, 40, 3, 0),
        ["set-weight"],
    ),
    "a pause without duration waits for a person": (
        policy(W(10), P(), W(50)),
        [(0, GOOD, None), (10, GOOD, None), (5000, GOOD, None)],
        (CanaryPhase.WAITING_FOR_APPROVAL, 10, 1, 0),
        [],
    ),
    "waiting is exempt from the progress deadline": (
        policy(W(10), P(), W(50), deadline=60),
        [(0, GOOD, None), (5000, QUIET, None)],
        (CanaryPhase.WAITING_FOR_APPROVAL, 10, 1, 0),
        [],
    ),
    "resume approves the waiting pause": (
        policy(W(10), P(), W(50), A(1)),
        [(0, GOOD, None), (10, GOOD, None), (20, GOOD, Command.RESUME)],
        (CanaryPhase.STEPPING, 50, 3, 0),
        ["set-weight"],
    ),
    "promote skips the rest": (
        policy(W(10), P(), W(50)),
        [(0, GOOD, None), (10, GOOD, Command.PROMOTE)],
        (CanaryPhase.PROMOTED, 100, 1, 0),
        ["set-weight", "promote"],
    ),
    "promote is refused while the canary is not ready": (
        policy(W(10)),
        [(0, NOT_READY, Command.PROMOTE)],
        (CanaryPhase.WARMING, 0, 0, 0),
        [],
    ),
    "abort during a pause rolls back": (
        policy(W(10), P(), W(50)),
        [(0, GOOD, None), (10, GOOD, Command.ABORT)],
        (CanaryPhase.ROLLED_BACK, 0, 1, 0),
        ["set-weight", "rollback"],
    ),
    "abort during warm-up rolls back": (
        policy(W(10)),
        [(0, NOT_READY, Command.ABORT)],
        (CanaryPhase.ROLLED_BACK, 0, 0, 0),
        ["set-weight", "rollback"],
    ),
    "a person's pause freezes everything": (
        policy(W(10), A(1), W(50)),
        [(0, GOOD, None), (5, GOOD, Command.PAUSE), (100, ERRORS, None), (200, ERRORS, None)],
        (CanaryPhase.PAUSED, 10, 1, 0),
        [],
    ),
    "resume after a person's pause carries on": (
        policy(W(10), A(1), W(50), A(1)),
        [(0, GOOD, None), (5, GOOD, Command.PAUSE), (100, GOOD, Command.RESUME), (110, GOOD, None)],
        (CanaryPhase.STEPPING, 50, 3, 0),
        ["set-weight"],
    ),
    "no progress until the deadline rolls back": (
        policy(W(10), A(1), deadline=60),
        [(0, GOOD, None), (10, QUIET, None), (40, QUIET, None), (61, QUIET, None)],
        (CanaryPhase.ROLLED_BACK, 0, 1, 0),
        ["set-weight", "rollback"],
    ),
    "without analysis, steps and pauses alone": (
        policy(W(20), P(10), W(60), analysis=False),
        [(0, GOOD, None), (10, BLIND, None)],
        (CanaryPhase.PROMOTED, 100, 3, 0),
        ["set-weight", "set-weight", "promote"],
    ),
    "a finished canary stays finished": (
        policy(W(10)),
        [(0, GOOD, None), (1, GOOD, Command.ABORT), (2, GOOD, None)],
        (CanaryPhase.PROMOTED, 100, 1, 0),
        [],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    rollout, ticks, expected, last_actions = SCENARIOS[name]
    state = start("hash-1", 0.0)
    actions: tuple = ()
    for now, observed, command in ticks:
        state, actions = advance(rollout, state, observed, float(now), command)
    assert (state.phase, state.weight, state.step, state.failures) == expected, state.reason
    assert [str(a.kind) for a in actions] == last_actions


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_restart_at_every_tick_gives_the_same_rollout(name: str) -> None:
    """The state is plain data: recorded and read back after any tick, the
    rollout goes on exactly as if nothing had happened."""
    rollout, ticks, _, _ = SCENARIOS[name]
    straight = start("hash-1", 0.0)
    restarted = start("hash-1", 0.0)
    for now, observed, command in ticks:
        straight, _ = advance(rollout, straight, observed, float(now), command)
        saved = json.loads(json.dumps(state_to_dict(restarted)))  # what a status file holds
        restarted = state_from_dict(saved)
        restarted, _ = advance(rollout, restarted, observed, float(now), command)
    assert restarted == straight


def test_rollback_sets_weight_zero_first_and_says_why() -> None:
    rollout = policy(W(10), A(3), failure_limit=0)
    state, _ = advance(rollout, start("h", 0), GOOD, 0)
    state, actions = advance(rollout, state, ERRORS, 10)
    assert actions[0].kind is ActionKind.SET_WEIGHT
    assert actions[0].weight == 0
    assert actions[1].kind is ActionKind.ROLLBACK
    assert "errorRate 0.2 > max 0.05" in actions[1].reason
    assert "1 failed analysis intervals (limit 0)" in state.reason
    assert state.verdicts[-1].outcome is Outcome.FAIL


@pytest.mark.parametrize(
    ("canary", "stable", "outcome", "messages"),
    [
        (window(), window(), Outcome.PASS, ["errorRate 0 ", "latencyP99 0.1 (stable 0.1)"]),
        (window(errors=6), window(), Outcome.FAIL, ["errorRate 0.06 > max 0.05"]),
        (window(p99=0.16), window(p99=0.1), Outcome.FAIL, ["latencyP99 0.16 > 1.5 x stable 0.1"]),
        (window(p99=0.14), window(p99=0.1), Outcome.PASS, []),
        (window(), None, Outcome.NO_DATA, ["no stable value to compare with"]),
        (window(), window(requests=0), Outcome.NO_DATA, ["no stable value"]),
        (window(requests=9), window(), Outcome.NO_DATA, ["9 requests, fewer than 10"]),
        (None, window(), Outcome.FAIL, ["metrics could not be read"]),
        (BackendWindow(100, 0, 10.0, {}), window(), Outcome.FAIL, ["latencyP99 could not be read"]),
    ],
)
def test_judge(
    canary: BackendWindow | None,
    stable: BackendWindow | None,
    outcome: Outcome,
    messages: list[str],
) -> None:
    got, results = judge(CHECKS, canary, stable, 10)
    assert got is outcome
    text = " | ".join(r.message for r in results)
    for message in messages:
        assert message in text


def test_bad_recorded_state_is_refused() -> None:
    with pytest.raises(ValueError, match="not a canary state"):
        state_from_dict({"phase": "stepping"})


QUERY = Check("queue", None, None, 5.0, None, None, query="max(queue_depth)")


@pytest.mark.parametrize(
    ("custom", "outcome", "message"),
    [
        ({"queue": 3.0}, Outcome.PASS, "query 'queue' 3"),
        ({"queue": 9.0}, Outcome.FAIL, "query 'queue' 9 > max 5"),
        ({"queue": None}, Outcome.FAIL, "query 'queue' could not be read"),
        ({}, Outcome.FAIL, "could not be read"),
    ],
)
def test_query_checks(custom: dict, outcome: Outcome, message: str) -> None:
    got, results = judge((QUERY,), window(), window(), 10, custom)
    assert got is outcome
    assert message in results[0].message


@pytest.mark.parametrize("phase", [CanaryPhase.WARMING, CanaryPhase.STEPPING, CanaryPhase.PAUSED])
def test_a_lost_canary_is_judged_failed_never_promoted(phase: CanaryPhase) -> None:
    state = CanaryState("h", phase, step=1, weight=20)
    lost = Observation(canary_ready=False, canary_lost="node lost: gpu-node-b left")
    after, actions = advance(policy(W(20), A(1)), state, lost, 100.0)
    assert after.phase is CanaryPhase.ROLLED_BACK
    assert "node lost: gpu-node-b left" in after.reason
    assert [a.kind for a in actions] == [ActionKind.SET_WEIGHT, ActionKind.ROLLBACK]
