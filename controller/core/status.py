"""What mdc records about each model and pool: the status files on the
status branch, and the commit messages that describe a change of them.

Owns :class:`ModelStatus` (frozen), their YAML form
(deterministic bytes, so an unchanged status is never committed again), reading
them back (the status branch is input too: a hand-edited or corrupt file is
an error naming the file, never a crash), and the one-line summary used as
the commit subject (``fraud-scorer: Progressing step 2/5, weight 25%``) with
its trailers.

Pure. Written by the reconciler through :mod:`controller.adapters.git.status_branch`; read
back by the reconciler after a restart and by ``mdc history``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import yaml

from controller.errors import PermanentError, Reason
from controller.spec.documents import parse_yaml

__all__ = [
    "HISTORY_LIMIT",
    "Condition",
    "GPUHold",
    "HistoryEntry",
    "ModelStatus",
    "Phase",
    "Release",
    "Verdict",
    "commit_message",
    "model_path",
    "parse_model_status",
    "render",
]

#: How many history entries a status file keeps (git keeps the rest).
HISTORY_LIMIT = 20


class Phase(StrEnum):
    PENDING = "Pending"  # seen, nothing done yet
    WAITING = "Waiting"  # blocked on something outside the spec (GPUs, approval)
    PROGRESSING = "Progressing"  # a canary is walking its steps
    PAUSED = "Paused"  # waiting for a person
    HEALTHY = "Healthy"  # the desired version serves all traffic
    ROLLED_BACK = "RolledBack"  # the canary failed; the stable version serves
    STALLED = "Stalled"  # a permanent error; waits for the spec to change
    DEGRADED = "Degraded"  # serving, but something is wrong


@dataclass(frozen=True)
class Release:
    version: str
    bento: str | None = None
    started_at: str | None = None
    name: str | None = None  # the runtime's release name ("fraud-scorer/3f2a9c1d0e")
    spec_hash: str | None = None  # the hash of the resolved spec it runs
    revision: str | None = None  # the git revision it was made from ("main@sha1:...")
    pull_request: int | None = None  # the PR that brought it


@dataclass(frozen=True)
class Verdict:
    check: str
    value: float | None
    passed: bool
    message: str


@dataclass(frozen=True)
class GPUHold:
    node: str
    gpu: str
    share: float
    release: str  # "stable" or "canary"
    since: str | None = None  # ISO 8601, UTC: when the share was taken
    replica: int = 0  # which replica of the release holds it


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class HistoryEntry:
    at: str  # ISO 8601, UTC
    event: str
    message: str
    revision: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    name: str
    phase: Phase
    team: str | None = None
    attempted_revision: str | None = None
    applied_revision: str | None = None
    spec_hash: str | None = None
    stable: Release | None = None
    canary: Release | None = None
    weight: int = 0  # percent of traffic on the canary
    step: int | None = None  # 1-based index of the current step
    steps: int | None = None
    verdicts: tuple[Verdict, ...] = ()
    gpus: tuple[GPUHold, ...] = ()
    conditions: tuple[Condition, ...] = ()
    history: tuple[HistoryEntry, ...] = field(default=())
    #: GPU-hours of shares already given back, by release kind ("stable", "canary");
    #: shares still held add (now - since) x share (see :mod:`controller.core.costs`)
    gpu_hours: Mapping[str, float] = field(default_factory=dict)
    #: the canary state machine's state (:func:`controller.core.canary.state_to_dict`),
    #: so a restarted controller resumes at the same step, weight and failure count
    canary_state: Mapping[str, Any] | None = None
    pull_request: int | None = None  # the PR that introduced the attempted revision
    phase_since: str | None = None  # ISO 8601, UTC: when the phase last changed
    #: after promotion: the breached objectives and the drift of the running version
    #: (:meth:`controller.core.monitor.ModelMonitor.record`); None while all is well
    monitor: Mapping[str, Any] | None = None
    #: the model's stable URL: its route on the router ("http://127.0.0.1:8100")
    endpoint: str | None = None

    def with_event(self, entry: HistoryEntry) -> ModelStatus:
        """This status with ``entry`` first in its history, trimmed to the limit."""
        return replace(self, history=(entry, *self.history)[:HISTORY_LIMIT])


def model_path(name: str) -> str:
    return f"models/{name}.yaml"


def _drop_empty(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v not in (None, [], {}, ())}


def _model_dict(status: ModelStatus) -> dict[str, Any]:
    def release(r: Release | None) -> dict[str, Any] | None:
        return (
            None
            if r is None
            else _drop_empty(
                {
                    "version": r.version,
                    "bento": r.bento,
                    "startedAt": r.started_at,
                    "name": r.name,
                    "specHash": r.spec_hash,
                    "revision": r.revision,
                    "pullRequest": r.pull_request,
                }
            )
        )

    return _drop_empty(
        {
            "name": status.name,
            "phase": str(status.phase),
            "phaseSince": status.phase_since,
            "team": status.team,
            "endpoint": status.endpoint,
            "pullRequest": status.pull_request,
            "revisions": _drop_empty(
                {"attempted": status.attempted_revision, "applied": status.applied_revision}
            ),
            "specHash": status.spec_hash,
            "releases": _drop_empty(
                {"stable": release(status.stable), "canary": release(status.canary)}
            ),
            "weight": status.weight,
            "step": status.step,
            "steps": status.steps,
            "verdicts": [
                {"check": v.check, "value": v.value, "passed": v.passed, "message": v.message}
                for v in status.verdicts
            ],
            "gpus": [
                _drop_empty(
                    {
                        "node": g.node,
                        "gpu": g.gpu,
                        "share": g.share,
                        "release": g.release,
                        "since": g.since,
                        "replica": g.replica or None,
                    }
                )
                for g in status.gpus
            ],
            "gpuHours": {k: round(v, 4) for k, v in sorted(status.gpu_hours.items())},
            "conditions": [
                {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
                for c in status.conditions
            ],
            "history": [
                _drop_empty(
                    {"at": h.at, "event": h.event, "message": h.message, "revision": h.revision}
                )
                for h in status.history
            ],
            "canaryState": status.canary_state,
            "monitor": status.monitor,
        }
    )


class _Dumper(yaml.SafeDumper):
    """Safe YAML that writes a string enum (a reason, a condition type) as its text."""


_Dumper.add_multi_representer(StrEnum, lambda dumper, value: dumper.represent_str(str(value)))


def render(status: ModelStatus) -> bytes:
    """The status file's bytes: the same status always gives the same bytes."""
    data = _model_dict(status)
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return ("# Written by mdc. Do not edit: the next pass overwrites it.\n" + text).encode()


def _mapping_or_none(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError("canaryState and monitor must be mappings")
    return value


def parse_model_status(file: str, raw: bytes) -> ModelStatus:
    """Read a status file back; raises :class:`PermanentError` (BadStatusFile)."""
    documents, problems = parse_yaml(file, raw)
    if problems or len(documents) != 1 or not isinstance(documents[0].data, dict):
        why = problems[0].render() if problems else f"{file}: expected one YAML mapping"
        raise PermanentError(why, reason=Reason.BAD_STATUS_FILE)
    data: dict[str, Any] = documents[0].data
    try:
        revisions = data.get("revisions", {})
        releases = data.get("releases", {})

        def release(raw_release: dict[str, Any] | None) -> Release | None:
            if raw_release is None:
                return None
            return Release(
                raw_release["version"],
                raw_release.get("bento"),
                raw_release.get("startedAt"),
                raw_release.get("name"),
                raw_release.get("specHash"),
                raw_release.get("revision"),
                None if raw_release.get("pullRequest") is None else int(raw_release["pullRequest"]),
            )

        return ModelStatus(
            name=str(data["name"]),
            phase=Phase(data["phase"]),
            team=data.get("team"),
            attempted_revision=revisions.get("attempted"),
            applied_revision=revisions.get("applied"),
            spec_hash=data.get("specHash"),
            stable=release(releases.get("stable")),
            canary=release(releases.get("canary")),
            weight=int(data.get("weight", 0)),
            step=data.get("step"),
            steps=data.get("steps"),
            verdicts=tuple(
                Verdict(v["check"], v.get("value"), bool(v["passed"]), v["message"])
                for v in data.get("verdicts", [])
            ),
            gpus=tuple(
                GPUHold(
                    g["node"],
                    g["gpu"],
                    float(g["share"]),
                    g["release"],
                    g.get("since"),
                    int(g.get("replica", 0)),
                )
                for g in data.get("gpus", [])
            ),
            conditions=tuple(
                Condition(c["type"], bool(c["status"]), c["reason"], c["message"])
                for c in data.get("conditions", [])
            ),
            history=tuple(
                HistoryEntry(h["at"], h["event"], h["message"], h.get("revision"))
                for h in data.get("history", [])
            ),
            gpu_hours={str(k): float(v) for k, v in data.get("gpuHours", {}).items()},
            canary_state=_mapping_or_none(data.get("canaryState")),
            pull_request=None if data.get("pullRequest") is None else int(data["pullRequest"]),
            phase_since=data.get("phaseSince"),
            monitor=_mapping_or_none(data.get("monitor")),
            endpoint=None if data.get("endpoint") is None else str(data["endpoint"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PermanentError(
            f"{file}: not a model status file ({type(exc).__name__}: {exc})",
            reason=Reason.BAD_STATUS_FILE,
        ) from None


def commit_message(status: ModelStatus, source_revision: str | None) -> tuple[str, dict[str, str]]:
    """The commit subject and trailers for a change of ``status``."""
    subject = f"{status.name}: {status.phase}"
    if status.step is not None and status.steps:
        subject += f" step {status.step}/{status.steps}"
    if status.canary is not None:
        subject += f", weight {status.weight}%"
    trailers = {"Model": status.name, "Phase": str(status.phase)}
    if source_revision:
        trailers["Source-Revision"] = source_revision
    return subject, trailers
