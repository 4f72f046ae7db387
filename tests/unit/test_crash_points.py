"""The crash-point suite: the controller dies at every named point of a
deploy, a canary start, a promotion, a rollback, an abort, a re-placement and
the status writing (:data:`controller.app.crashpoints.POINTS`), and a new
controller starts over the same repository, state directory, router and
releases (they outlive it, as the router's own process and the releases do).

After the restart and a few passes the invariants hold:

* something serves at every moment: from the first time the model served, every
  change of route and every stopped release leaves a running release with a
  share of the traffic (a re-placement excepted: its release was lost);
* a decided promotion is never judged again and a rolled-back canary never
  takes traffic again;
* the GPU bookings in the status match the releases that run, and no GPU is
  held by two releases;
* the status names what runs and the route sends traffic to it;
* nothing is started twice and nothing is left half done (no intent left).

The scenarios use the fakes of the reconciler's unit tests (a real spec
repository, a fake runtime and router); the clock is the test's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.adapters.runtime.base import Release, ReleaseSpec, State
from controller.app.crashpoints import CRASH_ENV, MODE_ENV, POINTS, SimulatedCrash
from controller.app.intents import Journal
from controller.app.manual import Pins
from controller.core.status import Phase
from controller.core.traffic import RouteConfig
from controller.testing.fakes import FakeRouter, FakeRuntime
from tests.unit.test_reconciler import (
    Clock,
    SpecRepo,
    World,
    build,
    bump,
    initial_files,
)


@dataclass
class Witness:
    """Checks, after every route change and every stop, that something serves."""

    runtime: FakeRuntime | None = None
    router: FakeRouter | None = None
    served: bool = False
    armed: bool = True
    violations: list[str] = field(default_factory=list)
    never_again: set[str] = field(default_factory=set)  # addresses that must get no traffic

    def check(self, what: str) -> None:
        if self.runtime is None or self.router is None:
            return
        route = self.router.routes.get("m")
        if route is None:
            return
        shares = _shares(route)
        for address in self.never_again & {a for a, share in shares.items() if share > 0}:
            self.violations.append(f"{what}: {address} takes traffic again")
        live = {
            r.address
            for r in self.runtime.releases.values()
            if r.state in (State.READY, State.STARTING, State.UNHEALTHY)
        }
        serving = any(share > 0 and address in live for address, share in shares.items())
        if serving:
            self.served = True
        elif self.served and self.armed:
            self.violations.append(f"{what}: nothing serves ({route})")


def _shares(route: RouteConfig) -> dict[str, int]:
    shares: dict[str, int] = {}
    if route.canary is not None:
        shares[route.canary] = 100 if route.stable is None else route.weight
    if route.stable is not None:
        to_canary = shares.get(route.canary, 0) if route.canary is not None else 0
        shares[route.stable] = shares.get(route.stable, 0) + 100 - to_canary
    return shares


class WatchedRouter(FakeRouter):
    def __init__(self, witness: Witness) -> None:
        super().__init__()
        self.witness = witness

    def configure(self, model: str, config: RouteConfig) -> None:
        super().configure(model, config)
        self.witness.check(f"configure {config}")


class WatchedRuntime(FakeRuntime):
    def __init__(self, witness: Witness, releases: dict[str, Release] | None = None) -> None:
        super().__init__(releases)
        self.witness = witness

    def stop(self, name: str, drain: float = 10.0) -> Release | None:
        stopped = super().stop(name, drain)
        self.witness.check(f"stop {name}")
        return stopped


@dataclass
class Case:
    """A controller walking one scenario towards a crash point."""

    tmp: Path
    witness: Witness
    world: World
    clock: Clock

    def restart(self) -> None:
        """A new controller: same repo, state directory, router and releases."""
        runtime = WatchedRuntime(self.witness, dict(self.world.runtime.releases))
        self.witness.runtime = runtime
        router = self.world.router
        self.world = build(self.tmp, self.world.repo, runtime, self.clock, router)


def new_case(tmp: Path) -> Case:
    repo = SpecRepo(tmp / "models.git")
    repo.commit(initial_files(), "the first version")
    witness = Witness()
    runtime, router = WatchedRuntime(witness), WatchedRouter(witness)
    witness.runtime, witness.router = runtime, router
    clock = Clock()
    return Case(tmp, witness, build(tmp, repo, runtime, clock, router), clock)


# -- the scenarios: each walks until it has passed every point of its move -----------


def deploy(case: Case) -> None:
    case.world.passes(3)


def canary(case: Case) -> None:
    case.world.passes(2)
    bump(case.world.repo, "2")
    case.world.passes(2)


def promote_rest(case: Case) -> None:
    for _ in range(10):
        case.world.serve(40)
        case.world.passes(1, step=5)


def rollback(case: Case) -> None:
    canary(case)
    for _ in range(10):
        case.world.serve(40, canary_errors=0.5)
        case.world.passes(1, step=5)


def abort(case: Case) -> None:
    canary(case)
    case.world.serve(40)
    case.world.passes(1, step=5)
    bump(case.world.repo, "3")  # the spec changes during the canary
    case.world.passes(2)


def replace(case: Case) -> None:
    case.world.passes(2)
    stable = case.world.model.stable
    assert stable is not None
    assert stable.name
    case.witness.armed = False  # its only release is lost: nothing can serve for a while
    case.world.runtime.fail(stable.name, "node lost: n1 did not answer")
    case.world.passes(3)


#: move -> (what is done before the crash point is armed, the walk that passes it)
SCENARIO: dict[str, tuple[Callable[[Case], None] | None, Callable[[Case], None]]] = {
    "deploy": (None, deploy),
    "canary": (None, canary),
    "promote": (canary, promote_rest),
    "rollback": (None, rollback),
    "abort": (None, abort),
    "replace": (None, replace),
    "status": (canary, promote_rest),  # a pass in the middle of a canary
}


def settle(case: Case, errors: float) -> None:
    """Passes after the restart, with traffic, until the model stops moving."""
    for _ in range(20):
        case.world.serve(40, canary_errors=errors)
        case.world.passes(1, step=5)
        if case.world.model.phase in (Phase.HEALTHY, Phase.ROLLED_BACK):
            return


@pytest.mark.parametrize("point", POINTS)
def test_a_controller_killed_at_any_point_finishes_the_move(
    tmp_path: Path, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    move = point.split(".", 1)[0]
    case = new_case(tmp_path)
    monkeypatch.setenv(MODE_ENV, "raise")
    prepare, walk = SCENARIO[move]
    if prepare is not None:
        prepare(case)
    old_stable = _address(case, _stable_name(case))
    monkeypatch.setenv(CRASH_ENV, point)
    with pytest.raises(SimulatedCrash):
        walk(case)
    monkeypatch.delenv(CRASH_ENV)
    before = set(case.world.runtime.started)
    driver = case.world.reconciler.runs["m"].driver  # the dead controller's
    case.restart()
    if move == "promote" and old_stable is not None:
        case.witness.never_again.add(old_stable)  # a decided promotion is not judged again
    if move == "rollback" and driver is not None and driver.canary is not None:
        canary_address = _address(case, driver.canary.name)
        assert canary_address is not None
        case.witness.never_again.add(canary_address)  # a rolled-back canary gets nothing
    errors = 0.5 if move == "rollback" else 0.0
    settle(case, errors)
    if move in ("canary", "abort", "status"):
        settle(case, 0.0)
    world = case.world
    status = world.model
    wanted = Phase.ROLLED_BACK if move == "rollback" else Phase.HEALTHY
    assert status.phase is wanted, (status.phase, status.conditions)
    assert not case.witness.violations, case.witness.violations
    # what runs is what the status says, and the route sends traffic to it
    assert status.stable is not None
    assert status.stable.name
    running = world.runtime.running()
    assert running == {status.stable.name}, (running, status.stable.name)
    assert world.router.routes["m"].stable == _address(case, status.stable.name)
    assert world.router.routes["m"].canary is None
    # the bookings match: one whole GPU, the stable's, the one its release runs on
    assert [(h.release, h.share) for h in status.gpus] == [("stable", 1.0)]
    spec = world.runtime.releases[status.stable.name].spec
    assert {h.gpu for h in status.gpus} == set(spec.gpus)
    _no_gpu_shared(world.runtime)
    # nothing started twice: after the restart only what the scenario still needed
    started_again = [n for n in world.runtime.started if n in before]
    assert started_again == [] or move == "replace", started_again
    assert Journal(tmp_path / "state").load() == {}
    if move == "rollback":
        assert Pins(tmp_path / "state").get("m") is not None
    if move in ("promote", "status"):
        assert status.stable.version == "2"
    if move == "abort":
        assert status.stable.version == "3"


def _stable_name(case: Case) -> str | None:
    status = case.world.reconciler.statuses.get("m")
    return status.stable.name if status is not None and status.stable else None


def _address(case: Case, name: str | None) -> str | None:
    release = case.world.runtime.releases.get(name) if name else None
    return release.address if release is not None else None


def _no_gpu_shared(runtime: FakeRuntime) -> None:
    seen: dict[str, str] = {}
    for name in runtime.running():
        spec: ReleaseSpec = runtime.releases[name].spec
        for gpu in spec.gpus:
            assert gpu not in seen, f"{gpu} held by {seen[gpu]} and {name}"
            seen[gpu] = name


def test_every_crash_point_in_the_code_is_listed_and_every_listed_one_is_used() -> None:
    root = Path(__file__).resolve().parents[2] / "controller"
    text = "\n".join(p.read_text() for p in root.rglob("*.py"))
    used = set(re.findall(r'crash_point\(\s*"([a-z.-]+)"', text))
    assert used == set(POINTS)
