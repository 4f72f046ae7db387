"""A model's moves, carried out: what the reconciler does for one model once the
plan (:func:`~controller.core.plan.make_plan`) has said what.

Owns the side effects of each move, each in one place: releases are started in
:meth:`Moves._launch` only; GPUs are booked and freed through the pool book
(:mod:`controller.app.pool_book`) only; routes are set in :meth:`Moves.route`
only (the rollout driver, :mod:`controller.app.rollout`, is given it and sets the
split through it while the canary runs); the
manual command of a model is read once a pass by the reconciler and handed in
on its :class:`~controller.app.recovery.Run`. A move that cannot go on raises an
:class:`~controller.errors.MdcError`: :meth:`Moves.failed` turns it into the
model's condition (transient: retried later; permanent: the spec is pinned).

Called by the reconciler, once per model per pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from dataclasses import replace

from controller.adapters.git.source import Snapshot
from controller.adapters.packaging import Source
from controller.adapters.runtime.base import ReleaseSpec, State, replica_names
from controller.app.background import Builds
from controller.app.crashpoints import crash_point
from controller.app.intents import Intent, IntentKind, Journal
from controller.app.manual import Pins
from controller.app.monitoring import Monitoring
from controller.app.parts import Parts, Settings
from controller.app.pool_book import PoolBook
from controller.app.recovery import Run
from controller.app.rollout import (
    RolloutDriver,
    drain_all,
    ready_addresses,
    stop_release,
)
from controller.core.allocation import Allocation, ReleaseKind, Slice, launch_env
from controller.core.canary import (
    Action,
    ActionKind,
    CanaryPhase,
    CanaryState,
    judge_pending,
    state_to_dict,
)
from controller.core.plan import ModelPlan, Move
from controller.core.status import Condition, Release
from controller.core.timestamps import iso
from controller.core.traffic import RouteConfig
from controller.errors import ConditionType, MdcError, PermanentError, Reason, TransientError
from controller.spec.kinds import Model
from controller.spec.loader import LoadResult
from controller.spec.tree import Tree

__all__ = ["Moves"]

log = logging.getLogger(__name__)


class Moves:
    """One controller's moves (see the module docstring)."""

    def __init__(  # noqa: PLR0917
        self,
        parts: Parts,
        settings: Settings,
        book: PoolBook,
        pins: Pins,
        monitoring: Monitoring,
        runs: MutableMapping[str, Run],
    ) -> None:
        self.parts = parts
        self.state_dir = settings.state_dir
        self.clock = parts.clock
        self.source = parts.source
        self.packager = parts.packager
        self.runtime = parts.runtime
        self.router = parts.router
        self.reporter = parts.reporter
        self.book = book
        self.pins = pins
        self.monitoring = monitoring
        self.runs = runs
        self.router_ports = dict(settings.router_ports)
        self.routes: dict[str, str] = {}  # model -> the router's URL for it
        self.verdicts: dict[tuple[str, str], int] = {}  # (model, outcome) -> intervals judged
        self.snapshot: Snapshot | None = None
        self.load: LoadResult | None = None
        self.journal = Journal(self.state_dir)
        #: bento builds off the loop (``mdc run``); None: built in the pass
        self.builds: Builds | None = None
        #: models whose intent was written (or finished) in this pass: cleared by the
        #: reconciler once the pass's status commit records the outcome
        self.journaled: set[str] = set()
        #: the route last set for each model, and the preview each mirrors to
        self.configs: dict[str, RouteConfig] = {}
        self.previewed: dict[str, tuple[str, int]] = {}  # model -> (address, percent)
        #: turns a warm preview of (model, spec hash) into the canary (Previews.adopt)
        self.adopt_preview: Callable[[str, str], str | None] | None = None
        #: stops a preview whose GPUs the ledger gave to a release (Previews.preempted)
        self.preview_preempted: Callable[[str], None] | None = None

    def begin_pass(self, snapshot: Snapshot, load: LoadResult) -> None:
        self.snapshot, self.load = snapshot, load

    def execute(  # noqa: PLR0917
        self,
        entry: ModelPlan,
        run: Run,
        model: Model | None,
        hashed: tuple[str, str] | None,
        tree: Tree,
        now: float,
    ) -> None:
        move = entry.move
        if move is Move.PRUNE:
            self._prune(run, now)
            return
        if move in (Move.HOLD, Move.KEEP):
            run.conditions.append(
                Condition(ConditionType.SPEC_VALID, False, Reason.SPEC_INVALID, entry.reason)
            )
            if run.driver is not None:
                self._tick(run, now)
            return
        assert model is not None
        assert hashed is not None
        wanted = hashed[0]
        if run.failed is not None and self.pins.get(run.name) != run.failed[0]:
            run.failed = None  # someone asked for a retry
        if run.failed is not None and run.failed[0] == wanted:
            _, reason, message = run.failed  # said every pass while it stays stalled
            run.conditions.append(Condition(ConditionType.READY, False, reason, message))
            if move in (Move.DEPLOY, Move.START_CANARY, Move.REPLACE):
                return
        if now < run.retry_at and move in (
            Move.DEPLOY,
            Move.START_CANARY,
            Move.REPLACE,
            Move.RE_PLACE,
        ):
            run.conditions.append(
                Condition(
                    ConditionType.READY,
                    False,
                    Reason.RETRY_LATER,
                    f"retrying in {run.retry_at - now:.0f}s",
                )
            )
            return
        self.ensure_route(run.name)
        if move is Move.DEPLOY:
            self._deploy(run, model, wanted, tree, now)
        elif move is Move.AWAIT:
            self._await(run, now)
        elif move is Move.RE_PLACE:
            self._re_place(run, model, now)
        elif move is Move.REPLACE:
            self._abort(run, "the spec changed during the canary", now)
            if wanted != run.stable_hash:  # else git went back to what the stable runs
                self._start_canary(run, model, wanted, tree, now)
        elif move is Move.START_CANARY:
            self._start_canary(run, model, wanted, tree, now)
        elif move is Move.CONTINUE:
            if run.driver is None:
                self._adopt_driver(run, model)
            self._tick(run, now)
        elif move in (Move.STEADY, Move.PINNED):
            self._steady(run, move, now)

    def _pull(self) -> int | None:
        assert self.snapshot is not None
        try:
            return self.reporter.pull_request_for(self.snapshot.commit)
        except MdcError as exc:
            log.warning(
                "which PR brought %s is unknown: %s", self.snapshot.commit[:12], exc.message
            )
            return None

    def ensure_route(self, name: str) -> str:
        if name not in self.routes:
            port = self.router_ports.get(name, 0)
            try:
                self.routes[name] = self.router.add_model(name, port)
            except OSError as exc:
                raise TransientError(
                    f"the router cannot listen on port {port} for {name}: {exc}",
                    reason=Reason.ROUTER_PORT_BUSY,
                ) from None
        return self.routes[name]

    def route(self, name: str, config: RouteConfig) -> None:
        """The one place a route is set (the rollout drivers set theirs through it);
        a pull request's preview of the model, if any, is kept in it."""
        self.configs[name] = config
        address, share = self.previewed.get(name, (None, 0))
        self.router.configure(name, replace(config, preview=address, preview_share=share))

    def preview_route(self, name: str, target: tuple[str, int] | None) -> None:
        """Mirror ``target``'s percent of ``name``'s stable requests to its address
        (a PR's preview), or no more (None)."""
        if target is None:
            if self.previewed.pop(name, None) is None:
                return
        else:
            self.previewed[name] = target
        try:
            self.route(name, self.configs.get(name, RouteConfig()))
        except MdcError:  # a router that cannot mirror (HAProxy): the model's own
            self.previewed.pop(name, None)  # routes must never carry the preview
            raise

    def serving(self, name: str, wanted: str) -> str:
        """Why ``name`` at spec hash ``wanted`` cannot be previewed now ("" when it
        can: its stable release serves through the router, and neither it nor a
        canary runs ``wanted`` already)."""
        run = self.runs.get(name)
        if run is None or run.stable is None or name not in self.routes:
            return f"{name} has no stable release serving to compare with"
        canary = run.driver.state if run.driver is not None else None
        if wanted in (run.stable_hash, canary.spec_hash if canary is not None else None):
            return f"{name} runs this version already"
        release = self.runtime.releases.get(run.stable.name)
        if release is None or release.state is not State.READY:
            return f"{name}'s stable release is not ready"
        if name not in self.configs:
            return f"{name}'s route is not set yet"
        return ""

    def claims(self, release: str) -> bool:
        """Whether a model's stable or canary runs as ``release`` (a preview's release
        handed over is the canary's: it is never stopped as a preview)."""
        for run in self.runs.values():
            canary = run.driver.canary if run.driver is not None else None
            for spec in (run.stable, canary):
                if spec is not None and release in replica_names(spec):
                    return True
        return False

    def build_preview(self, model: Model, snapshot: Snapshot, source: Source) -> str | None:
        """The bento of a pull request's ``model`` (off the loop under ``mdc run``:
        None while it builds)."""
        if self.builds is None:
            return self.packager.build(model, self.source.tree(snapshot), source).bento_tag
        result = self.builds.request(model, snapshot, source)
        return None if result is None else result.bento_tag

    def release_spec(
        self, model: Model, wanted: str, bento: str, allocation: Allocation
    ) -> ReleaseSpec:
        """The release ``model`` at spec hash ``wanted`` runs as (a preview's is the
        canary's it may become)."""
        return self._release_spec(model, wanted, bento, allocation)

    def launch(self, spec: ReleaseSpec, allocation: Allocation | None = None) -> None:
        self._launch(spec, allocation)

    def _build(self, run: Run, model: Model, tree: Tree) -> str | None:
        """The bento's tag; None while it is being built off the loop (:attr:`builds`,
        set by ``mdc run``: the condition says so)."""
        assert self.snapshot is not None
        source = Source(self.source.remote.display, self.snapshot.revision)
        if self.builds is None:
            return self.packager.build(model, tree, source).bento_tag
        result = self.builds.request(model, self.snapshot, source)
        if result is None:
            run.conditions.append(
                Condition(
                    ConditionType.READY,
                    False,
                    Reason.BUILDING,
                    f"building the bento of {model.version} (off the loop)",
                )
            )
            return None
        return result.bento_tag

    def _place(self, run: Run, model: Model, kind: ReleaseKind, now: float) -> Allocation | None:
        booking = self.book.place(model, kind, now)
        if booking.allocation is None:
            run.conditions.append(
                Condition(ConditionType.GPUS, False, Reason.WAITING_FOR_GPUS, booking.waiting)
            )
            return None
        for victim in booking.preempted:
            self._preempted(victim, now)
        return booking.allocation

    def _preempted(self, key: str, now: float) -> None:
        """A release whose GPUs the ledger gave to another: stop it."""
        name, _, kind = key.partition("/")
        if kind == ReleaseKind.PREVIEW:  # a pull request's preview goes first
            if self.preview_preempted is not None:
                self.preview_preempted(name)
            return
        victim = self.runs.get(name)
        if victim is None:
            return
        if kind == ReleaseKind.CANARY and victim.driver is not None:
            self._abort(victim, "preempted: its GPUs went to a higher-priority team", now)
        elif kind == ReleaseKind.STABLE and victim.stable is not None:
            stop_release(self.runtime, victim.stable, drain=2.0)
            victim.stable = victim.stable_hash = victim.stable_record = None
        victim.event = ("Preempted", f"{kind} release preempted for a higher-priority team")

    def _launch(self, spec: ReleaseSpec, allocation: Allocation | None = None) -> None:
        """The one place a release is started: each of its replicas, the first being
        ``spec``. With ``allocation`` each replica runs on the GPUs booked for it;
        without, a replica that runs (or ran) keeps its own spec (adopted)."""
        self.runtime.start(spec)
        for k, name in enumerate(replica_names(spec)[1:], start=1):
            known = self.runtime.releases.get(name)
            if allocation is not None and k < len(allocation.replicas):
                replica = _on(replace(spec, name=name, replica=k), allocation.replicas[k])
            elif known is not None:
                replica = known.spec
            else:
                replica = replace(spec, name=name, replica=k)
            self.runtime.start(replica)

    def _release_spec(
        self, model: Model, wanted: str, bento: str, allocation: Allocation
    ) -> ReleaseSpec:
        spec = ReleaseSpec(
            name=f"{model.name}/{wanted[:10]}",
            model=model.name,
            version=model.version,
            bento=bento,
            ready_timeout=model.ready_timeout,
            probe=model.probe,
            replicas=max(1, len(allocation.replicas)),
        )
        return _on(spec, allocation.replicas[0]) if allocation.replicas else spec

    def _start(
        self, run: Run, model: Model, wanted: str, tree: Tree, now: float, *, kind: ReleaseKind
    ) -> tuple[ReleaseSpec, Release] | None:
        """Build, book GPUs for and launch ``model``'s ``kind`` release; None while it
        waits for GPUs (the condition says why)."""
        assert self.snapshot is not None
        adopt = self.adopt_preview
        adopted = adopt(model.name, wanted) if kind is ReleaseKind.CANARY and adopt else None
        if adopted is not None:  # the preview's booking is the canary's, its release returned
            log.info("%s: the preview of %s becomes the canary", model.name, model.version)
        # the same spec hash is the same bento: the preview's needs no build request
        bento = adopted or self._build(run, model, tree)
        if bento is None:
            return None
        allocation = self._place(run, model, kind, now)
        if allocation is None:
            return None
        spec = self._release_spec(model, wanted, bento, allocation)
        run.pull = self._pull()
        record = Release(
            model.version, bento, iso(now), spec.name, wanted, self.snapshot.revision, run.pull
        )
        first = kind is ReleaseKind.STABLE
        self._journal(
            Intent(
                model.name,
                IntentKind.DEPLOY if first else IntentKind.START_CANARY,
                now,
                stable=run.stable.name if run.stable is not None else None,
                canary=spec.name,
                spec_hash=wanted,
                record=record,
            )
        )
        if first:
            crash_point("deploy.after-intent")
        else:
            crash_point("canary.after-intent")
        self._launch(spec, allocation)
        if first:
            crash_point("deploy.after-launch")
        else:
            crash_point("canary.after-launch")
        return spec, record

    def _journal(self, intent: Intent) -> None:
        """Write ``intent`` before its first side effect. A move that makes things
        safer (rollback, abort) goes on when the disk refuses; any other does not
        start (raises :class:`TransientError`), since it could not be finished
        after a crash."""
        try:
            self.journal.write(intent)
        except TransientError as exc:
            if not intent.kind.safe:
                raise
            log.error("%s: %s; going on (it takes traffic back to the stable)", intent.model, exc)
        self.journaled.add(intent.model)

    def _deploy(self, run: Run, model: Model, wanted: str, tree: Tree, now: float) -> None:
        started = self._start(run, model, wanted, tree, now, kind=ReleaseKind.STABLE)
        if started is None:
            return
        run.stable, run.stable_record = started
        run.stable_hash = wanted
        run.event = ("Deploying", f"starting {model.version} ({run.stable_record.bento})")

    def _re_place(self, run: Run, model: Model, now: float) -> None:
        """The stable's node is gone: abort a canary (nothing to compare it with), and
        place the same release again through the ledger, with the usual quotas and
        reasons (it waits for GPUs like any release when none are left)."""
        assert run.stable is not None
        lost = self.runtime.releases.get(run.stable.name)
        why = lost.reason if lost is not None else "node lost"
        if run.replacing is None:
            run.event = ("NodeLost", f"{run.stable.name}: {why}; placing it again")
        run.replacing = why
        if run.driver is not None:
            self._abort(run, f"the stable release was lost ({why})", now)
        self.route(run.name, RouteConfig())
        run.conditions.append(Condition(ConditionType.READY, False, Reason.NODE_LOST, why))
        self.book.free(run.name, ReleaseKind.STABLE, now)
        crash_point("replace.after-free")
        allocation = self._place(run, model, ReleaseKind.STABLE, now)
        if allocation is None:
            return
        spec = run.stable
        if allocation.replicas:
            spec = _on(run.stable, allocation.replicas[0])
        self._launch(spec, allocation)
        crash_point("replace.after-launch")
        run.stable = spec
        run.event = ("Replaced", f"{spec.name} placed again on {spec.node or 'this machine'}")

    def _await(self, run: Run, now: float) -> None:
        assert run.stable is not None
        release = self.runtime.releases.get(run.stable.name)
        if release is not None and release.state is State.READY:
            self.route(run.name, RouteConfig.of(ready_addresses(self.runtime, run.stable)))
            run.event = ("Deployed", f"{run.stable.version} serves all traffic")
            if run.replacing is not None:
                run.event = ("Recovered", f"{run.stable.name} serves all traffic again")
                run.replacing = None
        elif release is None or release.state is State.FAILED:
            reason = release.reason if release is not None else "the release is gone"
            self._stop_stable(run, now)
            raise PermanentError(
                f"the first release never became ready: {reason}", reason=Reason.NOT_READY
            )
        else:
            run.conditions.append(
                Condition(
                    "Ready",
                    False,
                    "Starting" if run.replacing is None else "NodeLost",
                    f"{run.stable.name} is {release.state}"
                    + (f" again ({run.replacing})" if run.replacing else ""),
                )
            )

    def _stop_stable(self, run: Run, now: float) -> None:
        if run.stable is not None:
            stop_release(self.runtime, run.stable, drain=2.0)
        self.book.free(run.name, ReleaseKind.STABLE, now)
        run.stable = run.stable_hash = run.stable_record = None

    def _start_canary(self, run: Run, model: Model, wanted: str, tree: Tree, now: float) -> None:
        started = self._start(run, model, wanted, tree, now, kind=ReleaseKind.CANARY)
        if started is None:
            return
        spec, run.canary_record = started
        driver = self._driver(model, run)
        driver.begin(run.stable, spec, wanted)
        run.driver, run.finished = driver, None
        run.event = (
            "CanaryStarted",
            f"canary {model.version} ({run.canary_record.bento}) beside stable",
        )
        release = self.runtime.releases.get(spec.name)
        if release is not None and release.state is State.READY:  # a preview, warm:
            self._tick(run, now)  # its warm-up is judged now, not a pass later
            run.event = (
                "CanaryStarted",
                f"canary {model.version} ({run.canary_record.bento}): the pull request's "
                "preview, already warm",
            )

    def _driver(self, model: Model, run: Run) -> RolloutDriver:
        assert self.load is not None

        def decide(state: CanaryState, actions: tuple[Action, ...]) -> None:
            promote = any(a.kind is ActionKind.PROMOTE for a in actions)
            driver = run.driver
            self._journal(
                Intent(
                    run.name,
                    IntentKind.PROMOTE if promote else IntentKind.ROLLBACK,
                    self.clock(),
                    stable=driver.stable.name if driver and driver.stable else None,
                    canary=driver.canary.name if driver and driver.canary else None,
                    spec_hash=state.spec_hash,
                    record=run.canary_record,
                    state=state_to_dict(state),
                    reason=state.reason or "",
                )
            )

        return RolloutDriver(
            model.name,
            self.load.desired.policies[model.rollout],
            self.runtime,
            self.router,
            pins=self.pins,
            prometheus=self.parts.prometheus,
            clock=self.clock,
            tick_runtime=False,  # the pass ticks the runtime once for all models
            route=self.route,
            decide=decide,
        )

    def _adopt_driver(self, run: Run, model: Model) -> None:
        """Take over a canary recorded before a restart, at its recorded step and weight."""
        assert self.load is not None
        assert run.resume is not None
        canary, state = run.resume
        self._launch(canary)  # adopted: returned as it runs
        driver = self._driver(model, run)
        driver.begin(run.stable, canary, state.spec_hash, state)
        run.driver, run.resume = driver, None
        run.event = ("Resumed", f"canary resumed at step {state.step + 1}, weight {state.weight}%")

    def _tick(self, run: Run, now: float) -> None:
        driver = run.driver
        assert driver is not None
        before = len(driver.state.verdicts) if driver.state else 0
        previous_manual = len(driver.manual)
        state, actions = driver.tick(manual=run.command)
        run.command = None
        for verdict in state.verdicts[before:]:
            key = (run.name, str(verdict.outcome))
            self.verdicts[key] = self.verdicts.get(key, 0) + 1
        deciding = judge_pending(driver.policy, state, now)
        if deciding is not None:
            waits, message = deciding
            reason = Reason.WAITING_FOR_TRAFFIC if waits else Reason.DECIDING
            run.conditions.append(Condition(ConditionType.JUDGED, False, reason, message))
        for manual in driver.manual[previous_manual:]:
            run.event = (
                f"Manual{manual.command.capitalize()}",
                f"{manual.command} by {manual.who}",
            )
        self._after_actions(run, state, actions, now)

    def _after_actions(
        self, run: Run, state: CanaryState, actions: tuple[Action, ...], now: float
    ) -> None:
        driver = run.driver
        assert driver is not None
        if state.phase is CanaryPhase.PROMOTED:
            run.stable, run.stable_hash = driver.stable, state.spec_hash
            run.stable_record = run.canary_record
            self.book.promote(run.name, now)
            crash_point("promote.after-book")
            run.driver, run.finished, run.canary_record = None, state, None
            run.event = ("Promoted", state.reason or "all steps passed")
        elif state.phase is CanaryPhase.ROLLED_BACK:
            self.book.free(run.name, ReleaseKind.CANARY, now)
            crash_point("rollback.after-free")
            run.driver, run.finished, run.canary_record = None, state, None
            run.event = ("RolledBack", state.reason or "the analysis failed")

    def _abort(self, run: Run, reason: str, now: float) -> None:
        driver = run.driver
        if driver is None:
            return
        self._journal(
            Intent(
                run.name,
                IntentKind.ABORT,
                now,
                stable=driver.stable.name if driver.stable else None,
                canary=driver.canary.name if driver.canary else None,
                spec_hash=driver.state.spec_hash if driver.state else None,
                reason=reason,
            )
        )
        crash_point("abort.after-intent")
        canary = driver.addresses(driver.canary)
        self.route(run.name, RouteConfig.of(driver.addresses(driver.stable)))
        crash_point("abort.after-route")
        if driver.canary is not None:
            drain_all(self.router, run.name, canary)
            stop_release(self.runtime, driver.canary, drain=2.0)
        crash_point("abort.after-stop-canary")
        self.book.free(run.name, ReleaseKind.CANARY, now)
        run.driver, run.canary_record, run.finished = None, None, None
        run.event = ("CanaryAborted", reason)

    def _steady(self, run: Run, move: Move, now: float) -> None:
        release = self.runtime.releases.get(run.stable.name) if run.stable else None
        addresses = ready_addresses(self.runtime, run.stable)
        self.route(run.name, RouteConfig.of(addresses))
        if run.stable is not None and run.stable.replicas > 1:
            self._heal(run, len(addresses))
        address = addresses[0] if addresses else None
        if address is not None and run.replacing is not None:
            again = run.stable.name if run.stable is not None else run.name
            run.event = ("Recovered", f"{again} serves all traffic again")
            run.replacing = None
        if address is None and run.stable is not None:
            state = release.state if release is not None else "gone"
            run.conditions.append(
                Condition(
                    ConditionType.READY,
                    False,
                    Reason.STABLE_NOT_READY,
                    f"{run.stable.name} is {state}",
                )
            )
        manual, run.command = run.command, None
        if manual is not None:
            run.manual.append(manual)
            if manual.command == "retry" and move is Move.PINNED:
                self.pins.unpin(run.name)
                run.failed = None
                run.event = ("ManualRetry", f"retry by {manual.who}: the pin is lifted")
            else:
                run.event = (
                    "CommandIgnored",
                    f"{manual.command} by {manual.who}: no canary is under way",
                )

    def _heal(self, run: Run, ready: int) -> None:
        """A release of several replicas: one that stopped for good is started again
        on the GPUs booked for it (one that crashed is restarted by the runtime);
        while not all are ready the model says so, and keeps serving from the others."""
        assert run.stable is not None
        names = replica_names(run.stable)
        gone = [
            n
            for n in names
            if (r := self.runtime.releases.get(n)) is None
            or r.state in (State.STOPPED, State.FAILED)
        ]
        if gone:
            allocation = self.book.allocation(run.name, ReleaseKind.STABLE)
            log.warning("%s: replicas %s are gone; starting them again", run.name, gone)
            self._launch(run.stable, allocation)
        if ready < len(names):
            run.conditions.append(
                Condition(
                    ConditionType.READY,
                    False,
                    Reason.REPLICAS_NOT_READY,
                    f"{ready} of {len(names)} replicas of {run.stable.name} ready; "
                    "the others are restarting",
                )
            )

    def _prune(self, run: Run, now: float) -> None:
        self._abort(run, "removed from git", now)
        if run.name in self.routes:
            serving = ready_addresses(self.runtime, run.stable)
            self.route(run.name, RouteConfig())
            drain_all(self.router, run.name, serving)
        self._stop_stable(run, now)
        self.pins.unpin(run.name)
        self.monitoring.forget(run.name)
        run.event = ("Pruned", "removed from git: releases stopped, GPUs freed")

    def failed(self, run: Run, entry: ModelPlan, exc: MdcError, now: float) -> None:
        if isinstance(exc, TransientError):
            run.retry_at = now + (exc.retry_after or 10.0)
        elif entry.spec_hash is not None:  # stalled until the spec changes or a retry
            run.failed = (entry.spec_hash, exc.reason, exc.message)
            self.pins.pin(run.name, entry.spec_hash, exc.message, now)
        run.conditions.append(Condition(ConditionType.READY, False, exc.reason, exc.message))
        run.event = ("Error", f"{exc.reason}: {exc.message}")
        log.warning("%s: %s: %s", run.name, exc.reason, exc.message)


def _on(spec: ReleaseSpec, replica: tuple[Slice, ...]) -> ReleaseSpec:
    """``spec`` placed on one replica's share of the GPUs the ledger booked; a
    CPU-only replica (no slice) on none: it is started seeing no GPU."""
    return replace(
        spec,
        env=launch_env(replica),
        gpus=tuple(s.gpu for s in replica),
        node=replica[0].node if replica else None,
        gpu_share=sum(s.units for s in replica) / 1000,
    )
