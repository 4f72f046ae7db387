"""The state behind :class:`~controller.testing.github.FakeGitHub`: repositories as
GitHub holds them, in memory.

Owns :class:`FakeRepo` (commits with whole file trees, refs, pull requests, issues,
comments, reactions, commit statuses and collaborator roles, seeded with
:meth:`FakeRepo.commit`, :meth:`FakeRepo.add_pull` and :meth:`FakeRepo.add_comment`),
its records (:class:`FakeCommit`, :class:`FakeComment`, :class:`FakePull`), the
vocabulary GitHub allows in them (:data:`REACTIONS`, :data:`ROLES`), git blob ids
(:func:`blob_sha`) and GitHub's timestamps (:func:`iso_time`). Standard library only;
used by the fake's server, its routes and the tests that seed and inspect it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REACTIONS",
    "ROLES",
    "FakeComment",
    "FakeCommit",
    "FakePull",
    "FakeRepo",
    "blob_sha",
    "iso_time",
]

#: The reactions GitHub allows on a comment.
REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
#: role (``role_name``) -> the legacy ``permission`` GitHub folds it into.
ROLES = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}


def blob_sha(data: bytes) -> str:
    """The git blob id of ``data`` (what GitHub calls a file's ``sha``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def iso_time(epoch: float) -> str:
    """``epoch`` as GitHub writes times: ``2024-01-31T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(eq=False)
class FakeCommit:
    sha: str
    tree: dict[str, bytes]
    parents: tuple[str, ...]
    message: str
    date: float


@dataclass(eq=False)
class FakeComment:
    id: int
    issue: int
    body: str
    user: str
    created_at: float
    updated_at: float


@dataclass(eq=False)
class FakePull:
    number: int
    id: int
    title: str
    body: str | None
    head: str
    base: str
    head_sha: str
    base_sha: str
    user: str
    state: str = "open"
    merged: bool = False
    merge_commit_sha: str | None = None
    draft: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(eq=False)
class FakeRepo:
    """One repository's state. Seed it with :meth:`commit`, :meth:`add_pull` and
    :meth:`add_comment`, or by writing the dictionaries directly."""

    full_name: str
    id: int
    default_branch: str = "main"
    commits: dict[str, FakeCommit] = field(default_factory=dict)
    #: Full ref name ("refs/heads/main") -> commit sha.
    refs: dict[str, str] = field(default_factory=dict)
    pulls: dict[int, FakePull] = field(default_factory=dict)
    #: Issue numbers that are not pull requests.
    issues: set[int] = field(default_factory=set)
    #: Commit sha -> numbers of pull requests it belongs to (besides head and merge shas).
    commit_pulls: dict[str, list[int]] = field(default_factory=dict)
    #: Login -> role (admin, maintain, write, triage, read, none); others are not users.
    permissions: dict[str, str] = field(default_factory=dict)
    #: Issue number -> its comments, in creation order.
    comments: dict[int, list[FakeComment]] = field(default_factory=dict)
    #: Commit sha -> the statuses set on it, oldest first.
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Comment id -> its reactions.
    reactions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    _ids: Iterator[int] | None = None

    @property
    def owner(self) -> str:
        return self.full_name.split("/")[0]

    def next_id(self) -> int:
        if self._ids is None:
            self._ids = iter(range(self.id * 1000 + 1, 2**62))
        return next(self._ids)

    def commit(
        self, files: Mapping[str, bytes | str | None], *, branch: str = "", message: str = "seed"
    ) -> str:
        """Commit ``files`` (None deletes) on ``branch`` (the default one), creating it; the sha."""
        ref = f"refs/heads/{branch or self.default_branch}"
        parent = self.refs.get(ref)
        tree = dict(self.commits[parent].tree) if parent else {}
        for path, data in files.items():
            if data is None:
                tree.pop(path.strip("/"), None)
            else:
                tree[path.strip("/")] = data.encode() if isinstance(data, str) else data
        listing = "".join(f"{blob_sha(tree[p])} {p}\n" for p in sorted(tree))
        seed = f"tree {listing}parent {parent}\n{message}\n{self.next_id()}"
        sha = hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()
        stamp = self.clock()
        self.commits[sha] = FakeCommit(sha, tree, (parent,) if parent else (), message, stamp)
        self.refs[ref] = sha
        return sha

    def resolve(self, ref: str | None) -> str | None:
        """A commit sha from a sha, a branch name, ``heads/x``, ``tags/x`` or ``refs/...``."""
        if not ref:
            ref = self.default_branch
        if ref in self.commits:
            return ref
        for name in (ref, f"refs/{ref}", f"refs/heads/{ref}", f"refs/tags/{ref}"):
            if name in self.refs:
                return self.refs[name]
        return None

    def files(self, ref: str | None = None) -> dict[str, bytes]:
        """The files at ``ref`` (a branch, ``heads/x`` or a sha; the default branch)."""
        sha = self.resolve(ref)
        return dict(self.commits[sha].tree) if sha else {}

    def ancestors(self, sha: str) -> set[str]:
        seen: set[str] = set()
        todo = [sha]
        while todo:
            if (one := todo.pop()) in seen or one not in self.commits:
                continue
            seen.add(one)
            todo.extend(self.commits[one].parents)
        return seen

    def next_number(self) -> int:
        return max([0, *self.issues, *self.pulls]) + 1

    def add_pull(
        self,
        head: str,
        *,
        base: str = "",
        number: int | None = None,
        title: str = "a change",
        body: str | None = None,
        user: str = "octocat",
        state: str = "open",
        merged: bool = False,
        merge_commit_sha: str | None = None,
        head_sha: str | None = None,
    ) -> FakePull:
        """A pull request from branch ``head`` (created with a commit when missing)."""
        base = base or self.default_branch
        if f"refs/heads/{base}" not in self.refs:
            self.commit({}, branch=base)
        if head_sha is None:
            if f"refs/heads/{head}" not in self.refs:
                self.refs[f"refs/heads/{head}"] = self.refs[f"refs/heads/{base}"]
                self.commit({f".pulls/{head}": head}, branch=head, message=title)
            head_sha = self.refs[f"refs/heads/{head}"]
        now = self.clock()
        pull = FakePull(
            number=number or self.next_number(),
            id=self.next_id(),
            title=title,
            body=body,
            head=head,
            base=base,
            head_sha=head_sha,
            base_sha=self.refs[f"refs/heads/{base}"],
            user=user,
            state="closed" if merged else state,
            merged=merged,
            merge_commit_sha=merge_commit_sha,
            created_at=now,
            updated_at=now,
        )
        self.pulls[pull.number] = pull
        return pull

    def add_comment(self, issue: int, body: str, *, user: str = "octocat") -> FakeComment:
        """A comment on issue or pull request ``issue`` (made an issue when it is neither)."""
        if issue not in self.pulls:
            self.issues.add(issue)
        now = self.clock()
        comment = FakeComment(self.next_id(), issue, body, user, now, now)
        self.comments.setdefault(issue, []).append(comment)
        return comment

    def find_comment(self, comment_id: int) -> FakeComment | None:
        for comments in self.comments.values():
            for comment in comments:
                if comment.id == comment_id:
                    return comment
        return None
