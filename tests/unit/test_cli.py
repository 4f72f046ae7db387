"""`mdc` as a user and a script see it: output, formats, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from controller import __version__
from controller.cli.main import EXIT_INVALID, EXIT_OK, EXIT_USAGE, main
from tests.conftest import EXAMPLE_REPO, ROOT
from tests.terminal import run_in_terminal

MDC = Path(sys.executable).with_name("mdc")


def test_validate_example_repo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE_REPO)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.strip().endswith("valid (2 models, 1 pool, 2 rollout policies)")
    assert err == ""


def test_validate_invalid_text_goes_to_stderr(
    make_repo: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo("gpu-negative")
    assert main(["validate", str(repo)]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "models/model.yaml:12:5: spec.resources.gpu: must be > 0 (got -1)"
        " [schema.exclusiveMinimum]",
        "1 error in 1 file",
    ]


def test_validate_json(make_repo: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(make_repo("ref-pool")), "--format", "json"]) == EXIT_INVALID
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert report["counts"] == {"models": 0, "pools": 1, "policies": 1}
    assert report["invalid"] == ["Model/model-a"]
    (error,) = report["errors"]
    assert set(error) == {"file", "line", "column", "path", "message", "rule"}
    assert error["message"].startswith("no GPUPool named 'pool-b'")


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "/nonexistent/repo"],
        ["validate", "--format", "yaml", "."],
        ["validate", "--bogus"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err


def test_validate_a_file_not_a_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE_REPO / "README.md")]) == EXIT_USAGE
    assert "not a directory" in capsys.readouterr().err


def test_plan_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(EXAMPLE_REPO)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "Pool shared-a100  sharing Fractional, 8 GPUs declared" in out
    assert "4 x NVIDIA A100-SXM4-80GB (80Gi)" in out
    assert "standard-canary: 10% -> analyse 3x15s" in out
    assert "fraud-scorer 1.0.0: team fraud, 2 x 1 GPU from pool shared-a100" in out
    assert "\033[" not in out  # no colour when not a terminal


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(EXAMPLE_REPO), "--format", "json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is True
    assert {t["team"]: t["verdict"] for t in data["plan"]["teams"]} == {
        "fraud": "ok",
        "search": "ok",
    }


def test_plan_of_invalid_repo_shows_the_rest(
    make_repo: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(make_repo("ref-pool"))]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert "ref.pool" in err
    assert "Pool pool-a" in out
    assert "model-a" not in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--format", "json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"version": __version__}


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ([str(MDC), "validate", "example-repo"], 0),
        ([sys.executable, "-m", "controller", "validate", "example-repo"], 0),
    ],
)
def test_entry_points_run(command: list[str], code: int) -> None:
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == code, done.stderr
    assert "valid" in done.stdout


def test_entry_point_on_every_invalid_case_has_no_traceback(make_repo: Callable[..., Path]) -> None:
    """The real console script on a repo holding several broken files."""
    repo = make_repo("alias-bomb")
    (repo / "models" / "model.yaml").write_bytes(b"\xff\xfe not utf-8")
    done = subprocess.run(
        [str(MDC), "validate", str(repo)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == EXIT_INVALID
    assert "Traceback" not in done.stderr
    assert "models/bomb.yaml:" in done.stderr
    assert "models/model.yaml:1:1: file is not UTF-8 text" in done.stderr


@pytest.mark.parametrize(("no_color", "coloured"), [(False, True), (True, False)])
def test_colour_only_on_a_terminal_without_no_color(
    make_repo: Callable[..., Path], no_color: bool, coloured: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm"}
    if no_color:
        env["NO_COLOR"] = "1"
    _, output = run_in_terminal([str(MDC), "validate", str(make_repo("ref-team"))], env)
    assert "ref.team" in output
    assert ("\033[" in output) is coloured
