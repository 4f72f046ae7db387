"""The rollout driver: one model's canary carried out with real parts -- the
runtime's releases, the router's split, the router's counters as metrics --
steered by the pure state machine in :mod:`controller.core.canary`.

Owns, per tick: reading what happened (is the canary ready and answering
its probe; each backend's requests, errors and latency over the analysis
interval, from router snapshots), asking :func:`~controller.core.canary.advance`,
and carrying out its actions in order -- a weight goes to the router at once;
a rollback sets weight 0 and stops the canary in the same tick; a promotion
moves all traffic to the canary, which becomes the stable release, and stops
the old one. Traffic never reaches a canary that is not ready: until it is,
and whenever it stops being so, the router has no canary backend.

Also owns manual commands (``mdc promote|abort|pause|resume|retry``), which
reach a running controller as files in the state directory and are recorded
with who asked and when, and pins: a rolled-back spec hash is not started
again until the spec changes or someone asks for a retry.

Called by the reconciler and the CLI; the tests drive it tick by tick.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from controller.adapters.metrics import PrometheusProvider
from controller.adapters.router.base import Router
from controller.adapters.runtime.local import LocalRuntime, ReleaseSpec, State
from controller.core.allocation import ReleaseKind
from controller.core.canary import (
    Action,
    ActionKind,
    CanaryPhase,
    CanaryState,
    Command,
    Observation,
    advance,
    analysis_due,
    start,
)
from controller.core.ledger import Ledger
from controller.core.traffic import BackendStats, RouteConfig, router_window
from controller.errors import TransientError
from controller.spec.kinds import Check, RolloutPolicy

__all__ = [
    "ManualAction",
    "Pins",
    "RolloutDriver",
    "query_values",
    "read_command",
    "send_command",
]


@dataclass(frozen=True)
class ManualAction:
    model: str
    command: str  # promote, abort, pause, resume, retry
    who: str
    at: float


def _commands_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "commands"


def send_command(state_dir: Path, model: str, command: str, who: str | None = None) -> ManualAction:
    """Leave a command for the controller (the newest one wins)."""
    action = ManualAction(model, command, who or _who(), time.time())
    folder = _commands_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{model}.tmp"
    tmp.write_text(json.dumps(action.__dict__))
    tmp.replace(folder / f"{model}.json")
    return action


def read_command(state_dir: Path, model: str) -> ManualAction | None:
    """Take the waiting command for ``model``, if any (it is consumed)."""
    path = _commands_dir(state_dir) / f"{model}.json"
    try:
        data = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError):
        return None
    return ManualAction(**data)


def _who() -> str:
    user = os.environ.get("MDC_USER") or os.environ.get("USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Pins:
    """Spec hashes that failed, per model: not started again until the spec
    changes or someone asks for a retry. Kept in ``STATE/pins.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "pins.json"

    def all(self) -> dict[str, dict[str, object]]:
        try:
            data: dict[str, dict[str, object]] = json.loads(self.path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def get(self, model: str) -> str | None:
        pin = self.all().get(model)
        return None if pin is None else str(pin["specHash"])

    def pin(self, model: str, spec_hash: str, reason: str, at: float) -> None:
        pins = self.all()
        pins[model] = {"specHash": spec_hash, "reason": reason, "at": at}
        self._write(pins)

    def unpin(self, model: str) -> bool:
        pins = self.all()
        found = pins.pop(model, None) is not None
        self._write(pins)
        return found

    def _write(self, pins: dict[str, dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pins, indent=1, sort_keys=True))
        tmp.replace(self.path)


def query_values(
    checks: tuple[Check, ...], prometheus: PrometheusProvider | None
) -> dict[str, float | None]:
    """The value of every PromQL check now; None where it cannot be read
    (no Prometheus configured, or it did not answer) -- which fails the check."""
    values: dict[str, float | None] = {}
    for check in checks:
        if check.query is None:
            continue
        try:
            values[check.name] = prometheus.value(check.query) if prometheus else None
        except TransientError:
            values[check.name] = None
    return values


class RolloutDriver:
    """Carries out one model's canary (see the module docstring)."""

    def __init__(
        self,
        model: str,
        policy: RolloutPolicy,
        runtime: LocalRuntime,
        router: Router,
        *,
        pins: Pins | None = None,
        state_dir: Path | None = None,
        prometheus: PrometheusProvider | None = None,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.time,
        record: Callable[[CanaryState, tuple[Action, ...]], None] | None = None,
        tick_runtime: bool = True,
    ) -> None:
        self.model = model
        self.policy = policy
        self.runtime = runtime
        self.router = router
        self.pins = pins
        self.state_dir = state_dir
        self.prometheus = prometheus
        self.ledger = ledger  # GPUs: the canary's freed on rollback, the old stable's on promotion
        self.clock = clock
        self.record = record
        self.tick_runtime = tick_runtime  # False: the caller ticks the runtime once a pass
        self.stable: ReleaseSpec | None = None
        self.canary: ReleaseSpec | None = None
        self.state: CanaryState | None = None
        self.manual: list[ManualAction] = []
        self._since: tuple[float, dict[str, BackendStats]] | None = None

    def address(self, spec: ReleaseSpec | None) -> str | None:
        if spec is None:
            return None
        release = self.runtime.releases.get(spec.name)
        if release is None or release.state is not State.READY:
            return None
        return release.address

    def begin(
        self,
        stable: ReleaseSpec | None,
        canary: ReleaseSpec,
        spec_hash: str,
        state: CanaryState | None = None,
    ) -> CanaryState:
        """Start (or, with a recorded ``state``, resume) a canary of ``canary``."""
        self.stable, self.canary = stable, canary
        self.runtime.start(canary)
        self.state = state or start(spec_hash, self.clock())
        self._route()
        return self.state

    def _route(self) -> None:
        """Point the router at what is ready; the canary only past warm-up."""
        if self.state is None:
            raise RuntimeError("begin() first")
        canary = None
        if self.state.phase is not CanaryPhase.WARMING and not self.state.phase.done:
            canary = self.address(self.canary)
        weight = self.state.weight if canary is not None else 0
        self.router.configure(self.model, RouteConfig(self.address(self.stable), canary, weight))

    def tick(
        self, command: Command | None = None, who: str = ""
    ) -> tuple[CanaryState, tuple[Action, ...]]:
        if self.state is None or self.canary is None:
            raise RuntimeError("begin() first")
        now = self.clock()
        if self.tick_runtime:
            self.runtime.tick(now)
        if command is None and self.state_dir is not None:
            pending = read_command(self.state_dir, self.model)
            if pending is not None:
                self.manual.append(pending)
                if pending.command in {c.value for c in Command}:
                    command = Command(pending.command)
        elif command is not None:
            self.manual.append(ManualAction(self.model, str(command), who or _who(), now))
        snapshot = self.router.snapshot(self.model)
        if self._since is None or self.state.weight == 0:
            self._since = (now, snapshot)
        started, before = self._since
        seconds = max(now - started, 1e-9)
        canary_release = self.runtime.releases.get(self.canary.name)
        ready = canary_release is not None and canary_release.state is State.READY
        custom: dict[str, float | None] = {}
        if self.policy.analysis is not None and analysis_due(self.policy, self.state, now):
            custom = query_values(self.policy.analysis.checks, self.prometheus)
        lost = None
        if canary_release is not None and canary_release.state is State.FAILED:
            lost = canary_release.reason or "it failed"
        observed = Observation(
            canary_lost=lost,
            canary_ready=ready,
            smoke_ok=ready,  # READY means its probe -- a real request -- answered
            canary=router_window(snapshot["canary"], before["canary"], seconds),
            stable=router_window(snapshot["stable"], before["stable"], seconds),
            custom=custom,
        )
        previous = self.state
        self.state, actions = advance(self.policy, previous, observed, now, command)
        if self.state.last_interval != previous.last_interval:
            self._since = (now, snapshot)  # the next interval starts now
        for action in actions:
            self._apply(action, now)
        self._route()
        if self.record is not None and (actions or self.state != previous):
            self.record(self.state, actions)
        return self.state, actions

    def _apply(self, action: Action, now: float) -> None:
        if self.state is None or self.canary is None:
            raise RuntimeError("begin() first")
        if action.kind is ActionKind.SET_WEIGHT:
            stable = self.address(self.stable)
            canary = self.address(self.canary) if action.weight > 0 else None
            self.router.configure(self.model, RouteConfig(stable, canary, action.weight))
        elif action.kind is ActionKind.ROLLBACK:
            self.router.configure(self.model, RouteConfig(self.address(self.stable), None, 0))
            self.runtime.stop(self.canary.name, drain=5.0)
            if self.ledger is not None:
                self.ledger.release(f"{self.model}/{ReleaseKind.CANARY}")
            if self.pins is not None:
                self.pins.pin(self.model, self.state.spec_hash, action.reason, now)
        elif action.kind is ActionKind.PROMOTE:
            old = self.stable
            self.router.configure(self.model, RouteConfig(self.address(self.canary), None, 0))
            self.stable = replace(self.canary)
            if old is not None:
                self.runtime.stop(old.name, drain=5.0)
            if self.ledger is not None:
                self.ledger.release(f"{self.model}/{ReleaseKind.STABLE}")
                self.ledger.rename(
                    f"{self.model}/{ReleaseKind.CANARY}", f"{self.model}/{ReleaseKind.STABLE}"
                )

    def run(self, timeout: float, step: float = 0.1) -> CanaryState:
        """Tick until the canary is promoted or rolled back (for tests and the CLI)."""
        deadline = time.monotonic() + timeout
        if self.state is None:
            raise RuntimeError("begin() first")
        while not self.state.phase.done and time.monotonic() < deadline:
            self.tick()
            time.sleep(step)
        return self.state
