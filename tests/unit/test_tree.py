"""Paths in specs stay inside the repository, symlinks included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.errors import UnsafePath
from controller.spec.tree import DirTree, EntryKind, clean_reference, resolve


@pytest.mark.parametrize(
    ("reference", "cleaned"),
    [
        ("a/b.json", "a/b.json"),
        ("./a/b.json", "a/b.json"),
        ("a//b", "a/b"),
        ("a/./b", "a/b"),
        ("dir/", "dir"),
    ],
)
def test_clean_reference(reference: str, cleaned: str) -> None:
    assert clean_reference(reference) == cleaned


@pytest.mark.parametrize(
    ("reference", "why"),
    [
        ("", "empty"),
        ("a\0b", "NUL"),
        ("/etc/passwd", "absolute"),
        ("C:\\x", "backslash"),
        ("C:/x", "absolute"),
        ("a\\b", "backslash"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/../b", "'..'"),  # even when it would stay inside
        (".", "root"),
    ],
)
def test_clean_reference_refuses(reference: str, why: str) -> None:
    with pytest.raises(UnsafePath, match=why):
        clean_reference(reference)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "a" / "deep" / "f.txt").write_text("x")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink("deep/f.txt", root / "a" / "inside")
    os.symlink("a/deep", root / "dirlink")
    os.symlink("../secret.txt", root / "out")
    os.symlink("../../secret.txt", root / "a" / "out2")
    os.symlink(str(tmp_path / "secret.txt"), root / "abs")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.symlink("..", root / "a" / "up")
    return root


def test_walk_lists_files_and_links_not_git(repo: Path) -> None:
    assert list(DirTree(repo).walk()) == [
        "a/deep/f.txt",
        "a/inside",
        "a/out2",
        "a/up",
        "abs",
        "dirlink",
        "loop1",
        "loop2",
        "out",
    ]


@pytest.mark.parametrize(
    ("path", "resolved", "kind"),
    [
        ("a/deep/f.txt", "a/deep/f.txt", EntryKind.FILE),
        ("a/inside", "a/deep/f.txt", EntryKind.FILE),
        ("dirlink/f.txt", "a/deep/f.txt", EntryKind.FILE),
        ("dirlink", "a/deep", EntryKind.DIR),
        ("a/up/a/deep/f.txt", "a/deep/f.txt", EntryKind.FILE),
        ("a/missing", "a/missing", None),
    ],
)
def test_resolve_inside(repo: Path, path: str, resolved: str, kind: EntryKind | None) -> None:
    assert resolve(DirTree(repo), path) == (resolved, kind)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("out", "leaves the repo"),
        ("a/out2", "leaves the repo"),
        ("abs", "absolute"),
        ("loop1", "loop"),
        ("a/up/out", "leaves the repo"),
    ],
)
def test_resolve_refuses(repo: Path, path: str, why: str) -> None:
    with pytest.raises(UnsafePath, match=why):
        resolve(DirTree(repo), path)


def test_fifo_is_other(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    assert DirTree(tmp_path).kind("pipe") is EntryKind.OTHER


def test_dirtree_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        DirTree(tmp_path / "nope")
