"""Canaries with real releases behind each router (embedded, HAProxy), under real load:
a good version is promoted, one that fails 20% of requests is rolled back in
the tick its failure limit is reached, a slow one is caught by the check
relative to stable, and no request reaches a canary that is not ready."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from controller.adapters.packaging import Packager, Source
from controller.adapters.router.base import Router
from controller.adapters.runtime.base import ReleaseSpec, State
from controller.adapters.runtime.local import LocalRuntime
from controller.app.daemon import StateLock
from controller.app.manual import Pins
from controller.app.rollout import RolloutDriver
from controller.cli.main import main
from controller.core.canary import CanaryPhase, Outcome
from controller.core.plan import rollout_decision
from controller.spec.kinds import (
    Analysis,
    Check,
    Metric,
    Probe,
    RolloutPolicy,
    Step,
    StepKind,
)
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.bentos import bentoml_processes, example_copy
from tests.integration.test_router import new_router

pytestmark = pytest.mark.integration
PROBE = Probe(
    "/score",
    {"transactions": [{"amount_log": 1.0}]},
    timeout=2.0,
    interval=0.5,
    failure_threshold=3,
)
POLICY = RolloutPolicy(
    "test-canary",
    (
        Step(StepKind.SET_WEIGHT, weight=20),
        Step(StepKind.ANALYSIS, intervals=2),
        Step(StepKind.SET_WEIGHT, weight=60),
        Step(StepKind.ANALYSIS, intervals=2),
    ),
    Analysis(
        1.0,
        1,
        10,
        (
            Check("errors", Metric.ERROR_RATE, None, 0.05, None, None),
            Check("latency", Metric.LATENCY_P90, None, None, None, 5.0),
        ),
    ),
    progress_deadline=30.0,
    warmup_timeout=60.0,
    warmup_hold=None,
    source=None,  # type: ignore[arg-type]
)
VARIANTS = {
    "good": "",
    "errors": """
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls % 5 == 0:
            raise RuntimeError("synthetic failure, one request in five")
""",
    "slow": """
        import time
        time.sleep(0.06)
""",
}


@dataclass(frozen=True)
class Built:
    home: Path
    stable: str
    canaries: dict[str, str]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("rollout-bentos")
    packager = Packager(base / "home", base / "state")
    repo = example_copy(base / "v1")
    tree = DirTree(repo)
    stable = packager.build(
        load_desired(tree).desired.models["fraud-scorer"], tree, Source()
    ).bento_tag
    canaries = {}
    for name, code in VARIANTS.items():
        repo = example_copy(base / name)
        spec = repo / "models" / "fraud-scorer.yaml"
        spec.write_text(spec.read_text().replace("fraud-scorer/v1.json", "fraud-scorer/v2.json"))
        service = repo / "services" / "fraud_scorer.py"
        text = service.read_text()
        marker = '        """Fraud probability for each transaction."""\n'
        service.write_text(text.replace(marker, marker + code))
        tree = DirTree(repo)
        model = load_desired(tree).desired.models["fraud-scorer"]
        canaries[name] = packager.build(model, tree, Source()).bento_tag
    return Built(base / "home", stable, canaries)


class Load:
    """Sequential requests through the router until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.codes: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        rng = random.Random(1)
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                body = {"transactions": [{"amount_log": rng.uniform(0, 4)}]}
                try:
                    code = client.post(f"{self.url}/score", json=body).status_code
                except httpx.HTTPError:
                    code = 0
                self.codes.append((time.monotonic(), code))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=20)


@pytest.fixture(params=["embedded", "haproxy"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, built: Built
) -> Iterator[tuple[LocalRuntime, Router, str]]:
    router = new_router(request.param, tmp_path / "proxy")
    runtime = LocalRuntime(tmp_path / "state", built.home, rng=random.Random(0))
    url = router.add_model("fraud-scorer")
    try:
        yield runtime, router, url
    finally:
        router.shutdown()
        runtime.stop_all(drain=2.0)
        assert bentoml_processes(tmp_path) == [], "a process outlived its test"


def canary_run(
    world: tuple, built: Built, variant: str, tmp_path: Path
) -> tuple[RolloutDriver, Load, list[int]]:
    runtime, router, url = world
    stable = ReleaseSpec("fraud-scorer/stable", "fraud-scorer", "1.0.0", built.stable, probe=PROBE)
    runtime.start(stable)
    assert runtime.wait_ready(stable.name, 60).state is State.READY
    driver = RolloutDriver("fraud-scorer", POLICY, runtime, router, pins=Pins(tmp_path / "state"))
    canary = ReleaseSpec(
        "fraud-scorer/canary", "fraud-scorer", "1.1.0", built.canaries[variant], probe=PROBE
    )
    runtime.start(canary)  # the reconciler starts releases; the driver drives them
    driver.begin(stable, canary, f"hash-{variant}")
    load = Load(url)
    while_warming = []
    deadline = time.monotonic() + 90
    while driver.state is not None and not driver.state.phase.done and time.monotonic() < deadline:
        state, _ = driver.tick()
        if state.phase is CanaryPhase.WARMING:
            while_warming.append(router.snapshot("fraud-scorer")["canary"].requests)
        time.sleep(0.05)
    return driver, load, while_warming


def test_good_version_is_promoted(world: tuple, built: Built, tmp_path: Path) -> None:
    driver, load, while_warming = canary_run(world, built, "good", tmp_path)
    runtime, router, url = world
    try:
        state = driver.state
        assert state is not None
        assert state.phase is CanaryPhase.PROMOTED, state.reason
        assert state.reason == "all steps passed"
        assert set(while_warming) == {0}  # nothing reached the canary before it was ready
        assert [v.outcome for v in state.verdicts].count(Outcome.PASS) >= 4
        assert runtime.releases["fraud-scorer/stable"].state is State.STOPPED  # old one retired
        before = router.snapshot("fraud-scorer")["stable"].requests
        time.sleep(0.5)
        assert router.snapshot("fraud-scorer")["stable"].requests > before  # all traffic on v2
        assert httpx.post(f"{url}/score", json={"transactions": [{}]}).status_code == 200
    finally:
        load.close()
    assert {code for _, code in load.codes} == {200}  # no request failed during the rollout


def test_version_with_errors_is_rolled_back_and_pinned(
    world: tuple, built: Built, tmp_path: Path
) -> None:
    driver, load, _ = canary_run(world, built, "errors", tmp_path)
    runtime, router, _ = world
    try:
        state = driver.state
        assert state is not None
        assert state.phase is CanaryPhase.ROLLED_BACK, state.reason
        assert "errorRate" in state.reason
        failed = [v for v in state.verdicts if v.outcome is Outcome.FAIL]
        assert len(failed) == POLICY.analysis.failure_limit + 1  # type: ignore[union-attr]
        assert state.step_started == failed[-1].at  # weight 0 in the tick the limit was reached
        after = router.snapshot("fraud-scorer")["canary"].requests
        time.sleep(0.5)
        assert router.snapshot("fraud-scorer")["canary"].requests == after  # no more canary traffic
        assert runtime.releases["fraud-scorer/canary"].state is State.STOPPED
        assert runtime.releases["fraud-scorer/stable"].state is State.READY
        pins = Pins(tmp_path / "state")
        assert pins.get("fraud-scorer") == "hash-errors"
        assert (
            rollout_decision("hash-errors", "hash-v1", state, pins.get("fraud-scorer")) == "pinned"
        )
    finally:
        load.close()
    late = [code for at, code in load.codes if at > time.monotonic() - 0.4]
    assert late
    assert set(late) == {200}


def test_slow_version_is_caught_relative_to_stable(
    world: tuple, built: Built, tmp_path: Path
) -> None:
    driver, load, _ = canary_run(world, built, "slow", tmp_path)
    load.close()
    state = driver.state
    assert state is not None
    assert state.phase is CanaryPhase.ROLLED_BACK, state.reason
    assert "latencyP90" in state.reason
    assert "x stable" in state.reason


GATED = RolloutPolicy(
    "gated",
    (
        Step(StepKind.SET_WEIGHT, weight=30),
        Step(StepKind.PAUSE),
        Step(StepKind.SET_WEIGHT, weight=70),
    ),
    None,
    progress_deadline=10.0,
    warmup_timeout=60.0,
    warmup_hold=None,
    source=None,  # type: ignore[arg-type]
)


def test_manual_gate_waits_for_mdc_resume(tmp_path: Path, built: Built) -> None:
    router = new_router("embedded", tmp_path / "proxy")
    runtime = LocalRuntime(tmp_path / "state", built.home, rng=random.Random(0))
    try:
        router.add_model("fraud-scorer")
        stable = ReleaseSpec(
            "fraud-scorer/stable", "fraud-scorer", "1.0.0", built.stable, probe=PROBE
        )
        runtime.start(stable)
        assert runtime.wait_ready(stable.name, 60).state is State.READY
        driver = RolloutDriver("fraud-scorer", GATED, runtime, router, state_dir=tmp_path / "state")
        canary = ReleaseSpec(
            "fraud-scorer/canary", "fraud-scorer", "1.1.0", built.canaries["good"], probe=PROBE
        )
        runtime.start(canary)
        driver.begin(stable, canary, "hash-good")
        deadline = time.monotonic() + 60
        while driver.state.phase is not CanaryPhase.WAITING_FOR_APPROVAL:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            driver.tick()
            time.sleep(0.05)
        time.sleep(11)  # past the progress deadline: a gate waiting for a person is exempt
        assert driver.tick()[0].phase is CanaryPhase.WAITING_FOR_APPROVAL
        resume = ["resume", "fraud-scorer", "--state-dir", str(tmp_path / "state"), "--as", "dana"]
        with StateLock(tmp_path / "state"):  # as if a controller ran on it
            assert main(resume) == 0
        state, actions = driver.tick()
        assert state.phase is CanaryPhase.PROMOTED  # 70% was the last step
        assert [(str(a.kind), a.weight) for a in actions] == [
            ("set-weight", 70),
            ("set-weight", 100),
            ("promote", 100),
        ]
        assert [(m.command, m.who) for m in driver.manual] == [("resume", "dana")]
    finally:
        router.close()
        runtime.stop_all(drain=2.0)
    assert bentoml_processes(tmp_path) == []
