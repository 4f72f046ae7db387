"""Moves a previous controller left half done, finished: the roll-forward of
the intent journal (:mod:`controller.app.intents`).

Owns :class:`Finisher`: given a model's :class:`~controller.app.intents.Intent`
(written before the first side effect of a deploy, canary start, promotion,
rollback or abort, and not cleared because the controller died before the
status commit recorded the outcome), it finishes the move through the moves'
own places for routes, releases and GPUs (:class:`~controller.app.moves.Moves`):
a decided promotion is finished, never judged again; a rollback or abort takes
traffic back to the stable and stops the canary; a release that was being
started is adopted when it runs. Every step is idempotent: the status may
record the outcome already, and any step may be done or not.

Called by the reconciler in the first pass after a restart (and in the pass
after one that broke half-way), before anything is planned.
"""

from __future__ import annotations

from controller.adapters.runtime.base import Release as RuntimeRelease
from controller.adapters.runtime.base import State, replica_names
from controller.app.intents import Intent, IntentKind
from controller.app.moves import Moves
from controller.app.recovery import Run
from controller.app.rollout import drain_all, stop_release
from controller.core.allocation import ReleaseKind
from controller.core.canary import start, state_from_dict
from controller.core.traffic import RouteConfig

__all__ = ["Finisher"]


class Finisher:
    """Finishes half-done moves through ``moves`` (see the module docstring)."""

    def __init__(self, moves: Moves) -> None:
        self.moves = moves

    def _alive(self, name: str | None) -> RuntimeRelease | None:
        release = self.moves.runtime.releases.get(name) if name else None
        if release is None or release.state in (State.STOPPED, State.FAILED):
            return None
        return release

    def _everywhere(self, release: RuntimeRelease) -> tuple[str, ...]:
        """Where every live replica of ``release`` listens (ready or not: after a
        restart the route goes where the decision sent it)."""
        out = []
        for name in replica_names(release.spec):
            replica = self._alive(name)
            if replica is not None:
                out.append(replica.address)
        return tuple(out)

    def finish(self, run: Run, intent: Intent, now: float) -> None:
        """Roll ``intent`` forward: a controller died between its first side effect
        and the status commit that records its outcome
        (:mod:`controller.app.intents`). Idempotent: the status may record it
        already, and any step may be done or not."""
        self.moves.journaled.add(run.name)
        if intent.kind in (IntentKind.DEPLOY, IntentKind.START_CANARY):
            self._finish_start(run, intent, now)
            return
        self.moves.ensure_route(run.name)
        stable, canary = self._alive(intent.stable), self._alive(intent.canary)
        state = state_from_dict(intent.state) if intent.state else None
        run.resume, run.driver, run.canary_record = None, None, None
        if intent.kind is IntentKind.PROMOTE and canary is not None:
            self.moves.route(run.name, RouteConfig.of(self._everywhere(canary)))
            if stable is not None and intent.stable != intent.canary:
                drain_all(self.moves.router, run.name, self._everywhere(stable))
                stop_release(self.moves.runtime, stable.spec, drain=2.0)
            if self.moves.book.allocation(run.name, ReleaseKind.CANARY) is not None:
                self.moves.book.promote(run.name, now)
            run.stable, run.stable_hash = canary.spec, intent.spec_hash
            run.stable_record = intent.record or run.stable_record
            run.finished = state
            run.event = ("Promoted", f"finished after a restart: {intent.reason}".strip(": "))
            return
        # a rollback, an abort, or a promotion whose canary is gone: back to the stable
        self.moves.route(run.name, RouteConfig.of(self._everywhere(stable) if stable else ()))
        if canary is not None and intent.canary != intent.stable:
            drain_all(self.moves.router, run.name, self._everywhere(canary))
            stop_release(self.moves.runtime, canary.spec, drain=2.0)
        self.moves.book.free(run.name, ReleaseKind.CANARY, now)
        if intent.kind is IntentKind.ROLLBACK:
            if state is not None:
                self.moves.pins.pin(run.name, state.spec_hash, intent.reason, now)
            run.finished = state
            run.event = ("RolledBack", f"finished after a restart: {intent.reason}".strip(": "))
        elif intent.kind is IntentKind.ABORT:
            run.finished = None
            run.event = ("CanaryAborted", f"finished after a restart: {intent.reason}")
        else:
            run.finished = None
            run.event = (
                "PromotionAbandoned",
                f"the canary {intent.canary} was gone after a restart; the stable serves",
            )

    def _finish_start(self, run: Run, intent: Intent, now: float) -> None:
        """A release was being started: adopt it when it runs (the pool book books
        the GPUs it was started on), else the plan starts it again."""
        started = self._alive(intent.canary)
        if started is None or intent.record is None or intent.spec_hash is None:
            return
        if intent.kind is IntentKind.DEPLOY and run.stable is None:
            run.stable, run.stable_hash = started.spec, intent.spec_hash
            run.stable_record = intent.record
            run.event = ("Adopted", f"{started.spec.name}, started before a restart")
        elif (
            intent.kind is IntentKind.START_CANARY
            and run.stable is not None
            and run.resume is None
            and run.driver is None
            and run.stable.name != started.spec.name
        ):
            run.resume = (started.spec, start(intent.spec_hash, now))
            run.canary_record = intent.record
            run.event = ("Adopted", f"canary {started.spec.name}, started before a restart")
