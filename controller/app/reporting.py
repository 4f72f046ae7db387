"""What mdc says and hears on GitHub pull requests, in the manner of Atlantis.

Owns :class:`PullRequests`, the controller's GitHub reporter:

* on a PR to the release branch (``opened``, ``synchronize``, ``reopened``): the
  plan of merging it (:mod:`controller.core.pr_plan`) upserted as one comment --
  found again by its hidden marker, never a new comment per push -- and the
  commit status ``mdc/plan`` on its head (failure blocks the merge when the
  change cannot be applied);
* after the merge: the same comment gains the rollout's progress and each
  interval's verdicts (metric values against thresholds), and ``mdc/rollout``
  on the commit the model's status names goes pending, then success or failure
  (a rollout under way follows that commit when a later one lands);
* a rollout that ends before its own commit's final status -- its model moved on to a
  later commit, was removed from git, or the commit was force-pushed away -- ends
  that commit's ``mdc/rollout`` too (``error``, saying why): no commit stays pending
  for ever. Which commits mdc left pending is kept across restarts
  (:mod:`controller.app.commit_statuses`), and a force-push is told on the PRs whose
  rollout it ended, in a "Force-pushed" section of their comment;
* after a rollback, optionally, a revert PR that puts the last good spec back;
* after promotion, when an objective of the running version is breached or its
  predictions drift (:mod:`controller.core.monitor`): a monitor section in the
  comment of the PR that brought that version, and ``mdc/monitor`` failing on
  its merge commit; recovery updates both. Nothing is posted while nothing
  changes;
* ``/mdc promote``, ``/mdc abort``, ``/mdc pause``, ``/mdc resume`` and
  ``/mdc retry`` comments from users with write access act on the rollout of
  that PR's models (checked through the API; others get a polite refusal).

Webhook events arrive on the server thread and are queued; they are handled
in the controller's loop (:meth:`drain`, once a pass), so git and GitHub are
only touched from one thread. A report GitHub did not take (5xx, rate limit)
is kept and sent again on the next pass -- never dropped.

Called by :mod:`controller.app.reconciler` (as its reporter) and ``mdc run``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from controller.adapters.git.source import GitSource
from controller.adapters.github.client import GitHubReporter
from controller.adapters.github.webhook import Event, IssueCommentEvent, PullRequestEvent, PushEvent
from controller.app.commit_statuses import PendingCommits, revision_sha, rollout_state
from controller.app.manual import Pins, send_command
from controller.core.canary import state_from_dict
from controller.core.pr_plan import MARKER, plan_change, render_markdown
from controller.core.preview import PreviewReport, PreviewWish
from controller.core.safe_text import md_code, md_text, visible
from controller.core.status import HistoryEntry, ModelStatus, Phase, model_path
from controller.core.traffic import ObservedTraffic
from controller.errors import MdcError, PermanentError, Reason, TransientError

__all__ = [
    "COMMANDS",
    "FORCE_PUSH_MARKER",
    "MONITOR_MARKER",
    "PREVIEW_MARKER",
    "ROLLOUT_MARKER",
    "NullReporter",
    "PullRequests",
    "Reporter",
    "monitor_state",
    "parse_command",
    "render_force_push",
    "render_monitor",
    "render_rollout",
    "rollout_state",
]

log = logging.getLogger(__name__)

#: Splits the plan (above) from the rollout's progress (below) in the PR comment.
ROLLOUT_MARKER = "<!-- mdc:rollout -->"
#: Splits the rollout (above) from the running version's monitor (below).
MONITOR_MARKER = "<!-- mdc:monitor -->"
#: Opens the section that tells of force-pushes (between the rollout and the monitor).
FORCE_PUSH_MARKER = "<!-- mdc:force-push -->"
#: Opens the section of the pull request's previews (below the plan, above the rollout).
PREVIEW_MARKER = "<!-- mdc:preview -->"
_SECTIONS = (PREVIEW_MARKER, ROLLOUT_MARKER, FORCE_PUSH_MARKER, MONITOR_MARKER)  # in order
_MONITOR_EVENTS = ("ObjectiveBreached", "ObjectiveRecovered", "DriftDetected", "DriftRecovered")
COMMANDS = ("promote", "abort", "pause", "resume", "retry")
_PREVIEW_VERBS = ("stop", "restart")  # /mdc preview VERB
_PR_ACTIONS = ("opened", "synchronize", "reopened", "edited")
_MARKS = {"pass": "✅", "fail": "❌"}
#: After GitHub failed transiently, seconds it is left alone (reports are kept meanwhile).
QUIET_SECONDS = 5.0
#: What GitHub says of a report that can never be taken (an unknown commit, a deleted PR).
_HOPELESS = frozenset({Reason.GITHUB_INVALID, "GitHubNotFound", "GitHubGone"})


def parse_command(body: str) -> str | None:
    """The ``/mdc VERB`` a comment asks for (first line that starts with /mdc), if any."""
    for line in body.splitlines():
        words = line.strip().split()
        if len(words) >= 2 and words[0] == "/mdc" and words[1] in COMMANDS:
            return words[1]
        if words[:2] == ["/mdc", "preview"] and len(words) >= 3 and words[2] in _PREVIEW_VERBS:
            return f"preview {words[2]}"
    return None


def render_rollout(statuses: list[ModelStatus]) -> str:
    """The rollout part of a PR comment: one section per model the PR changed."""
    parts = [ROLLOUT_MARKER, "## mdc rollout"]
    for status in sorted(statuses, key=lambda s: s.name):
        version = status.canary.version if status.canary else None
        if version is None and status.stable is not None:
            version = status.stable.version
        head = f"### {md_code(status.name)} {md_text(version or '')}: **{md_text(status.phase)}**"
        if status.step is not None and status.steps:
            head += f", step {status.step}/{status.steps}, weight {status.weight}%"
        parts.append(head)
        for condition in status.conditions:
            if not condition.status:
                parts.append(f"- {md_text(condition.reason)}: {md_text(condition.message)}")
        state = None
        if status.canary_state is not None:
            try:
                state = state_from_dict(status.canary_state)
            except ValueError:
                state = None
        if state is not None and state.verdicts:
            parts += ["", "| interval ended | weight | outcome | checks |", "|---|---|---|---|"]
            for verdict in state.verdicts:
                checks = "; ".join(
                    f"{md_text(c.check)} {_MARKS.get(str(c.outcome), '…')} {md_text(c.message)}"
                    for c in verdict.checks
                )
                at = time.strftime("%H:%M:%S", time.gmtime(verdict.at))
                parts.append(
                    f"| {at} | {md_text(verdict.weight)}% | {md_text(verdict.outcome)} | {checks} |"
                )
        if state is not None and state.reason:
            parts.append(f"\n{md_text(state.reason)}")
        if status.history:
            parts.append("\n<details><summary>history</summary>\n")
            parts += [_history_line(h) for h in status.history[:10]]
            parts.append("\n</details>")
    return "\n".join(parts) + "\n"


def _history_line(h: HistoryEntry) -> str:
    return f"- {md_text(h.at)} {md_text(h.event)}: {md_text(h.message)}"


def render_monitor(statuses: list[ModelStatus]) -> str:
    """The monitor part of a PR comment: how the versions the PR brought are doing."""
    parts = [MONITOR_MARKER, "## mdc monitor"]
    for status in sorted(statuses, key=lambda s: s.name):
        record = status.monitor or {}
        version = status.stable.version if status.stable is not None else ""
        breached = record.get("breached") or {}
        drifting = record.get("drifting") or {}
        if breached or drifting:
            parts.append(f"### {md_code(status.name)} {md_text(version)}: ❌ **needs attention**")
            parts += [
                f"- objective **{md_text(name)}** breached since {md_text(at)}"
                for name, at in breached.items()
            ]
            parts += [
                f"- predictions ({md_code(key)}) drifting since {md_text(at)}"
                for key, at in drifting.items()
            ]
        else:
            parts.append(
                f"### {md_code(status.name)} {md_text(version)}: ✅ objectives met, "
                "predictions steady"
            )
        events = [h for h in status.history if h.event in _MONITOR_EVENTS][:6]
        parts += [_history_line(h) for h in events]
    return "\n".join(parts) + "\n"


def render_force_push(notes: list[str]) -> str:
    """The force-push part of a PR comment: one line per force-push that ended a rollout."""
    return "\n".join([FORCE_PUSH_MARKER, "## Force-pushed", *notes]) + "\n"


def _split(body: str | None) -> tuple[str, dict[str, str]]:
    """An mdc comment's plan part and each of its marked sections (marker first)."""
    if body is None:
        return MARKER, {}
    found = sorted((body.find(marker), marker) for marker in _SECTIONS if marker in body)
    sections = {}
    for index, (at, marker) in enumerate(found):
        end = found[index + 1][0] if index + 1 < len(found) else len(body)
        sections[marker] = body[at:end].strip() + "\n"
    return (body[: found[0][0]] if found else body).rstrip(), sections


def _join(plan: str, sections: Mapping[str, str]) -> str:
    return plan + "\n\n" + "\n".join(sections[m] for m in _SECTIONS if m in sections)


def monitor_state(statuses: list[ModelStatus]) -> tuple[str, str]:
    """The commit status ``mdc/monitor`` and its description, over the models one
    merge commit brought."""
    troubles = []
    for status in sorted(statuses, key=lambda s: s.name):
        record = status.monitor or {}
        troubles += [f"{status.name} {name} breached" for name in record.get("breached") or {}]
        troubles += [f"{status.name} {key} drifting" for key in record.get("drifting") or {}]
    if troubles:
        return "failure", ", ".join(troubles)
    names = ", ".join(sorted(s.name for s in statuses))
    return "success", f"{names}: objectives met, no drift"


class Reporter(Protocol):
    """Where a pass's news goes besides the status branch (GitHub, or nowhere)."""

    def pull_request_for(self, commit: str) -> int | None:
        """The pull request that brought ``commit`` to the release branch, if any."""
        ...

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        """A model's status changed (and is already on the status branch)."""
        ...

    def on_removed(self, status: ModelStatus) -> None:
        """A model was removed from git (pruned); ``status`` is its last status."""
        ...

    def on_force_push(self, previous: str, current: str) -> None:
        """The release branch was force-pushed from ``previous`` to ``current`` (full SHAs)."""
        ...

    def on_preview(self, report: PreviewReport) -> None:
        """A pull request's preview of a model has news (its comparison so far)."""
        ...

    def drain(self) -> None:
        """Once a pass, after the statuses: retry what failed, handle queued events."""
        ...

    def fault(self) -> tuple[str, str] | None:
        """(reason, message) while reports cannot be delivered; None when they can."""
        ...


class Reported(Protocol):
    """What the GitHub reporter reads of the controller it reports for."""

    @property
    def statuses(self) -> Mapping[str, ModelStatus]:
        """Every model's last status."""
        ...

    @property
    def source(self) -> GitSource:
        """The release branch's source (its mirror holds the specs a revert puts back)."""
        ...

    @property
    def state_dir(self) -> Path:
        """Where pins, manual commands and the commits left pending live."""
        ...

    def traffic(self, now: float) -> Mapping[str, ObservedTraffic]:
        """Each model's traffic as its stable version saw it today."""
        ...

    def wish_preview(self, wish: PreviewWish) -> None:
        """Hand a pull request's preview wish to the controller's loop (thread-safe)."""
        ...


class NullReporter:
    """Reports go to the status branch and the log only."""

    def pull_request_for(self, commit: str) -> int | None:
        return None

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        return None

    def on_removed(self, status: ModelStatus) -> None:
        return None

    def on_force_push(self, previous: str, current: str) -> None:
        return None

    def on_preview(self, report: PreviewReport) -> None:
        return None

    def drain(self) -> None:
        return None

    def fault(self) -> tuple[str, str] | None:
        return None


class PullRequests:
    """The GitHub reporter of one controller (see the module docstring)."""

    def __init__(
        self,
        github: GitHubReporter,
        *,
        branch: str,
        revert_prs: bool = False,
        target_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.github = github
        self.clock = clock
        self.branch = branch
        self.revert_prs = revert_prs
        self.target_url = target_url
        self.reconciler: Reported | None = None
        self.events: queue.Queue[Event] = queue.Queue()
        self._pulls: dict[str, int | None] = {}
        #: model -> phase, step, weight (and the commit, while its rollout is pending there)
        self._reported: dict[str, tuple[str, int | None, int, str | None]] = {}
        self._unsent: dict[str, ModelStatus] = {}
        self._quiet_until = 0.0  # after a transient failure, GitHub is left alone until then
        self._last_error: MdcError | None = None  # while reports wait for GitHub
        self._reverted: set[str] = set()
        self._monitored: dict[str, str] = {}  # model -> the monitor record last reported
        self._unsent_monitor: dict[str, ModelStatus] = {}
        #: the commits whose mdc/rollout was left pending (kept in the state directory)
        self.pending = PendingCommits()
        self._force_notes: dict[int, list[str]] = {}  # PR -> force-push lines not yet posted
        #: PR -> model -> its preview's last report; and the reports GitHub did not take
        self._previews: dict[int, dict[str, PreviewReport]] = {}
        self._unsent_previews: dict[tuple[int, str], PreviewReport] = {}

    def bind(self, reconciler: Reported) -> None:
        """Report for ``reconciler`` from now on.

        The commits a previous controller left pending are read back from the state
        directory (or, from a state directory older than that record, taken from the
        recorded statuses); those whose model has moved on or is gone meanwhile are
        ended on the next :meth:`drain`, and a model whose final report on such a commit
        may not have reached GitHub is reported again."""
        self.reconciler = reconciler
        statuses = dict(reconciler.statuses)
        for name, status in statuses.items():
            # what a previous controller recorded was reported then: only changes now
            self._monitored[name] = json.dumps(status.monitor, sort_keys=True)
        state_dir = getattr(reconciler, "state_dir", None)
        if state_dir is not None and not self.pending.load(state_dir):
            self.pending.seed(statuses)
        for name in self.pending.catch_up(statuses):
            self._unsent[name] = statuses[name]  # its final report may not have been sent

    def close(self) -> None:
        self.github.close()

    # -- webhook side (server thread): queue only -----------------------------------

    def __call__(self, event: Event) -> None:
        if not isinstance(event, PushEvent):
            self.events.put(event)

    # -- the Reporter protocol (controller thread) ------------------------------------

    def pull_request_for(self, commit: str) -> int | None:
        if commit not in self._pulls:
            try:
                numbers = self.github.pulls_for_commit(commit)
            except PermanentError:  # GitHub does not know the commit (pushed elsewhere)
                numbers = []
            self._pulls[commit] = min(numbers) if numbers else None
        return self._pulls[commit]

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        self._on_monitor(status)
        if self.pending.moved_on(status):  # superseded: the commit it left is ended
            self._send_endings()
        sha = revision_sha(status.attempted_revision)
        pending = rollout_state(status) == "pending"
        key = (str(status.phase), status.step, status.weight, sha if pending else None)
        if self._reported.get(status.name) == key and status.name not in self._unsent:
            return
        if self.clock() < self._quiet_until:  # GitHub is down: do not stall the pass on it
            self._unsent[status.name] = status
            return
        try:
            self._report(status)
        except MdcError as exc:
            self._unsent[status.name] = status
            if isinstance(exc, TransientError):
                self._quiet_until = self.clock() + max(QUIET_SECONDS, exc.retry_after)
                self._last_error = exc
            log.warning("GitHub report for %s kept for later: %s", status.name, exc.message)
            return
        self._unsent.pop(status.name, None)
        self._reported[status.name] = key

    def on_removed(self, status: ModelStatus) -> None:
        """The model is gone from git: the commit its rollout was under way at is ended."""
        name = status.name
        for kept in (self._unsent, self._unsent_monitor, self._reported):
            kept.pop(name, None)
        if self.pending.removed(name):
            self._send_endings()

    def on_force_push(self, previous: str, current: str) -> None:
        """Every commit left pending other than ``current`` is ended (``force-pushed
        away`` when it left the branch), and each PR whose rollout at a commit that left
        the branch was under way is told so in its comment."""
        log.warning("force-push on %s: %s -> %s", self.branch, previous[:12], current[:12])

        def on_branch(sha: str) -> bool:
            source = getattr(self.reconciler, "source", None)
            with contextlib.suppress(MdcError, OSError, LookupError, ValueError):
                return source is not None and bool(source.is_descendant(current, sha))
            return False

        statuses = self.reconciler.statuses if self.reconciler is not None else {}
        told = self.pending.force_pushed(self.branch, current, on_branch, statuses)
        for number, commits in sorted(told.items()):
            notes = self._force_notes.setdefault(number, [])
            for sha, models in sorted(commits.items()):
                listed = ", ".join(md_code(name) for name in sorted(models))
                notes.append(
                    f"- {md_code(self.branch)} was force-pushed from {md_code(previous[:7])} "
                    f"to {md_code(current[:7])}: the rollout of {listed} at {md_code(sha[:7])} "
                    f"ended, as that commit left the branch; mdc follows "
                    f"{md_code(current[:7])} now."
                )
        self._send_endings()
        self._send_force_notes()

    def _kept(self, exc: MdcError, what: str) -> bool:
        """Whether a report GitHub did not take is kept for later (False: it never can be)."""
        if exc.reason in _HOPELESS:
            log.warning("GitHub report of %s dropped: %s", what, exc.message)
            return False
        if isinstance(exc, TransientError):
            self._quiet_until = self.clock() + max(QUIET_SECONDS, exc.retry_after)
            self._last_error = exc
        log.warning("GitHub report of %s kept for later: %s", what, exc.message)
        return True

    def _send_endings(self) -> None:
        """The final ``mdc/rollout`` of each commit no rollout is under way at any more."""
        for sha, description in self.pending.endings():
            if self.clock() < self._quiet_until:
                return
            try:
                self.github.set_status(sha, "mdc/rollout", "error", description, self.target_url)
            except MdcError as exc:
                if self._kept(exc, f"the end of {sha[:12]}'s rollout"):
                    continue
            self.pending.ended(sha)

    def _send_force_notes(self) -> None:
        """The force-push lines not yet in their PR's comment, added to its section."""
        for number, notes in list(self._force_notes.items()):
            if self.clock() < self._quiet_until:
                return
            try:
                existing = self.github.find_comment(number, MARKER)
                plan, sections = _split(existing.body if existing is not None else None)
                said = sections.get(FORCE_PUSH_MARKER, "").splitlines()
                said = [line for line in said if line.startswith("- ")]
                sections[FORCE_PUSH_MARKER] = render_force_push(
                    said + [note for note in notes if note not in said]
                )
                self.github.upsert_comment(number, _join(plan, sections), MARKER)
            except MdcError as exc:
                if self._kept(exc, f"the force-push on #{number}"):
                    continue
            del self._force_notes[number]

    def _on_monitor(self, status: ModelStatus) -> None:
        """A change of the running version's monitor record: the PR that brought the
        version hears of it (and of the recovery); nothing while nothing changes."""
        key = json.dumps(status.monitor, sort_keys=True)
        if self._monitored.get(status.name, "null") == key:
            self._unsent_monitor.pop(status.name, None)
            return
        stable = status.stable
        if stable is None or (stable.pull_request is None and stable.revision is None):
            self._monitored[status.name] = key
            return
        if self.clock() < self._quiet_until:
            self._unsent_monitor[status.name] = status
            return
        try:
            self._report_monitor(status)
        except MdcError as exc:
            self._unsent_monitor[status.name] = status
            if isinstance(exc, TransientError):
                self._quiet_until = self.clock() + max(QUIET_SECONDS, exc.retry_after)
                self._last_error = exc
            log.warning("GitHub monitor report for %s kept: %s", status.name, exc.message)
            return
        self._unsent_monitor.pop(status.name, None)
        self._monitored[status.name] = key

    def _report_monitor(self, status: ModelStatus) -> None:
        stable = status.stable
        assert stable is not None
        known = list(self.reconciler.statuses.values()) if self.reconciler is not None else []
        others = [s for s in known if s.name != status.name and s.stable is not None]
        sha = revision_sha(stable.revision)
        if sha is not None:
            same = [s for s in others if s.stable and s.stable.revision == stable.revision]
            state, description = monitor_state([status, *same])
            self.github.set_status(sha, "mdc/monitor", state, description, self.target_url)
        number = stable.pull_request
        if number is None:
            return
        brought = [s for s in others if s.stable and s.stable.pull_request == number]
        existing = self.github.find_comment(number, MARKER)
        plan, sections = _split(existing.body if existing is not None else None)
        sections[MONITOR_MARKER] = render_monitor([status, *brought])
        self.github.upsert_comment(number, _join(plan, sections), MARKER)

    def fault(self) -> tuple[str, str] | None:
        """(reason, message) while reports wait for GitHub; None when none waits."""
        waiting = set(self._unsent) | set(self._unsent_monitor)
        if not waiting:
            self._last_error = None
            return None
        error = self._last_error
        why = f": {error.message}" if error is not None else ""
        reason = (error.reason if error is not None else None) or Reason.GITHUB_UNAVAILABLE
        return reason, f"GitHub reports of {len(waiting)} model(s) kept for later{why}"

    def drain(self) -> None:
        """Once a pass: reports GitHub did not take, then the queued webhook events."""
        if self.clock() < self._quiet_until:
            return  # the queue waits too; webhooks stay queued, reports stay unsent
        for name, status in list(self._unsent_monitor.items()):
            latest = self.reconciler.statuses.get(name, status) if self.reconciler else status
            self._on_monitor(latest)
        for name, status in list(self._unsent.items()):
            latest = self.reconciler.statuses.get(name, status) if self.reconciler else status
            self._unsent.pop(name, None)
            self._reported.pop(name, None)
            self.on_status(None, latest)
        self._send_endings()
        self._send_force_notes()
        for report in list(self._unsent_previews.values()):
            self.on_preview(report)
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            try:
                if isinstance(event, PullRequestEvent):
                    self._plan(event)
                elif isinstance(event, IssueCommentEvent):
                    self._command(event)
            except MdcError as exc:
                log.warning("GitHub event not handled: %s", exc.message)

    def on_preview(self, report: PreviewReport) -> None:
        """A section per previewed model in mdc's comment on the PR, and the commit
        status ``mdc/preview`` on its head: the worst of its models' (failure, then
        pending, then success). Kept for the next drain when GitHub does not take it."""
        key = (report.number, report.model)
        self._unsent_previews[key] = report
        if self.clock() < self._quiet_until:
            return
        models = self._previews.setdefault(report.number, {})
        models[report.model] = report
        current = [r for r in models.values() if r.head == report.head]
        try:
            existing = self.github.find_comment(report.number, MARKER)
            plan, sections = _split(existing.body if existing is not None else None)
            sections[PREVIEW_MARKER] = "\n\n".join(
                [PREVIEW_MARKER + "\n## mdc preview", *(r.section for r in current)]
            )
            self.github.upsert_comment(report.number, _join(plan, sections), MARKER)
            order = {"failure": 0, "pending": 1, "success": 2}
            worst = min(current, key=lambda r: order.get(r.state, 1))
            description = worst.description
            if len(current) > 1:
                description = f"{worst.model}: {description}"[:140]
            self.github.set_status(
                report.head, "mdc/preview", worst.state, description, self.target_url
            )
        except TransientError as exc:
            self._quiet_until = self.clock() + QUIET_SECONDS
            self._last_error = exc
            log.warning("preview of %s not reported yet: %s", report.model, exc.message)
            return
        except MdcError as exc:
            log.warning("preview of %s not reported: %s", report.model, exc.message)
        self._unsent_previews.pop(key, None)

    # -- reports -------------------------------------------------------------------------

    def _report(self, status: ModelStatus) -> None:
        sha = revision_sha(status.attempted_revision)
        if sha is not None:
            state = rollout_state(status)
            description = f"{status.name}: {status.phase}"
            if status.step is not None and status.steps:
                description += f", step {status.step}/{status.steps}, weight {status.weight}%"
            if state == "pending":  # recorded first: a crash can leave it ended, never pending
                self.pending.started(sha, status.name, status.pull_request)
            self.github.set_status(sha, "mdc/rollout", state, description, self.target_url)
            if state != "pending":
                self.pending.settled(sha)
        if status.pull_request is None:
            return
        number = status.pull_request
        models = [status]
        if self.reconciler is not None:
            models = [
                s
                for s in self.reconciler.statuses.values()
                if s.pull_request == number and s.name != status.name
            ] + [status]
        existing = self.github.find_comment(number, MARKER)
        plan, sections = _split(existing.body if existing is not None else None)
        sections[ROLLOUT_MARKER] = render_rollout(models)
        self.github.upsert_comment(number, _join(plan, sections), MARKER)
        if status.phase is Phase.ROLLED_BACK and self.revert_prs:
            self._revert(status, number)

    def _revert(self, status: ModelStatus, number: int) -> None:
        """A PR putting the last spec that ran well back (once per failed spec)."""
        key = f"{status.name}@{status.canary_state and status.canary_state.get('spec_hash')}"
        if key in self._reverted or self.reconciler is None:
            return
        source = self.reconciler.source
        path = model_path(status.name)
        applied = revision_sha(status.applied_revision)
        if applied is None:
            return
        try:
            good = source.tree_at(applied).read(path)
        except (KeyError, MdcError, AttributeError, OSError):
            log.warning("no last good spec of %s at %s to revert to", status.name, applied[:12])
            return
        reason = ""
        if status.canary_state is not None:
            reason = str(status.canary_state.get("reason", ""))
        body = (
            f"mdc rolled back {md_code(status.name)} (see #{number}): {md_text(reason)}\n\n"
            f"This puts back {md_code(path)} as it was at {md_code(applied[:12])}, the last "
            "revision that "
            "ran well, so that git again says what runs. The failed spec stays pinned "
            "until git changes or someone comments `/mdc retry`."
        )
        try:
            self.github.open_revert_pr(
                self.branch,
                path,
                good,
                f"Revert {visible(status.name)} to its last good spec",
                body,
                f"mdc/revert-{status.name}-{key.rsplit('@', 1)[1][:10]}",
            )
        except PermanentError as exc:  # e.g. NothingToRevert: git already says it
            log.warning("no revert PR for %s: %s", status.name, exc.message)
        self._reverted.add(key)

    # -- events ----------------------------------------------------------------------------

    def _plan(self, event: PullRequestEvent) -> None:
        if event.base_ref != self.branch or self.reconciler is None:
            return
        if event.action == "closed":
            self.reconciler.wish_preview(
                PreviewWish(event.number, event.head_sha, closed=True, merged=event.merged)
            )
            return
        if event.action not in _PR_ACTIONS:
            return
        source = self.reconciler.source
        tips = source.fetch_refs([event.base_ref, event.head_ref])
        if not source.has_commit(event.head_sha):  # a PR from a fork: GitHub's pull ref
            with contextlib.suppress(MdcError):
                source.fetch_pull(event.number)
        head = event.head_sha if source.has_commit(event.head_sha) else tips.get(event.head_ref)
        base = tips.get(event.base_ref)
        if head is None or base is None:
            raise PermanentError(
                f"PR #{event.number}: {event.head_ref} or {event.base_ref} cannot be fetched",
                reason=Reason.PULL_REQUEST_UNREADABLE,
            )
        base_commit = source.merge_base(base, head) or base
        trees = [source.tree_at(c) for c in (base_commit, head)]
        plan = plan_change(trees[0], trees[1], base_commit, head, self._traffic())
        self.github.upsert_comment(event.number, render_markdown(plan), MARKER)
        state = "success" if plan.applicable else "failure"
        changed = sum(1 for c in plan.models if c.change != "unchanged")
        description = (
            f"{changed} model(s) change; the plan applies"
            if plan.applicable
            else "the change cannot be applied: see the plan comment"
        )
        self.github.set_status(event.head_sha, "mdc/plan", state, description, self.target_url)
        if plan.applicable:
            self.reconciler.wish_preview(PreviewWish(event.number, head, base_commit))

    def _traffic(self) -> dict[str, ObservedTraffic]:  # for the plan's verdict times
        """Each model's traffic as its stable version saw it today (the monitor's),
        which sizes how long the judge needs in the plan."""
        if self.reconciler is None:
            return {}
        return dict(self.reconciler.traffic(time.time()))

    def _command(self, event: IssueCommentEvent) -> None:
        if event.action != "created" or not event.is_pull_request:
            return
        verb = parse_command(event.body)
        if verb is None or self.reconciler is None:
            return
        number = event.issue_number
        if not self.github.can_write(event.user):
            self.github.comment(
                number,
                f"@{md_text(event.user)}: `/mdc {verb}` needs write access to this repository, so "
                "mdc did not act on it. Ask a maintainer to comment instead.",
            )
            return
        if verb.startswith("preview "):
            self.reconciler.wish_preview(
                PreviewWish(number, command=verb.split()[1], who=f"{event.user} (GitHub)")
            )
            self.github.comment(
                number,
                f"@{md_text(event.user)}: `{verb}` sent for this pull request's previews; "
                "mdc acts on its next pass.",
            )
            return
        models = sorted(
            s.name for s in self.reconciler.statuses.values() if s.pull_request == number
        )
        if not models:
            self.github.comment(
                number,
                f"@{md_text(event.user)}: no model is being rolled out from this pull request.",
            )
            return
        state_dir = self.reconciler.state_dir
        for model in models:
            if verb == "retry":
                Pins(state_dir).unpin(model)
            send_command(state_dir, model, verb, f"{event.user} (GitHub)")
        listed = ", ".join(md_code(m) for m in models)
        self.github.comment(
            number,
            f"@{md_text(event.user)}: `{verb}` sent for {listed}; mdc acts on its next pass.",
        )
