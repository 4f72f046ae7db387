"""Manual commands, pins, and what to do about a spec: table first."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.app.daemon import StateLock
from controller.app.manual import Pins, read_command, send_command
from controller.cli.main import EXIT_INVALID, EXIT_OK, main
from controller.core.canary import CanaryPhase, CanaryState
from controller.core.plan import rollout_decision


def canary(spec_hash: str, phase: CanaryPhase) -> CanaryState:
    return CanaryState(spec_hash, phase)


@pytest.mark.parametrize(
    ("desired", "stable", "running", "pinned", "decision"),
    [
        ("b", "a", None, None, "start"),
        ("a", "a", None, None, "none"),
        # git reverted to the promoted spec: already running, not a new canary
        ("a", "a", canary("b", CanaryPhase.ROLLED_BACK), "b", "none"),
        ("b", "a", canary("b", CanaryPhase.ROLLED_BACK), "b", "pinned"),
        ("c", "a", canary("b", CanaryPhase.ROLLED_BACK), "b", "start"),  # a new commit
        ("b", "a", canary("b", CanaryPhase.STEPPING), None, "continue"),
        ("c", "a", canary("b", CanaryPhase.WAITING_FOR_APPROVAL), None, "replace"),
        ("b", None, None, None, "start"),  # a first release
        ("b", "b", canary("b", CanaryPhase.PROMOTED), None, "none"),
    ],
)
def test_rollout_decision(
    desired: str, stable: str | None, running: CanaryState | None, pinned: str | None, decision: str
) -> None:
    assert rollout_decision(desired, stable, running, pinned) == decision


def _known(state_dir: Path) -> None:
    """A state directory whose controller runs a release of fraud-scorer."""
    (state_dir / "runtime").mkdir(parents=True, exist_ok=True)
    (state_dir / "runtime" / "releases.json").write_text(
        '[{"spec": {"name": "fraud-scorer/abc", "model": "fraud-scorer"}}]'
    )


def test_commands_travel_through_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDC_USER", "alice")
    _known(tmp_path)
    with StateLock(tmp_path):  # a controller runs on it
        assert main(["promote", "fraud-scorer", "--state-dir", str(tmp_path)]) == EXIT_OK
        abort = ["abort", "fraud-scorer", "--state-dir", str(tmp_path), "--as", "bob"]
        assert main(abort) == EXIT_OK
    action = read_command(tmp_path, "fraud-scorer")
    assert action is not None
    assert (action.command, action.who) == ("abort", "bob")  # the newest wins
    assert action.at > 0
    assert read_command(tmp_path, "fraud-scorer") is None  # consumed
    send_command(tmp_path, "search-ranker", "pause")
    assert read_command(tmp_path, "search-ranker").who == "alice"  # type: ignore[union-attr]


def test_retry_removes_the_pin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _known(tmp_path)
    with StateLock(tmp_path):
        assert main(["retry", "fraud-scorer", "--state-dir", str(tmp_path)]) == EXIT_INVALID
        assert "no failed spec pinned" in capsys.readouterr().err
        Pins(tmp_path).pin("fraud-scorer", "hash-b", "errors", 1.0)
        assert Pins(tmp_path).get("fraud-scorer") == "hash-b"
        retry = ["retry", "fraud-scorer", "--state-dir", str(tmp_path), "--as", "carol"]
        assert main(retry) == EXIT_OK
    assert Pins(tmp_path).get("fraud-scorer") is None
    action = read_command(tmp_path, "fraud-scorer")
    assert action is not None
    assert (action.command, action.who) == ("retry", "carol")
