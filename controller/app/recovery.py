"""Recovery after a restart, and what the controller holds per model.

:class:`Run` is what the reconciler keeps in memory for one model between
passes (its releases, the rollout driver of a canary under way, why it failed,
this pass's conditions and event). :func:`recover` rebuilds every model's Run
from the status branch and the releases the runtime adopted, so a controller
killed at any point resumes where it was; a move it had not finished (its
intent, :mod:`controller.app.intents`) is handed to the first pass, which
finishes it. GPU bookings are rebuilt by the pool book
(:mod:`controller.app.pool_book`) from the same statuses, then checked against
the releases that run.

Called by the reconciler at start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from controller.adapters.git.source import GitSource
from controller.adapters.git.status_branch import StatusBranch
from controller.adapters.runtime.base import ReleaseSpec, Runtime, State
from controller.app.intents import Intent, Journal
from controller.app.manual import ManualAction
from controller.app.rollout import RolloutDriver
from controller.core.canary import CanaryState, state_from_dict
from controller.core.status import Condition, ModelStatus, Release, parse_model_status
from controller.errors import PermanentError, TransientError

__all__ = ["Run", "recover"]

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What the controller holds in memory for one model between passes."""

    name: str
    stable: ReleaseSpec | None = None
    stable_hash: str | None = None
    stable_record: Release | None = None
    driver: RolloutDriver | None = None
    resume: tuple[ReleaseSpec, CanaryState] | None = None  # a canary recorded before a restart
    pull: int | None = None  # the PR behind the spec being rolled out
    canary_record: Release | None = None
    finished: CanaryState | None = None  # the last canary, kept for the record
    failed: tuple[str, str, str] | None = None  # (spec hash, reason, message): permanent
    retry_at: float = 0.0  # after a transient error
    conditions: list[Condition] = field(default_factory=list)
    event: tuple[str, str] | None = None
    manual: list[ManualAction] = field(default_factory=list)
    command: ManualAction | None = None  # this pass's manual command, read once
    replacing: str | None = None  # why its stable is being placed again (its node was lost)
    monitor_events: list[tuple[str, str]] = field(default_factory=list)  # this pass's
    intent: Intent | None = None  # a move a previous controller had not finished


def recover(
    source: GitSource, status: StatusBranch, runtime: Runtime, journal: Journal | None = None
) -> tuple[dict[str, ModelStatus], dict[str, Run]]:
    """The statuses the status branch records, and each model's :class:`Run` with
    the releases the runtime still has (adopted after a restart): the stable, and a
    canary under way to resume at its recorded step and weight. A status file that
    cannot be read is logged and left out; it never stops the start."""
    try:
        source.fetch_refs([status.branch])
    except TransientError as exc:
        log.warning("status branch not fetched (%s): using the local copy", exc.message)
    statuses: dict[str, ModelStatus] = {}
    runs: dict[str, Run] = {}
    for path, raw in status.files().items():
        if not (path.startswith("models/") and path.endswith(".yaml")):
            continue
        try:
            recorded = parse_model_status(path, raw)
        except PermanentError as exc:
            log.error("%s", exc.message)
            continue
        statuses[recorded.name] = recorded
        run = runs.setdefault(recorded.name, Run(recorded.name))
        if recorded.stable is not None and recorded.stable.name:
            adopted = runtime.releases.get(recorded.stable.name)
            if adopted is not None and adopted.state is not State.STOPPED:
                run.stable, run.stable_hash = adopted.spec, recorded.stable.spec_hash
                run.stable_record = recorded.stable
        state = None
        if recorded.canary_state is not None:
            try:
                state = state_from_dict(recorded.canary_state)
            except ValueError as exc:
                log.error("%s: canary state unreadable (%s)", path, exc)
        if state is not None and state.phase.done:
            run.finished = state
        elif state is not None and recorded.canary is not None and recorded.canary.name:
            adopted = runtime.releases.get(recorded.canary.name)
            if adopted is not None and adopted.state is not State.STOPPED:
                run.canary_record = recorded.canary
                run.resume = (adopted.spec, state)
        run.pull = recorded.pull_request
    for name, intent in (journal.load() if journal is not None else {}).items():
        runs.setdefault(name, Run(name)).intent = intent  # finished by the first pass
    return statuses, runs
