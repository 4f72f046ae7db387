"""Shared fixtures: spec repositories built from tests/fixtures/specs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "specs"
EXAMPLE_REPO = ROOT / "example-repo"


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """A copy of the valid base repo, with a case's files laid over it."""

    def make(case: str | None = None) -> Path:
        repo = tmp_path / "repo"
        shutil.copytree(FIXTURES / "base", repo, symlinks=True)
        if case is not None:
            shutil.copytree(FIXTURES / "invalid" / case, repo, symlinks=True, dirs_exist_ok=True)
        return repo

    return make
