"""The status branch: mdc's record of what it did, as commits on the spec
repository's remote (default ``mdc/status``), written without a working tree.

Owns committing status files (one per model and pool, see
:mod:`controller.core.status`) into the mirror's local status branch, and pushing
that branch. Rules (DESIGN.md, "The reconcile pass as data"):

* no commit when the bytes are identical;
* a push the remote rejects (another writer moved the branch) is detected
  through the push callbacks, our commits are replayed on the new tip (each
  writer owns its files, so replaying is setting them again) and the push is
  retried;
* a push that cannot happen now (the remote is down) leaves the commits on
  the local branch, and the next :meth:`StatusBranch.push` sends them -- a
  status write is never dropped;
* the status branch is never read as spec input (the spec loader reads only
  the release branch's snapshot).

Called by the reconciler after each pass and by ``mdc history``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import pygit2
from pygit2.enums import FileMode

from controller.adapters.git.source import GitSource, GitTree
from controller.errors import Reason, TransientError

__all__ = ["PushResult", "StatusBranch", "format_message"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    pushed: int  # commits that reached the remote in this call
    replayed: int  # commits replayed on top of another writer's
    pending: int  # commits still only local
    error: TransientError | None = None


def format_message(subject: str, trailers: Mapping[str, str], body: str = "") -> str:
    """A commit message: subject, optional body, then ``Key: value`` trailers."""
    parts = [subject.strip()]
    if body.strip():
        parts.append(body.strip())
    if trailers:
        parts.append("\n".join(f"{k}: {v}" for k, v in trailers.items()))
    return "\n\n".join(parts) + "\n"


class StatusBranch:
    """Commits and pushes status files through a :class:`GitSource`'s mirror."""

    def __init__(
        self,
        source: GitSource,
        branch: str = "mdc/status",
        author_name: str = "mdc",
        author_email: str = "mdc@localhost",
        max_attempts: int = 5,
    ) -> None:
        if branch == source.branch:
            raise ValueError("the status branch must not be the release branch")
        self.source = source
        self.repo = source.repo
        self.branch = branch
        self.local_ref = f"refs/heads/{branch}"
        self.remote_ref = f"refs/remotes/origin/{branch}"
        self.author_name = author_name
        self.author_email = author_email
        self.max_attempts = max_attempts
        #: held while the local branch moves (a commit, a replay): a pusher in
        #: another thread (:meth:`twin`) shares it, so neither loses the other's commit
        self.lock = threading.RLock()

    def twin(self) -> StatusBranch:
        """The same status branch over :meth:`GitSource.twin`, for a pushing thread;
        it shares :attr:`lock`, so commits and replays never overwrite each other."""
        other = type(self)(
            self.source.twin(), self.branch, self.author_name, self.author_email, self.max_attempts
        )
        other.lock = self.lock
        return other

    # -- reading ------------------------------------------------------------

    def tip(self) -> str | None:
        """The newest status commit we know: the remote's when it already contains
        ours, else ours (which holds commits not pushed yet)."""
        local = self.source.tip(self.local_ref)
        remote = self.source.tip(self.remote_ref)
        if local is None or (remote is not None and self.source.is_descendant(remote, local)):
            return remote
        return local

    def files(self) -> dict[str, bytes]:
        """Every status file at :meth:`tip`."""
        tip = self.tip()
        if tip is None:
            return {}
        tree = GitTree(self.repo, str(self._commit(tip).tree_id))
        return {path: tree.read(path) for path in tree.walk()}

    def pending(self) -> int:
        """Commits on the local branch that the remote has not got."""
        local = self.source.tip(self.local_ref)
        if local is None:
            return 0
        remote = self.source.tip(self.remote_ref)
        count = 0
        for commit in self.repo.walk(local):
            if remote is not None and (
                str(commit.id) == remote or self.source.is_descendant(remote, str(commit.id))
            ):
                break
            count += 1
        return count

    # -- writing ------------------------------------------------------------

    def commit(
        self, changes: Mapping[str, bytes | None], subject: str, trailers: Mapping[str, str]
    ) -> str | None:
        """Set (or, with None, delete) files and commit locally; None when nothing
        changed; :class:`TransientError` (StateNotWritable) when the mirror cannot be
        written."""
        with self.lock:
            try:
                base = self.tip()
                tree = self._apply(base, changes)
                if base is not None and str(self._commit(base).tree_id) == str(tree):
                    return None
                if base is None and not changes:
                    return None
                message = format_message(subject, trailers)
                return self._write_commit(tree, [base] if base else [], message)
            except (OSError, pygit2.GitError) as exc:  # the disk is full, say
                raise TransientError(
                    f"the status branch cannot be written in {self.repo.path}: {exc}",
                    reason=Reason.STATE_NOT_WRITABLE,
                ) from None

    def push(self) -> PushResult:
        """Send local commits; replay them on another writer's and retry when rejected."""
        pushed = replayed = 0
        for _ in range(self.max_attempts):
            local = self.source.tip(self.local_ref)
            if local is None:
                return PushResult(pushed, replayed, 0)
            try:
                remote = self.source.fetch_refs([self.branch])[self.branch]
            except TransientError as exc:
                return PushResult(pushed, replayed, self.pending(), exc)
            if remote == local or (remote and self.source.is_descendant(remote, local)):
                return PushResult(pushed, replayed, 0)
            if remote is not None and not self.source.is_descendant(local, remote):
                with self.lock:
                    count = self._replay_onto(remote)
                replayed += count
                local = self.source.tip(self.local_ref) or local
            ahead = self.pending()
            callbacks = self.source.callbacks()
            try:
                self.source.remote_handle().push(
                    [f"{self.local_ref}:refs/heads/{self.branch}"], callbacks=callbacks
                )
            except (pygit2.GitError, OSError) as exc:
                error = TransientError(
                    self.source.credentials.redact(
                        f"push to {self.source.remote.display} failed: {exc}"
                    ),
                    reason=Reason.STATUS_PUSH_FAILED,
                )
                return PushResult(pushed, replayed, self.pending(), error)
            if callbacks.rejected:
                log.info("status push rejected (%s); replaying", callbacks.rejected)
                continue
            self.repo.references.create(self.remote_ref, local, force=True)
            pushed += ahead
            return PushResult(pushed, replayed, 0)
        error = TransientError(
            f"status push to {self.source.remote.display} rejected {self.max_attempts} times",
            reason=Reason.STATUS_PUSH_REJECTED,
        )
        return PushResult(pushed, replayed, self.pending(), error)

    # -- internals ----------------------------------------------------------

    def _commit(self, oid: str) -> pygit2.Commit:
        found = self.repo.get(oid)
        if not isinstance(found, pygit2.Commit):
            raise TransientError(f"{oid} is not a commit", reason=Reason.NOT_A_COMMIT)
        return found

    def _apply(self, base: str | None, changes: Mapping[str, bytes | None]) -> pygit2.Oid:
        index = pygit2.Index()
        if base is not None:
            index.read_tree(self._commit(base).tree)
        for path, data in sorted(changes.items()):
            if data is None:
                if path in index:
                    index.remove(path)
            else:
                blob = self.repo.create_blob(data)
                index.add(pygit2.IndexEntry(path, blob, FileMode.BLOB))
        return index.write_tree(self.repo)

    def _signature(self) -> pygit2.Signature:
        return pygit2.Signature(self.author_name, self.author_email, int(time.time()), 0)

    def _write_commit(self, tree: pygit2.Oid, parents: list[str], message: str) -> str:
        who = self._signature()
        oid = self.repo.create_commit(None, who, who, message, tree, parents)
        self.repo.references.create(self.local_ref, oid, force=True)
        return str(oid)

    def _replay_onto(self, remote: str) -> int:
        """Rebase our local-only commits onto ``remote``; returns how many."""
        local = self.source.tip(self.local_ref)
        if local is None:
            return 0
        base = self.repo.merge_base(local, remote)
        ours: list[pygit2.Commit] = []
        for commit in self.repo.walk(local):
            if base is not None and commit.id == base:
                break
            ours.append(commit)
        tip = remote
        for commit in reversed(ours):
            parent_tree = commit.parents[0].tree_id if commit.parents else None
            changes = _changes(self.repo, parent_tree, commit.tree_id)
            tree = self._apply(tip, changes)
            if str(tree) == str(self._commit(tip).tree_id):
                continue  # the other writer already wrote the same bytes
            who = self._signature()
            tip = str(
                self.repo.create_commit(None, commit.author, who, commit.message, tree, [tip])
            )
        self.repo.references.create(self.local_ref, tip, force=True)
        return len(ours)


def _changes(
    repo: pygit2.Repository, before: pygit2.Oid | None, after: pygit2.Oid
) -> dict[str, bytes | None]:
    old = GitTree(repo, str(before)).entries() if before is not None else {}
    after_tree = GitTree(repo, str(after))
    new = after_tree.entries()
    out: dict[str, bytes | None] = {}
    for path, (mode, oid) in new.items():
        if mode != 0o040000 and old.get(path) != (mode, oid):
            out[path] = after_tree.read(path)
    for path, (mode, _) in old.items():
        if mode != 0o040000 and path not in new:
            out[path] = None
    return out
