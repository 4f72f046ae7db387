"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gitservers import GitDaemon, make_bare_repo


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    base = tmp_path / "served"
    base.mkdir()
    make_bare_repo(base, "specs")
    with GitDaemon(base) as server:
        yield server
