"""Manual commands and pins: what people tell a running controller.

``mdc promote|abort|pause|resume|retry`` leave a command file in the state
directory (:func:`send_command`); the reconciler takes each model's waiting
command once a pass (:func:`read_command`) and hands it to the rollout driver
or the steady-state move. :class:`Pins` keeps the spec hashes that failed: not
started again until the spec changes or someone asks for a retry.

Called by the reconciler, the rollout driver, PR comment commands and the CLI.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ManualAction",
    "Pins",
    "read_command",
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
