"""The audit trail of one model, from git alone: every change to its spec on
the release branch, merged with what mdc recorded doing about it on the
status branch.

Owns walking both histories and turning each into :class:`Event` values:
spec commits that changed the model's document (found by parsing the YAML
files each commit touched, so moves between files are followed) with the
fields that changed, and status commits whose ``Model:`` trailer names the
model. Reads only git: no controller has to be running.

Called by ``mdc history``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pygit2
from pygit2.enums import SortMode

from controller.spec.documents import parse_yaml
from controller.spec.identity import field_changes

__all__ = ["Event", "field_changes", "model_history", "trailers"]

_MAX_BLOB = 1 << 20


@dataclass(frozen=True)
class Event:
    at: int  # commit time, seconds since the epoch
    kind: str  # "spec" or "status"
    commit: str
    author: str
    subject: str
    changes: tuple[str, ...] = ()  # spec: "spec.version: '1.0.0' -> '1.1.0'"
    phase: str | None = None  # status: the Phase trailer
    source_revision: str | None = None  # status: the Source-Revision trailer

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%d %H:%M:%S")

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
            "kind": self.kind,
            "commit": self.commit,
            "author": self.author,
            "subject": self.subject,
            "changes": list(self.changes),
            "phase": self.phase,
            "sourceRevision": self.source_revision,
        }


def trailers(message: str) -> dict[str, str]:
    """``Key: value`` lines of a commit message's last paragraph."""
    last = message.strip().split("\n\n")[-1]
    found: dict[str, str] = {}
    for line in last.splitlines():
        key, sep, value = line.partition(": ")
        if not sep or not key or " " in key:
            return {}
        found[key] = value.strip()
    return found


def _model_doc(repo: pygit2.Repository, tree: pygit2.Tree, path: str, name: str) -> Any:
    """The Model document named ``name`` in the file at ``path``, if any."""
    try:
        blob = repo.get(tree[path].id)
    except KeyError:
        return None
    if not isinstance(blob, pygit2.Blob) or blob.size > _MAX_BLOB:
        return None
    documents, _ = parse_yaml(path, bytes(blob.data))
    for doc in documents:
        data = doc.data
        if (
            isinstance(data, dict)
            and data.get("kind") == "Model"
            and isinstance(data.get("metadata"), dict)
            and data["metadata"].get("name") == name
        ):
            return data
    return None


def _spec_events(repo: pygit2.Repository, tip: str, name: str, limit: int) -> list[Event]:
    events: list[Event] = []
    for commit in repo.walk(tip, SortMode.TOPOLOGICAL | SortMode.TIME):
        if len(events) >= limit:
            break
        parent = commit.parents[0] if commit.parents else None
        if parent is None:  # the root commit: everything is new
            paths: list[tuple[str | None, str]] = [
                (None, p) for p in _yaml_paths(repo, commit.tree)
            ]
        else:
            paths = [
                (d.old_file.path, d.new_file.path)
                for d in parent.tree.diff_to_tree(commit.tree).deltas
                if d.new_file.path.endswith((".yaml", ".yml"))
                or d.old_file.path.endswith((".yaml", ".yml"))
            ]
        old = new = None
        for old_path, new_path in paths:
            if old is None and parent is not None and old_path:
                old = _model_doc(repo, parent.tree, old_path, name)
            if new is None:
                new = _model_doc(repo, commit.tree, new_path, name)
        if old is None and new is None:
            continue
        changes = (
            ("created",)
            if old is None
            else ("deleted",)
            if new is None
            else field_changes(old, new)
        )
        if not changes:
            continue  # only comments or formatting changed
        events.append(
            Event(
                commit.commit_time,
                "spec",
                str(commit.id),
                f"{commit.author.name} <{commit.author.email}>",
                commit.message.strip().splitlines()[0] if commit.message.strip() else "",
                changes,
            )
        )
    return events


def _yaml_paths(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str = "") -> Iterator[str]:
    for entry in tree:
        path = prefix + (entry.name or "")
        if entry.filemode == 0o040000:
            sub = repo.get(entry.id)
            if isinstance(sub, pygit2.Tree):
                yield from _yaml_paths(repo, sub, path + "/")
        elif path.endswith((".yaml", ".yml")):
            yield path


def _status_events(repo: pygit2.Repository, tip: str, name: str, limit: int) -> list[Event]:
    events: list[Event] = []
    for commit in repo.walk(tip, SortMode.TOPOLOGICAL | SortMode.TIME):
        if len(events) >= limit:
            break
        found = trailers(commit.message)
        if found.get("Model") != name:
            continue
        events.append(
            Event(
                commit.commit_time,
                "status",
                str(commit.id),
                f"{commit.author.name} <{commit.author.email}>",
                commit.message.strip().splitlines()[0],
                phase=found.get("Phase"),
                source_revision=found.get("Source-Revision"),
            )
        )
    return events


def model_history(
    repo: pygit2.Repository,
    spec_tip: str,
    status_tip: str | None,
    name: str,
    limit: int = 200,
) -> list[Event]:
    """Spec and status events for model ``name``, newest first."""
    events = _spec_events(repo, spec_tip, name, limit)
    if status_tip is not None:
        events += _status_events(repo, status_tip, name, limit)
    events.sort(key=lambda e: (e.at, e.kind == "status"), reverse=True)
    return events[:limit]
