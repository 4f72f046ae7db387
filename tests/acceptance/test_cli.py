"""The README's quick start and the CLI's conventions, in a fresh directory with a
copy of the example repository: ``mdc validate``, ``mdc plan``, ``mdc build`` twice
(the default state directory), ``mdc`` alone, an unknown flag, a manual verb with
no controller, and a reader that closes stdout early."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import MDC, MODELS, Workspace, mdc_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    with Workspace(tmp_path) as workspace:
        yield workspace


def test_quick_start_validate_plan_build(ws: Workspace) -> None:
    validate = ws.mdc("validate", "example-repo")
    assert validate.returncode == 0, validate.stderr
    assert "valid (2 models, 1 pool, 2 rollout policies)" in validate.stdout

    plan = ws.mdc("plan", "example-repo")
    assert plan.returncode == 0, plan.stderr
    for model in MODELS:
        assert f"\n  {model} " in plan.stdout, plan.stdout

    first = ws.mdc("build", "--repo", "example-repo", timeout=300)
    assert first.returncode == 0, first.stderr
    built = {line.split()[0]: line.split() for line in first.stdout.splitlines()}
    assert sorted(built) == sorted(MODELS), first.stdout
    for model, (_, tag, what, *_) in built.items():
        assert tag.startswith(f"{model}:"), first.stdout
        assert what == "built", first.stdout
    assert (ws.cwd / ".mdc-state").is_dir()  # the default state directory, in the cwd

    second = ws.mdc("build", "--repo", "example-repo", timeout=300)
    assert second.returncode == 0, second.stderr
    again = {line.split()[0]: line.split() for line in second.stdout.splitlines()}
    assert {m: row[1:] for m, row in again.items()} == {
        m: [row[1], "present"] for m, row in built.items()
    }, second.stdout


def test_mdc_alone_prints_help_and_exits_2(ws: Workspace) -> None:
    bare = ws.mdc()
    assert bare.returncode == 2
    assert bare.stdout.startswith("usage: mdc"), bare.stdout
    for verb in ("validate", "plan", "build", "run", "status", "down", "pause"):
        assert verb in bare.stdout


def test_an_unknown_flag_prints_the_verbs_usage_and_exits_2(ws: Workspace) -> None:
    bogus = ws.mdc("status", "--bogus")
    assert bogus.returncode == 2
    assert bogus.stderr.startswith("usage: mdc status"), bogus.stderr
    assert "--bogus" in bogus.stderr
    assert "Traceback" not in bogus.stderr


def test_a_manual_verb_without_a_controller_is_refused_and_writes_nothing(
    ws: Workspace,
) -> None:
    before = sorted(p.relative_to(ws.cwd) for p in ws.cwd.rglob("*"))
    paused = ws.mdc("pause", "search-ranker")
    assert paused.returncode == 1, (paused.stdout, paused.stderr)
    assert "no controller runs" in paused.stderr
    assert sorted(p.relative_to(ws.cwd) for p in ws.cwd.rglob("*")) == before


def test_a_reader_closing_stdout_ends_mdc_quietly(ws: Workspace) -> None:
    # `mdc plan example-repo --format json | head -c 10`
    with (
        subprocess.Popen(
            [str(MDC), "plan", "example-repo", "--format", "json"],
            cwd=ws.cwd,
            env=mdc_env(ws.cwd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as mdc,
        subprocess.Popen(["head", "-c", "10"], stdin=mdc.stdout, stdout=subprocess.PIPE) as head,
    ):
        assert mdc.stdout is not None
        mdc.stdout.close()  # head holds the only reading end now
        shown, _ = head.communicate(timeout=60)
        assert mdc.stderr is not None
        errors = mdc.stderr.read().decode()
        code = mdc.wait(timeout=60)
    assert shown == b'{\n  "path"', shown
    assert code in (0, 141), (code, errors)
    assert errors == ""

    # the reader gone before mdc writes a byte: 141, as git does, and nothing on stderr
    closed = ws.mdc_closed_stdout("plan", "example-repo", "--format", "json")
    assert closed.returncode == 141, closed.stderr
    assert closed.stderr == ""
