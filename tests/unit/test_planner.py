"""The reconcile plan and the status a pass leaves: pure, table-first."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.core.canary import CanaryPhase, CanaryState, CheckResult, IntervalVerdict, Outcome
from controller.core.plan import (
    Move,
    Observed,
    PhaseFacts,
    PlanInput,
    iso,
    make_plan,
    next_status,
    phase_for,
    spec_hash,
)
from controller.core.status import ModelStatus, Phase, Release
from controller.spec.kinds import MlflowVersion, PythonDependencies
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO

H1, H2, H3 = "a" * 16, "b" * 16, "c" * 16


def _canary(spec: str, phase: CanaryPhase = CanaryPhase.STEPPING, weight: int = 20) -> CanaryState:
    return CanaryState(spec, phase, step=1, weight=weight)


@pytest.mark.parametrize(
    ("desired", "invalid", "prune_safe", "observed", "move"),
    [
        # nothing runs yet
        ({"m": H1}, set(), True, None, Move.DEPLOY),
        # the first release is starting
        ({"m": H1}, set(), True, Observed(H1, stable_ready=False), Move.AWAIT),
        # it runs what git says
        ({"m": H1}, set(), True, Observed(H1, stable_ready=True), Move.STEADY),
        # git changed: a canary
        ({"m": H2}, set(), True, Observed(H1, True), Move.START_CANARY),
        # the stable is not ready, but git moved on: still a canary, not an await
        ({"m": H2}, set(), True, Observed(H1, False), Move.START_CANARY),
        # the canary of this spec walks on
        ({"m": H2}, set(), True, Observed(H1, True, _canary(H2)), Move.CONTINUE),
        # a recovered canary (stable not yet probed) walks on too
        ({"m": H2}, set(), True, Observed(H1, False, _canary(H2)), Move.CONTINUE),
        # git moved on during the canary
        ({"m": H3}, set(), True, Observed(H1, True, _canary(H2)), Move.REPLACE),
        # git went back to the stable spec during a canary: abort it (replace with stable)
        ({"m": H1}, set(), True, Observed(H1, True, _canary(H2)), Move.REPLACE),
        # this spec was rolled back and pinned
        ({"m": H2}, set(), True, Observed(H1, True, None, pinned=H2), Move.PINNED),
        # a pinned spec that never ran (its first deploy failed)
        ({"m": H1}, set(), True, Observed(None, False, None, pinned=H1), Move.PINNED),
        # a change after a pin is tried
        ({"m": H3}, set(), True, Observed(H1, True, None, pinned=H2), Move.START_CANARY),
        # a finished canary is not a canary under way
        (
            {"m": H1},
            set(),
            True,
            Observed(H1, True, _canary(H1, CanaryPhase.PROMOTED)),
            Move.STEADY,
        ),
        # the stable's node left the cluster: place it again
        ({"m": H1}, set(), True, Observed(H1, False, stable_lost="node lost: b"), Move.RE_PLACE),
        # ... whatever git wants now, and with a canary under way (it is aborted)
        (
            {"m": H2},
            set(),
            True,
            Observed(H1, False, _canary(H2), stable_lost="node lost: b"),
            Move.RE_PLACE,
        ),
        # a pinned model whose stable is lost is still placed again
        (
            {"m": H2},
            set(),
            True,
            Observed(H1, False, None, pinned=H2, stable_lost="node lost: b"),
            Move.RE_PLACE,
        ),
        # an invalid spec still holds: what runs is left alone
        ({}, {"m"}, True, Observed(H1, False, stable_lost="node lost: b"), Move.HOLD),
        # invalid spec: hold what runs
        ({}, {"m"}, True, Observed(H1, True), Move.HOLD),
        # gone from git: prune
        ({}, set(), True, Observed(H1, True), Move.PRUNE),
        # gone from git but some file was unreadable: keep
        ({}, set(), False, Observed(H1, True), Move.KEEP),
    ],
)
def test_plan_moves(
    desired: dict[str, str],
    invalid: set[str],
    prune_safe: bool,
    observed: Observed | None,
    move: Move,
) -> None:
    plan = make_plan(
        PlanInput(desired, frozenset(invalid), prune_safe, {"m": observed} if observed else {})
    )
    assert [(p.model, p.move) for p in plan] == [("m", move)]
    assert plan[0].reason


def test_re_place_says_why_and_what_happens_to_the_canary() -> None:
    lost = "node lost: gpu-node-b left the cluster"
    alone, with_canary = (
        make_plan(PlanInput({"m": H2}, frozenset(), True, {"m": seen}))[0]
        for seen in (
            Observed(H1, False, stable_lost=lost),
            Observed(H1, False, _canary(H2), stable_lost=lost),
        )
    )
    assert alone.spec_hash == H1  # the stable's spec, not git's: the same release again
    assert lost in alone.reason
    assert "canary" not in alone.reason
    assert "the canary is aborted" in with_canary.reason


def test_plan_is_per_model_and_sorted() -> None:
    plan = make_plan(
        PlanInput(
            {"b": H1, "a": H2},
            frozenset({"c"}),
            True,
            {"a": Observed(H2, True), "d": Observed(H1, True)},
        )
    )
    assert [(p.model, p.move) for p in plan] == [
        ("a", Move.STEADY),
        ("b", Move.DEPLOY),
        ("c", Move.HOLD),
        ("d", Move.PRUNE),
    ]


def test_spec_hash_ignores_description_and_policy_but_not_what_runs() -> None:
    model = load_desired(DirTree(EXAMPLE_REPO)).desired.models["fraud-scorer"]
    base = spec_hash(model, "fraud-scorer:abc")
    assert len(base) == 16
    assert spec_hash(replace(model, description="new words"), "fraud-scorer:abc") == base
    assert spec_hash(replace(model, rollout="fast"), "fraud-scorer:abc") == base
    assert spec_hash(model, "fraud-scorer:def") != base
    assert spec_hash(replace(model, version="9"), "fraud-scorer:abc") != base
    resources = replace(model.resources, replicas=3)
    assert spec_hash(replace(model, resources=resources), "fraud-scorer:abc") != base


def test_fields_added_since_specs_were_deployed_change_no_hash_until_used() -> None:
    """Upgrading mdc restarts no canary: the hashes of the example repository's
    models as mdc 0.1 before issue 19 computed them (python and artifact.mlflow
    did not exist); used, the new fields change the hash."""
    models = load_desired(DirTree(EXAMPLE_REPO)).desired.models
    pinned = {"fraud-scorer": "c1e9dfcabebb6015", "search-ranker": "074ab61d3ed97a00"}
    assert {name: spec_hash(models[name], "pinned:1") for name in pinned} == pinned
    model = models["fraud-scorer"]
    deps = replace(model, python=PythonDependencies(("scikit-learn==1.9.1",)))
    assert spec_hash(deps, "pinned:1") != pinned["fraud-scorer"]
    mlflow = replace(model.artifact, path=None, mlflow=MlflowVersion("fraud-scorer", "7"))
    assert spec_hash(replace(model, artifact=mlflow), "pinned:1") != pinned["fraud-scorer"]


NOW = 1_800_000_000.0
VERDICT = IntervalVerdict(
    NOW - 5,
    Outcome.FAIL,
    20,
    (
        CheckResult("errors", Outcome.FAIL, 0.2, "0.2 > 0.05"),
        CheckResult("latency", Outcome.PASS, 0.01, "ok"),
    ),
)


@pytest.mark.parametrize(
    ("state", "stable", "phase", "step", "weight"),
    [
        (None, None, Phase.PENDING, None, 0),
        (None, Release("1"), Phase.HEALTHY, None, 0),
        (CanaryState(H2, CanaryPhase.WARMING), Release("1"), Phase.PROGRESSING, 1, 0),
        (CanaryState(H2, CanaryPhase.STEPPING, 2, 25), Release("1"), Phase.PROGRESSING, 3, 25),
        (
            CanaryState(H2, CanaryPhase.WAITING_FOR_APPROVAL, 5, 25),
            Release("1"),
            Phase.PAUSED,
            6,
            25,
        ),
        (CanaryState(H2, CanaryPhase.PROMOTED, 7, 100), Release("2"), Phase.HEALTHY, None, 0),
        (CanaryState(H2, CanaryPhase.ROLLED_BACK, 1, 0), Release("1"), Phase.ROLLED_BACK, None, 0),
    ],
)
def test_next_status_follows_the_canary(
    state: CanaryState | None, stable: Release | None, phase: Phase, step: int | None, weight: int
) -> None:
    status = next_status(None, "m", now=NOW, stable=stable, state=state, steps=8)
    assert (status.phase, status.step, status.weight) == (phase, step, weight)
    assert status.phase_since == iso(NOW)
    assert status.history[0].event == str(phase)
    if state is not None:
        assert status.canary_state is not None
        assert status.canary_state["phase"] == str(state.phase)


def test_next_status_records_verdicts_and_only_moves_in_history() -> None:
    state = replace(_canary(H2), verdicts=(VERDICT,))
    first = next_status(None, "m", now=NOW, stable=Release("1"), state=state, steps=4)
    assert [(v.check, v.passed) for v in first.verdicts] == [("errors", False), ("latency", True)]
    again = next_status(first, "m", now=NOW + 10, stable=Release("1"), state=state, steps=4)
    assert again.history == first.history  # nothing moved: no new entry
    assert again.phase_since == first.phase_since
    moved = next_status(
        again, "m", now=NOW + 20, stable=Release("1"), state=replace(state, weight=60), steps=4
    )
    assert len(moved.history) == len(first.history) + 1
    assert "weight 60%" in moved.history[0].message
    event = next_status(
        moved, "m", now=NOW + 30, stable=Release("1"), state=state, event=("Resumed", "x")
    )
    assert event.history[0].event == "Resumed"


def test_next_status_keeps_revisions_apart() -> None:
    status = next_status(None, "m", now=NOW, revision="main@sha1:2", stable=Release("1"))
    assert (status.attempted_revision, status.applied_revision) == ("main@sha1:2", None)
    applied = next_status(status, "m", now=NOW, revision="main@sha1:3", applied=True)
    assert (applied.attempted_revision, applied.applied_revision) == ("main@sha1:3", "main@sha1:3")


def test_next_status_keeps_team_and_pull_request() -> None:
    previous = ModelStatus("m", Phase.HEALTHY, team="fraud", pull_request=7)
    status = next_status(previous, "m", now=NOW, stable=Release("1"))
    assert (status.team, status.pull_request) == ("fraud", 7)
    assert next_status(previous, "m", now=NOW, pull_request=9).pull_request == 9


def _facts(move: Move, **changes: object) -> PhaseFacts:
    base = PhaseFacts(
        move=move,
        canary=None,
        previous=None,
        failed=False,
        has_stable=True,
        stable_ready=True,
        waiting_for_gpus=False,
        replacing=False,
        troubled=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("facts", "phase"),
    [
        (_facts(Move.HOLD), Phase.STALLED),
        (_facts(Move.KEEP, previous=Phase.HEALTHY), Phase.HEALTHY),
        (_facts(Move.PINNED, failed=True), Phase.STALLED),
        (_facts(Move.PINNED), Phase.ROLLED_BACK),
        (_facts(Move.PINNED, has_stable=False), Phase.STALLED),
        (_facts(Move.STEADY), Phase.HEALTHY),
        (_facts(Move.STEADY, troubled=True), Phase.DEGRADED),
        (_facts(Move.STEADY, canary=CanaryPhase.PROMOTED), Phase.HEALTHY),
        (_facts(Move.DEPLOY, failed=True), Phase.STALLED),
        (_facts(Move.START_CANARY, waiting_for_gpus=True), Phase.WAITING),
        (_facts(Move.RE_PLACE, replacing=True), Phase.DEGRADED),
        (_facts(Move.DEPLOY), Phase.HEALTHY),
        (_facts(Move.AWAIT, stable_ready=False), Phase.PENDING),
        (_facts(Move.DEPLOY, has_stable=False), Phase.PENDING),
        (_facts(Move.CONTINUE, canary=CanaryPhase.STEPPING), None),  # the canary's own
    ],
)
def test_the_phase_a_pass_leaves(facts: PhaseFacts, phase: Phase | None) -> None:
    assert phase_for(facts) is phase
