"""Manual commands and pins: what people tell a running controller.

``mdc promote|abort|pause|resume|retry`` leave a command file in the state
directory (:func:`send_command`); the reconciler takes each model's waiting
command once a pass (:func:`read_command`) and hands it to the rollout driver
or the steady-state move. :class:`Pins` keeps the spec hashes that failed: not
started again until the spec changes or someone asks for a retry.

Before a command is left, the CLI asks whether anyone will read it:
:func:`lock_holder` (is a controller running on this state directory? read
from its lock without ever taking it from a controller) and
:func:`read_records` (which models, and which releases of each, the controller
has recorded there: its status branch in its mirror, the runtime's process
table and the pins; ``mdc logs`` finds a release's name the same way).

Called by the reconciler, the rollout driver, PR comment commands and the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.adapters.git.local import LocalRepository
from controller.core.status import ModelStatus, parse_model_status
from controller.errors import MdcError

__all__ = [
    "ManualAction",
    "Pins",
    "StateRecords",
    "lock_holder",
    "read_command",
    "read_records",
    "send_command",
    "who_am_i",
]


@dataclass(frozen=True)
class ManualAction:
    model: str
    command: str  # promote, abort, pause, resume, retry
    who: str
    at: float


def _commands_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "commands"


def send_command(state_dir: Path, model: str, command: str, who: str | None = None) -> ManualAction:
    """Leave a command for the controller (the newest one wins)."""
    action = ManualAction(model, command, who or who_am_i(), time.time())
    folder = _commands_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{model}.tmp"
    tmp.write_text(json.dumps(action.__dict__))
    tmp.replace(folder / f"{model}.json")
    return action


def read_command(state_dir: Path, model: str) -> ManualAction | None:
    """Take the waiting command for ``model``, if any (it is consumed)."""
    path = _commands_dir(state_dir) / f"{model}.json"
    try:
        data = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError):
        return None
    return ManualAction(**data)


def who_am_i() -> str:
    user = os.environ.get("MDC_USER") or os.environ.get("USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Pins:
    """Spec hashes that failed, per model: not started again until the spec
    changes or someone asks for a retry. Kept in ``STATE/pins.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "pins.json"

    def all(self) -> dict[str, dict[str, object]]:
        try:
            data: dict[str, dict[str, object]] = json.loads(self.path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def get(self, model: str) -> str | None:
        pin = self.all().get(model)
        return None if pin is None else str(pin["specHash"])

    def pin(self, model: str, spec_hash: str, reason: str, at: float) -> None:
        pins = self.all()
        pins[model] = {"specHash": spec_hash, "reason": reason, "at": at}
        self._write(pins)

    def unpin(self, model: str) -> bool:
        pins = self.all()
        found = pins.pop(model, None) is not None
        self._write(pins)
        return found

    def _write(self, pins: dict[str, dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pins, indent=1, sort_keys=True))
        tmp.replace(self.path)


# -- who reads a command: the controller on a state directory -------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def lock_holder(lock: Path) -> str | None:
    """The pid (as text, ``"unknown"`` before it is written) of the controller
    holding ``lock`` (:class:`~controller.app.daemon.StateLock`'s file); None
    when no controller holds it.

    Reads the pid the holder wrote; a pid that no longer runs holds nothing.
    Only when that process lives is the lock tried, shared and non-blocking, and
    let go at once: a running controller keeps it; a pid taken over by an
    unrelated process is found out."""
    try:
        handle = lock.open("r")
    except OSError:
        return None
    with handle:
        written = handle.read().strip()
        if written.isdigit() and not _alive(int(written)):
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return written or "unknown"
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@dataclass(frozen=True)
class StateRecords:
    """What a controller has recorded in its state directory about its models."""

    #: each model's status, from the status branch committed in the state's mirror
    statuses: Mapping[str, ModelStatus] = field(default_factory=dict)
    #: each model's releases in the runtime's process table, in the order started
    releases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: models with a pinned (failed) spec
    pinned: frozenset[str] = frozenset()

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the controller has recorded anything about, sorted."""
        return tuple(sorted({*self.statuses, *self.releases, *self.pinned}))

    def release(self, model: str, kind: str) -> str | None:
        """The runtime's name of ``model``'s ``kind`` release (``stable`` or
        ``canary``): as its status names it; without a status, the process
        table's (the first release started is the stable, a second the canary)."""
        status = self.statuses.get(model)
        if status is not None:
            recorded = status.stable if kind == "stable" else status.canary
            return None if recorded is None else recorded.name
        started = self.releases.get(model, ())
        at = 0 if kind == "stable" else 1
        return started[at] if len(started) > at else None


def _mirror_statuses(state_dir: Path, status_branch: str) -> dict[str, ModelStatus]:
    """The statuses at the tip of ``status_branch`` in each mirror of the state
    (the controller commits there every pass, before it pushes)."""
    statuses: dict[str, ModelStatus] = {}
    mirrors = sorted((Path(state_dir) / "mirrors").glob("*.git"), key=lambda p: p.stat().st_mtime)
    refs = [f"refs/heads/{status_branch}", f"refs/remotes/origin/{status_branch}"]
    for mirror in mirrors:
        try:
            repo = LocalRepository.discover(mirror)
            tip = repo.first_ref(refs) if repo is not None else None
            if repo is None or tip is None:
                continue
            _, tree = repo.tree(tip)
            for path in tree.walk():
                if path.startswith("models/") and path.endswith(".yaml"):
                    with contextlib.suppress(MdcError):
                        status = parse_model_status(path, tree.read(path))
                        statuses[status.name] = status
        except (MdcError, OSError):
            continue
    return statuses


def _runtime_table(state_dir: Path) -> dict[str, tuple[str, ...]]:
    """Each model's release names in the runtime's process table
    (``STATE/runtime/releases.json``, kept by the local and the Ray runtime)."""
    try:
        rows: Any = json.loads((Path(state_dir) / "runtime" / "releases.json").read_text())
    except (OSError, ValueError):
        return {}
    releases: dict[str, tuple[str, ...]] = {}
    for row in rows if isinstance(rows, list) else []:
        spec = row.get("spec") if isinstance(row, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("model"), str):
            name = str(spec.get("name"))
            releases[spec["model"]] = (*releases.get(spec["model"], ()), name)
    return releases


def read_records(state_dir: Path, status_branch: str = "mdc/status") -> StateRecords:
    """What the controller on ``state_dir`` has recorded (nothing, for a state
    directory no controller has used); unreadable parts are left out."""
    return StateRecords(
        _mirror_statuses(state_dir, status_branch),
        _runtime_table(state_dir),
        frozenset(Pins(state_dir).all()),
    )
