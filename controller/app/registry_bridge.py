"""The registry-to-pull-request bridge, and the registry's side of a rollout.

:class:`RegistryBridge` reads the release branch's Models that declare
``promoteOn`` (an MLflow alias or tag) and, for each whose registered model has
a newer version carrying it, opens one pull request that moves the spec to that
version (``spec.version`` and ``artifact.mlflow.version``, a text edit that
keeps the file's comments), with the run's metrics and parameters in its body.
It never proposes a version twice (a pull request from its branch, open, merged
or closed, means proposed) and closes its own older proposals for the model
when a newer one supersedes them. Run by ``mdc registry watch``.

:class:`RegistryFeedback` is a reporter: when a model whose release came from
MLflow is promoted it tags that version ``mdc.status=serving`` (and why, when,
from which revision), moves the ``production`` alias to it and tags the version
it replaced ``retired``; when a canary is rolled back it tags the canary's
version ``rolled-back`` with the reason. Reports go out on a thread of their own,
in order, so the control loop never waits on the registry; a report that fails
is retried on the next status change and logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from controller.app.reporting import NullReporter, Reporter
from controller.core.preview import PreviewReport
from controller.core.registry import (
    PROPOSAL_PREFIX,
    Outcome,
    RegistryVersion,
    RunRecord,
    bump_scalars,
    newest_matching,
    outcome_tags,
    proposal_body,
    proposal_branch,
    proposal_title,
    version_number,
)
from controller.core.status import ModelStatus, Phase
from controller.core.timestamps import iso
from controller.errors import MdcError, PermanentError, Reason
from controller.spec.kinds import Model
from controller.spec.loader import load_desired
from controller.spec.tree import Tree

__all__ = [
    "PRODUCTION_ALIAS",
    "Proposal",
    "RegistryBridge",
    "RegistryFeedback",
    "WithFeedback",
    "bento_labels",
]

log = logging.getLogger(__name__)

#: The alias mdc moves to the version it promoted.
PRODUCTION_ALIAS = "production"


class Registry(Protocol):
    """What the bridge asks of the registry
    (:class:`controller.adapters.model_registry.MlflowRegistry`)."""

    display: str

    def version(self, model: str, version: str) -> RegistryVersion: ...

    def versions(self, model: str) -> list[RegistryVersion]: ...

    def by_alias(self, model: str, alias: str) -> RegistryVersion | None: ...

    def run(self, run_id: str) -> RunRecord: ...

    def set_tags(self, model: str, version: str, tags: Mapping[str, str]) -> None: ...

    def set_alias(self, model: str, alias: str, version: str) -> None: ...


class Proposer(Protocol):
    """What the bridge asks of GitHub
    (:class:`~controller.adapters.github.client.GitHubReporter`)."""

    def open_change_pr(  # noqa: PLR0917 - GitHubReporter's order
        self, base: str, path: str, content: bytes, title: str, body: str, branch: str
    ) -> int: ...

    def pulls_from(self, branch: str, state: str = "all") -> list[tuple[int, str]]: ...

    def open_pulls_under(self, prefix: str) -> list[tuple[int, str]]: ...

    def close_pull(self, number: int) -> None: ...

    def comment(self, number: int, body: str) -> object: ...


@dataclass(frozen=True)
class Proposal:
    """What the bridge did for one model in one scan."""

    model: str
    action: str  # "opened", "proposed" (already), "current", "none", "failed"
    version: str = ""
    pull: int | None = None
    closed: tuple[int, ...] = ()
    message: str = ""


class RegistryBridge:
    """Opens the pull requests that move specs to the versions the registry marks."""

    def __init__(self, registry: Registry, github: Proposer, base: str) -> None:
        self.registry = registry
        self.github = github
        self.base = base

    def scan(self, tree: Tree) -> list[Proposal]:
        """One look at every Model of ``tree`` (the release branch) with promoteOn."""
        result = load_desired(tree)
        done: list[Proposal] = []
        for name, model in sorted(result.desired.models.items()):
            if model.promote_on is None or model.artifact.mlflow is None:
                continue
            try:
                done.append(self._scan_model(model, tree))
            except MdcError as exc:
                log.warning("registry bridge: %s: %s", name, exc)
                done.append(Proposal(name, "failed", message=str(exc)))
        return done

    def _candidate(self, model: Model) -> RegistryVersion | None:
        ref, when = model.artifact.mlflow, model.promote_on
        assert ref is not None
        assert when is not None
        current = ref.version or "0"
        if when.alias:
            found = self.registry.by_alias(ref.model, when.alias)
            newer = found is not None and version_number(found.version) > version_number(current)
            return found if newer else None
        return newest_matching(
            self.registry.versions(ref.model), when.tag or "", when.value, current
        )

    def _scan_model(self, model: Model, tree: Tree) -> Proposal:
        ref, when = model.artifact.mlflow, model.promote_on
        assert ref is not None
        assert when is not None
        candidate = self._candidate(model)
        if candidate is None:
            return Proposal(model.name, "current", ref.version or "")
        branch = proposal_branch(model.name, candidate.version)
        earlier = self.github.pulls_from(branch)
        if earlier:
            return Proposal(model.name, "proposed", candidate.version, earlier[0][0])
        content = self._bumped(model, tree, candidate.version)
        try:
            run = self.registry.run(candidate.run_id) if candidate.run_id else None
        except MdcError as exc:  # the PR is still worth opening without the run
            log.warning("registry bridge: run %s: %s", candidate.run_id, exc)
            run = None
        title = proposal_title(model.name, candidate)
        body = proposal_body(
            model.name,
            model.source.file,
            candidate,
            run=run,
            registry=self.registry.display,
            trigger=when.describe(),
            before=ref.version or "?",
        )
        number = self.github.open_change_pr(
            self.base, model.source.file, content, title, body, branch
        )
        closed = self._close_superseded(model.name, branch, number, candidate.version)
        log.info(
            "registry bridge: %s version %s proposed in #%d", model.name, candidate.version, number
        )
        return Proposal(model.name, "opened", candidate.version, number, closed)

    def _bumped(self, model: Model, tree: Tree, version: str) -> bytes:
        """The spec file with ``spec.version`` and ``artifact.mlflow.version`` (both
        required by validation) set to ``version``; the rest as it was."""
        doc = model.source
        paths = (("spec", "artifact", "mlflow", "version"), ("spec", "version"))
        found = [doc.values.get(path) for path in paths]  # where each value is written
        spots = {(s.line, s.column) for s in found if s is not None}
        if len(spots) != len(paths):
            raise PermanentError(
                f"{doc.file}: spec.version and artifact.mlflow.version must each be written "
                "once for the bridge to move them",
                reason=Reason.INVALID_SPEC,
            )
        text = tree.read(doc.file).decode("utf-8")
        try:
            return bump_scalars(text, sorted(spots), version).encode()
        except ValueError as exc:
            raise PermanentError(
                f"{doc.file}: cannot move it to version {version}: {exc}",
                reason=Reason.INVALID_SPEC,
            ) from None

    def _close_superseded(
        self, model: str, branch: str, number: int, version: str
    ) -> tuple[int, ...]:
        closed = []
        for older, head in self.github.open_pulls_under(f"{PROPOSAL_PREFIX}{model}/v"):
            if head == branch or older == number:
                continue
            self.github.comment(
                older, f"Superseded by #{number} (version {version}); closed by mdc registry watch."
            )
            self.github.close_pull(older)
            closed.append(older)
        return tuple(closed)


def bento_labels(home: Path, bento: str) -> dict[str, str]:
    """The labels of ``bento`` in the store at ``home`` (empty when unreadable)."""
    name, _, version = bento.partition(":")
    try:
        info = yaml.safe_load((home / "bentos" / name / version / "bento.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    labels = info.get("labels") if isinstance(info, dict) else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


class RegistryFeedback(NullReporter):
    """A reporter that writes rollouts' outcomes back to the registry (see the
    module docstring); what else a reporter hears it leaves alone (:class:`NullReporter`).
    ``labels`` reads a bento's labels (:func:`bento_labels`)."""

    def __init__(
        self,
        registry: Registry,
        labels: Callable[[str], Mapping[str, str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.labels = labels
        self.clock = clock
        self.sent: list[tuple[str, str, dict[str, str]]] = []  # (model, version, tags)
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._failed = ""
        self._thread = threading.Thread(target=self._work, name="mdc-registry", daemon=True)
        self._thread.start()

    def _origin(self, bento: str | None) -> tuple[str, str] | None:
        if not bento:
            return None
        labels = self.labels(bento)
        model, version = labels.get("mdc.dev/mlflow-model"), labels.get("mdc.dev/mlflow-version")
        return (model, version) if model and version else None

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        if previous is not None and previous.phase is status.phase:
            return
        now = iso(self.clock())
        revision = status.applied_revision or status.attempted_revision or ""
        if status.phase is Phase.HEALTHY and status.stable is not None:
            origin = self._origin(status.stable.bento)
            if origin is None:
                return
            before = (
                self._origin(previous.stable.bento)
                if previous is not None and previous.stable is not None
                else None
            )
            why = f"{status.name} promoted to serve all traffic"
            self._send(origin, outcome_tags(Outcome.SERVING, why, at=now, revision=revision))
            promoted = origin
            self._queue.put(
                lambda: self.registry.set_alias(promoted[0], PRODUCTION_ALIAS, promoted[1])
            )
            if before is not None and before != origin:
                why = f"replaced by version {origin[1]}"
                self._send(before, outcome_tags(Outcome.RETIRED, why, at=now, revision=revision))
        elif status.phase is Phase.ROLLED_BACK and previous is not None:
            canary = previous.canary
            origin = self._origin(canary.bento if canary is not None else None)
            if origin is None:
                return
            why = _rollback_reason(status)
            self._send(origin, outcome_tags(Outcome.ROLLED_BACK, why, at=now, revision=revision))

    def _send(self, origin: tuple[str, str], tags: dict[str, str]) -> None:
        def send() -> None:
            self.registry.set_tags(origin[0], origin[1], tags)
            self.sent.append((origin[0], origin[1], tags))

        self._queue.put(send)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            for attempt in range(3):
                try:
                    job()
                    self._failed = ""
                    break
                except MdcError as exc:
                    self._failed = str(exc)
                    log.warning("registry feedback (try %d of 3): %s", attempt + 1, exc)
                    time.sleep(2.0 * (attempt + 1))
                except Exception:  # a bug: logged, the next report still goes
                    log.exception("registry feedback")
                    break

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued has been sent (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.05)
        return self._queue.empty()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def fault(self) -> tuple[str, str] | None:
        if self._failed:
            return (Reason.REGISTRY_UNAVAILABLE.value, self._failed)
        return None


def _rollback_reason(status: ModelStatus) -> str:
    state = status.canary_state or {}
    reason = state.get("reason") if isinstance(state, Mapping) else None
    if isinstance(reason, str) and reason:
        return reason
    for condition in status.conditions:
        if condition.message:
            return condition.message
    return "rolled back"


class WithFeedback:
    """``reporter`` (the GitHub one, or none) with the registry's feedback beside
    it: every status change goes to both; everything else is ``reporter``'s."""

    def __init__(self, reporter: Reporter, feedback: RegistryFeedback) -> None:
        self.reporter = reporter
        self.feedback = feedback

    def __getattr__(self, name: str) -> object:
        return getattr(self.reporter, name)  # bind, pulls ... of the reporter it wraps

    def pull_request_for(self, commit: str) -> int | None:
        return self.reporter.pull_request_for(commit)

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        self.reporter.on_status(previous, status)
        try:
            self.feedback.on_status(previous, status)
        except Exception:  # never let the registry's side stop a pass
            log.exception("registry feedback for %s", status.name)

    def on_removed(self, status: ModelStatus) -> None:
        self.reporter.on_removed(status)

    def on_force_push(self, previous: str, current: str) -> None:
        self.reporter.on_force_push(previous, current)

    def on_preview(self, report: PreviewReport) -> None:
        self.reporter.on_preview(report)

    def drain(self) -> None:
        self.reporter.drain()

    def fault(self) -> tuple[str, str] | None:
        return self.reporter.fault() or self.feedback.fault()
