"""Pull-request previews: a pull request's version of a model, run beside the
stable one on mirrored live traffic, its answers compared with the stable's.

Owns :class:`Previews`: the wishes the GitHub reporter hands over from webhook
events (:meth:`Previews.wish`, thread-safe: a PR opened or pushed to, closed,
merged, or ``/mdc preview stop|restart``), and once a pass on the loop
(:meth:`Previews.tick`) each preview's life:

    wished -> built (off the loop) -> booked (preview class: free GPUs only)
           -> started and warmed like a canary -> comparing (the router mirrors
           ``preview.share`` percent of the stable's requests and pairs the answers)
           -> ended (closed, head changed, stopped) or handed over (merged)

A pull request previews each Model it changes whose rollout policy has a
``preview`` and whose stable release serves; one preview per model at a time
(another PR changing the same model waits, and says so). The comparison
(:mod:`controller.core.preview`) is reported through the reporter
(:meth:`~controller.app.reporting.Reporter.on_preview`: a section of mdc's PR
comment and the commit status ``mdc/preview`` on the head), on every change of
state and at most once a minute in between, and its last figures are committed
to the status branch (``previews/MODEL.yaml``) when the preview ends.

The preview's release has the name the canary of the same spec gets, so when
the previewed head is merged, the canary *is* the preview:
:meth:`Previews.adopt` (called by :meth:`~controller.app.moves.Moves._start`
before a canary is booked) turns its booking into the canary's, and the
runtime returns the running release instead of starting another. Previews are
not recorded in model status: after a restart the unclaimed release is stopped
(the reconciler does so for every release no model claims) and the next event
of the pull request previews it again.

Called by the reconciler (:meth:`tick` after each pass's moves) and the moves
(:meth:`adopt`); fed by :class:`~controller.app.reporting.PullRequests`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from traceback import format_exc

import yaml

from controller.adapters.git.source import GitSource, Snapshot
from controller.adapters.git.status_branch import StatusBranch
from controller.adapters.packaging import Source
from controller.adapters.runtime.base import ReleaseSpec, State
from controller.app.moves import Moves
from controller.app.rollout import stop_release
from controller.core.allocation import ReleaseKind
from controller.core.plan import spec_hash
from controller.core.preview import (
    Comparison,
    PairBook,
    PreviewJudgement,
    PreviewReport,
    PreviewState,
    PreviewWish,
    judge,
    render_markdown,
)
from controller.core.timestamps import iso
from controller.core.traffic import PairingConfig
from controller.errors import MdcError, PermanentError
from controller.spec.documents import Limits
from controller.spec.identity import planned_bento_tag
from controller.spec.kinds import Model, Preview, PreviewOutput
from controller.spec.loader import SnapshotLoader, load_desired

__all__ = ["Previews"]

log = logging.getLogger(__name__)

#: Seconds between two reports of a preview whose state did not change.
REPORT_EVERY = 60.0
#: Seconds between two judgements of a preview's pairs.
JUDGE_EVERY = 1.0
#: Seconds a merged PR's warm preview waits for the canary it becomes.
HANDOVER_WAIT = 180.0


@dataclass
class _Preview:
    model: Model
    number: int
    head: str
    bounds: Preview
    output: PreviewOutput
    spec_hash: str
    bento: str
    snapshot: Snapshot
    started: float
    pairs: PairBook
    release: ReleaseSpec | None = None
    hold: float = 0.0  # seconds it stays ready before it is mirrored to (warm-up)
    ready_at: float | None = None  # when it was first seen ready
    phase: str = "building"  # building, waiting, starting, comparing
    why: str = ""  # while building or waiting: what it waits for
    judgement: PreviewJudgement | None = None
    comparison: Comparison | None = None  # as of ``judged_at``
    judged_at: float = float("-inf")
    reported: tuple[str, str] | None = None  # (state, description) last reported
    reported_at: float = float("-inf")
    handover_until: float | None = None  # merged: kept for the canary until then
    failed: str = ""  # why it could not run (its bento, its release)

    @property
    def key(self) -> tuple[int, str]:
        return (self.number, self.model.name)


#: a model a PR changes and previews: (model, bounds, output, spec hash, bento, tree,
#: the policy's warm-up hold in seconds)
_Candidate = tuple[Model, Preview, PreviewOutput, str, str, str, float]


@dataclass
class _Wanted:
    """A PR's wish as the loop keeps it: its head and what it previews."""

    number: int
    head: str
    base: str
    stopped_by: str = ""  # a person stopped its previews
    models: dict[str, str] = field(default_factory=dict)  # model -> why it waits
    candidates: list[_Candidate] | None = None  # what it previews, once read
    failed: dict[str, str] = field(default_factory=dict)  # model -> why its preview failed


class Previews:
    """The previews of one controller (see the module docstring)."""

    def __init__(
        self,
        moves: Moves,
        source: GitSource,
        status: StatusBranch,
        report: Callable[[PreviewReport], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.moves = moves
        self.source = source
        self.status = status
        self.report = report
        self.clock = clock
        self.loader = SnapshotLoader(Limits(clock=time.monotonic))
        self.inbox: queue.Queue[PreviewWish] = queue.Queue()
        self.released: dict[str, str] = {}  # model -> spec hash on the release branch
        self.wanted: dict[int, _Wanted] = {}
        self.running: dict[str, _Preview] = {}  # model -> its preview
        self.ended: list[dict[str, object]] = []  # the last ended, for `mdc preview`

    # -- from other threads ---------------------------------------------------------

    def wish(self, wish: PreviewWish) -> None:
        """Hand a pull request's wish to the loop (any thread)."""
        self.inbox.put(wish)

    # -- on the loop ------------------------------------------------------------------

    def tick(self, now: float, released: Mapping[str, str] | None = None) -> None:
        """Once a pass: take the wishes, then move each preview on. ``released``:
        each model's spec hash on the release branch (a head merged there is the
        canary's business, never previewed again)."""
        self.released = dict(released or {})
        while True:
            try:
                wish = self.inbox.get_nowait()
            except queue.Empty:
                break
            try:
                self._take(wish, now)
            except MdcError as exc:
                log.warning("PR #%d: preview not started: %s", wish.number, exc.message)
            except Exception as exc:  # a bug: this wish only, never the pass
                log.error("PR #%d: preview wish: %s\n%s", wish.number, exc, format_exc())
        for wanted in list(self.wanted.values()):
            if not wanted.stopped_by:
                try:
                    self._want(wanted, now)
                except MdcError as exc:
                    log.warning("PR #%d: preview: %s", wanted.number, exc.message)
                except Exception as exc:  # a bug: this PR's previews only, never the pass
                    log.error("PR #%d: preview: %s\n%s", wanted.number, exc, format_exc())
        for name, preview in list(self.running.items()):
            try:
                self._step(preview, now)
            except PermanentError as exc:  # its bento cannot be built, say: it failed
                self._fail(preview, exc.message, now)
            except MdcError as exc:
                log.warning("%s: preview of PR #%d: %s", name, preview.number, exc.message)
                preview.why = exc.message
            except Exception as exc:  # a bug: this preview only, never the pass
                log.error("%s: preview of PR #%d: %s\n%s", name, preview.number, exc, format_exc())
                preview.why = f"{type(exc).__name__}: {exc}"

    def adopt(self, model: str, wanted: str) -> str | None:
        """The canary of ``model`` at spec hash ``wanted`` is about to be booked and
        started: a preview of that very spec becomes it -- its booking is the
        canary's, and the runtime returns its release (warm, or still starting)
        instead of starting another. Its bento tag when it did (the same spec hash
        is the same bento: nothing to build); a preview not started yet gives way
        (None: the canary is built and started as usual)."""
        preview = self.running.get(model)
        if preview is None or preview.spec_hash != wanted:
            return None
        now = self.clock()
        if preview.release is None:  # built or booked, not started: nothing to hand over
            self.moves.book.free(model, ReleaseKind.PREVIEW, now)
            self._end(preview, "merged before it started: the canary starts instead", now)
            return None
        if not self.moves.book.convert(model, ReleaseKind.PREVIEW, ReleaseKind.CANARY):
            return None
        self.moves.preview_route(model, None)
        self._end(preview, "handed over: its release is the canary now", now)
        return preview.release.bento

    def preempted(self, model: str) -> None:
        """The ledger gave ``model``'s preview's GPUs to a release: it stops (and is
        started again when GPUs are free, as long as the pull request wants it)."""
        preview = self.running.get(model)
        if preview is not None:
            self._stop(preview, "preempted: its GPUs went to a release that serves", self.clock())

    # -- wishes -----------------------------------------------------------------------

    def _take(self, wish: PreviewWish, now: float) -> None:
        wanted = self.wanted.get(wish.number)
        if wish.closed:
            self.wanted.pop(wish.number, None)
            for preview in self._of(wish.number):
                if wish.merged and preview.phase == "comparing":
                    preview.handover_until = now + HANDOVER_WAIT
                else:
                    self._stop(preview, "the pull request was closed", now)
            return
        if wish.command == "stop":
            if wanted is not None:
                wanted.stopped_by = wish.who or "someone"
            for preview in self._of(wish.number):
                self._stop(preview, f"stopped by {wish.who or 'someone'}", now)
            return
        if wish.command == "restart":
            if wanted is not None:
                wanted.stopped_by = ""
                wanted.failed.clear()
            for preview in self._of(wish.number):
                self._stop(preview, f"restarted by {wish.who or 'someone'}", now)
            return
        if wanted is not None and wanted.head == wish.head:
            return
        for preview in self._of(wish.number):  # a new head: the old one goes
            self._stop(preview, f"the pull request's head moved to {wish.head[:12]}", now)
        self.wanted[wish.number] = _Wanted(wish.number, wish.head, wish.base)

    def _of(self, number: int) -> list[_Preview]:
        return [p for p in self.running.values() if p.number == number]

    def _want(self, wanted: _Wanted, now: float) -> None:
        """Start a preview of each model the PR changes that is not previewed yet."""
        if wanted.candidates is None:
            wanted.candidates = self._candidates(wanted)
        for model, bounds, output, wanted_hash, bento, tree_id, hold in wanted.candidates:
            name = model.name
            if name in wanted.failed:
                wanted.models[name] = f"its preview failed: {wanted.failed[name]}"
                continue
            current = self.running.get(name)
            if current is not None:
                if current.number != wanted.number:
                    wanted.models[name] = f"PR #{current.number} is previewing {name}"
                continue
            why = self.moves.serving(name, wanted_hash)
            if self.released.get(name) == wanted_hash:
                why = f"the release branch has {name} {model.version} already"
            if why:
                wanted.models[name] = why
                continue
            wanted.models.pop(name, None)
            snapshot = Snapshot(f"pull/{wanted.number}", wanted.head, tree_id, now)
            self.running[name] = _Preview(
                model,
                wanted.number,
                wanted.head,
                bounds,
                output,
                wanted_hash,
                bento,
                snapshot,
                now,
                PairBook(output),
                hold=hold,
            )

    def _candidates(self, wanted: _Wanted) -> list[_Candidate]:
        """The models ``wanted``'s head changes whose policy previews them."""
        try:
            base_tree, head_tree = (self.source.tree_at(c) for c in (wanted.base, wanted.head))
        except KeyError as exc:
            log.warning("PR #%d: %s is not in the mirror: no preview", wanted.number, exc)
            return []
        head_load = self.loader.load(head_tree, head_tree.tree_id)
        base_models = load_desired(base_tree).desired.models
        out: list[_Candidate] = []
        for name, model in sorted(head_load.desired.models.items()):
            policy = head_load.desired.policies.get(model.rollout)
            if policy is None or policy.preview is None:
                continue
            if model.preview is None:
                log.info("PR #%d: %s names no field to compare: not previewed", wanted.number, name)
                continue
            bento = planned_bento_tag(model, head_tree)
            wanted_hash = spec_hash(model, bento)
            before = base_models.get(name)
            unchanged = (
                before is not None
                and spec_hash(before, planned_bento_tag(before, base_tree)) == wanted_hash
            )
            if unchanged:
                continue
            out.append(
                (
                    model,
                    policy.preview,
                    model.preview,
                    wanted_hash,
                    bento,
                    head_tree.tree_id,
                    policy.warmup_hold or 0.0,
                )
            )
        return out

    # -- a preview's life -------------------------------------------------------------

    def _step(self, preview: _Preview, now: float) -> None:
        name = preview.model.name
        if preview.handover_until is not None and now > preview.handover_until:
            self._stop(preview, "merged, but no canary of it started in time", now)
            return
        if preview.phase in ("building", "waiting"):
            self._start(preview, now)
        if preview.release is not None:  # starting or comparing: it must still run
            release = self.moves.runtime.releases.get(preview.release.name)
            if release is None or release.state in (State.FAILED, State.STOPPED):
                reason = release.reason if release is not None else "it is gone"
                self._fail(preview, f"its release failed: {reason or 'it stopped'}", now)
                return
            if preview.phase == "starting" and release.state is State.READY:
                preview.ready_at = now if preview.ready_at is None else preview.ready_at
            if preview.phase == "starting" and release.state is not State.READY:
                preview.ready_at = None  # the warm-up holds while it stays ready
            warm = preview.ready_at is not None and now - preview.ready_at >= preview.hold
            if preview.phase == "starting" and warm:
                preview.phase = "comparing"
                self.moves.preview_route(name, (release.address, preview.bounds.share))
                self.moves.router.pair(name, PairingConfig(frozenset(preview.output.sensitive)))
        if preview.phase == "comparing":
            preview.pairs.add(self.moves.router.pairs(name))
            if now - preview.judged_at >= JUDGE_EVERY:
                self._judge(preview, now)
        self._report(preview, now)

    def _judge(self, preview: _Preview, now: float) -> None:
        preview.comparison = preview.pairs.comparison()
        preview.judgement = judge(preview.comparison, preview.bounds)
        preview.judged_at = now

    def _start(self, preview: _Preview, now: float) -> None:
        model = preview.model
        source = Source(self.source.remote.display, f"pull/{preview.number}@sha1:{preview.head}")
        bento = self.moves.build_preview(model, preview.snapshot, source)
        if bento is None:
            preview.phase, preview.why = "building", f"building the bento of {model.version}"
            return
        booking = self.moves.book.place(model, ReleaseKind.PREVIEW, now)
        if booking.allocation is None:
            preview.phase = "waiting"
            preview.why = f"waiting for free GPUs: {booking.waiting}"
            return
        spec = self.moves.release_spec(model, preview.spec_hash, bento, booking.allocation)
        self.moves.launch(spec, booking.allocation)
        preview.release, preview.phase, preview.why = spec, "starting", ""

    def _fail(self, preview: _Preview, why: str, now: float) -> None:
        """The preview cannot run (its bento cannot be built, its release fails): said
        as ``mdc/preview`` failure, and not started again for this head unless a
        person asks (``/mdc preview restart``)."""
        preview.failed = why
        wanted = self.wanted.get(preview.number)
        if wanted is not None and wanted.head == preview.head:
            wanted.failed[preview.model.name] = why
        self._stop(preview, why, now)

    def _stop(self, preview: _Preview, why: str, now: float) -> None:
        name = preview.model.name
        if preview.release is not None:
            self.moves.preview_route(name, None)
            if not self.moves.claims(preview.release.name):  # never a release that serves
                stop_release(self.moves.runtime, preview.release, drain=1.0)
        self.moves.book.free(name, ReleaseKind.PREVIEW, now)
        self._end(preview, why, now)

    def _end(self, preview: _Preview, why: str, now: float) -> None:
        name = preview.model.name
        self.running.pop(name, None)
        if preview.phase == "comparing":
            assert preview.release is not None
            release = self.moves.runtime.releases.get(preview.release.name)
            if release is None or release.state is State.FAILED:
                reason = release.reason if release is not None else "it is gone"
                self._fail(preview, f"its release failed: {reason or 'it stopped'}", now)
                return
            preview.pairs.add(self.moves.router.pairs(name))
            self.moves.router.pair(name, None)
            self._judge(preview, now)
        self._report(preview, now, ended=why)
        self._record(preview, why, now)

    # -- what is said of it -----------------------------------------------------------

    def view(self, preview: _Preview) -> tuple[str, str]:
        """(state, description) of a preview as the commit status says it."""
        if preview.failed:
            return str(PreviewState.FAILURE), f"the preview failed: {preview.failed}"[:140]
        if preview.judgement is not None:
            return str(preview.judgement.state), preview.judgement.description
        what = {
            "building": preview.why or "building",
            "waiting": preview.why,
            "starting": "starting the preview release"
            if preview.ready_at is None
            else f"warming up: ready, held {preview.hold:g}s before traffic is mirrored",
        }.get(preview.phase, preview.phase)
        return str(PreviewState.PENDING), what[:140]

    def _report(self, preview: _Preview, now: float, ended: str = "") -> None:
        state, description = self.view(preview)
        due = now - preview.reported_at >= REPORT_EVERY
        if not ended and (state, description) == preview.reported:
            return
        if not ended and not due and preview.reported is not None and state == preview.reported[0]:
            return
        section = self._section(preview, preview.comparison, ended)
        try:
            self.report(
                PreviewReport(
                    preview.number, preview.head, preview.model.name, state, description, section
                )
            )
        except MdcError as exc:
            log.warning("preview of %s not reported: %s", preview.model.name, exc.message)
            return
        preview.reported, preview.reported_at = (state, description), now

    def _section(self, preview: _Preview, comparison: Comparison | None, ended: str) -> str:
        model = preview.model
        if comparison is not None and preview.judgement is not None:
            text = render_markdown(
                model.name, model.version, preview.head, comparison, preview.judgement
            )
        else:
            text = f"#### Preview of `{model.name}` {model.version}: ⏳ {self.view(preview)[1]}"
        if ended:
            text += f"\n\nThe preview ended: {ended}."
        return text

    def _record(self, preview: _Preview, why: str, now: float) -> None:
        """The last figures on the status branch (``previews/MODEL.yaml``)."""
        state, description = self.view(preview)
        record: dict[str, object] = {
            "model": preview.model.name,
            "version": preview.model.version,
            "pullRequest": preview.number,
            "head": preview.head,
            "state": state,
            "description": description,
            "started": iso(preview.started),
            "ended": iso(now),
            "why": why,
        }
        if preview.judgement is not None and preview.comparison is not None:
            record["comparison"] = preview.comparison.to_record()
            record["reasons"] = list(preview.judgement.reasons)
        self.ended = [record, *self.ended][:20]
        try:
            self.status.commit(
                {f"previews/{preview.model.name}.yaml": yaml.safe_dump(record).encode()},
                f"{preview.model.name}: preview of #{preview.number} ended: {state}",
                {"Preview": f"#{preview.number} {preview.head}", "Model": preview.model.name},
            )
        except MdcError as exc:
            log.warning("preview of %s not recorded: %s", preview.model.name, exc.message)

    def views(self) -> list[dict[str, object]]:
        """Running previews and the last ended ones, for ``mdc preview`` and the dashboard."""
        out: list[dict[str, object]] = []
        for name, preview in sorted(self.running.items()):
            state, description = self.view(preview)
            row: dict[str, object] = {
                "model": name,
                "version": preview.model.version,
                "pullRequest": preview.number,
                "head": preview.head,
                "phase": preview.phase,
                "state": state,
                "description": description,
                "started": iso(preview.started),
            }
            if preview.judgement is not None and preview.comparison is not None:
                row["comparison"] = preview.comparison.to_record()
                row["reasons"] = list(preview.judgement.reasons)
            out.append(row)
        return out + [{**record, "phase": "ended"} for record in self.ended]
