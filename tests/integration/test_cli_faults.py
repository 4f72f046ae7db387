"""Faults a user met in ``mdc`` against real git repositories and real state
directories: ``--repo`` errors that name the real problem, ``--repo`` forms that
every verb reading git accepts, manual commands that reach a controller or say
why not, and ``mdc logs`` of a release the controller started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.ui.terminal import EXIT_BROKEN_PIPE, EXIT_OK, EXIT_USAGE
from tests.gitservers import GitDaemon, make_bare_repo, missing_git_binaries
from tests.integration.test_gitsource import push_example

pytestmark = pytest.mark.integration

MDC = Path(sys.executable).with_name("mdc")


def mdc(cwd: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDC_", "GIT_"))}
    env |= {"XDG_CACHE_HOME": str(cwd / "cache"), "NO_COLOR": "1"}
    return subprocess.run(
        [str(MDC), *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    """A bare repository holding the example specs on main."""
    if missing_git_binaries():
        pytest.skip(f"missing {missing_git_binaries()}")
    bare = make_bare_repo(tmp_path, "specs")
    push_example(str(bare), tmp_path / "author")
    return bare


# -- --repo: the real problem, and every form ----------------------------------------


@pytest.mark.parametrize("verb", [["status"], ["history", "fraud-scorer"], ["monitor", "m"]])
@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("nonexistent", "no such directory"),
        ("a-file", "not a directory"),
        ("plain", "not a git repository"),
    ],
)
def test_a_repo_that_is_not_there_is_named(
    tmp_path: Path, verb: list[str], where: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "plain").mkdir()
    repo = str(tmp_path / where)
    assert main([*verb, "--repo", repo]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"mdc {verb[0]}: {repo}: {problem}\n"


@pytest.mark.parametrize("verb", ["pool", "build"])
def test_pool_and_build_name_a_missing_repo_too(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([verb, "--repo", str(tmp_path / "nowhere")]) == EXIT_USAGE
    assert capsys.readouterr().err == f"mdc {verb}: {tmp_path / 'nowhere'}: no such directory\n"
    assert main([verb, "--repo", "git://127.0.0.1:1/specs.git"]) == (
        EXIT_USAGE if verb == "build" else 1  # pool fetches it (and fails: nothing listens)
    )


def test_pool_reads_every_repo_form_status_reads(
    specs: Path, daemon: GitDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bare path, file:// and git:// give the pool the release branch's specs."""
    push_example(daemon.url("specs"), tmp_path / "served-author")
    pictures = {}
    for repo in (str(specs), f"file://{specs}", daemon.url("specs")):
        assert main(["pool", "--repo", repo, "--format", "json"]) == EXIT_OK, repo
        out, err = capsys.readouterr()
        assert err == ""
        (report,) = json.loads(out)["pools"]
        pictures[repo] = report
        assert main(["status", "--repo", repo, "--format", "json"]) == EXIT_OK, repo
        assert json.loads(capsys.readouterr().out) == {"models": []}
    names = {p["pool"] for p in pictures.values()}
    assert names == {"shared-a100"}
    assert {p["free"] for p in pictures.values()} == {5.75}  # planned from the same specs


def test_a_refused_url_is_refused_alike(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in (["status"], ["pool"]):
        assert main([*verb, "--repo", "ext::sh -c touch% /tmp/pwned"]) == EXIT_USAGE
        assert "refused" in capsys.readouterr().err


def test_status_piped_into_a_closed_reader(specs: Path, tmp_path: Path) -> None:
    with subprocess.Popen(
        [str(MDC), "status", "--repo", str(specs), "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert err == ""
