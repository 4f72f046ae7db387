"""Faults a user met in ``mdc``, each pinned by a test: config files that report
every error at once, the help and usage a person is shown, and what the CLI
prints on a pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.app.daemon import load_config
from controller.cli import main as cli_main
from controller.cli.main import main
from controller.errors import PermanentError
from controller.ui.terminal import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE
from tests.conftest import EXAMPLE_REPO, ROOT
from tests.terminal import run_in_terminal

MDC = Path(sys.executable).with_name("mdc")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mdc.yaml"
    path.write_text(text)
    return path


# -- mdc.yaml: every error at once -----------------------------------------------------


def test_config_reports_every_error_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "repo: x\n"
        "polInterval: 5\n"  # unknown (a typo)
        "tick: soon\n"  # wrong type
        "router: nginx\n"  # not one of the choices
        "routerPorts:\n"
        "  fraud-scorer: 9001\n"
        "  search-ranker: 70000\n"  # out of range
        "listen: localhost\n"  # not HOST:PORT
        "colour: blue\n",  # unknown
    )
    with pytest.raises(PermanentError) as caught:
        load_config(path)
    assert caught.value.reason == "BadConfig"
    lines = caught.value.message.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{path}:2:1",
        f"{path}:3:1",
        f"{path}:4:1",
        f"{path}:5:1",
        f"{path}:8:1",
        f"{path}:9:1",
    ]
    assert "unknown key 'polInterval'" in lines[0]
    assert "tick must be a number, not 'soon'" in lines[1]
    assert "router must be one of embedded, haproxy, not 'nginx'" in lines[2]
    assert (
        f"routerPorts must be a port (0-65535) for each model: search-ranker (at {path}:7:3)"
        " is 70000" in lines[3]
    )
    assert "listen must be HOST:PORT" in lines[4]
    assert "unknown key 'colour'" in lines[5]


def test_config_reports_every_yaml_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "repo: a\nrepo: b\nbranch: x\nbranch: y\n")
    with pytest.raises(PermanentError) as caught:
        load_config(path)
    lines = caught.value.message.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:2:")
    assert "duplicate key 'repo'" in lines[0]
    assert lines[1].startswith(f"{path}:4:")
    assert "duplicate key 'branch'" in lines[1]


def test_a_good_config_still_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "repo: x\nrouterPorts: {a: 9001}\nlisten: :9000\n"))
    assert (config.repo, dict(config.router_ports), config.port) == ("x", {"a": 9001}, 9000)


# -- help and usage ------------------------------------------------------------------


def test_bare_mdc_prints_the_help_on_stdout_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out.startswith("usage: mdc ")
    assert "GitOps controller for model delivery." in out
    for verb in ("status", "logs", "promote", "build", "pool"):
        assert f"    {verb}" in out  # each verb listed with its help
    assert err == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--bogus"],
        ["pool", "x", "--bogus"],
        ["logs", "fraud-scorer", "--bogus"],
        ["promote", "fraud-scorer", "--bogus"],
        ["validate", ".", "extra"],
        ["run", "--bogus"],
        ["demo", "--bogus"],
    ],
)
def test_a_verbs_unknown_flag_prints_that_verbs_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"usage: mdc {argv[0]} ")
    assert f"mdc {argv[0]}: error: unrecognized arguments: {' '.join(argv[2:])}" in err


def test_an_unknown_verb_prints_the_top_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: mdc [-h]")
    assert "invalid choice: 'frobnicate'" in err


# -- pipes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", str(EXAMPLE_REPO), "--format", "json"],
        ["validate", str(EXAMPLE_REPO), "--format", "json"],
        [],  # the help
    ],
)
def test_a_closed_pipe_ends_quietly_with_141(argv: list[str]) -> None:
    """``mdc ... | head -1`` after head has gone: no traceback, git's exit code 141."""
    with subprocess.Popen(
        [str(MDC), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()  # the reader goes before mdc writes a byte
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert err == ""


def test_a_reader_that_stops_after_one_line(tmp_path: Path) -> None:
    """A real ``| head -1``: the reader takes a line of a long output and closes."""
    script = tmp_path / "pipe.sh"
    script.write_text(
        f'"{MDC}" plan "{EXAMPLE_REPO}" --format json | head -1\n'
        'echo "status ${PIPESTATUS[0]}" >&2\n'
    )
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout == "{\n"
    assert done.stderr.strip() in ("status 0", f"status {EXIT_BROKEN_PIPE}")


# -- progress on a terminal, never on a pipe -------------------------------------------

#: ``mdc build`` with a packager that builds nothing (a short wait per model).
FAKE_BUILD = """
import sys, time, types
from controller.cli import machine

def build(self, model, tree, source):
    time.sleep(0.4)
    return types.SimpleNamespace(bento_tag=model.name + ":fake", model_tag=None, built=True)

machine.Packager.build = build
from controller.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def build_argv(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_build.py"
    script.write_text(FAKE_BUILD)
    state = str(tmp_path / "state")
    return [sys.executable, str(script), "build", "--repo", str(EXAMPLE_REPO), "--state-dir", state]


def terminal_env(no_color: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env |= {"TERM": "xterm", "PYTHONPATH": str(ROOT)}
    return env | ({"NO_COLOR": "1"} if no_color else {})


def test_build_on_a_pipe_prints_no_control_characters(tmp_path: Path) -> None:
    done = subprocess.run(
        build_argv(tmp_path),
        capture_output=True,
        text=True,
        env=terminal_env(no_color=False),
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["fraud-scorer", "fraud-scorer:fake"],
        ["search-ranker", "search-ranker:fake"],
    ]
    assert all(c == "\n" or c.isprintable() for c in done.stdout)


@pytest.mark.parametrize("no_color", [False, True])
def test_build_on_a_terminal_shows_progress_unless_no_color(tmp_path: Path, no_color: bool) -> None:
    code, output = run_in_terminal(build_argv(tmp_path), terminal_env(no_color))
    assert code == 0
    assert "fraud-scorer:fake" in output
    assert "search-ranker:fake" in output
    shown = "building search-ranker (2/2)" in output
    assert shown is not no_color
    assert ("\033[" in output) is not no_color


def test_a_failed_build_on_a_terminal_prints_its_error_above_the_progress(
    tmp_path: Path,
) -> None:
    script = tmp_path / "fake_build.py"
    argv = build_argv(tmp_path)
    script.write_text(
        FAKE_BUILD.replace(
            "    time.sleep(0.4)\n",
            "    time.sleep(0.4)\n"
            "    from controller.errors import PermanentError\n"
            "    raise PermanentError('no bento for ' + model.name)\n",
        )
    )
    code, output = run_in_terminal(argv, terminal_env(False))
    assert code == 1
    # each error on a line of its own, the progress line cleared before it
    assert "\x1b[2Kmdc build: no bento for fraud-scorer\r\n" in output
    assert "\x1b[2Kmdc build: no bento for search-ranker\r\n" in output


# -- exit codes ------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["validate", "plan"])
def test_a_path_that_is_not_there_is_named(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([verb, str(tmp_path / "nowhere")]) == EXIT_USAGE
    assert capsys.readouterr().err == f"mdc {verb}: {tmp_path / 'nowhere'}: no such directory\n"
    (tmp_path / "a-file").write_text("x")
    assert main([verb, str(tmp_path / "a-file")]) == EXIT_USAGE
    assert capsys.readouterr().err == f"mdc {verb}: {tmp_path / 'a-file'}: not a directory\n"


def test_ctrl_c_ends_any_verb_with_130_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli_main._VERBS, "status", interrupted)
    assert main(["status"]) == EXIT_INTERRUPTED
    assert capsys.readouterr() == ("", "")
