"""Shared fixtures: spec repositories built from tests/fixtures/specs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator
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


@pytest.fixture(autouse=True)
def _no_router_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used ``tmp_path``: stop any router process (the embedded
    router's or HAProxy) whose state directory is in it (``mdc run`` leaves the
    router serving for the next controller, by design; a test must not leave it
    running for the next test)."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    marker = str(request.getfixturevalue("tmp_path")).encode()
    yield
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        router = b"controller.adapters.router.control" in cmdline or b"haproxy" in cmdline
        if router and marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
