"""The intent journal: a multi-step move written down before its first step.

Deploying, starting a canary, promoting, rolling back and aborting are each a
sequence of side effects (book GPUs, start a process, move traffic, drain, stop
a process, free GPUs) that ends with the status commit recording the outcome.
A controller killed between two of them must finish the move when it starts
again, not redo it or forget it. So before the first side effect the move's
:class:`Intent` is written to ``STATE/intents/MODEL.json`` (atomically, and
fsynced with its folder); the reconciler clears it once the pass's status
commit holds the outcome. A new controller that finds an intent rolls it
forward (:class:`controller.app.finishing.Finisher`): a promotion that was
decided is finished, never judged again; a rollback is finished; a release that
was started is adopted with its booking.

A state directory that cannot be written (disk full) raises
:class:`~controller.errors.TransientError` (``StateNotWritable``): the move
does not start, since it could not be finished after a crash -- except the
moves that make things safer (rollback, abort), which go on and are recorded
when they can.

Owns :class:`Intent`, :class:`IntentKind` and :class:`Journal`. Called by the
moves (write), the rollout driver's decision hook (write), the reconciler
(clear after the status commit) and recovery (load at start).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from controller.core.status import Release
from controller.errors import Reason, TransientError

__all__ = ["Intent", "IntentKind", "Journal"]

log = logging.getLogger(__name__)


class IntentKind(StrEnum):
    DEPLOY = "deploy"
    START_CANARY = "start-canary"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ABORT = "abort"

    @property
    def safe(self) -> bool:
        """A move that only takes traffic back to the stable: done even when it
        cannot be journaled."""
        return self in (IntentKind.ROLLBACK, IntentKind.ABORT)


@dataclass(frozen=True)
class Intent:
    """One model's move under way (see the module docstring)."""

    model: str
    kind: IntentKind
    at: float  # when it was decided (epoch seconds)
    stable: str | None = None  # the stable release's name at the decision
    canary: str | None = None  # the canary's (or the release being started's) name
    spec_hash: str | None = None  # of the spec the canary (or new release) runs
    record: Release | None = None  # the status record of the canary / new release
    state: dict[str, Any] | None = None  # the canary state the decision left
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        return data

    @classmethod
    def from_json(cls, data: Any) -> Intent:
        """An intent from its file's JSON; :class:`ValueError` when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            record = data.get("record")
            state = data.get("state")
            return cls(
                model=str(data["model"]),
                kind=IntentKind(data["kind"]),
                at=float(data["at"]),
                stable=_text(data.get("stable")),
                canary=_text(data.get("canary")),
                spec_hash=_text(data.get("spec_hash")),
                record=Release(**record) if isinstance(record, dict) else None,
                state=state if isinstance(state, dict) else None,
                reason=str(data.get("reason") or ""),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or wrong field: {exc}") from None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class Journal:
    """Intents on disk, one file per model, under ``STATE/intents``."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir) / "intents"

    def _path(self, model: str) -> Path:
        return self.folder / f"{model}.json"

    def write(self, intent: Intent) -> None:
        """Write ``intent`` durably (tmp file, fsync, rename, fsync of the folder);
        :class:`TransientError` (StateNotWritable) when the disk refuses."""
        path = self._path(intent.model)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            data = json.dumps(intent.to_json(), sort_keys=True).encode()
            with tmp.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise TransientError(
                f"the state directory cannot be written ({exc.strerror or exc}): "
                f"{intent.kind} of {intent.model} not journaled",
                reason=Reason.STATE_NOT_WRITABLE,
                retry_after=5.0,
            ) from None

    def clear(self, model: str) -> None:
        """Forget ``model``'s intent (its outcome is recorded); a failure is logged
        (the intent is rolled forward again after a restart, which is idempotent)."""
        try:
            self._path(model).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("intent of %s not cleared: %s", model, exc)

    def get(self, model: str) -> Intent | None:
        return self.load().get(model)

    def load(self) -> dict[str, Intent]:
        """Every readable intent by model; an unreadable file is logged and skipped."""
        out: dict[str, Intent] = {}
        if not self.folder.is_dir():
            return out
        for path in sorted(self.folder.glob("*.json")):
            try:
                intent = Intent.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError) as exc:
                log.error("%s: not an intent (%s); ignored", path, exc)
                continue
            out[intent.model] = intent
        return out


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
