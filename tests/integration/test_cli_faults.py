"""Faults a user met in ``mdc`` against real git repositories and real state
directories: ``--repo`` errors that name the real problem, ``--repo`` forms that
every verb reading git accepts, manual commands that reach a controller or say
why not, and ``mdc logs`` of a release the controller started."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from controller.adapters.git.source import GitSource
from controller.adapters.git.status_branch import StatusBranch
from controller.adapters.runtime.base import Release as RuntimeRelease
from controller.adapters.runtime.base import ReleaseSpec, State
from controller.adapters.runtime.local import LocalRuntime, release_log
from controller.app.daemon import StateLock
from controller.app.manual import Pins, read_command
from controller.cli.main import main
from controller.core.status import ModelStatus, Phase, Release, model_path, render
from controller.ui.terminal import EXIT_BROKEN_PIPE, EXIT_INVALID, EXIT_OK, EXIT_USAGE
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


@pytest.mark.parametrize(
    "verb", [["status"], ["history", "fraud-scorer"], ["monitor", "m"], ["preview", "m"]]
)
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


# -- a state directory as a controller leaves it ----------------------------------------

RANKER_STABLE = "search-ranker/3f2a9c1d0e"
RANKER_CANARY = "search-ranker/77bd10ce42"
FRAUD_STABLE = "fraud-scorer/0a1b2c3d4e"


def statuses() -> list[ModelStatus]:
    return [
        ModelStatus(
            "search-ranker",
            Phase.PROGRESSING,
            stable=Release("2.0.0", name=RANKER_STABLE),
            canary=Release("2.1.0", name=RANKER_CANARY),
            weight=25,
        ),
        ModelStatus("fraud-scorer", Phase.HEALTHY, stable=Release("1.0.0", name=FRAUD_STABLE)),
    ]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A controller's state directory: the status branch committed in its mirror
    (as the reconciler commits it every pass) and each release's log where the
    runtime writes it."""
    if missing_git_binaries():
        pytest.skip(f"missing {missing_git_binaries()}")
    remote = make_bare_repo(tmp_path, "remote")
    state = tmp_path / "state"
    writer = StatusBranch(GitSource(str(remote), "main", state))
    writer.commit({model_path(s.name): render(s) for s in statuses()}, "status", {})
    for name in (RANKER_STABLE, RANKER_CANARY, FRAUD_STABLE):
        log = release_log(state, name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(f"{name} line {i}\n" for i in range(1, 201)))
    return state


@pytest.fixture
def controller(state: Path) -> Iterator[StateLock]:
    """A controller running on ``state``: what matters to the CLI is its lock."""
    with StateLock(state) as lock:
        yield lock


# -- manual commands -----------------------------------------------------------------


@pytest.mark.parametrize("verb", ["promote", "abort", "pause", "resume", "retry"])
def test_a_manual_command_without_a_controller_says_so(
    verb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([verb, "nosuch"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith(f"mdc {verb}: no controller runs on the state directory .mdc-state")
    assert not (tmp_path / ".mdc-state").exists()  # nothing written where you stand


def test_a_manual_command_after_the_controller_stopped(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with StateLock(state):
        pass  # the lock file stays, naming a pid; nothing holds it
    assert main(["promote", "search-ranker", "--state-dir", str(state)]) == EXIT_INVALID
    assert "no controller runs on the state directory" in capsys.readouterr().err
    assert read_command(state, "search-ranker") is None


@pytest.mark.usefixtures("controller")
def test_a_manual_command_for_an_unknown_model_names_the_known_ones(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["promote", "nosuch", "--state-dir", str(state)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err == (
        f"mdc promote: the controller on {state} knows no model 'nosuch' "
        "(known: fraud-scorer, search-ranker)\n"
    )
    assert not (state / "commands" / "nosuch.json").exists()


@pytest.mark.usefixtures("controller")
def test_a_manual_command_reaches_a_running_controller(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pause", "search-ranker", "--state-dir", str(state), "--as", "eve"]) == EXIT_OK
    assert "pause search-ranker: asked by eve" in capsys.readouterr().out
    action = read_command(state, "search-ranker")
    assert action is not None
    assert (action.command, action.who) == ("pause", "eve")


def test_a_pinned_model_is_known_and_retried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model the controller only pinned (it never ran) can still be retried."""
    state = tmp_path / "state"
    Pins(state).pin("new-model", "hash-a", "build failed", 1.0)
    with StateLock(state):
        assert main(["retry", "new-model", "--state-dir", str(state)]) == EXIT_OK
    assert Pins(state).get("new-model") is None
    capsys.readouterr()


def test_the_controller_lock_is_read_from_another_process(
    state: Path, controller: StateLock, tmp_path: Path
) -> None:
    done = mdc(tmp_path, "abort", "search-ranker", "--state-dir", str(state))
    assert done.returncode == EXIT_OK, done.stderr
    assert read_command(state, "search-ranker") is not None
    controller.release()
    done = mdc(tmp_path, "abort", "search-ranker", "--state-dir", str(state))
    assert done.returncode == EXIT_INVALID
    assert "no controller runs on the state directory" in done.stderr


# -- mdc logs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "release", "name"),
    [
        ("search-ranker", "stable", RANKER_STABLE),
        ("search-ranker", "canary", RANKER_CANARY),
        ("fraud-scorer", "stable", FRAUD_STABLE),
    ],
)
def test_logs_of_a_controller_started_release(
    state: Path, model: str, release: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["logs", model, "--release", release, "--state-dir", str(state), "--lines", "3"]
    assert main(argv) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [f"{name} line {i}" for i in (198, 199, 200)]


def test_logs_default_to_the_last_100_lines_of_the_stable(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["logs", "search-ranker", "--state-dir", str(state)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 100
    assert lines[-1] == f"{RANKER_STABLE} line 200"


def test_logs_of_an_unknown_model_or_release(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["logs", "nosuch", "--state-dir", str(state)]) == EXIT_INVALID
    assert capsys.readouterr().err == (
        f"mdc logs: the controller on {state} knows no model 'nosuch' "
        "(known: fraud-scorer, search-ranker)\n"
    )
    argv = ["logs", "fraud-scorer", "--release", "canary", "--state-dir", str(state)]
    assert main(argv) == EXIT_INVALID
    assert capsys.readouterr().err == "mdc logs: fraud-scorer has no canary release\n"
    assert main(["logs", "fraud-scorer", "--state-dir", str(state.parent / "elsewhere")]) == 1
    assert capsys.readouterr().err == (
        f"mdc logs: {state.parent / 'elsewhere'}: no such state directory "
        "(give the controller's --state-dir)\n"
    )


def test_logs_from_the_runtime_table_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No status recorded yet: the runtime's process table names the releases
    (the first one started is the stable, a second one the canary)."""
    state = tmp_path / "state"
    runtime = LocalRuntime(state, tmp_path / "bentoml")
    for name in ("fraud-scorer/0a1b2c3d4e", "fraud-scorer/77bd10ce42"):
        spec = ReleaseSpec(name, "fraud-scorer", "1", "fraud:1")
        runtime.releases[name] = RuntimeRelease(spec, 1, None, State.STOPPED, 0.0)
        runtime.log_path(name).write_text(f"output of {name}\n")
    runtime._save()
    for release, name in (("stable", "0a1b2c3d4e"), ("canary", "77bd10ce42")):
        argv = ["logs", "fraud-scorer", "--release", release, "--state-dir", str(state)]
        assert main(argv) == EXIT_OK
        assert capsys.readouterr().out == f"output of fraud-scorer/{name}\n"


def _read_line(stream: IO[bytes], timeout: float = 20.0) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no output in time"
    return stream.readline()


def test_logs_follow_until_ctrl_c(state: Path, tmp_path: Path) -> None:
    log = release_log(state, RANKER_CANARY)
    argv = ["logs", "search-ranker", "--release", "canary", "-f", "--lines", "1"]
    with subprocess.Popen(
        [str(MDC), *argv, "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert _read_line(proc.stdout) == f"{RANKER_CANARY} line 200\n".encode()
        with log.open("a") as out:
            out.write("a new line\n")
        assert _read_line(proc.stdout) == b"a new line\n"
        with log.open("a") as out:
            out.write("and another\n")
        assert _read_line(proc.stdout) == b"and another\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == EXIT_OK
        assert proc.stderr.read() == b""


def test_logs_follow_ends_quietly_when_its_reader_goes(state: Path, tmp_path: Path) -> None:
    log = release_log(state, RANKER_STABLE)
    with subprocess.Popen(
        [str(MDC), "logs", "search-ranker", "-f", "--lines", "1", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert _read_line(proc.stdout) == f"{RANKER_STABLE} line 200\n".encode()
        proc.stdout.close()  # `| head -1` has what it wanted
        with log.open("a") as out:
            out.write("more\n")
        assert proc.wait(timeout=20) == EXIT_OK
        assert proc.stderr.read() == b""


def test_no_preview_recorded_is_said_on_stderr(
    specs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for repo_form in ("--format=json", "--format=text"):
        assert main(["preview", "search-ranker", "--repo", str(specs), repo_form]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == "mdc preview: no preview of 'search-ranker' (from the status branch)\n"
