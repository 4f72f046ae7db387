"""The rollout driver: one model's canary carried out with real parts -- the
runtime's releases, the router's split, the router's counters as metrics --
steered by the pure state machine in :mod:`controller.core.canary`.

Owns, per tick: reading what happened (is the canary ready and answering
its probe; each backend's requests, errors and latency over the analysis
interval, from router snapshots), asking :func:`~controller.core.canary.advance`,
and carrying out its actions in order -- a weight goes to the router at once;
a rollback sets weight 0 and stops the canary in the same tick; a promotion
moves all traffic to the canary, which becomes the stable release, and stops
the old one. A release that loses its traffic is stopped only once the router
has answered every request it was sent (:func:`drain`), so no request fails.
Traffic never reaches a canary that is not ready: until it is, and whenever it
stops being so, the router has no canary backend.

The driver starts nothing and books nothing, and sets routes through the
``route`` it is given (the reconciler's one place for routes): the reconciler starts releases
(one place) and books and frees GPUs through the pool book
(:mod:`controller.app.pool_book`) after reading the actions a tick returns. A
manual command (:mod:`controller.app.manual`) is handed to :meth:`tick` by the
reconciler, which reads each model's command once a pass; standing alone (tests,
scripts) the driver reads it from ``state_dir`` itself. A rolled-back spec hash
is pinned.

Called by the reconciler; the tests drive it tick by tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from controller.adapters.metrics import QueryProvider
from controller.adapters.router.base import Router
from controller.adapters.runtime.base import ReleaseSpec, Runtime, State, replica_names
from controller.app.crashpoints import crash_point
from controller.app.manual import ManualAction, Pins, read_command, who_am_i
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
from controller.core.traffic import BackendStats, BackendWindow, RouteConfig, router_window
from controller.errors import TransientError
from controller.spec.kinds import Check, RolloutPolicy

__all__ = [
    "DRAIN_SECONDS",
    "RolloutDriver",
    "drain",
    "drain_all",
    "query_values",
    "ready_addresses",
    "stop_release",
]

log = logging.getLogger(__name__)

#: The longest a release that lost its traffic is given to answer what it holds.
DRAIN_SECONDS = 10.0


def drain(router: Router, model: str, address: str | None, timeout: float = DRAIN_SECONDS) -> int:
    """Wait until the router has no request of ``model`` in flight to ``address``
    (the route no longer sends it any), at most ``timeout`` seconds; how many were
    still in flight when it gave up (0: drained)."""
    if address is None:
        return 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            busy = router.in_flight(model).get(address, 0)
        except (KeyError, TransientError):
            return 0  # no route, or no router to ask: nothing to wait for
        if busy == 0 or time.monotonic() >= deadline:
            return busy
        time.sleep(0.02)


def drain_all(
    router: Router, model: str, addresses: tuple[str, ...], timeout: float = DRAIN_SECONDS
) -> int:
    """:func:`drain` for every replica's address; how many were still in flight."""
    deadline = time.monotonic() + timeout
    return sum(
        drain(router, model, address, max(0.0, deadline - time.monotonic()))
        for address in addresses
    )


def ready_addresses(runtime: Runtime, spec: ReleaseSpec | None) -> tuple[str, ...]:
    """The addresses of the ready replicas of ``spec``'s release, the first first."""
    if spec is None:
        return ()
    out = []
    for name in replica_names(spec):
        release = runtime.releases.get(name)
        if release is not None and release.state is State.READY:
            out.append(release.address)
    return tuple(out)


def stop_release(runtime: Runtime, spec: ReleaseSpec, drain: float) -> None:
    """Stop every replica of ``spec``'s release."""
    for name in replica_names(spec):
        runtime.stop(name, drain=drain)


def query_values(
    checks: tuple[Check, ...], prometheus: QueryProvider | None
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
        runtime: Runtime,
        router: Router,
        *,
        pins: Pins | None = None,
        state_dir: Path | None = None,
        prometheus: QueryProvider | None = None,
        clock: Callable[[], float] = time.time,
        record: Callable[[CanaryState, tuple[Action, ...]], None] | None = None,
        tick_runtime: bool = True,
        route: Callable[[str, RouteConfig], None] | None = None,
        decide: Callable[[CanaryState, tuple[Action, ...]], None] | None = None,
    ) -> None:
        self.model = model
        self.policy = policy
        self.runtime = runtime
        self.router = router
        self.pins = pins
        self.state_dir = state_dir
        self.prometheus = prometheus
        self.clock = clock
        self.record = record
        self.tick_runtime = tick_runtime  # False: the caller ticks the runtime once a pass
        #: how a route is set: the reconciler's one place for routes, else the router
        self.route = route or router.configure
        #: told of a promotion or rollback before its first side effect (the
        #: reconciler journals it: :mod:`controller.app.intents`)
        self.decide = decide
        self.stable: ReleaseSpec | None = None
        self.canary: ReleaseSpec | None = None
        self.state: CanaryState | None = None
        self.manual: list[ManualAction] = []
        self._since: tuple[float, dict[str, BackendStats]] | None = None
        self._silent = 0  # analysis intervals in a row the canary answered none of
        self._hangs = False  # this tick found the canary hung: its requests never drain

    def addresses(self, spec: ReleaseSpec | None) -> tuple[str, ...]:
        """Where ``spec``'s ready replicas listen (none: not ready)."""
        return ready_addresses(self.runtime, spec)

    def begin(
        self,
        stable: ReleaseSpec | None,
        canary: ReleaseSpec,
        spec_hash: str,
        state: CanaryState | None = None,
    ) -> CanaryState:
        """Drive (or, with a recorded ``state``, resume) a canary of ``canary``, a
        release the caller has started."""
        self.stable, self.canary = stable, canary
        self.state = state or start(spec_hash, self.clock())
        self._route()
        return self.state

    def _route(self) -> None:
        """Point the router at what is ready; the canary only past warm-up."""
        if self.state is None:
            raise RuntimeError("begin() first")
        canary: tuple[str, ...] = ()
        if self.state.phase is not CanaryPhase.WARMING and not self.state.phase.done:
            canary = self.addresses(self.canary)
        weight = self.state.weight if canary else 0
        self.route(self.model, RouteConfig.of(self.addresses(self.stable), canary, weight))

    def tick(
        self, command: Command | None = None, who: str = "", manual: ManualAction | None = None
    ) -> tuple[CanaryState, tuple[Action, ...]]:
        """One step: observe, :func:`advance`, carry out the actions. ``manual`` is a
        command a person left (read by the caller); ``command`` one given directly."""
        if self.state is None or self.canary is None:
            raise RuntimeError("begin() first")
        now = self.clock()
        if self.tick_runtime:
            self.runtime.tick(now)
        if manual is None and command is None and self.state_dir is not None:
            manual = read_command(self.state_dir, self.model)
        if manual is not None:
            pending = manual
            if pending is not None:
                self.manual.append(pending)
                if pending.command in {c.value for c in Command}:
                    command = Command(pending.command)
        elif command is not None:
            self.manual.append(ManualAction(self.model, str(command), who or who_am_i(), now))
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
        canary_window = router_window(snapshot["canary"], before["canary"], seconds)
        stable_window = router_window(snapshot["stable"], before["stable"], seconds)
        self._hangs = False
        if lost is None and ready:
            # hung (a request waited past an interval) or stuck (it answered nothing
            # while requests wait on it): what waits on it is never answered
            lost = self._hung(stable_window) or self._stuck(canary_window.requests, seconds)
            self._hangs = lost is not None
        observed = Observation(
            canary_lost=lost,
            canary_ready=ready,
            smoke_ok=ready,  # READY means its probe -- a real request -- answered
            canary=canary_window,
            stable=stable_window,
            custom=custom,
        )
        previous = self.state
        self.state, actions = advance(self.policy, previous, observed, now, command)
        if self.state.last_interval != previous.last_interval:
            self._since = (now, snapshot)  # the next interval starts now
        if self.decide is not None and any(
            a.kind in (ActionKind.PROMOTE, ActionKind.ROLLBACK) for a in actions
        ):
            try:
                self.decide(self.state, actions)
            except BaseException:
                self.state = previous  # not journaled: not decided (judged again next tick)
                raise
        for action in actions:
            self._apply(action, now)
        self._route()
        if self.record is not None and (actions or self.state != previous):
            self.record(self.state, actions)
        return self.state, actions

    def _hung(self, stable: BackendWindow) -> str | None:
        """Why the canary counts as lost, judged every tick: a request has waited on
        it for a whole analysis interval and ten times the stable's p99 over the
        same window (a canary that hangs answers nothing, so this is as soon as a
        failing one would be judged)."""
        analysis = self.policy.analysis
        if analysis is None or self.state is None or self.state.weight <= 0:
            return None
        try:
            waiting = self.router.waiting(self.model)
        except (KeyError, TransientError):
            return None
        oldest = max((waiting.get(a, 0.0) for a in self.addresses(self.canary)), default=0.0)
        p99 = stable.latency.get(0.99) or 0.0
        bound = max(analysis.interval, 10 * p99)
        if oldest < bound:
            return None
        return (
            f"a request has waited {oldest:.1f}s on it (at most {bound:.1f}s: an analysis "
            f"interval and ten times the stable's p99 of {p99 * 1000:.0f}ms)"
        )

    def _stuck(self, answered: int, seconds: float) -> str | None:
        """Why the canary counts as lost: after a whole analysis interval of traffic,
        more requests wait on it than it answered and at least the policy's
        ``minRequests`` wait; or, for two intervals in a row, it answered none while
        requests wait on it. A process that hangs -- on a full disk, say -- fails no
        request the counters see; a healthy one holds about latency x rate requests,
        far fewer than it answers in an interval."""
        analysis = self.policy.analysis
        if analysis is None or self.state is None or self.state.weight <= 0:
            self._silent = 0
            return None
        if seconds < analysis.interval:
            return None
        try:
            in_flight = self.router.in_flight(self.model)
        except (KeyError, TransientError):
            return None
        waiting = sum(in_flight.get(a, 0) for a in self.addresses(self.canary))
        self._silent = self._silent + 1 if waiting and not answered else 0
        if waiting >= max(1, analysis.min_requests) and waiting > answered:
            return f"it answered {answered} requests in {seconds:.0f}s while {waiting} wait on it"
        if self._silent >= 2:
            return f"it answered no request for two analysis intervals while {waiting} wait on it"
        return None

    def _apply(self, action: Action, now: float) -> None:
        if self.state is None or self.canary is None:
            raise RuntimeError("begin() first")
        if action.kind is ActionKind.SET_WEIGHT:
            stable = self.addresses(self.stable)
            canary = self.addresses(self.canary) if action.weight > 0 else ()
            self.route(self.model, RouteConfig.of(stable, canary, action.weight))
        elif action.kind is ActionKind.ROLLBACK:
            crash_point("rollback.after-intent")
            canary = self.addresses(self.canary)
            self.route(self.model, RouteConfig.of(self.addresses(self.stable)))
            crash_point("rollback.after-route")
            if self._hangs:  # what waits on a hung canary is never answered: stop it now
                stop_release(self.runtime, self.canary, drain=0.0)
            else:
                drain_all(self.router, self.model, canary)
                stop_release(self.runtime, self.canary, drain=5.0)
            crash_point("rollback.after-stop-canary")
            if self.pins is not None:
                try:
                    self.pins.pin(self.model, self.state.spec_hash, action.reason, now)
                except OSError as exc:  # a full disk: the rollback stands; said, not pinned
                    log.error("%s: the rolled-back spec is not pinned: %s", self.model, exc)
        elif action.kind is ActionKind.PROMOTE:
            crash_point("promote.after-intent")
            old = self.stable
            old_addresses = self.addresses(old)
            self.route(self.model, RouteConfig.of(self.addresses(self.canary)))
            crash_point("promote.after-route")
            self.stable = replace(self.canary)
            if old is not None:
                drain_all(self.router, self.model, old_addresses)
                stop_release(self.runtime, old, drain=5.0)
            crash_point("promote.after-stop-stable")

    def run(self, timeout: float, step: float = 0.1) -> CanaryState:
        """Tick until the canary is promoted or rolled back (for tests and the CLI)."""
        deadline = time.monotonic() + timeout
        if self.state is None:
            raise RuntimeError("begin() first")
        while not self.state.phase.done and time.monotonic() < deadline:
            self.tick()
            time.sleep(step)
        return self.state
