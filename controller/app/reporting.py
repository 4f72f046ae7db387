"""What mdc says and hears on GitHub pull requests, in the manner of Atlantis.

Owns :class:`PullRequests`, the controller's GitHub reporter:

* on a PR to the release branch (``opened``, ``synchronize``, ``reopened``): the
  plan of merging it (:mod:`controller.core.pr_plan`) upserted as one comment --
  found again by its hidden marker, never a new comment per push -- and the
  commit status ``mdc/plan`` on its head (failure blocks the merge when the
  change cannot be applied);
* after the merge: the same comment gains the rollout's progress and each
  interval's verdicts (metric values against thresholds), and ``mdc/rollout``
  on the merge commit goes pending, then success or failure;
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
from controller.app.manual import Pins, send_command
from controller.core.canary import state_from_dict
from controller.core.pr_plan import MARKER, plan_change, render_markdown
from controller.core.status import ModelStatus, Phase, model_path
from controller.errors import MdcError, PermanentError, Reason, TransientError

__all__ = [
    "COMMANDS",
    "MONITOR_MARKER",
    "ROLLOUT_MARKER",
    "NullReporter",
    "PullRequests",
    "Reporter",
    "monitor_state",
    "parse_command",
    "render_monitor",
    "render_rollout",
    "rollout_state",
]

log = logging.getLogger(__name__)

#: Splits the plan (above) from the rollout's progress (below) in the PR comment.
ROLLOUT_MARKER = "<!-- mdc:rollout -->"
#: Splits the rollout (above) from the running version's monitor (below).
MONITOR_MARKER = "<!-- mdc:monitor -->"
_MONITOR_EVENTS = ("ObjectiveBreached", "ObjectiveRecovered", "DriftDetected", "DriftRecovered")
COMMANDS = ("promote", "abort", "pause", "resume", "retry")
_PR_ACTIONS = ("opened", "synchronize", "reopened", "edited")
_MARKS = {"pass": "✅", "fail": "❌"}
#: After GitHub failed transiently, seconds it is left alone (reports are kept meanwhile).
QUIET_SECONDS = 5.0


def parse_command(body: str) -> str | None:
    """The ``/mdc VERB`` a comment asks for (first line that starts with /mdc), if any."""
    for line in body.splitlines():
        words = line.strip().split()
        if len(words) >= 2 and words[0] == "/mdc" and words[1] in COMMANDS:
            return words[1]
    return None


def rollout_state(status: ModelStatus) -> str:
    """The commit status ``mdc/rollout`` says for a model's phase."""
    if status.phase is Phase.HEALTHY:
        return "success"
    if status.phase in (Phase.ROLLED_BACK, Phase.STALLED):
        return "failure"
    if status.phase is Phase.DEGRADED:
        return "error"
    return "pending"


def _revision_sha(revision: str | None) -> str | None:
    if not revision or "sha1:" not in revision:
        return None
    return revision.rsplit("sha1:", 1)[1]


def render_rollout(statuses: list[ModelStatus]) -> str:
    """The rollout part of a PR comment: one section per model the PR changed."""
    parts = [ROLLOUT_MARKER, "## mdc rollout"]
    for status in sorted(statuses, key=lambda s: s.name):
        version = status.canary.version if status.canary else None
        if version is None and status.stable is not None:
            version = status.stable.version
        head = f"### `{status.name}` {version or ''}: **{status.phase}**"
        if status.step is not None and status.steps:
            head += f", step {status.step}/{status.steps}, weight {status.weight}%"
        parts.append(head)
        for condition in status.conditions:
            if not condition.status:
                parts.append(f"- {condition.reason}: {condition.message}")
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
                    f"{c.check} {_MARKS.get(str(c.outcome), '…')} {c.message}"
                    for c in verdict.checks
                )
                at = time.strftime("%H:%M:%S", time.gmtime(verdict.at))
                parts.append(
                    f"| {at} | {verdict.weight}% | {verdict.outcome} | {checks.replace('|', '/')} |"
                )
        if state is not None and state.reason:
            parts.append(f"\n{state.reason}")
        if status.history:
            parts.append("\n<details><summary>history</summary>\n")
            parts += [f"- {h.at} {h.event}: {h.message}" for h in status.history[:10]]
            parts.append("\n</details>")
    return "\n".join(parts) + "\n"


def render_monitor(statuses: list[ModelStatus]) -> str:
    """The monitor part of a PR comment: how the versions the PR brought are doing."""
    parts = [MONITOR_MARKER, "## mdc monitor"]
    for status in sorted(statuses, key=lambda s: s.name):
        record = status.monitor or {}
        version = status.stable.version if status.stable is not None else ""
        breached = record.get("breached") or {}
        drifting = record.get("drifting") or {}
        if breached or drifting:
            parts.append(f"### `{status.name}` {version}: ❌ **needs attention**")
            parts += [
                f"- objective **{name}** breached since {at}" for name, at in breached.items()
            ]
            parts += [
                f"- predictions (`{key}`) drifting since {at}" for key, at in drifting.items()
            ]
        else:
            parts.append(f"### `{status.name}` {version}: ✅ objectives met, predictions steady")
        events = [h for h in status.history if h.event in _MONITOR_EVENTS][:6]
        parts += [f"- {h.at} {h.event}: {h.message}" for h in events]
    return "\n".join(parts) + "\n"


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

    def drain(self) -> None:
        """Once a pass, after the statuses: retry what failed, handle queued events."""
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
        """Where pins and manual commands live."""
        ...


class NullReporter:
    """Reports go to the status branch and the log only."""

    def pull_request_for(self, commit: str) -> int | None:
        return None

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        return None

    def drain(self) -> None:
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
        self._reported: dict[str, tuple[str, int | None, int]] = {}  # model -> phase, step, weight
        self._unsent: dict[str, ModelStatus] = {}
        self._quiet_until = 0.0  # after a transient failure, GitHub is left alone until then
        self._reverted: set[str] = set()
        self._monitored: dict[str, str] = {}  # model -> the monitor record last reported
        self._unsent_monitor: dict[str, ModelStatus] = {}

    def bind(self, reconciler: Reported) -> None:
        """Report for ``reconciler`` from now on."""
        self.reconciler = reconciler
        for name, status in dict(reconciler.statuses).items():
            # what a previous controller recorded was reported then: only changes now
            self._monitored[name] = json.dumps(status.monitor, sort_keys=True)

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
        key = (str(status.phase), status.step, status.weight)
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
            log.warning("GitHub report for %s kept for later: %s", status.name, exc.message)
            return
        self._unsent.pop(status.name, None)
        self._reported[status.name] = key

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
            log.warning("GitHub monitor report for %s kept: %s", status.name, exc.message)
            return
        self._unsent_monitor.pop(status.name, None)
        self._monitored[status.name] = key

    def _report_monitor(self, status: ModelStatus) -> None:
        stable = status.stable
        assert stable is not None
        known = list(self.reconciler.statuses.values()) if self.reconciler is not None else []
        others = [s for s in known if s.name != status.name and s.stable is not None]
        sha = _revision_sha(stable.revision)
        if sha is not None:
            same = [s for s in others if s.stable and s.stable.revision == stable.revision]
            state, description = monitor_state([status, *same])
            self.github.set_status(sha, "mdc/monitor", state, description, self.target_url)
        number = stable.pull_request
        if number is None:
            return
        brought = [s for s in others if s.stable and s.stable.pull_request == number]
        existing = self.github.find_comment(number, MARKER)
        head = MARKER if existing is None else existing.body.split(MONITOR_MARKER, 1)[0].rstrip()
        body = head + "\n\n" + render_monitor([status, *brought])
        self.github.upsert_comment(number, body, MARKER)

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

    # -- reports -------------------------------------------------------------------------

    def _report(self, status: ModelStatus) -> None:
        sha = _revision_sha(status.attempted_revision)
        if sha is not None:
            description = f"{status.name}: {status.phase}"
            if status.step is not None and status.steps:
                description += f", step {status.step}/{status.steps}, weight {status.weight}%"
            self.github.set_status(
                sha, "mdc/rollout", rollout_state(status), description, self.target_url
            )
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
        plan_part, monitor_part = MARKER, ""
        if existing is not None:
            plan_part = existing.body.split(ROLLOUT_MARKER, 1)[0].split(MONITOR_MARKER, 1)[0]
            plan_part = plan_part.rstrip()
            if MONITOR_MARKER in existing.body:
                monitor_part = "\n" + MONITOR_MARKER + existing.body.split(MONITOR_MARKER, 1)[1]
        self.github.upsert_comment(
            number, plan_part + "\n\n" + render_rollout(models) + monitor_part, MARKER
        )
        if status.phase is Phase.ROLLED_BACK and self.revert_prs:
            self._revert(status, number)

    def _revert(self, status: ModelStatus, number: int) -> None:
        """A PR putting the last spec that ran well back (once per failed spec)."""
        key = f"{status.name}@{status.canary_state and status.canary_state.get('spec_hash')}"
        if key in self._reverted or self.reconciler is None:
            return
        source = self.reconciler.source
        path = model_path(status.name)
        applied = _revision_sha(status.applied_revision)
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
            f"mdc rolled back `{status.name}` (see #{number}): {reason}\n\n"
            f"This puts back `{path}` as it was at {applied[:12]}, the last revision that "
            "ran well, so that git again says what runs. The failed spec stays pinned "
            "until git changes or someone comments `/mdc retry`."
        )
        try:
            self.github.open_revert_pr(
                self.branch,
                path,
                good,
                f"Revert {status.name} to its last good spec",
                body,
                f"mdc/revert-{status.name}-{key.rsplit('@', 1)[1][:10]}",
            )
        except PermanentError as exc:  # e.g. NothingToRevert: git already says it
            log.warning("no revert PR for %s: %s", status.name, exc.message)
        self._reverted.add(key)

    # -- events ----------------------------------------------------------------------------

    def _plan(self, event: PullRequestEvent) -> None:
        if event.action not in _PR_ACTIONS or event.base_ref != self.branch:
            return
        if self.reconciler is None:
            return
        source = self.reconciler.source
        tips = source.fetch_refs([event.base_ref, event.head_ref])
        if not source.has_commit(event.head_sha):  # a PR from a fork: GitHub's pull ref
            with contextlib.suppress(MdcError):
                source.fetch_pull(event.number)
        head = (
            event.head_sha
            if source.has_commit(event.head_sha)
            else tips.get(event.head_ref)
        )
        base = tips.get(event.base_ref)
        if head is None or base is None:
            raise PermanentError(
                f"PR #{event.number}: {event.head_ref} or {event.base_ref} cannot be fetched",
                reason=Reason.PULL_REQUEST_UNREADABLE,
            )
        base_commit = source.merge_base(base, head) or base
        trees = [source.tree_at(c) for c in (base_commit, head)]
        plan = plan_change(trees[0], trees[1], base_commit, head)
        self.github.upsert_comment(event.number, render_markdown(plan), MARKER)
        state = "success" if plan.applicable else "failure"
        changed = sum(1 for c in plan.models if c.change != "unchanged")
        description = (
            f"{changed} model(s) change; the plan applies"
            if plan.applicable
            else "the change cannot be applied: see the plan comment"
        )
        self.github.set_status(event.head_sha, "mdc/plan", state, description, self.target_url)

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
                f"@{event.user}: `/mdc {verb}` needs write access to this repository, so "
                "mdc did not act on it. Ask a maintainer to comment instead.",
            )
            return
        models = sorted(
            s.name for s in self.reconciler.statuses.values() if s.pull_request == number
        )
        if not models:
            self.github.comment(
                number, f"@{event.user}: no model is being rolled out from this pull request."
            )
            return
        state_dir = self.reconciler.state_dir
        for model in models:
            if verb == "retry":
                Pins(state_dir).unpin(model)
            send_command(state_dir, model, verb, f"{event.user} (GitHub)")
        listed = ", ".join(f"`{m}`" for m in models)
        self.github.comment(
            number, f"@{event.user}: `{verb}` sent for {listed}; mdc acts on its next pass."
        )
