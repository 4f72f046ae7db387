"""A property over restarts: whatever the order of passes, traffic, spec changes,
lost releases, restarts and crashes at any named point, no two running releases
hold the same whole GPU, and after every pass each running release of a model
is booked on exactly the GPUs it runs on (and nothing else is booked), and
something serves at every moment once the model has served (until its only
release is lost).

Hypothesis draws the sequences; the controller is the reconciler over the fakes
of ``test_reconciler`` (a real spec repository), restarted over the same state
directory, router and releases (:class:`tests.unit.test_crash_points.Case`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.app.crashpoints import CRASH_ENV, MODE_ENV, POINTS, SimulatedCrash
from controller.core.allocation import ReleaseKind
from controller.testing.fakes import FakeRuntime
from tests.unit.test_crash_points import Case, new_case
from tests.unit.test_reconciler import bump

OPS = st.one_of(
    st.sampled_from(["pass", "good", "bad", "bump", "restart", "lose-stable"]),
    st.sampled_from([f"crash:{p}" for p in POINTS]),
)


def _running_gpus(runtime: FakeRuntime) -> dict[str, set[str]]:
    return {name: set(runtime.releases[name].spec.gpus) for name in runtime.running()}


def _check(case: Case) -> None:
    runtime = case.world.runtime
    held: dict[str, str] = {}
    for name, gpus in _running_gpus(runtime).items():
        for gpu in gpus:
            assert gpu not in held, f"GPU {gpu} is held by {held[gpu]} and {name}"
            held[gpu] = name
    reconciler = case.world.reconciler
    run = reconciler.runs.get("m")
    if run is None:
        return
    canary = run.driver.canary if run.driver is not None else None
    if canary is None and run.resume is not None:
        canary = run.resume[0]
    for kind, spec in ((ReleaseKind.STABLE, run.stable), (ReleaseKind.CANARY, canary)):
        allocation = reconciler.book.allocation("m", kind)
        booked = {s.gpu for r in allocation.replicas for s in r} if allocation else set()
        release = runtime.releases.get(spec.name) if spec is not None else None
        alive = release is not None and release.spec.name in runtime.running()
        if alive and release is not None:
            assert booked == set(release.spec.gpus), (kind, booked, release.spec.gpus)
        else:
            assert not booked or kind is ReleaseKind.STABLE, (kind, booked)


def _step(case: Case, op: str) -> None:
    world = case.world
    if op == "pass":
        world.passes(1, step=5)
    elif op in ("good", "bad"):
        world.serve(40, canary_errors=0.5 if op == "bad" else 0.0)
        world.passes(1, step=5)
    elif op == "bump":
        version = str(len(world.runtime.started) + 2)
        bump(world.repo, version)
        world.passes(1)
    elif op == "restart":
        case.restart()
        case.world.passes(1)
    elif op == "lose-stable":
        status = world.reconciler.statuses.get("m")
        name = status.stable.name if status is not None and status.stable else None
        if name and name in world.runtime.running():
            case.witness.armed = False  # its only release is lost: nothing serves a while
            world.runtime.fail(name, "node lost: n1 did not answer")
        world.passes(1)
    elif op.startswith("crash:"):
        os.environ[CRASH_ENV] = op.removeprefix("crash:")
        bad = op.startswith("crash:rollback")
        try:
            for _ in range(8):  # walk until the point is reached
                case.world.serve(40, canary_errors=0.5 if bad else 0.0)
                case.world.passes(1, step=5)
        except SimulatedCrash:
            os.environ.pop(CRASH_ENV, None)
            case.restart()
            case.world.passes(1)
        finally:
            os.environ.pop(CRASH_ENV, None)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(OPS, min_size=3, max_size=14))
def test_no_gpu_is_ever_held_twice_and_bookings_follow_what_runs(ops: list[str]) -> None:
    previous = os.environ.get(MODE_ENV)
    os.environ[MODE_ENV] = "raise"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            case = new_case(Path(tmp))
            case.world.passes(2)
            for op in ops:
                _step(case, op)
                _check(case)
                assert not case.witness.violations, case.witness.violations
    finally:
        os.environ.pop(CRASH_ENV, None)
        if previous is None:
            os.environ.pop(MODE_ENV, None)
        else:
            os.environ[MODE_ENV] = previous
