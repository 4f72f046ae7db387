"""The commits whose ``mdc/rollout`` status mdc left pending, kept until each one is ended.

Owns what ``mdc/rollout`` says for a model's phase (:func:`rollout_state`), the commit
a revision names (:func:`revision_sha`), and :class:`PendingCommits`: for each commit on
which the GitHub reporter set ``mdc/rollout`` to ``pending``, the models whose rollout
it reports (and the pull request that brought each), and -- once no model's rollout is
under way there any more (its model moved on to a later commit, was removed from git,
or the commit was force-pushed away) -- the final description it is still to be given.
A commit is held only while the last ``mdc/rollout`` mdc set on it was ``pending``: one
that was given a final state is let go, so ending a held commit never overwrites a
final state.

The record lives in ``STATE/github/pending-commits.json``, rewritten atomically (a
tmp file, then ``os.replace``) whenever it changes, so a restarted controller still
ends what the previous one left pending. A file that is missing (a state directory
older than it) or unreadable is replaced by what the recorded statuses say is pending
(:meth:`PendingCommits.seed`).

Which commits end, and why: a model's status names another commit
(:meth:`~PendingCommits.moved_on`: "superseded by ..."), the model is removed from git
(:meth:`~PendingCommits.removed`), the branch is force-pushed
(:meth:`~PendingCommits.force_pushed`: "force-pushed away" for a commit that left the
branch), or -- after a restart -- the recorded statuses show either of the first two
(:meth:`~PendingCommits.catch_up`).

Bookkeeping only; its one file is its only I/O. Called by
:class:`controller.app.reporting.PullRequests`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from controller.core.status import ModelStatus, Phase

__all__ = ["RECORD", "PendingCommits", "revision_sha", "rollout_state"]

log = logging.getLogger(__name__)

#: Where the record lives, under the state directory.
RECORD = Path("github") / "pending-commits.json"
_SHA = re.compile(r"[0-9a-f]{40}")


def rollout_state(status: ModelStatus) -> str:
    """The commit status ``mdc/rollout`` says for a model's phase."""
    if status.phase is Phase.HEALTHY:
        return "success"
    if status.phase in (Phase.ROLLED_BACK, Phase.STALLED):
        return "failure"
    if status.phase is Phase.DEGRADED:
        return "error"
    return "pending"


def revision_sha(revision: str | None) -> str | None:
    """The commit of a recorded revision (``main@sha1:SHA``), if it names one."""
    if not revision or "sha1:" not in revision:
        return None
    return revision.rsplit("sha1:", 1)[1]


def _superseded(names: str, current: str) -> str:
    return f"{names}: superseded by {current[:7]} before its rollout ended"


def _removed(name: str) -> str:
    return f"{name}: removed from git before its rollout ended"


class _Held:
    """One commit left pending: its models (model -> the PR that brought it) and the
    description it is to be ended with once none is left (None while one is)."""

    def __init__(self, models: dict[str, int | None] | None = None, ending: str | None = None):
        self.models: dict[str, int | None] = dict(models or {})
        self.ending = ending

    def to_json(self) -> dict[str, Any]:
        return {"models": dict(sorted(self.models.items())), "ending": self.ending}


def _held_from_json(data: Any) -> _Held:
    if not isinstance(data, dict):
        raise TypeError("not an object")
    models = data.get("models") or {}
    ending = data.get("ending")
    if not isinstance(models, dict) or not (ending is None or isinstance(ending, str)):
        raise TypeError("bad models or ending")
    held = _Held(ending=ending)
    for name, pull in models.items():
        if not isinstance(name, str) or not (pull is None or type(pull) is int):
            raise TypeError(f"bad model entry {name!r}")
        held.models[name] = pull
    return held


class PendingCommits:
    """The commits left pending (see the module docstring); in memory until
    :meth:`load` gives it its file."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._held: dict[str, _Held] = {}

    # -- the file ---------------------------------------------------------------------

    def load(self, state_dir: Path) -> bool:
        """Keep the record in ``state_dir`` from now on, adding what it holds to what is
        held already; False when there was no readable record (:meth:`seed` it then)."""
        self.path = Path(state_dir) / RECORD
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            commits = data["commits"]
            if not isinstance(commits, dict):
                raise TypeError("commits is not an object")
            loaded = {}
            for sha, entry in commits.items():
                if not isinstance(sha, str) or not _SHA.fullmatch(sha):
                    raise TypeError(f"{sha!r} is not a full commit sha")
                loaded[sha] = _held_from_json(entry)
        except FileNotFoundError:
            self._save()
            return False
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("%s cannot be read (%s): seeded from the statuses", self.path, exc)
            self._save()
            return False
        for sha, held in loaded.items():
            mine = self._held.setdefault(sha, held)
            if mine is not held:
                mine.models = held.models | mine.models
        self._save()
        return True

    def _save(self) -> None:
        """Write the record atomically; a failure is logged (memory still holds it)."""
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        data = {"commits": {sha: held.to_json() for sha, held in sorted(self._held.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("%s not written (%s): kept in memory", self.path, exc.strerror or exc)

    # -- reading ----------------------------------------------------------------------

    def commits(self) -> list[str]:
        """Every commit held, oldest first (the order they were first set pending)."""
        return list(self._held)

    def models(self, sha: str) -> dict[str, int | None]:
        """The models whose rollout is under way at ``sha`` -> the PR that brought each."""
        held = self._held.get(sha)
        return dict(held.models) if held is not None else {}

    def holding(self, model: str) -> list[str]:
        """The commits left pending for ``model``."""
        return [sha for sha, held in self._held.items() if model in held.models]

    def endings(self) -> list[tuple[str, str]]:
        """(commit, description) of each commit to be ended, oldest first."""
        return [(sha, h.ending) for sha, h in self._held.items() if h.ending is not None]

    # -- changes ----------------------------------------------------------------------

    def started(self, sha: str, model: str, pull: int | None) -> None:
        """``mdc/rollout`` on ``sha`` is (about to be) pending for ``model``."""
        held = self._held.setdefault(sha, _Held())
        if held.models.get(model, -1) == pull and held.ending is None:
            return
        held.models[model] = pull
        held.ending = None
        self._save()

    def settled(self, sha: str) -> None:
        """A model's own report gave ``sha`` a final state: nothing is pending there."""
        if self._held.pop(sha, None) is not None:
            self._save()

    def leave(self, sha: str, model: str, description: str) -> None:
        """``model``'s rollout is no longer under way at ``sha``; when it was the last
        one there, ``sha`` is to be ended with ``description``."""
        held = self._held.get(sha)
        if held is None or model not in held.models:
            return
        del held.models[model]
        if not held.models:
            held.ending = description
        self._save()

    def end(self, sha: str, description: str) -> None:
        """``sha`` is to be ended with ``description``, whatever models are left there."""
        held = self._held.get(sha)
        if held is None:
            return
        held.models.clear()
        held.ending = description
        self._save()

    def ended(self, sha: str) -> None:
        """``sha`` was given its final state (or can never be): let it go."""
        self.settled(sha)

    # -- what ends a rollout -----------------------------------------------------------

    def seed(self, statuses: Mapping[str, ModelStatus]) -> None:
        """Hold what ``statuses`` say is pending (a state directory without a record)."""
        for status in statuses.values():
            sha = revision_sha(status.attempted_revision)
            if sha is not None and rollout_state(status) == "pending":
                self.started(sha, status.name, status.pull_request)

    def catch_up(self, statuses: Mapping[str, ModelStatus]) -> list[str]:
        """After a restart: end what the models in ``statuses`` moved on from or that is
        gone; the models whose final state on a held commit is to be reported (again)."""
        again = []
        for sha in self.commits():
            for name in self.models(sha):
                status = statuses.get(name)
                current = None if status is None else revision_sha(status.attempted_revision)
                if status is None:
                    self.leave(sha, name, _removed(name))
                elif current is not None and current != sha:
                    self.leave(sha, name, _superseded(name, current))
                elif rollout_state(status) != "pending":
                    again.append(name)
        return again

    def moved_on(self, status: ModelStatus) -> bool:
        """End the commits held for the model that ``status`` no longer names; whether
        any was left."""
        current = revision_sha(status.attempted_revision)
        left = [sha for sha in self.holding(status.name) if current not in (None, sha)]
        for sha in left:
            self.leave(sha, status.name, _superseded(status.name, str(current)))
        return bool(left)

    def removed(self, model: str) -> bool:
        """``model`` is gone from git: end the commits held for it; whether there were any."""
        held = self.holding(model)
        for sha in held:
            self.leave(sha, model, _removed(model))
        return bool(held)

    def force_pushed(
        self,
        branch: str,
        current: str,
        on_branch: Callable[[str], bool],
        statuses: Mapping[str, ModelStatus],
    ) -> dict[int, dict[str, set[str]]]:
        """``branch`` was force-pushed to ``current``: every commit held but ``current``
        is to be ended ("force-pushed away" unless ``on_branch`` says it is still on the
        branch). Returns PR -> commit that left the branch -> the models whose rollout
        that PR brought there, from what is held and from what ``statuses`` (the last
        pass's) say was under way."""
        told: dict[int, dict[str, set[str]]] = {}
        for sha in self.commits():
            models = self.models(sha)
            if sha == current or not models:
                continue
            names = ", ".join(sorted(models))
            if on_branch(sha):
                self.end(sha, _superseded(names, current))
                continue
            self.end(sha, f"{names}: force-pushed away ({branch} is at {current[:7]})")
            for name, number in models.items():
                if number is not None:
                    told.setdefault(number, {}).setdefault(sha, set()).add(name)
        for status in statuses.values():
            under_way = revision_sha(status.attempted_revision)
            number = status.pull_request
            if under_way in (None, current) or number is None or rollout_state(status) != "pending":
                continue
            if under_way is not None and not on_branch(under_way):
                told.setdefault(number, {}).setdefault(under_way, set()).add(status.name)
        return told
