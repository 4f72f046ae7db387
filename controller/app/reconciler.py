"""The reconcile pass: keeps what runs equal to what git says, one model at a time.

Owns :class:`Reconciler` -- the adapters of one controller (git source and
status branch, packager, runtime, router, GPU ledgers, pins, a reporter) and
:meth:`Reconciler.run_pass`, which reads like the pass in DESIGN.md:

    fetch -> load desired -> observe -> plan (pure) -> execute per model
          -> watch the running versions (:mod:`controller.app.monitoring`)
          -> summarize (pure) -> record on the status branch -> report

Each model's moves run in their own ``try``: one model's failure is a condition
on that model, never the end of the pass. Every side effect is recorded before
the pass ends (status files hold the canary's state, the GPUs held and the
release names), so a controller killed at any point resumes from the status
branch and the runtime's process table: same step, same weight, same GPUs.

Called by :mod:`controller.app.daemon` (``mdc run``); the end-to-end tests drive
it pass by pass.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import yaml

from controller.adapters.git.source import (
    PollResult,
    Snapshot,
)
from controller.adapters.runtime.base import ReleaseSpec, State, replica_names
from controller.app.background import Pusher
from controller.app.commit_statuses import revision_sha
from controller.app.crashpoints import crash_point
from controller.app.finishing import Finisher
from controller.app.intents import Journal
from controller.app.manual import Pins, read_command
from controller.app.monitoring import Monitoring
from controller.app.moves import Moves
from controller.app.parts import Parts, Settings
from controller.app.pool_book import PoolBook
from controller.app.previews import Previews
from controller.app.recovery import Run, recover
from controller.app.status_writes import StatusWrites
from controller.core.allocation import ReleaseKind
from controller.core.inventory import (
    NodeChange,
)
from controller.core.ledger import Ledger
from controller.core.plan import (
    ModelPlan,
    Move,
    Observed,
    PhaseFacts,
    PlanInput,
    make_plan,
    next_status,
    phase_for,
    spec_hash,
)
from controller.core.preview import PreviewWish
from controller.core.status import (
    Condition,
    ModelStatus,
    commit_message,
    model_path,
    render,
)
from controller.core.timestamps import iso
from controller.core.traffic import ObservedTraffic
from controller.errors import ConditionType, MdcError, Reason, TransientError
from controller.spec.documents import Diagnostic, Limits
from controller.spec.identity import planned_bento_tag
from controller.spec.kinds import GPUPool, Model
from controller.spec.loader import LoadResult, SnapshotLoader
from controller.spec.tree import Tree

__all__ = ["PassResult", "Reconciler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    revision: str | None
    plan: tuple[ModelPlan, ...]
    failed: tuple[str, ...]  # models whose moves raised
    poll: PollResult | None
    seconds: float
    diagnostics: tuple[Diagnostic, ...] = ()
    nodes: tuple[NodeChange, ...] = ()  # nodes that joined or left a pool in this pass

    @property
    def ok(self) -> bool:
        return (
            not self.failed
            and not self.diagnostics
            and (self.poll is None or self.poll.error is None)
        )


class Reconciler:
    """One controller's pass over its adapters (see the module docstring)."""

    def __init__(self, parts: Parts, settings: Settings) -> None:
        self.parts = parts
        self.state_dir = settings.state_dir
        self.clock = parts.clock
        self.source = parts.source
        self.poller = parts.poller
        self.status = parts.status
        self.packager = parts.packager
        self.runtime = parts.runtime
        self.router = parts.router
        self.reporter = parts.reporter
        self.pins = Pins(self.state_dir)
        # untrusted files are read under a time budget (each refused past it)
        self.loader = SnapshotLoader(Limits(clock=time.monotonic))
        self.book = PoolBook(self.runtime, self.status, nvml=parts.nvml, node=settings.node)
        self.runs: dict[str, Run] = {}
        self.statuses: dict[str, ModelStatus] = {}
        self.monitoring = Monitoring(
            self.router, self.status, self.state_dir, nvml=parts.nvml, node=settings.node
        )
        self.snapshot: Snapshot | None = None
        self.load: LoadResult | None = None
        self.last: PassResult | None = None
        self.passes = 0
        self.writes = StatusWrites()
        self._hashes: dict[str, tuple[str, str, str]] = {}  # tree -> model -> (hash, bento)
        self._hash_tree: str | None = None
        self.journal = Journal(self.state_dir)
        self._settings, self._node = settings, settings.node
        self.statuses, self.runs = recover(self.source, self.status, self.runtime, self.journal)
        self.book.recover(self.statuses)
        self.moves = Moves(parts, settings, self.book, self.pins, self.monitoring, self.runs)
        #: pull requests' previews on mirrored traffic (fed by the GitHub reporter)
        self.previews = Previews(
            self.moves, self.source, self.status, self.reporter.on_preview, self.clock
        )
        self.moves.adopt_preview = self.previews.adopt
        self.moves.preview_preempted = self.previews.preempted
        self._checked_running = False  # bookings checked against what runs (first pass)
        #: the daemon polls in a thread of its own and hands results to run_pass
        self.polls_elsewhere = False
        #: pushes the status branch in a thread of its own (else pushed in the pass)
        self.pusher: Pusher | None = None
        self.git_fault: Condition | None = None  # while the release branch cannot be read
        self.state_fault: Condition | None = None  # while the status cannot be saved
        self._forced: tuple[str, str] | None = None  # a force-push not yet told
        #: status changes not committed yet (the disk was full): model -> change
        self._unsaved: dict[str, tuple[ModelStatus, bytes | None, ModelStatus | None]] = {}

    def take_over(self) -> None:
        """This controller took the repository's lease from another: what it knew
        is stale, so read again what the status branch records (and what runs),
        as a controller that starts does."""
        self.statuses, self.runs = recover(self.source, self.status, self.runtime, self.journal)
        self.book = PoolBook(self.runtime, self.status, nvml=self.parts.nvml, node=self._node)
        self.book.recover(self.statuses)
        self.moves = Moves(
            self.parts, self._settings, self.book, self.pins, self.monitoring, self.runs
        )
        self.previews.moves = self.moves
        self.moves.adopt_preview = self.previews.adopt
        self.moves.preview_preempted = self.previews.preempted
        self._checked_running = False

    def wish_preview(self, wish: PreviewWish) -> None:
        """A pull request's wish for previews (any thread: queued for the loop)."""
        self.previews.wish(wish)

    @property
    def routes(self) -> dict[str, str]:
        """Model -> the router's URL for it."""
        return self.moves.routes

    def traffic(self, now: float) -> dict[str, ObservedTraffic]:
        """Each model's traffic as its stable version saw it today (the monitor's):
        what the PR plan sizes a canary's verdict time with."""
        out = {}
        for name, monitor in list(self.monitoring.monitors.items()):
            observed = monitor.traffic(now)
            if observed is not None:
                out[name] = observed
        return out

    @property
    def verdicts(self) -> dict[tuple[str, str], int]:
        """(model, outcome) -> analysis intervals judged so far."""
        return self.moves.verdicts

    @property
    def ledgers(self) -> dict[str, tuple[GPUPool, Ledger]]:
        """Each pool's ledger (the pool book's), for the metrics and the dashboard."""
        return self.book.ledgers

    # -- the pass ------------------------------------------------------------------

    def run_pass(self, fetch: bool = True, poll: PollResult | None = None) -> PassResult:
        """One pass. ``poll``: a poll made elsewhere (the daemon's fetcher thread),
        used instead of polling here; else ``fetch`` polls in this thread."""
        started = time.monotonic()
        now = self.clock()
        if poll is None and (fetch or self.snapshot is None) and not self.polls_elsewhere:
            poll = self.poller.poll(now)
        if poll is not None:
            self.snapshot = poll.snapshot or self.snapshot
            self._took_poll(poll, now)
        if self.snapshot is None:
            result = PassResult(None, (), (), poll, time.monotonic() - started)
            self.last = result
            return result
        tree = self.source.tree(self.snapshot)
        self.load = load = self.loader.load(tree, self.snapshot.tree)
        self.moves.begin_pass(self.snapshot, load)
        desired = load.desired
        for event in self.runtime.tick(now):
            log.info("release %s: %s: %s", event.release, event.kind, event.message)
        self.book.begin_pass(desired, self.statuses)
        for run in self.runs.values():
            run.event, run.conditions = None, []
        self._finish_moves(now)
        if not self._checked_running:
            self._checked_running = self._check_running(desired.models, now)
        nodes, lost = self.book.refresh(now)
        for allocation in lost:
            self.runs.get(allocation.release.partition("/")[0], Run("")).event = (
                "NodeLost",
                f"{allocation.release} lost its GPUs with its node",
            )
        hashes = self._spec_hashes(desired.models, tree)
        # a model whose spec cannot be hashed is held as invalid, never pruned as gone
        unhashed = {n: err for n, (_, _, err) in self._hashes.items() if err}
        for name, why in unhashed.items():
            self.runs.setdefault(name, Run(name)).conditions.append(
                Condition(ConditionType.SPEC_VALID, False, Reason.SPEC_INVALID, why)
            )
        invalid = frozenset(ref.name for ref in load.invalid if ref.kind == "Model") | set(unhashed)
        plan = make_plan(
            PlanInput(
                desired={name: h for name, (h, _) in hashes.items()},
                invalid=invalid,
                prune_safe=not load.unreadable,
                observed={name: self._observe(run) for name, run in self.runs.items()},
            )
        )
        failed: list[str] = []
        for entry in plan:
            run = self.runs.setdefault(entry.model, Run(entry.model))
            run.command = read_command(self.state_dir, entry.model)  # once a pass
            model = desired.models.get(entry.model)
            try:
                self.moves.execute(entry, run, model, hashes.get(entry.model), tree, now)
            except MdcError as exc:
                failed.append(entry.model)
                self.moves.failed(run, entry, exc, now)
            except Exception as exc:  # an unexpected bug: transient, with its traceback
                log.error("%s: %s\n%s", entry.model, exc, traceback.format_exc())
                failed.append(entry.model)
                self.moves.failed(
                    run, entry, TransientError(str(exc), reason=Reason.INTERNAL_ERROR), now
                )
        for name in failed:  # a move that broke half-way is finished by the next pass
            if name in self.moves.journaled:
                self.runs[name].intent = self.journal.get(name)
                self.moves.journaled.discard(name)
        self.previews.tick(now, {name: h for name, (h, _) in hashes.items()})
        self._watch(desired.models, now)
        self._record(plan, desired.models, now)
        result = PassResult(
            self.snapshot.revision,
            plan,
            tuple(failed),
            poll,
            time.monotonic() - started,
            load.diagnostics,
            tuple(nodes),
        )
        self.passes += 1
        self.last = result
        return result

    def _took_poll(self, poll: PollResult, now: float) -> None:
        """What a poll says beyond its snapshot: git unreachable (a condition on every
        model while it lasts) and a force-push (recorded and told once)."""
        if poll.error is not None:
            since = poll.since_good
            self.git_fault = Condition(
                ConditionType.GIT_READ,
                False,
                poll.error.reason or Reason.GIT_UNAVAILABLE,
                f"the release branch is not read ({poll.failures} polls failed"
                + (f", last good {since:.0f}s ago" if since is not None else "")
                + f"); what runs is kept: {poll.error.message}",
            )
        else:
            self.git_fault = None
        if poll.forced and poll.previous and poll.snapshot is not None:
            self._forced = (poll.previous, poll.snapshot.commit)

    def _record_force_push(self, now: float) -> None:
        """A force-push: a commit on the status branch (the history keeps it) and the
        pull requests hear of it; commit statuses it ended are ended."""
        if self._forced is None or self.snapshot is None:
            return
        previous, current = self._forced
        document = {
            "branch": self.snapshot.branch,
            "tip": current,
            "forcePushedFrom": previous,
            "at": iso(now),
        }
        self.status.commit(
            {f"branches/{self.snapshot.branch}.yaml": yaml.safe_dump(document).encode()},
            f"force-push on {self.snapshot.branch}: {previous[:12]} -> {current[:12]}"
            " (not a descendant; rollouts of the old commits ended)",
            {"Force-Push": f"{previous} {current}"},
        )
        self._forced = None
        try:
            self.reporter.on_force_push(previous, current)
        except MdcError as exc:
            log.warning("force-push not reported: %s", exc.message)

    def _finish_moves(self, now: float) -> None:
        """Finish the moves a previous controller (or a pass that broke) left half
        done (:class:`~controller.app.finishing.Finisher`), before anything is planned."""
        for run in list(self.runs.values()):
            intent, run.intent = run.intent, None
            if intent is None:
                continue
            try:
                Finisher(self.moves).finish(run, intent, now)
            except Exception as exc:  # a full disk, say: tried again next pass
                run.intent = intent
                reason = exc.reason if isinstance(exc, MdcError) else Reason.INTERNAL_ERROR
                run.conditions.append(Condition(ConditionType.READY, False, reason, str(exc)))
                log.warning("%s: unfinished %s not finished: %s", run.name, intent.kind, exc)

    def _check_running(self, models: Mapping[str, Model], now: float) -> bool:
        """After a restart: GPU bookings against the releases that run (the pool book
        books a running release again, drops a booking whose release is gone), and
        releases that no model claims are stopped. False when a pool could not be
        read (checked again next pass)."""
        running: dict[tuple[str, ReleaseKind], tuple[ReleaseSpec, ...]] = {}
        claimed: set[str] = set()
        for name, run in self.runs.items():
            canary = run.driver.canary if run.driver is not None else None
            if canary is None and run.resume is not None:
                canary = run.resume[0]
            for kind, spec in ((ReleaseKind.STABLE, run.stable), (ReleaseKind.CANARY, canary)):
                names = replica_names(spec) if spec is not None else ()
                claimed.update(names)
                releases = [self.runtime.releases.get(n) for n in names]
                running[(name, kind)] = tuple(
                    r.spec for r in releases if r is not None and r.state is not State.STOPPED
                )
        try:
            problems = self.book.match_running(running, models, now)
        except Exception as exc:  # a pool that cannot be read: checked when it can be
            log.warning("bookings not checked against the running releases: %s", exc)
            return False
        for name, problem in problems:
            self.runs[name].conditions.append(
                Condition(ConditionType.GPUS, False, Reason.UNBOOKED, problem)
            )
        for release_name, release in list(self.runtime.releases.items()):
            if release_name in claimed or release.state in (State.STOPPED, State.FAILED):
                continue
            log.warning("%s runs but no model claims it: stopped", release_name)
            self.runtime.stop(release_name, drain=2.0)
            owner = self.runs.get(release.spec.model)
            if owner is not None:
                owner.event = ("OrphanStopped", f"{release_name} ran unclaimed after a restart")
        return True

    def _spec_hashes(self, models: Mapping[str, Model], tree: Tree) -> dict[str, tuple[str, str]]:
        """Model -> (spec hash, planned bento tag), computed once per tree."""
        assert self.snapshot is not None
        if self._hash_tree != self.snapshot.tree:
            computed: dict[str, tuple[str, str, str]] = {}
            for name, model in models.items():
                try:
                    bento = planned_bento_tag(model, tree)
                except MdcError as exc:
                    computed[name] = ("", "", exc.message)
                    continue
                except Exception as exc:  # a bug or a value nothing caught: this model only
                    log.error("%s: spec hash: %s\n%s", name, exc, traceback.format_exc())
                    computed[name] = ("", "", f"{type(exc).__name__}: {exc}")
                    continue
                computed[name] = (spec_hash(model, bento), bento, "")
            self._hashes, self._hash_tree = computed, self.snapshot.tree
        return {n: (h, b) for n, (h, b, err) in self._hashes.items() if not err}

    def _observe(self, run: Run) -> Observed:
        ready = False
        release = None
        if run.stable is not None:
            release = self.runtime.releases.get(run.stable.name)
            ready = release is not None and release.state is State.READY
        canary = run.driver.state if run.driver is not None else None
        if canary is None and run.resume is not None:
            canary = run.resume[1]
        lost = None
        if run.stable is not None and release is not None and release.state is State.FAILED:
            lost = release.reason if release.reason.startswith("node lost") else None
        return Observed(run.stable_hash, ready, canary, self.pins.get(run.name), lost)

    # -- after promotion -----------------------------------------------------------------

    def _watch(self, models: Mapping[str, Model], now: float) -> None:
        """Judge each running stable release (:mod:`controller.app.monitoring`); one
        model's trouble is a condition on it, never the end of the pass."""
        assert self.load is not None
        for name, run in list(self.runs.items()):
            run.monitor_events = []
            model = models.get(name)
            release = self.runtime.releases.get(run.stable.name) if run.stable else None
            if model is None or release is None or release.state is not State.READY:
                continue
            if name not in self.routes or run.stable is None:
                continue
            allocation = self.book.allocation(name, ReleaseKind.STABLE)
            try:
                events, conditions = self.monitoring.watch(
                    model,
                    self.load.desired.policies.get(model.rollout),
                    run.stable,
                    run.driver.canary if run.driver is not None else None,
                    allocation,
                    self.statuses.get(name),
                    now,
                )
            except MdcError as exc:
                run.conditions.append(
                    Condition(ConditionType.MONITORED, False, exc.reason, exc.message)
                )
                continue
            except Exception as exc:  # a bug: logged, the pass goes on
                log.error("%s: monitor: %s\n%s", name, exc, traceback.format_exc())
                continue
            run.monitor_events = events
            run.conditions += conditions

    def monitor_view(self) -> list[dict[str, Any]]:
        """Every monitored model: live states, values and its latest rollups."""
        return self.monitoring.view()

    # -- summarize and record ----------------------------------------------------------

    def _record(self, plan: tuple[ModelPlan, ...], models: Mapping[str, Model], now: float) -> None:
        assert self.snapshot is not None
        assert self.load is not None
        revision = self.snapshot.revision
        changes: list[tuple[ModelStatus, bytes | None, ModelStatus | None]] = []
        for entry in plan:
            run = self.runs[entry.model]
            previous = self.statuses.get(entry.model)
            if entry.move is Move.PRUNE:
                if previous is not None:
                    changes.append((previous, None, previous))
                    del self.statuses[entry.model]
                self.runs.pop(entry.model, None)
                continue
            try:
                status = self._summarize(
                    entry, run, models.get(entry.model), previous, revision, now
                )
            except Exception as exc:  # a bug: this model's status waits, the others go on
                log.error("%s: status: %s\n%s", entry.model, exc, traceback.format_exc())
                continue
            if previous is None or render(status) != render(previous):
                self.statuses[entry.model] = status
                changes.append((status, render(status), previous))
        changed = {status.name for status, _, _ in changes}
        changes = [c for n, c in self._unsaved.items() if n not in changed] + changes
        try:
            self._record_force_push(now)
            self._commit_changes(changes, revision)
            self.monitoring.commit_rollups()
        except TransientError as exc:  # the disk is full, say: kept, committed later
            if self.state_fault is None or self.state_fault.message != exc.message:
                log.error("status not saved (kept, tried again next pass): %s", exc.message)
            self.state_fault = Condition(
                ConditionType.STATE_SAVED, False, exc.reason, f"{exc.message} (retried every pass)"
            )
            # the statuses stay what is true (the API shows them); the commits wait
            self._unsaved = {status.name: (status, raw, prev) for status, raw, prev in changes}
            return
        self._unsaved = {}
        if self.state_fault is not None:
            log.warning("status saved again")
            self.state_fault = None
        for name in sorted(self.moves.journaled):  # the outcome is recorded now
            self.journal.clear(name)
        self.moves.journaled.clear()
        crash_point("status.after-commit")
        if self.pusher is not None:
            if self.status.pending():
                self.pusher.kick()
        else:
            self.writes.push(self.status, now)
        crash_point("status.after-push")
        for status, raw, previous in changes:
            try:
                if raw is None:
                    self.reporter.on_removed(status)
                else:
                    self.reporter.on_status(previous, status)
            except MdcError as exc:
                log.warning("report for %s failed: %s", status.name, exc.message)
        crash_point("status.after-report")
        try:
            self.reporter.drain()
        except MdcError as exc:
            log.warning("reporter: %s", exc.message)

    def _commit_changes(
        self, changes: list[tuple[ModelStatus, bytes | None, ModelStatus | None]], revision: str
    ) -> None:
        for status, raw, _ in changes:
            if raw is None:
                subject, trailers = f"{status.name}: removed (pruned)", {"Model": status.name}
            else:
                subject, trailers = commit_message(status, revision)
                watched = self.runs.get(status.name)
                if watched is not None and watched.monitor_events:
                    event, message = watched.monitor_events[-1]
                    subject = f"{status.name}: {event}: {message}"[:200]
                    trailers = trailers | {"Monitor": event}
            self.status.commit({model_path(status.name): raw}, subject, trailers)

    def faults(self) -> list[Condition]:
        """The controller's own faults, said on every model's status while they last."""
        faults = [f for f in (self.git_fault, self.state_fault) if f is not None]
        trouble = self.reporter.fault()
        if trouble is not None:
            reason, message = trouble
            faults.append(Condition(ConditionType.REPORTED, False, reason, message))
        return faults + self.writes.conditions()

    def _late_pull(self, run: Run) -> None:
        """The PR behind the release being rolled out, when the reporter did not know
        it yet as the release started (GitHub slow: it answers off the loop)."""
        record = run.canary_record or run.stable_record
        sha = revision_sha(record.revision) if record is not None else None
        if record is None or sha is None or record.pull_request is not None:
            return
        try:
            number = self.reporter.pull_request_for(sha)
        except MdcError:
            return
        if number is None:
            return
        run.pull = number
        if run.canary_record is record:
            run.canary_record = replace(record, pull_request=number)
        else:
            run.stable_record = replace(record, pull_request=number)

    def _summarize(  # noqa: PLR0917
        self,
        entry: ModelPlan,
        run: Run,
        model: Model | None,
        previous: ModelStatus | None,
        revision: str,
        now: float,
    ) -> ModelStatus:
        holds = self.book.holds(run.name)
        if run.pull is None:
            self._late_pull(run)
        state = run.driver.state if run.driver is not None else run.finished
        policy = None
        if model is not None and self.load is not None:
            policy = self.load.desired.policies.get(model.rollout)
        stable_ready = False
        if run.stable is not None:
            release = self.runtime.releases.get(run.stable.name)
            stable_ready = release is not None and release.state is State.READY
        phase = phase_for(
            PhaseFacts(
                move=entry.move,
                canary=state.phase if state is not None else None,
                previous=previous.phase if previous is not None else None,
                failed=run.failed is not None and run.failed[0] == entry.spec_hash,
                has_stable=run.stable is not None,
                stable_ready=stable_ready,
                waiting_for_gpus=any(c.reason == Reason.WAITING_FOR_GPUS for c in run.conditions),
                building=any(c.reason == Reason.BUILDING for c in run.conditions),
                replacing=run.replacing is not None,
                # the judge still deciding is news, not trouble
                troubled=any(c.type != ConditionType.JUDGED for c in run.conditions),
            )
        )
        applied = entry.spec_hash is not None and entry.spec_hash == run.stable_hash
        return next_status(
            previous,
            run.name,
            now=now,
            phase=phase,
            model=model,
            revision=revision,
            applied=applied,
            stable=run.stable_record if run.stable is not None else None,
            canary=run.canary_record,
            state=state,
            steps=len(policy.steps) if policy is not None else None,
            gpus=holds,
            gpu_hours=self.book.hours_of(run.name),
            conditions=[*run.conditions, *self.faults()],
            event=run.event,
            pull_request=run.pull,
            monitor=self.monitoring.record(run.name, run.stable.name) if run.stable else None,
            monitor_events=run.monitor_events,
            endpoint=self.moves.routes.get(run.name),
        )

    # -- shutting down -------------------------------------------------------------

    def close(self, stop_releases: bool = False) -> None:
        """Let go of the router and the releases, which keep serving (the next
        controller adopts them); with ``stop_releases``, stop the router (after the
        requests in flight) and then every release."""
        if stop_releases:
            self.router.shutdown()
            self.runtime.stop_all(drain=2.0)
        else:
            self.router.close()
