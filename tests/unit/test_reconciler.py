"""The reconciler, pass by pass, with the fakes of :mod:`controller.testing.fakes`:
a runtime of records, a router whose counters the test fills, a packager that
builds nothing, a reporter that remembers -- and a real spec repository (a bare
git repository in a temporary folder, read and written by the real git source
and status branch, which cost milliseconds). The clock is the test's.

Covers deploy, canary, promotion, rollback, pins, a restart at every phase, a
failing status push and GPU-hours kept when shares are given back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.git.source import Credentials, GitSource, SourcePoller
from controller.app import reconciler as module
from controller.app.daemon import _PassStats, metrics_text
from controller.app.manual import Pins
from controller.app.parts import Parts, Settings
from controller.app.reconciler import Reconciler
from controller.core.plan import Move
from controller.core.status import ModelStatus, Phase, parse_model_status
from controller.errors import ConditionType, Reason, TransientError
from controller.testing.fakes import (
    FakeBuilder,
    FakeReporter,
    FakeRouter,
    FakeRuntime,
    FlakyStatusBranch,
)

T0 = 1_800_000_000.0

POOL = """\
apiVersion: mdc.dev/v1alpha1
kind: GPUPool
metadata: {name: p}
spec:
  sharing: Whole
  nodes:
    - name: n1
      discovery: Declared
      gpus: [{product: NVIDIA A100-SXM4-80GB, memory: 80Gi, count: 2}]
  quotas:
    - {team: t, guaranteed: 2, limit: 2, priority: 100}
"""

POLICY = """\
apiVersion: mdc.dev/v1alpha1
kind: RolloutPolicy
metadata: {name: quick}
spec:
  warmup: {timeout: 1m}
  progressDeadline: 10m
  steps:
    - setWeight: 50
    - analysis: {intervals: 1}
  analysis:
    interval: 10s
    failureLimit: 0
    minRequests: 10
    checks:
      - {name: errors, metric: errorRate, max: 0.05}
"""

PAUSING = POLICY.replace("    - setWeight: 50\n", "    - setWeight: 50\n    - pause: {}\n")


def model_yaml(version: str) -> str:
    return f"""\
apiVersion: mdc.dev/v1alpha1
kind: Model
metadata: {{name: m}}
spec:
  version: "{version}"
  team: t
  artifact: {{path: artifacts/m-{version}.json}}
  service: services/m:Svc
  resources: {{gpu: 1}}
  pool: p
  rollout: quick
"""


class SpecRepo:
    """A bare repository standing in for the team's spec repository."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.repo = pygit2.init_repository(str(path), bare=True)

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        tip = self.repo.references.get("refs/heads/main")
        parents = [tip.target] if tip is not None else []
        index = pygit2.Index()
        if tip is not None:
            index.read_tree(self.repo[tip.target].tree)
        for path, text in files.items():
            blob = self.repo.create_blob(text.encode())
            index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))
        tree = index.write_tree(self.repo)
        who = pygit2.Signature("dev", "dev@example.com")
        return str(self.repo.create_commit("refs/heads/main", who, who, message, tree, parents))

    def status(self, model: str = "m") -> ModelStatus:
        """What the status branch on the remote says about ``model``."""
        ref = self.repo.references["refs/heads/mdc/status"]
        blob = self.repo[ref.target].tree[f"models/{model}.yaml"]
        return parse_model_status(f"models/{model}.yaml", self.repo[blob.id].data)


def initial_files(version: str = "1", policy: str = POLICY) -> dict[str, str]:
    return {
        "pools/p.yaml": POOL,
        "rollouts/quick.yaml": policy,
        "models/m.yaml": model_yaml(version),
        f"artifacts/m-{version}.json": '{"w": 1}',
        "services/m.py": "class Svc: ...\n",
    }


def bump(repo: SpecRepo, version: str) -> str:
    return repo.commit(
        {"models/m.yaml": model_yaml(version), f"artifacts/m-{version}.json": f'{{"w": {version}}}'}
    )


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """One controller over fakes, and what outlives it (repo, state, releases)."""

    tmp: Path
    repo: SpecRepo
    runtime: FakeRuntime
    router: FakeRouter
    reporter: FakeReporter
    status: FlakyStatusBranch
    reconciler: Reconciler
    clock: Clock

    @property
    def now(self) -> float:
        return self.clock.now

    def passes(self, count: int = 1, step: float = 1.0) -> None:
        for _ in range(count):
            self.clock.now += step
            self.reconciler.run_pass()

    def serve(self, requests: int = 40, **errors: float) -> None:
        self.router.serve("m", requests, **errors)

    @property
    def model(self) -> ModelStatus:
        return self.reconciler.statuses["m"]

    def restart(self) -> World:
        """A new controller over the same repo, state directory and (adopted) releases."""
        self.reconciler.close()
        return build(self.tmp, self.repo, FakeRuntime(self.runtime.releases), self.clock)


def build(
    tmp: Path,
    repo: SpecRepo,
    runtime: FakeRuntime | None = None,
    clock: Clock | None = None,
    router: FakeRouter | None = None,
) -> World:
    """A controller over fakes; ``router`` given: the router process that outlived
    the last controller."""
    state = tmp / "state"
    clock = clock or Clock()
    source = GitSource(str(repo.path), "main", state, Credentials())
    status = FlakyStatusBranch(source, "mdc/status")
    runtime, router, reporter = runtime or FakeRuntime(), router or FakeRouter(), FakeReporter()
    parts = Parts(
        source=source,
        poller=SourcePoller(source, interval=1.0),
        status=status,
        packager=FakeBuilder(),
        runtime=runtime,
        router=router,
        reporter=reporter,
        clock=clock,
    )
    reconciler = Reconciler(parts, Settings(state))
    return World(tmp, repo, runtime, router, reporter, status, reconciler, clock)


@pytest.fixture
def world(tmp_path: Path) -> World:
    repo = SpecRepo(tmp_path / "models.git")
    repo.commit(initial_files(), "the first version")
    return build(tmp_path, repo)


def deployed(world: World) -> World:
    world.passes(2)  # deploy, then the release is ready
    assert world.model.phase is Phase.HEALTHY
    return world


def promoted(world: World) -> World:
    deployed(world)
    bump(world.repo, "2")
    world.passes(2)  # start the canary; it is ready and takes its weight
    for _ in range(15):
        world.serve(40)
        world.passes(1, step=5)
        if world.model.phase is Phase.HEALTHY:
            break
    return world


def rolled_back(world: World) -> World:
    deployed(world)
    bump(world.repo, "2")
    world.passes(2)
    for _ in range(15):
        world.serve(40, canary_errors=0.5)
        world.passes(1, step=5)
        if world.model.phase is Phase.ROLLED_BACK:
            break
    return world


# -- deploy, canary, promotion, rollback -----------------------------------------------


def test_a_first_pass_deploys_and_the_next_routes_to_the_ready_release(world: World) -> None:
    world.passes(1)
    assert world.model.phase is Phase.PENDING  # started, not yet ready
    assert world.model.stable is not None
    assert world.runtime.started == [world.model.stable.name]
    assert world.router.routes["m"].stable is None  # no traffic before it is ready
    assert world.model.gpus
    assert sum(h.share for h in world.model.gpus) == 1
    world.passes(1)
    assert world.model.phase is Phase.HEALTHY
    stable = world.runtime.releases[world.runtime.started[0]]
    assert world.router.routes["m"].stable == stable.address
    assert world.router.routes["m"].canary is None
    assert world.repo.status().phase is Phase.HEALTHY  # pushed to the remote
    world.passes(3)
    assert len(world.runtime.started) == 1  # steady: nothing started again


def test_a_healthy_canary_is_promoted_and_the_old_stable_stopped(world: World) -> None:
    promoted(world)
    assert world.model.phase is Phase.HEALTHY
    assert world.model.stable is not None
    assert world.model.stable.version == "2"
    assert world.model.canary is None or world.model.canary.version != "1"
    first, second = world.runtime.started
    assert first in world.runtime.stopped
    assert world.runtime.running() == {second}
    route = world.router.routes["m"]
    assert route.stable == world.runtime.releases[second].address
    assert route.canary is None
    # the canary walked its weight before it took everything
    weights = [c.weight for m, c in world.router.configured if c.canary is not None]
    assert 50 in weights
    # one GPU held: the canary's booking became the stable's
    assert sum(h.share for h in world.model.gpus) == 1
    assert {h.release for h in world.model.gpus} == {"stable"}
    assert world.reconciler.verdicts.get(("m", "pass"), 0) >= 1


def test_a_failing_canary_is_rolled_back_pinned_and_not_retried(world: World) -> None:
    rolled_back(world)
    assert world.model.phase is Phase.ROLLED_BACK
    first, second = world.runtime.started
    assert second in world.runtime.stopped
    assert first not in world.runtime.stopped
    assert world.router.routes["m"].canary is None
    assert world.router.routes["m"].stable == world.runtime.releases[first].address
    pinned = Pins(world.tmp / "state").get("m")
    assert pinned is not None
    assert {h.release for h in world.model.gpus} == {"stable"}  # the canary's GPU is back
    world.passes(5)
    assert len(world.runtime.started) == 2  # pinned: no new canary
    assert world.reconciler.last is not None
    assert world.reconciler.last.plan[0].move is Move.PINNED


def test_a_retry_unpins_and_the_same_spec_is_tried_again(world: World) -> None:
    rolled_back(world)
    assert Pins(world.tmp / "state").unpin("m")  # what `mdc retry m` does
    world.passes(2)
    assert len(world.runtime.started) == 3
    assert world.model.phase is Phase.PROGRESSING


def test_a_build_failure_stalls_the_model_until_the_spec_changes(world: World) -> None:
    deployed(world)
    builder = world.reconciler.parts.packager
    assert isinstance(builder, FakeBuilder)
    builder.failures["m"] = "the service module does not import"
    bump(world.repo, "2")
    world.passes(3)
    assert world.model.phase is Phase.STALLED
    assert any(c.reason == Reason.BUILD_FAILED for c in world.model.conditions)
    assert len(world.runtime.started) == 1  # the stable keeps serving
    assert world.router.routes["m"].canary is None
    builder.failures.clear()
    bump(world.repo, "3")
    world.passes(2)
    assert world.model.phase is Phase.PROGRESSING


# -- a restart at every phase ------------------------------------------------------------


def at_deploying(world: World) -> World:
    world.passes(1)
    return world


def at_warming(world: World) -> World:
    deployed(world)
    bump(world.repo, "2")
    world.passes(1)
    return world


def at_weight(world: World) -> World:
    deployed(world)
    bump(world.repo, "2")
    world.passes(2)
    world.serve(40)
    world.passes(1, step=5)
    return world


def at_pause(world: World) -> World:
    world.repo.commit({"rollouts/quick.yaml": PAUSING})
    deployed(world)
    bump(world.repo, "2")
    world.passes(4)
    assert world.model.phase is Phase.PAUSED
    return world


def _seen(world: World) -> tuple[object, ...]:
    """What a pass leaves that a restart must not change."""
    status = world.model
    canary = status.canary_state or {}
    route = world.router.routes["m"]
    return (
        status.phase,
        canary.get("phase"),
        canary.get("step"),
        canary.get("weight"),
        canary.get("failures"),
        sorted((h.release, h.gpu, h.share, h.since) for h in status.gpus),
        route.weight if route.canary else 0,
        status.stable.name if status.stable else None,
    )


@pytest.mark.parametrize(
    ("arrive", "phase"),
    [
        (at_deploying, Phase.HEALTHY),  # the release it started is adopted, then ready
        (at_warming, Phase.PROGRESSING),
        (at_weight, Phase.PROGRESSING),
        (at_pause, Phase.PAUSED),
        (promoted, Phase.HEALTHY),
        (rolled_back, Phase.ROLLED_BACK),
    ],
    ids=["deploying", "warming", "at-weight", "paused", "promoted", "rolled-back"],
)
def test_a_restarted_controller_resumes_where_it_was(
    tmp_path: Path, arrive: Callable[[World], World], phase: Phase
) -> None:
    """Two controllers walk the same way; one is restarted before the last pass.
    That pass leaves both in the same place: same phase, step, weight, failed
    intervals, GPUs (and since when), routes -- and nothing started again."""
    worlds = []
    for name in ("kept", "restarted"):
        repo = SpecRepo(tmp_path / name / "models.git")
        repo.commit(initial_files(), "the first version")
        worlds.append(arrive(build(tmp_path / name, repo)))
    kept, restarted = worlds
    started = set(restarted.runtime.started)
    again = restarted.restart()
    kept.passes(1)
    again.passes(1)
    assert again.model.phase is phase
    assert again.model.gpus  # every case holds GPUs
    assert _seen(again) == _seen(kept)
    assert again.runtime.started == []  # everything adopted, nothing started twice
    assert again.runtime.running() <= started


# -- status pushes and GPU-hours ----------------------------------------------------------


def test_a_failing_status_push_is_retried_visible_and_never_dropped(world: World) -> None:
    deployed(world)
    world.status.broken = "the remote hung up"
    bump(world.repo, "2")
    world.passes(3)
    condition = next(c for c in world.model.conditions if c.type == ConditionType.STATUS_WRITTEN)
    assert not condition.status
    assert condition.reason == Reason.STATUS_PUSH_FAILED
    assert "the remote hung up" in condition.message
    assert world.repo.status().phase is Phase.HEALTHY  # the remote still has the old news
    assert world.status.pending() > 0
    metrics = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics_text(world.reconciler, _PassStats()))
        for sample in family.samples
    }
    assert metrics["mdc_status_push_failures_total"] >= 1
    assert metrics["mdc_status_commits_pending"] == world.status.pending()
    # the reporter heard of every change at once, pushed or not
    assert world.reporter.statuses[-1][1].phase is Phase.PROGRESSING
    attempts = world.status.attempts
    backing_off = world.reconciler.writes.retry_at - world.now
    assert backing_off > 0
    world.passes(1, step=backing_off / 2)  # not every pass hammers the remote
    assert world.status.attempts == attempts
    world.status.broken = None
    world.passes(2, step=120)
    assert world.status.pending() == 0
    assert world.repo.status().phase is Phase.PROGRESSING
    assert all(c.type != ConditionType.STATUS_WRITTEN for c in world.repo.status().conditions)
    assert world.reconciler.writes.total_failures >= 1


def test_gpu_hours_given_back_are_kept(world: World) -> None:
    deployed(world)
    world.clock.now += 3600  # the first version serves an hour on one GPU
    promoted(world)
    hours = world.model.gpu_hours
    assert hours.get("stable", 0) == pytest.approx(1.0, abs=0.05)
    again = world.restart()
    again.passes(1)
    assert again.model.gpu_hours.get("stable", 0) == pytest.approx(hours["stable"], abs=1e-3)


# -- faults that show ------------------------------------------------------------------


def test_git_unreachable_is_a_condition_on_every_model_until_it_is_back(world: World) -> None:
    deployed(world)
    moved = world.repo.path.with_name("moved.git")
    world.repo.path.rename(moved)  # the remote is gone
    world.passes(2)
    fault = next(c for c in world.model.conditions if c.type == ConditionType.GIT_READ)
    assert not fault.status
    assert fault.reason == Reason.GIT_UNAVAILABLE
    assert "what runs is kept" in fault.message
    assert world.model.phase is Phase.HEALTHY  # the stable keeps serving
    moved.rename(world.repo.path)
    world.passes(2, step=600)  # past the poll's back-off
    assert all(c.type != ConditionType.GIT_READ for c in world.model.conditions)


def test_a_status_that_cannot_be_saved_is_a_condition_and_is_saved_later(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed(world)
    real_commit = world.status.commit

    def full(*args: object, **kwargs: object) -> str | None:
        raise TransientError("No space left on device", reason=Reason.STATE_NOT_WRITABLE)

    monkeypatch.setattr(world.status, "commit", full)
    bump(world.repo, "2")
    world.passes(2)  # the canary starts although its status cannot be written
    assert len(world.runtime.started) == 2
    assert world.repo.status().phase is Phase.HEALTHY  # nothing new reached the branch
    assert world.model.phase is Phase.PROGRESSING  # what the API shows is what is true
    fault = world.reconciler.state_fault
    assert fault is not None
    assert fault.reason == Reason.STATE_NOT_WRITABLE
    monkeypatch.setattr(world.status, "commit", real_commit)
    world.passes(2)
    assert world.repo.status().phase is Phase.PROGRESSING  # saved once the disk had room
    assert world.reconciler.state_fault is None


def test_a_force_push_is_recorded_on_the_status_branch_and_told(world: World) -> None:
    deployed(world)
    first = world.repo.repo.references["refs/heads/main"].target
    bump(world.repo, "2")
    world.passes(1)
    world.repo.repo.references["refs/heads/main"].set_target(first)  # history rewritten
    world.repo.commit({"README": "rewritten\n"}, "rewritten history")
    world.passes(1, step=5)
    assert len(world.reporter.force_pushes) == 1
    previous, current = world.reporter.force_pushes[0]
    ref = world.repo.repo.references["refs/heads/mdc/status"]
    messages = [c.message for c in world.repo.repo.walk(ref.target)]
    message = next(m for m in messages if m.startswith("force-push on main"))
    branch_file = world.repo.repo[ref.target].tree["branches/main.yaml"]
    assert previous[:12] in message
    assert current[:12] in message
    assert current in world.repo.repo[branch_file.id].data.decode()


# -- replicas -------------------------------------------------------------------------------


def replicated(world: World) -> World:
    """``m`` with ``replicas: 2`` on a pool of four GPUs, deployed."""
    world.repo.commit(
        {
            "pools/p.yaml": POOL.replace("count: 2", "count: 4").replace(
                "guaranteed: 2, limit: 2", "guaranteed: 4, limit: 4"
            ),
            "models/m.yaml": model_yaml("1").replace("{gpu: 1}", "{gpu: 1, replicas: 2}"),
        }
    )
    world.passes(2)
    assert world.model.phase is Phase.HEALTHY
    return world


def test_replicas_run_as_releases_of_their_own_each_on_its_own_gpu(world: World) -> None:
    replicated(world)
    first, second = world.runtime.started
    assert second == f"{first}~1"
    gpus = [world.runtime.releases[n].spec.gpus for n in (first, second)]
    assert len(set(gpus)) == 2  # each replica its own GPU
    assert sorted(h.replica for h in world.model.gpus) == [0, 1]
    route = world.router.routes["m"]
    addresses = {world.runtime.releases[n].address for n in (first, second)}
    assert set(route.backends("stable")) == addresses


def test_a_lost_replica_leaves_the_model_serving_and_is_started_again(world: World) -> None:
    replicated(world)
    first, second = world.runtime.started
    world.runtime.fail(second, "killed -9")
    world.passes(1)
    route = world.router.routes["m"]
    assert route.backends("stable") == (world.runtime.releases[first].address,)  # serving
    condition = next(c for c in world.model.conditions if c.reason == Reason.REPLICAS_NOT_READY)
    assert "1 of 2 replicas" in condition.message
    assert world.runtime.started.count(second) == 2  # started again on its GPUs
    world.passes(1)
    assert len(world.router.routes["m"].backends("stable")) == 2
    assert all(c.reason != Reason.REPLICAS_NOT_READY for c in world.model.conditions)


def test_a_replicated_canary_is_promoted_with_all_its_replicas(world: World) -> None:
    replicated(world)
    old = set(world.runtime.started)
    world.repo.commit(
        {
            "models/m.yaml": model_yaml("2").replace("{gpu: 1}", "{gpu: 1, replicas: 2}"),
            "artifacts/m-2.json": '{"w": 2}',
        }
    )
    world.passes(2)
    for _ in range(15):
        world.serve(40)
        world.passes(1, step=5)
        if world.model.phase is Phase.HEALTHY:
            break
    assert world.model.stable is not None
    assert world.model.stable.version == "2"
    new = world.runtime.running()
    assert len(new) == 2
    assert not new & old  # both old replicas stopped
    assert len(world.router.routes["m"].backends("stable")) == 2
    assert sorted(h.replica for h in world.model.gpus) == [0, 1]


def test_reports_that_github_did_not_take_are_a_condition_and_a_metric(world: World) -> None:
    deployed(world)
    world.reporter.failing = ("GitHubUnavailable", "GitHub reports of 1 model(s) kept for later")
    world.passes(1, step=5)
    fault = next(c for c in world.model.conditions if c.type == ConditionType.REPORTED)
    assert (fault.status, fault.reason) == (False, "GitHubUnavailable")
    metrics = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics_text(world.reconciler, _PassStats()))
        for sample in family.samples
    }
    key = ("mdc_controller_fault", (("reason", "GitHubUnavailable"), ("type", "Reported")))
    assert metrics[key] == 1
    world.reporter.failing = None
    world.passes(1, step=5)
    assert all(c.type != ConditionType.REPORTED for c in world.model.conditions)


def test_a_canary_that_answers_nothing_while_requests_wait_is_rolled_back(world: World) -> None:
    """A canary process that hangs (its disk is full, say) fails no request the
    counters see: requests wait on it. More requests waiting on it than it answered
    in a whole analysis interval (and at least minRequests), or none answered for two
    intervals while some wait, is a lost canary; a few slow requests are not."""
    deployed(world)
    bump(world.repo, "2")
    world.passes(2)
    assert world.model.weight
    canary = world.reconciler.runs["m"].driver
    assert canary is not None
    assert canary.canary is not None
    address = world.runtime.releases[canary.canary.name].address
    world.router.queued = {address: 5}  # fewer than minRequests, one interval: not yet
    world.serve(40, canary_share_hangs=True)
    world.passes(1, step=10)
    assert world.model.phase is Phase.PROGRESSING
    world.router.queued = {address: 12}  # sent, never answered (minRequests: 10)
    for _ in range(4):
        world.serve(40, canary_share_hangs=True)
        world.passes(1, step=5)
        if world.model.phase is Phase.ROLLED_BACK:
            break
    assert world.model.phase is Phase.ROLLED_BACK
    reason = (world.model.canary_state or {}).get("reason", "")
    assert "it answered 0 requests in" in reason
    assert "while 12 wait on it" in reason
    # what waits on a canary that answers nothing is never answered: stopped at once
    assert (canary.canary.name, 0.0) in world.runtime.drains


def test_a_canary_silent_for_two_intervals_while_a_request_waits_is_rolled_back(
    world: World,
) -> None:
    """One client, one request at a time: a hanging canary holds one request. None
    answered for two analysis intervals in a row while it waits: lost."""
    deployed(world)
    bump(world.repo, "2")
    world.passes(2)
    driver = world.reconciler.runs["m"].driver
    assert driver is not None
    assert driver.canary is not None
    world.router.queued = {world.runtime.releases[driver.canary.name].address: 1}
    phases = []
    for _ in range(3):
        world.serve(40, canary_share_hangs=True)
        world.passes(1, step=10)
        phases.append(world.model.phase)
    assert phases[0] is Phase.PROGRESSING  # one silent interval is not enough
    assert Phase.ROLLED_BACK in phases
    reason = (world.model.canary_state or {}).get("reason", "")
    assert "answered no request for two analysis intervals" in reason
    assert (driver.canary.name, 0.0) in world.runtime.drains  # not drained: stopped at once


@pytest.mark.parametrize(
    ("oldest", "lost"),
    [
        (0.5, False),  # slow, not hung
        (8.0, False),  # under the analysis interval (10s)
        (12.0, True),  # a whole interval and ten times the stable's p99
    ],
)
def test_a_request_that_waited_a_whole_interval_on_the_canary_loses_it_at_once(
    world: World, oldest: float, lost: bool
) -> None:
    """Found by bench_faults --part disk: a canary hanging on a full disk was rolled
    back 20 s after a failing one would have been. The router tells how long the
    oldest request has waited on each backend; past an analysis interval (and ten
    times the stable's p99) the canary is lost in that tick, mid-interval."""
    deployed(world)
    bump(world.repo, "2")
    world.passes(2)
    assert world.model.weight
    driver = world.reconciler.runs["m"].driver
    assert driver is not None
    assert driver.canary is not None
    world.router.oldest = {world.runtime.releases[driver.canary.name].address: oldest}
    world.serve(40)
    world.passes(1, step=0.5)  # well inside an analysis interval
    assert (world.model.phase is Phase.ROLLED_BACK) is lost
    if lost:
        reason = (world.model.canary_state or {}).get("reason", "")
        assert f"a request has waited {oldest:.1f}s on it" in reason
        # what waits on a hung canary is never answered: stopped at once, not drained
        assert (driver.canary.name, 0.0) in world.runtime.drains


SEQUENTIAL = POLICY.replace(
    "    failureLimit: 0\n",
    "    judge: sequential\n    errorRate: {maxIncrease: 5%}\n    failureLimit: 0\n",
).replace(
    "    minRequests: 10\n    checks:\n      - {name: errors, metric: errorRate, max: 0.05}\n",
    "    minRequests: 10\n",
)


def test_a_quiet_canary_under_the_sequential_judge_waits_instead_of_failing(
    world: World,
) -> None:
    """Traffic stops before the judge can decide, for longer than the progress
    deadline. The canary is not rolled back and not Degraded: it is Progressing,
    with a Judged condition saying it decides (then waits for traffic), and how
    long a verdict needs."""
    world.repo.commit({"rollouts/quick.yaml": SEQUENTIAL})
    deployed(world)
    bump(world.repo, "2")
    world.passes(2)
    assert world.model.weight == 50
    for _ in range(3):  # ten canary requests an interval: a verdict in a minute or two
        world.serve(20)
        world.passes(1, step=10)
    assert world.model.phase is Phase.PROGRESSING
    (judged,) = [c for c in world.model.conditions if c.type == ConditionType.JUDGED]
    assert judged.reason == Reason.DECIDING
    assert "of the way to a pass" in judged.message
    assert "more at" in judged.message  # how long, at this traffic
    for _ in range(62):  # then no traffic, past the 10m deadline
        world.serve(0)
        world.passes(1, step=10)
    assert world.model.phase is Phase.PROGRESSING
    (judged,) = [c for c in world.model.conditions if c.type == ConditionType.JUDGED]
    assert judged.reason == Reason.WAITING_FOR_TRAFFIC
    assert "passed with the evidence neutral" in judged.message
    for _ in range(40):  # traffic at last: decided, promoted
        world.serve(400)
        world.passes(1, step=10)
        if world.model.phase is Phase.HEALTHY:
            break
    assert world.model.phase is Phase.HEALTHY
    assert world.model.stable is not None
    assert world.model.stable.version == "2"
    assert not [c for c in world.model.conditions if c.type == ConditionType.JUDGED]


def test_a_canary_whose_verdict_needs_longer_than_its_deadline_says_it_will_wait(
    world: World,
) -> None:
    """One canary request an interval: a verdict needs about 90 requests, past the
    10m progress deadline. Said at once, before the deadline."""
    world.repo.commit({"rollouts/quick.yaml": SEQUENTIAL})
    deployed(world)
    bump(world.repo, "2")
    world.passes(2)
    for _ in range(3):
        world.serve(2)
        world.passes(1, step=10)
    assert world.model.phase is Phase.PROGRESSING
    (judged,) = [c for c in world.model.conditions if c.type == ConditionType.JUDGED]
    assert judged.reason == Reason.WAITING_FOR_TRAFFIC
    assert "past the 600s progress deadline: the canary will wait, not fail" in judged.message


def test_a_spec_that_cannot_be_hashed_is_held_with_its_reason_not_pruned(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever one model's spec does to the code that hashes it, the pass goes on:
    the model is held (what runs keeps running) with a SpecInvalid condition that
    says why, never taken for removed from git and pruned."""
    deployed(world)
    running = world.model.stable
    assert running is not None
    real = module.planned_bento_tag

    def hostile(model: object, tree: object) -> str:
        if getattr(model, "version", "") == "2":
            raise RecursionError("maximum recursion depth exceeded")
        return real(model, tree)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "planned_bento_tag", hostile)
    bump(world.repo, "2")
    world.passes(2)
    assert world.reconciler.last is not None
    assert world.reconciler.last.failed == ()  # the pass itself went through
    assert world.model.stable == running  # held: still the release that ran
    assert running.name is not None
    assert world.runtime.releases[running.name].state.value == "ready"
    reasons = [
        (c.reason, c.message) for c in world.model.conditions if c.type == ConditionType.SPEC_VALID
    ]
    assert (Reason.SPEC_INVALID, "RecursionError: maximum recursion depth exceeded") in reasons


def test_a_status_that_cannot_be_built_does_not_stop_the_pass(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed(world)
    before = world.model
    calls = {"n": 0}
    real = world.reconciler._summarize

    def broken(*args: object, **kwargs: object) -> ModelStatus:
        calls["n"] += 1
        raise ValueError("a value nothing caught")

    monkeypatch.setattr(world.reconciler, "_summarize", broken)
    world.passes(1)
    assert calls["n"] == 1
    assert world.model == before  # kept, not lost
    monkeypatch.setattr(world.reconciler, "_summarize", real)
    world.passes(1)
    assert world.model.phase is Phase.HEALTHY
