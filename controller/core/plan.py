"""The reconcile plan and the status that follows from it: what to do about each
model, given what git wants, what mdc recorded and what runs -- and, after the
pass, the next status of each model.

Owns :func:`spec_hash` (a model's identity: its resolved spec and the
content-addressed bento tag, never the git SHA, so a commit that touches model
A does not restart model B), :func:`make_plan` (one :class:`ModelPlan` per model,
each a :class:`Move` with the reason for it) and :func:`next_status` (the
:class:`~controller.core.status.ModelStatus` a pass leaves, with a history entry
when the phase, step or weight moved).

Pure: no I/O, time is a parameter. Called by :mod:`controller.app.reconciler`;
tested table-first in ``tests/unit/test_planner.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

from controller.core.canary import CanaryPhase, CanaryState, Outcome
from controller.core.status import (
    Condition,
    GPUHold,
    HistoryEntry,
    ModelStatus,
    Phase,
    Release,
    Verdict,
)
from controller.core.timestamps import iso
from controller.spec.kinds import Model

__all__ = [
    "ModelPlan",
    "Move",
    "Observed",
    "PhaseFacts",
    "PlanInput",
    "iso",
    "make_plan",
    "next_status",
    "phase_for",
    "spec_hash",
]

#: Fields of a Model that do not change what runs (a new description restarts nothing;
#: the monitor is the controller's and the router's business, not the release's).
_NOT_RUNTIME = frozenset({"description", "source", "rollout", "monitor", "promote_on", "preview"})


def spec_hash(model: Model, bento_tag: str) -> str:
    """The identity of what ``model`` runs: its resolved spec (less the fields that
    do not change the release) and its bento's content-addressed tag."""
    data = {k: v for k, v in _hashed(model).items() if k not in _NOT_RUNTIME}
    canonical = json.dumps(
        {"model": _plain(data), "bento": bento_tag}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _hashed(value: Any) -> dict[str, Any]:
    """The fields of dataclass ``value`` that its identity counts. A field added
    after specs were deployed is left out while it has its default
    (``metadata={"hash": "unless-default"}``), so an upgrade of mdc changes no hash."""
    return {
        f.name: getattr(value, f.name)
        for f in fields(value)
        if not (f.metadata.get("hash") == "unless-default" and getattr(value, f.name) == f.default)
    }


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return _plain(_hashed(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class Move(StrEnum):
    DEPLOY = "deploy"  # nothing runs yet: build, take GPUs, start, then route all traffic
    AWAIT = "await"  # the first release is starting: route to it once it is ready
    START_CANARY = "start-canary"  # build, reserve the canary's GPUs, start it beside stable
    CONTINUE = "continue"  # the canary walks its steps
    REPLACE = "replace"  # git moved on during a canary: abort it, then canary the new spec
    RE_PLACE = "re-place"  # the stable's node was lost: place it again on what is left
    STEADY = "steady"  # it runs what git says
    PINNED = "pinned"  # this spec failed: nothing until git changes or someone retries
    HOLD = "hold"  # the spec is invalid: what runs is left alone
    PRUNE = "prune"  # gone from git: stop its releases and free its GPUs
    KEEP = "keep"  # gone from git, but some files could not be read: prune is unsafe now


@dataclass(frozen=True)
class Observed:
    """What runs for one model, as the reconciler sees it at the start of a pass."""

    stable_hash: str | None = None  # the spec hash the stable release runs
    stable_ready: bool = False
    canary: CanaryState | None = None
    pinned: str | None = None
    stable_lost: str | None = None  # why the stable release is gone for good (its node left)


@dataclass(frozen=True)
class PlanInput:
    desired: Mapping[str, str]  # model -> spec hash, for every valid model in git
    invalid: frozenset[str]  # models git declares but whose spec has errors
    prune_safe: bool  # every file was read: a missing model really is gone
    observed: Mapping[str, Observed]  # every model mdc runs or has a record of


@dataclass(frozen=True)
class ModelPlan:
    model: str
    move: Move
    spec_hash: str | None
    reason: str


def make_plan(given: PlanInput) -> tuple[ModelPlan, ...]:
    """One decision per model, sorted by name (see :class:`Move`)."""
    out: list[ModelPlan] = []
    for name in sorted(set(given.desired) | set(given.observed) | given.invalid):
        seen = given.observed.get(name, Observed())
        wanted = given.desired.get(name)
        out.append(_decide(name, wanted, seen, given))
    return tuple(out)


def _decide(name: str, wanted: str | None, seen: Observed, given: PlanInput) -> ModelPlan:
    if name in given.invalid:
        return ModelPlan(
            name, Move.HOLD, seen.stable_hash, "the spec has errors; what runs is left alone"
        )
    if wanted is None:
        if not given.prune_safe:
            return ModelPlan(
                name,
                Move.KEEP,
                seen.stable_hash,
                "not in git, but some spec files could not be read: nothing is pruned",
            )
        return ModelPlan(name, Move.PRUNE, None, "removed from git")
    if seen.stable_hash is None:
        if seen.pinned == wanted:
            return ModelPlan(
                name, Move.PINNED, wanted, "this spec failed; change it or run mdc retry"
            )
        return ModelPlan(name, Move.DEPLOY, wanted, "first release")
    if seen.stable_lost is not None:
        live = seen.canary is not None and not seen.canary.phase.done
        return ModelPlan(
            name,
            Move.RE_PLACE,
            seen.stable_hash,
            f"the stable release was lost ({seen.stable_lost}): place it again"
            + ("; the canary is aborted (nothing to compare it with)" if live else ""),
        )
    if not seen.stable_ready and seen.stable_hash == wanted and seen.canary is None:
        return ModelPlan(name, Move.AWAIT, wanted, "waiting for the first release to be ready")
    decision = rollout_decision(wanted, seen.stable_hash, seen.canary, seen.pinned)
    if decision == "continue":
        return ModelPlan(name, Move.CONTINUE, wanted, "canary under way")
    if decision == "replace":
        return ModelPlan(name, Move.REPLACE, wanted, "the spec changed during the canary")
    if decision == "none":
        return ModelPlan(name, Move.STEADY, wanted, "up to date")
    if decision == "pinned":
        return ModelPlan(
            name, Move.PINNED, wanted, "this spec was rolled back; change it or run mdc retry"
        )
    return ModelPlan(name, Move.START_CANARY, wanted, "the spec changed")


# -- the status a pass leaves ----------------------------------------------------


_CANARY_PHASE = {
    CanaryPhase.WARMING: Phase.PROGRESSING,
    CanaryPhase.STEPPING: Phase.PROGRESSING,
    CanaryPhase.WAITING_FOR_APPROVAL: Phase.PAUSED,
    CanaryPhase.PAUSED: Phase.PAUSED,
    CanaryPhase.PROMOTED: Phase.HEALTHY,
    CanaryPhase.ROLLED_BACK: Phase.ROLLED_BACK,
}


def next_status(
    previous: ModelStatus | None,
    name: str,
    *,
    now: float,
    phase: Phase | None = None,
    model: Model | None = None,
    revision: str | None = None,
    applied: bool = False,
    stable: Release | None = None,
    canary: Release | None = None,
    state: CanaryState | None = None,
    steps: int | None = None,
    gpus: Sequence[GPUHold] = (),
    gpu_hours: Mapping[str, float] | None = None,
    conditions: Sequence[Condition] = (),
    event: tuple[str, str] | None = None,
    pull_request: int | None = None,
    monitor: Mapping[str, Any] | None = None,
    monitor_events: Sequence[tuple[str, str]] = (),
    endpoint: str | None = None,
) -> ModelStatus:
    """The status after a pass. ``phase`` defaults to the canary's, else Healthy
    when a stable release runs; a history entry is added for ``event`` and
    whenever the phase, step or weight moved, and one for each of the monitor's
    ``monitor_events`` (an objective breached or recovered, drift). ``endpoint``
    is the model's route URL (kept from ``previous`` when not given)."""
    if phase is None:
        if state is not None:
            phase = _CANARY_PHASE[state.phase]
        else:
            phase = Phase.HEALTHY if stable is not None else Phase.PENDING
    live = state is not None and not state.phase.done
    weight = state.weight if live and state is not None else 0
    step = state.step + 1 if live and state is not None and steps else None
    verdicts = _verdicts(state) if state is not None else ()
    base = previous or ModelStatus(name, phase)
    status = replace(
        base,
        phase=phase,
        team=model.team if model is not None else base.team,
        attempted_revision=revision or base.attempted_revision,
        applied_revision=revision if applied and revision else base.applied_revision,
        spec_hash=stable.spec_hash if stable is not None else None,
        stable=stable,
        canary=canary if live else None,
        weight=weight,
        step=step,
        steps=steps if live else None,
        verdicts=verdicts,
        gpus=tuple(gpus),
        gpu_hours=dict(gpu_hours) if gpu_hours is not None else base.gpu_hours,
        conditions=tuple(conditions),
        canary_state=json.loads(json.dumps(asdict(state))) if state is not None else None,
        pull_request=pull_request if pull_request is not None else base.pull_request,
        phase_since=base.phase_since if previous and previous.phase == phase else iso(now),
        monitor=monitor,
        endpoint=endpoint or base.endpoint,
    )
    moved = previous is None or (previous.phase, previous.step, previous.weight) != (
        phase,
        step,
        weight,
    )
    if event is not None:
        status = status.with_event(HistoryEntry(iso(now), event[0], event[1], revision))
    elif moved:
        message = f"{phase}"
        if step is not None and steps:
            message += f", step {step}/{steps}"
        if live:
            message += f", weight {weight}%"
        if state is not None and state.reason:
            message += f": {state.reason}"
        status = status.with_event(HistoryEntry(iso(now), str(phase), message, revision))
    for kind, message in monitor_events:
        status = status.with_event(HistoryEntry(iso(now), kind, message, revision))
    return status


def _verdicts(state: CanaryState) -> tuple[Verdict, ...]:
    if not state.verdicts:
        return ()
    last = state.verdicts[-1]
    return tuple(
        Verdict(c.check, c.value, c.outcome is not Outcome.FAIL, c.message) for c in last.checks
    )


def rollout_decision(
    desired: str, stable: str | None, canary: CanaryState | None, pinned: str | None
) -> str:
    """What to do about a model whose spec hashes to ``desired``.

    ``none``: it already runs (also when git was reverted to the promoted
    spec); ``pinned``: this spec failed and waits for a change or a retry;
    ``continue``: its canary is under way; ``replace``: a canary of another
    spec is under way -- abort it, then start this one; ``start``: begin a canary.
    """
    if canary is not None and not canary.phase.done:
        return "continue" if canary.spec_hash == desired else "replace"
    if desired == stable:
        return "none"
    if desired == pinned:
        return "pinned"
    return "start"


@dataclass(frozen=True)
class PhaseFacts:
    """What a model's phase is decided from, at the end of a pass."""

    move: Move
    canary: CanaryPhase | None  # the canary under way, or the last one
    previous: Phase | None  # the phase recorded before this pass
    failed: bool  # this spec hash failed for good (stalled until it changes)
    has_stable: bool
    stable_ready: bool
    waiting_for_gpus: bool
    replacing: bool  # the stable is being placed again (its node was lost)
    troubled: bool  # the model has a condition that is not met
    building: bool = False  # its new bento is being built (off the loop)


def phase_for(facts: PhaseFacts) -> Phase | None:
    """The phase a pass leaves a model in; None: the canary's own phase decides
    (see :func:`next_status`)."""
    f = facts
    if f.move in (Move.HOLD, Move.KEEP) and f.canary is None:
        return f.previous if f.previous is not None else Phase.STALLED
    if f.move is Move.PINNED:
        return Phase.STALLED if f.failed or not f.has_stable else Phase.ROLLED_BACK
    if f.move is Move.STEADY and f.canary in (None, CanaryPhase.PROMOTED):
        return Phase.DEGRADED if f.troubled else Phase.HEALTHY
    if f.failed:
        return Phase.STALLED
    if f.waiting_for_gpus:
        return Phase.WAITING
    if f.building and f.canary is None:
        return Phase.PROGRESSING if f.has_stable else Phase.PENDING
    if f.replacing:
        return Phase.DEGRADED
    if f.has_stable and f.canary is None and f.move in (Move.DEPLOY, Move.AWAIT):
        return Phase.HEALTHY if f.stable_ready else Phase.PENDING
    if f.canary is None and not f.has_stable:
        return Phase.PENDING
    return None
