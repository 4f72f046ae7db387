"""A read-only view of a spec repository's files, and the rules that keep
every path inside it.

The spec loader never touches the filesystem directly: it reads through the
small :class:`Tree` protocol, so the same code validates a directory on disk
(:class:`DirTree`, used by ``mdc validate``) and a commit read from git without
a checkout (a later git adapter feeds blobs through the same protocol).

Paths are POSIX, relative to the repository root. :func:`clean_reference`
refuses absolute paths, ``..`` and other tricks in paths written inside specs;
:func:`resolve` follows symlinks lexically, inside the tree only, so a link
that points outside the repository is an error rather than a read.

Called by :mod:`controller.spec.kinds` and the CLI.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from controller.errors import UnsafePath

__all__ = [
    "MAX_BLOB_BYTES",
    "MAX_TREE_DEPTH",
    "MAX_TREE_ENTRIES",
    "DirTree",
    "EntryKind",
    "Tree",
    "clean_reference",
    "resolve",
]

MAX_SYMLINK_HOPS = 8
#: A repository tree deeper than this (path segments) is not walked below it.
MAX_TREE_DEPTH = 64
#: A tree with more entries (files and directories) than this is walked no further.
MAX_TREE_ENTRIES = 100_000
#: The largest file read from a tree (GitHub refuses files over 100 MiB).
MAX_BLOB_BYTES = 100 << 20


class EntryKind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"  # a FIFO, socket or device: never read


class Tree(Protocol):
    """The few reads the spec loader needs from a repository snapshot."""

    def walk(self) -> Iterator[str]:
        """Every file and symlink path in the tree (not directories), sorted."""
        ...

    def kind(self, path: str) -> EntryKind | None:
        """What ``path`` is, without following a final symlink; None if absent."""
        ...

    def size(self, path: str) -> int:
        """Size in bytes of the file at ``path``."""
        ...

    def read(self, path: str) -> bytes:
        """The bytes of the file at ``path`` (callers check :meth:`size` first)."""
        ...

    def readlink(self, path: str) -> str:
        """The target written in the symlink at ``path``."""
        ...

    def refusals(self) -> list[tuple[str, str]]:
        """``(path, why)`` for each part of the tree :meth:`walk` left out for
        being over a bound (:data:`MAX_TREE_DEPTH`, :data:`MAX_TREE_ENTRIES`)."""
        ...


def clean_reference(reference: str) -> str:
    """A path written in a spec, checked and normalised; raises :class:`UnsafePath`.

    Refused: empty paths, absolute paths (``/x``, ``C:\\x``, ``\\\\host``),
    backslashes, NUL bytes and any ``..`` segment, even one that would stay
    inside the repository: specs name files plainly.
    """
    if not reference or "\0" in reference:
        raise UnsafePath(f"path {reference!r} is empty or contains a NUL byte")
    if "\\" in reference:
        raise UnsafePath(f"path {reference!r} contains a backslash; use '/'")
    if reference.startswith("/") or (len(reference) > 1 and reference[1] == ":"):
        raise UnsafePath(f"path {reference!r} is absolute; paths are relative to the repo root")
    parts = reference.split("/")
    if ".." in parts:
        raise UnsafePath(f"path {reference!r} contains '..'; it must stay inside the repo")
    cleaned = posixpath.normpath(reference)
    if cleaned in (".", ""):
        raise UnsafePath(f"path {reference!r} names the repo root, not a file")
    return cleaned


def resolve(tree: Tree, path: str) -> tuple[str, EntryKind | None]:
    """Follow symlinks at ``path`` (and in its parent directories) inside ``tree``.

    Returns the final in-tree path and its kind (None when it does not exist).
    Raises :class:`UnsafePath` when a link is absolute, leaves the tree, or
    loops.
    """
    current = clean_reference(path)
    for _ in range(MAX_SYMLINK_HOPS):
        linked = _first_symlink(tree, current)
        if linked is None:
            return current, tree.kind(current)
        link, rest = linked
        target = tree.readlink(link)
        if target.startswith("/"):
            raise UnsafePath(f"{link} is a symlink to an absolute path ({target}); refused")
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
        if joined == ".." or joined.startswith("../"):
            raise UnsafePath(f"{link} is a symlink that leaves the repo ({target}); refused")
        current = posixpath.normpath(posixpath.join(joined, rest)) if rest else joined
    raise UnsafePath(f"{path}: more than {MAX_SYMLINK_HOPS} symlinks (a loop?); refused")


def _first_symlink(tree: Tree, path: str) -> tuple[str, str] | None:
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        kind = tree.kind(prefix)
        if kind is None:
            return None
        if kind is EntryKind.SYMLINK:
            return prefix, "/".join(parts[i:])
    return None


class DirTree:
    """A :class:`Tree` over a directory on disk. ``.git`` is never listed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root} is not a directory")
        self._walked: list[str] | None = None
        self._refused: list[tuple[str, str]] = []

    def _abs(self, path: str) -> Path:
        return self.root / clean_reference(path)

    def walk(self) -> Iterator[str]:
        if self._walked is None:
            self._walked = self._scan()
        yield from self._walked

    def refusals(self) -> list[tuple[str, str]]:
        if self._walked is None:
            self._walked = self._scan()
        return list(self._refused)

    def _scan(self) -> list[str]:
        """Every file and symlink, iteratively, within the depth and entry bounds."""
        found: list[str] = []
        entries = 0
        stack: list[tuple[str, int]] = [("", 0)]
        while stack:
            rel, depth = stack.pop()
            with os.scandir(self.root / rel if rel else self.root) as listing:
                for entry in listing:
                    path = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.name == ".git" and entry.is_dir(follow_symlinks=False):
                        continue
                    entries += 1
                    if entries > MAX_TREE_ENTRIES:
                        self._refused.append(
                            (
                                path,
                                f"the tree has more than {MAX_TREE_ENTRIES} entries; "
                                "the rest is not read",
                            )
                        )
                        return sorted(found)
                    if entry.is_dir(follow_symlinks=False):
                        if depth + 1 >= MAX_TREE_DEPTH:
                            self._refused.append(
                                (path, f"nested deeper than {MAX_TREE_DEPTH} directories; not read")
                            )
                        else:
                            stack.append((path, depth + 1))
                    else:
                        found.append(path)
        return sorted(found)

    def kind(self, path: str) -> EntryKind | None:
        try:
            mode = os.lstat(self._abs(path)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(mode):
            return EntryKind.SYMLINK
        if stat.S_ISDIR(mode):
            return EntryKind.DIR
        return EntryKind.FILE if stat.S_ISREG(mode) else EntryKind.OTHER

    def size(self, path: str) -> int:
        return os.lstat(self._abs(path)).st_size

    def read(self, path: str) -> bytes:
        return self._abs(path).read_bytes()

    def readlink(self, path: str) -> str:
        return os.readlink(self._abs(path))
