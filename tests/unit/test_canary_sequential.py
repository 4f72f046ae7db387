"""The canary state machine under the sequential judge (analysis.judge:
sequential): rollback in the tick the evidence crosses the budget, analysis
steps that wait for "no worse", guardrails, unreadable metrics, the progress
deadline of a neutral canary, the reasons and verdict texts, and the evidence
in the recorded state."""

from __future__ import annotations

import json
import math
import re

import pytest

from controller.core.canary import (
    WILL_WAIT,
    ActionKind,
    CanaryPhase,
    CanaryState,
    Observation,
    Outcome,
    advance,
    judge_pending,
    start,
    state_from_dict,
    state_to_dict,
)
from controller.core.evidence import Decision, Evidence, Tally, latency_margin, slow_count, weigh
from controller.core.traffic import BUCKETS, BackendWindow
from controller.spec.kinds import (
    Analysis,
    Check,
    Judge,
    LatencyBound,
    Metric,
    RolloutPolicy,
    Step,
    StepKind,
)

INTERVAL = 10.0
GUARDRAILS = (
    Check("errors", Metric.ERROR_RATE, None, 0.3, None, None),
    Check("slow", Metric.LATENCY_P99, None, 2.0, None, None),
)
LATENCY = LatencyBound(0.25, 1.5)


def W(weight: int) -> Step:
    return Step(StepKind.SET_WEIGHT, weight=weight)


def A(intervals: int = 1) -> Step:
    return Step(StepKind.ANALYSIS, intervals=intervals)


def P(duration: float | None = None) -> Step:
    return Step(StepKind.PAUSE, duration=duration)


def policy(
    *steps: Step,
    judge: Judge = Judge.SEQUENTIAL,
    deadline: float | None = None,
    failure_limit: int = 0,
    error_increase: float | None = 0.02,
    latency: LatencyBound | None = None,
    checks: tuple[Check, ...] = GUARDRAILS,
) -> RolloutPolicy:
    analysis = Analysis(
        INTERVAL,
        failure_limit,
        10,
        checks,
        judge=judge,
        false_rollback=0.01,
        missed_regression=0.01,
        error_increase=error_increase if judge is Judge.SEQUENTIAL else None,
        latency=latency if judge is Judge.SEQUENTIAL else None,
    )
    return RolloutPolicy(
        "p",
        steps or (W(10), A(3), W(50), A(2)),
        analysis,
        deadline,
        60.0,
        None,
        source=None,  # type: ignore[arg-type]
    )


def hist(counts: dict[float | None, int]) -> tuple[int, ...]:
    """A router histogram: counts by bucket upper bound (None: over the last bound)."""
    out = [0] * (len(BUCKETS) + 1)
    for bound, count in counts.items():
        out[len(BUCKETS) if bound is None else BUCKETS.index(bound)] += count
    return tuple(out)


def window(requests: int, errors: int = 0, p99: float = 0.1, slow: float = 0.0) -> BackendWindow:
    """``slow``: the share of requests in (0.25s, 0.3s], the rest in (0.075s, 0.1s]."""
    over = round(requests * slow)
    return BackendWindow(
        requests,
        errors,
        INTERVAL,
        {0.5: p99 / 2, 0.9: p99 * 0.8, 0.99: p99},
        hist({0.1: requests - over, 0.3: over}),
    )


def seen(canary: BackendWindow | None, stable: BackendWindow | None) -> Observation:
    return Observation(canary_ready=True, smoke_ok=True, canary=canary, stable=stable)


HEALTHY = seen(window(100), window(900))


def taking_traffic(p: RolloutPolicy) -> CanaryState:
    """A canary just warmed up at t=0: its first setWeight carried out."""
    state, actions = advance(p, start("spec", 0.0), seen(None, None), 0.0)
    assert state.weight > 0, actions
    return state


def tick(
    p: RolloutPolicy,
    state: CanaryState,
    n: int,
    observed: Observation,
) -> tuple[CanaryState, tuple[ActionKind, ...]]:
    """The state after the ``n``-th analysis interval."""
    after, actions = advance(p, state, observed, n * INTERVAL)
    return after, tuple(a.kind for a in actions)


def rates(state: CanaryState) -> dict[str, Decision]:
    return {e.metric: e.decision for e in state.evidence}


# -- rollback ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latency", "error_increase", "canary", "named"),
    [
        pytest.param(None, 0.02, window(100, errors=3), "error rate ", id="errors"),
        pytest.param(LATENCY, None, window(100, slow=0.2), "requests over 250ms ", id="latency"),
        pytest.param(LATENCY, 0.02, window(100, errors=3), "error rate ", id="errors of both"),
        pytest.param(
            LATENCY, 0.02, window(100, slow=0.2), "requests over 250ms ", id="slow of both"
        ),
    ],
)
def test_rollback_in_the_tick_the_evidence_crosses_the_budget(
    latency: LatencyBound | None, error_increase: float | None, canary: BackendWindow, named: str
) -> None:
    p = policy(error_increase=error_increase, latency=latency)
    assert p.analysis is not None
    alpha = p.analysis.false_rollback / len(p.analysis.compared)
    stable = window(900, errors=9, slow=0.01)
    metric = "errorRate" if named == "error rate " else "latency"
    state = taking_traffic(p)
    for n in range(1, 30):
        before = {e.metric: e for e in state.evidence}.get(metric, Evidence(metric))
        state, actions = tick(p, state, n, seen(canary, stable))
        if state.phase is CanaryPhase.ROLLED_BACK:
            break
        assert actions == ()
        assert Decision.WORSE not in rates(state).values()
    else:
        pytest.fail("never rolled back")
    assert n > 1  # the evidence accumulated over intervals
    # the judge's arithmetic crossed the budget in exactly this window
    if metric == "errorRate":
        tally = Tally(canary.errors, canary.requests, stable.errors, stable.requests)
        margin = 0.02
    else:
        tally = Tally(
            slow_count(canary.buckets, 0.25),
            canary.requests,
            slow_count(stable.buckets, 0.25),
            stable.requests,
        )
        margin = latency_margin(before.stable_buckets, 0.25, 1.5)
    assert before.decision is Decision.UNDECIDED
    assert weigh(before, tally, margin, alpha, 0.01).decision is Decision.WORSE
    assert rates(state)[metric] is Decision.WORSE
    assert actions == (ActionKind.SET_WEIGHT, ActionKind.ROLLBACK)
    assert state.weight == 0
    found = f"the sequential judge found {metric} worse than stable: {named}"
    assert state.reason.startswith(found)
    assert f">= {1 / alpha:g}, budget {alpha:.2%} false rollbacks)" in state.reason
    assert state.verdicts[-1].outcome is Outcome.FAIL


def test_worse_rolls_back_even_while_a_person_is_awaited() -> None:
    p = policy(W(10), P(), W(50))
    state = taking_traffic(p)
    assert state.phase is CanaryPhase.WAITING_FOR_APPROVAL
    for n in range(1, 30):
        state, actions = tick(p, state, n, seen(window(100, errors=5), window(900, errors=4)))
        if state.phase.done:
            break
    assert state.phase is CanaryPhase.ROLLED_BACK
    assert actions == (ActionKind.SET_WEIGHT, ActionKind.ROLLBACK)
    assert "the sequential judge found errorRate worse" in state.reason


# -- analysis steps wait for "no worse" ---------------------------------------------


def test_an_analysis_step_ends_only_after_the_judge_says_no_worse() -> None:
    """Clean traffic: the first window only teaches the stable's rate (the "no worse"
    test waits for 20 stable requests); then 228 clean canary requests pass at margin
    2% (ln 100 / -ln 0.98): no worse at the 4th interval (300 requests counted), the
    first interval to count; A(3) ends at the 6th."""
    p = policy(W(10), A(3), W(50), A(2))
    state = taking_traffic(p)
    outcomes = []
    for n in range(1, 7):
        state, actions = tick(p, state, n, HEALTHY)
        outcomes.append(state.verdicts[-1].outcome)
        if n < 4:
            assert rates(state) == {"errorRate": Decision.UNDECIDED}
            assert state.passed_in_step == 0
            assert state.reason.startswith("deciding: error rate 0.00% vs 0.00% (")
            assert judge_pending(p, state, n * INTERVAL) == (False, state.reason)
        elif n < 6:
            assert rates(state) == {"errorRate": Decision.NO_WORSE}
            assert (state.step, state.passed_in_step) == (1, n - 3)
            assert judge_pending(p, state, n * INTERVAL) is None
    assert outcomes == [Outcome.NO_DATA] * 3 + [Outcome.PASS] * 3
    assert (state.step, state.weight, state.passed_in_step) == (3, 50, 0)
    assert actions == (ActionKind.SET_WEIGHT,)


def test_the_threshold_judge_counts_the_same_intervals_at_once() -> None:
    p = policy(W(10), A(3), W(50), A(2), judge=Judge.THRESHOLD)
    state = taking_traffic(p)
    for n in range(1, 4):
        state, _ = tick(p, state, n, HEALTHY)
    assert (state.step, state.weight) == (3, 50)
    assert state.evidence == ()


def test_every_compared_rate_must_be_no_worse() -> None:
    """Errors (none on either version) are shown no worse long before latency is,
    where 5% of requests are slow on both versions."""
    p = policy(W(10), A(1), W(50), latency=LATENCY)
    state = taking_traffic(p)
    both = seen(window(100, slow=0.05), window(900, slow=0.05))
    for n in range(1, 5):
        state, _ = tick(p, state, n, both)
    assert rates(state) == {"errorRate": Decision.NO_WORSE, "latency": Decision.UNDECIDED}
    assert (state.step, state.passed_in_step) == (1, 0)
    assert state.verdicts[-1].outcome is Outcome.NO_DATA
    for n in range(5, 40):
        state, _ = tick(p, state, n, both)
        if state.step > 1:
            break
    assert rates(state) == {"errorRate": Decision.NO_WORSE, "latency": Decision.NO_WORSE}
    assert state.phase is CanaryPhase.PROMOTED


# -- guardrails and unreadable metrics ----------------------------------------------


@pytest.mark.parametrize("decided", [False, True], ids=["evidence neutral", "no worse"])
def test_a_guardrail_past_its_max_rolls_back_whatever_the_evidence(decided: bool) -> None:
    p = policy(W(10), A(3), W(50))
    state = taking_traffic(p)
    n = 0
    while decided and Decision.NO_WORSE not in rates(state).values():
        n += 1
        state, _ = tick(p, state, n, HEALTHY)
    state, actions = tick(p, state, n + 1, seen(window(100, p99=3.0), window(900)))
    assert actions == (ActionKind.SET_WEIGHT, ActionKind.ROLLBACK)
    assert state.phase is CanaryPhase.ROLLED_BACK
    assert state.reason == "1 failed analysis intervals (limit 0): latencyP99 3 > max 2"
    assert Decision.WORSE not in rates(state).values()


def test_a_guardrail_rolls_back_a_canary_failing_most_requests_in_one_interval() -> None:
    p = policy(W(10), A(3))
    state, actions = tick(p, taking_traffic(p), 1, seen(window(100, errors=40), window(900)))
    assert actions == (ActionKind.SET_WEIGHT, ActionKind.ROLLBACK)
    assert "errorRate 0.4 > max 0.3" in state.reason


@pytest.mark.parametrize(
    "observed",
    [
        pytest.param(seen(None, window(900)), id="canary unreadable"),
        pytest.param(seen(window(100), None), id="stable unreadable"),
        pytest.param(seen(None, None), id="both unreadable"),
    ],
)
def test_unreadable_metrics_fail_the_interval(observed: Observation) -> None:
    p = policy(W(10), A(3), failure_limit=1, latency=LATENCY)
    state = taking_traffic(p)
    state, _ = tick(p, state, 1, HEALTHY)
    evidence = state.evidence
    state, actions = tick(p, state, 2, observed)
    assert actions == ()
    assert state.failures == 1
    verdict = state.verdicts[-1]
    assert verdict.outcome is Outcome.FAIL
    messages = {c.check: c.message for c in verdict.checks}
    assert messages["errorRate"] == "error rate: metrics could not be read"
    assert messages["latency"] == "requests over 250ms: metrics could not be read"
    assert state.evidence == evidence  # nothing weighed
    state, actions = tick(p, state, 3, observed)
    assert actions == (ActionKind.SET_WEIGHT, ActionKind.ROLLBACK)
    assert state.reason.startswith("2 failed analysis intervals (limit 1): ")


# -- the progress deadline ------------------------------------------------------------

QUIET = seen(window(2), window(18))  # 0.2 canary requests a second


def test_a_neutral_canary_waits_at_its_progress_deadline() -> None:
    p = policy(W(10), A(3), W(50), deadline=60.0)
    state = taking_traffic(p)
    for n in range(1, 7):
        state, actions = tick(p, state, n, QUIET)
        assert actions == ()
        # 226 more requests at 0.2 req/s: about 19 minutes, past the deadline
        assert state.reason.startswith("deciding: error rate 0.00% vs 0.00% (")
        assert state.reason.endswith(f"past the 60s progress deadline: {WILL_WAIT}")
        assert judge_pending(p, state, n * INTERVAL) == (True, state.reason)
    for n in range(7, 20):  # 70s and on: past the deadline, still neutral
        state, actions = tick(p, state, n, QUIET)
        assert actions == ()
        assert state.phase is CanaryPhase.STEPPING
        assert (state.step, state.weight) == (1, 10)
        assert state.reason.startswith("progress deadline 60s passed with the evidence neutral: ")
        assert "evidence neutral" in state.reason
        assert state.reason.endswith("; waiting for more traffic or a person")
        assert judge_pending(p, state, n * INTERVAL) == (True, state.reason)
    # traffic comes back: the judge decides and the canary goes on
    for n in range(20, 30):
        state, _ = tick(p, state, n, HEALTHY)
    assert state.phase is CanaryPhase.PROMOTED


def test_the_threshold_judge_rolls_back_at_the_deadline() -> None:
    p = policy(W(10), A(3), W(50), judge=Judge.THRESHOLD, deadline=60.0)
    state = taking_traffic(p)
    for n in range(1, 7):
        state, actions = tick(p, state, n, QUIET)
        assert actions == ()
        assert state.verdicts[-1].outcome is Outcome.NO_DATA  # 2 requests < minRequests 10
    assert judge_pending(p, state, 60.0) is None
    state, actions = tick(p, state, 7, QUIET)
    assert actions == (ActionKind.SET_WEIGHT, ActionKind.ROLLBACK)
    assert state.reason == "no progress for 70s (progress deadline 60s)"


def test_a_decided_canary_is_not_exempt_from_the_deadline() -> None:
    """No worse, but a guardrail fails every interval (within the failure limit):
    no progress, so the deadline rolls it back as the threshold judge would."""
    p = policy(W(10), A(3), W(50), deadline=60.0, failure_limit=100)
    state = taking_traffic(p)
    n = 0
    while Decision.NO_WORSE not in rates(state).values():
        n += 1
        state, _ = tick(p, state, n, HEALTHY)
    decided_at = state.progress_at
    assert decided_at == n * INTERVAL  # the decided interval was the first to pass
    late = seen(window(100, p99=3.0), window(900))
    for m in range(n + 1, n + 30):
        state, _ = tick(p, state, m, late)
        if state.phase.done:
            break
    assert state.phase is CanaryPhase.ROLLED_BACK
    assert m * INTERVAL - decided_at == 70.0
    assert state.reason == "no progress for 70s (progress deadline 60s)"


# -- reasons and verdict texts --------------------------------------------------------


def test_the_promotion_reason_names_the_sequential_judge() -> None:
    p = policy(W(10), A(1), W(50), latency=LATENCY)
    state = taking_traffic(p)
    for n in range(1, 60):
        state, actions = tick(p, state, n, seen(window(100, slow=0.01), window(900, slow=0.01)))
        if state.phase.done:
            break
    assert state.phase is CanaryPhase.PROMOTED
    assert actions[-1] is ActionKind.PROMOTE
    pattern = (
        r"all steps passed; the sequential judge: "
        r"error rate 0\.00% vs 0\.00% \(\d+ requests\): no worse than stable "
        r"\(0% of the way to a rollback, 100% of the way to a pass\); "
        r"requests over 250ms 1\.00% vs 1\.00% \(\d+ requests\): no worse than stable "
        r"\(0% of the way to a rollback, 100% of the way to a pass\)"
    )
    assert re.fullmatch(pattern, state.reason), state.reason


def test_the_threshold_judge_promotes_without_naming_a_judge() -> None:
    p = policy(W(10), A(1), W(50), judge=Judge.THRESHOLD)
    state, _ = tick(p, taking_traffic(p), 1, HEALTHY)
    assert state.phase is CanaryPhase.PROMOTED
    assert state.reason == "all steps passed"


def carried(metric: str = "errorRate", **fields: float) -> Evidence:
    """Evidence as earlier windows left it: the canary at 0.6% of 812 requests."""
    values: dict[str, float] = {"canary_events": 0.006 * 812, "canary_requests": 812}
    values.update(fields)
    return Evidence(
        metric,
        log_worse=values.get("log_worse", 0.0),
        log_no_worse=values.get("log_no_worse", 0.0),
        canary_events=values["canary_events"],
        canary_requests=int(values["canary_requests"]),
        stable_events=values.get("stable_events", 0.0),
        stable_requests=int(values.get("stable_requests", 0)),
    )


def verdict_of(p: RolloutPolicy, evidence: tuple[Evidence, ...], stable: BackendWindow) -> str:
    """The evidence's verdict text after an interval the canary served nothing in
    (so the window adds the stable's counts and no evidence)."""
    state = CanaryState(
        "spec", CanaryPhase.STEPPING, step=1, weight=10, last_interval=0.0, evidence=evidence
    )
    state, _ = tick(p, state, 1, seen(window(0), stable))
    assert state.evidence[0].log_worse == evidence[0].log_worse
    return state.verdicts[-1].checks[0].message


def test_the_verdict_says_how_far_the_evidence_has_gone() -> None:
    p = policy(W(10), A(3))
    e = carried(log_worse=0.12 * math.log(100), log_no_worse=0.64 * math.log(100))
    text = verdict_of(p, (e,), window(1000, errors=5))
    assert text == (
        "error rate 0.60% vs 0.50% (812 requests): "
        "12% of the way to a rollback, 64% of the way to a pass"
    )


def test_each_compared_rate_has_its_verdict_before_the_guardrails() -> None:
    p = policy(W(10), A(3), latency=LATENCY)
    state = taking_traffic(p)
    state, _ = tick(p, state, 1, seen(window(100, errors=1, slow=0.05), window(900, slow=0.01)))
    checks = state.verdicts[-1].checks
    assert [c.check for c in checks] == ["errorRate", "latency", "errors", "slow"]
    assert checks[0].message.startswith("error rate 1.00% vs 0.00% (100 requests): ")
    assert checks[1].message.startswith("requests over 250ms 5.00% vs 1.00% (100 requests): ")
    assert checks[0].value == pytest.approx(0.01)
    assert checks[1].value == pytest.approx(0.05)
    assert [c.outcome for c in checks] == [Outcome.NO_DATA, Outcome.NO_DATA] + [Outcome.PASS] * 2


def test_the_verdict_before_any_request() -> None:
    p = policy(W(10), A(3))
    state, _ = tick(p, taking_traffic(p), 1, seen(window(0), window(0)))
    check = state.verdicts[-1].checks[0]
    assert check.message == "error rate: no requests to compare yet"
    assert check.value is None


def test_the_rollback_reason_gives_the_evidence_and_the_budget() -> None:
    """Carried: e-value 50. The window: the stable's rate before it 0.5 / 20 = 0.025,
    theta = (0.025 + 0.02) / 0.025 = 1.8; 100 vs 900 requests: pi0 = 0.1,
    pi1 = 180 / 1080 = 1/6; 3 canary errors x 5/3 each, 4 stable errors x 25/27 each."""
    p = policy(W(10), A(3))
    e = carried(log_worse=math.log(50), stable_requests=19)
    state = CanaryState("spec", CanaryPhase.STEPPING, step=1, weight=10, evidence=(e,))
    state, _ = tick(p, state, 1, seen(window(100, errors=3), window(900, errors=4)))
    assert state.phase is CanaryPhase.ROLLED_BACK
    evidence = 50 * (5 / 3) ** 3 * (25 / 27) ** 4  # 170.1
    assert state.reason == (
        "the sequential judge found errorRate worse than stable: error rate 0.86% vs 0.44% "
        f"(912 requests): worse than stable (evidence {evidence:.3g} >= 100, "
        "budget 1.00% false rollbacks)"
    )
    assert f"{evidence:.3g}" == "170"


# -- the recorded state -----------------------------------------------------------------


def test_the_state_with_its_evidence_survives_json() -> None:
    p = policy(W(10), A(3), W(50), latency=LATENCY)
    state = taking_traffic(p)
    for n in range(1, 4):
        state, _ = tick(p, state, n, seen(window(100, errors=1, slow=0.02), window(900, slow=0.01)))
    assert {e.metric for e in state.evidence} == {"errorRate", "latency"}
    assert any(e.stable_buckets for e in state.evidence)
    back = state_from_dict(json.loads(json.dumps(state_to_dict(state))))
    assert back == state
    # and the restored state judges the next interval exactly as the original does
    observed = seen(window(100, errors=2), window(900, errors=1))
    assert advance(p, back, observed, 40.0) == advance(p, state, observed, 40.0)


def test_a_state_without_evidence_still_loads() -> None:
    """States recorded before the sequential judge have no evidence field."""
    data = state_to_dict(start("spec", 5.0))
    del data["evidence"]
    assert state_from_dict(data) == start("spec", 5.0)


def test_bad_evidence_in_a_state_is_refused() -> None:
    data = state_to_dict(start("spec", 5.0))
    data["evidence"] = [{"metric": "errorRate", "nonsense": 1}]
    with pytest.raises(ValueError, match="not canary evidence"):
        state_from_dict(data)


# -- found while testing ------------------------------------------------------------------


def test_a_latency_rollback_reason_holds_only_the_judges_evidence() -> None:
    guardrail = (Check("latency", Metric.LATENCY_P99, None, 2.0, None, None),)
    p = policy(W(10), A(3), error_increase=None, latency=LATENCY, checks=guardrail)
    state = taking_traffic(p)
    for n in range(1, 10):
        state, _ = tick(p, state, n, seen(window(100, slow=0.5), window(900, slow=0.01)))
        if state.phase.done:
            break
    assert state.phase is CanaryPhase.ROLLED_BACK
    assert "latencyP99" not in state.reason


def test_the_reason_stops_saying_deciding_once_decided() -> None:
    p = policy(W(10), A(3), W(50))
    state = taking_traffic(p)
    for n in range(1, 5):  # no worse at the 4th interval (see above)
        state, _ = tick(p, state, n, HEALTHY)
    assert rates(state) == {"errorRate": Decision.NO_WORSE}
    assert (state.step, state.passed_in_step) == (1, 1)
    assert not state.reason.startswith("deciding:")
