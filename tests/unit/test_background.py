"""Work off the control loop (:mod:`controller.app.background`): a bento build and
a git fetch that hang do not hold the passes up -- the loop goes on ticking and
rolls a failing canary back while they hang -- and what they bring is used once
it lands. The reconciler over the fakes of ``test_reconciler``; the slow parts
are gated by events the test opens."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.adapters.git.source import PollResult
from controller.adapters.packaging import BuildResult, Source
from controller.app.background import Builds, Fetcher
from controller.core.status import Phase
from controller.errors import Reason
from controller.spec.kinds import Model
from controller.spec.tree import Tree
from controller.testing.fakes import FakeBuilder
from tests.unit.test_reconciler import SpecRepo, World, build, bump, deployed, initial_files


@pytest.fixture
def world(tmp_path: Path) -> World:
    repo = SpecRepo(tmp_path / "models.git")
    repo.commit(initial_files(), "the first version")
    return build(tmp_path, repo)


@dataclass
class GatedBuilder(FakeBuilder):
    """Builds once :attr:`gate` is open."""

    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def build(self, model: Model, tree: Tree, source: Source | None = None) -> BuildResult:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().build(model, tree, source)


def test_a_slow_build_runs_off_the_loop_and_its_bento_is_used_once_built(world: World) -> None:
    deployed(world)
    builder = GatedBuilder()
    world.reconciler.moves.builds = Builds(builder, world.reconciler.source.twin())
    try:
        bump(world.repo, "2")
        world.passes(1)
        assert builder.entered.wait(5)
        world.passes(3)  # the build hangs; the passes do not
        assert world.model.phase is Phase.PROGRESSING
        building = [c for c in world.model.conditions if c.reason == Reason.BUILDING]
        assert building
        assert "building the bento of 2" in building[0].message
        assert len(world.runtime.started) == 1  # no canary without its bento
        builder.gate.set()
        for _ in range(50):
            world.passes(1)
            if len(world.runtime.started) == 2:
                break
        assert len(world.runtime.started) == 2  # the canary started on the built bento
        assert builder.builds
        assert all(c.reason != Reason.BUILDING for c in world.model.conditions)
    finally:
        builder.gate.set()
        world.reconciler.moves.builds.close()


class HangingPoller:
    """A poller whose poll hangs until :attr:`gate` opens (git black-holed)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()

    def poll(self, now: float) -> PollResult:
        self.entered.set()
        assert self.gate.wait(20)
        return self.inner.poll(now)  # type: ignore[attr-defined,no-any-return]


def test_a_failing_canary_is_rolled_back_while_a_fetch_hangs(world: World) -> None:
    deployed(world)
    bump(world.repo, "2")
    world.passes(2)
    assert world.model.phase is Phase.PROGRESSING
    poller = HangingPoller(world.reconciler.poller)
    fetcher = Fetcher(poller, world.clock)  # type: ignore[arg-type]
    world.reconciler.polls_elsewhere = True
    fetcher.start()
    try:
        assert poller.entered.wait(5)  # git hangs from now on
        for _ in range(15):
            world.serve(40, canary_errors=0.5)
            world.clock.now += 5
            world.reconciler.run_pass(fetch=False, poll=fetcher.take())
            if world.model.phase is Phase.ROLLED_BACK:
                break
        assert world.model.phase is Phase.ROLLED_BACK
        assert fetcher.polls == 0  # rolled back while the first fetch still hung
        assert world.router.routes["m"].canary is None
    finally:
        poller.gate.set()
        fetcher.stop()
