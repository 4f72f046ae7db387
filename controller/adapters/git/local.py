"""A git repository on this machine, read without a checkout.

Owns :class:`LocalRepository`: finding the repository a path lies in, its HEAD,
the first of several refs that exists, and a revision's commit and tree (a
:class:`~controller.adapters.git.source.GitTree`), so callers outside the git
adapter never touch libgit2. It also wraps the mirror a
:class:`~controller.adapters.git.source.GitSource` fetched, so a command reads a
local repository and a remote one the same way.

Called by the ``mdc`` verbs that read git (``history``, ``status``, ``monitor``,
``pool``, ``build``, ``plan --base/--head``) and by the controller's wiring
(:mod:`controller.app.wiring`), which refuses a working copy as its repo.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pygit2

from controller.adapters.git.source import GitTree
from controller.errors import PermanentError, Reason

__all__ = ["LocalRepository"]


class LocalRepository:
    """One repository's object database and refs (a working copy or a bare one)."""

    def __init__(self, repo: pygit2.Repository) -> None:
        #: The libgit2 handle, for the git adapter's own readers (e.g. ``model_history``).
        self.repo = repo

    @classmethod
    def discover(cls, path: str | Path) -> LocalRepository | None:
        """The repository ``path`` lies in (searching upwards), or None if there is none."""
        found = pygit2.discover_repository(str(path))
        if found is None:
            return None
        return cls(pygit2.Repository(found))

    @property
    def bare(self) -> bool:
        return bool(self.repo.is_bare)

    def head_branch(self) -> str | None:
        """The short name HEAD points at; None while HEAD is unborn (no commit yet)."""
        if self.repo.head_is_unborn:
            return None
        return str(self.repo.head.shorthand)

    def head_revision(self) -> str:
        """The commit HEAD points at; ``""`` while HEAD is unborn."""
        return "" if self.repo.head_is_unborn else str(self.repo.head.target)

    def first_ref(self, names: Iterable[str]) -> str | None:
        """The commit the first existing ref of ``names`` resolves to, or None."""
        for name in names:
            ref = self.repo.references.get(name)
            if ref is not None:
                return str(ref.resolve().target)
        return None

    def tree(self, ref: str) -> tuple[str, GitTree]:
        """The commit ``ref`` names (a sha, a branch, any git revision) and its tree.

        Raises :class:`~controller.errors.PermanentError` when ``ref`` names no commit.
        """
        try:
            commit = self.repo.revparse_single(ref).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise PermanentError(
                f"{ref!r} names no commit: {exc}", reason=Reason.NOT_A_COMMIT
            ) from exc
        return str(commit.id), GitTree(self.repo, str(commit.tree_id))
