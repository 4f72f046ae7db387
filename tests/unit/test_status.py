"""Status files: deterministic bytes, round trips, commit messages."""

from __future__ import annotations

import pytest

from controller.core.status import (
    HISTORY_LIMIT,
    Condition,
    GPUHold,
    HistoryEntry,
    ModelStatus,
    Phase,
    Release,
    Verdict,
    commit_message,
    parse_model_status,
    render,
)
from controller.errors import PermanentError

FULL = ModelStatus(
    name="fraud-scorer",
    phase=Phase.PROGRESSING,
    team="fraud",
    attempted_revision="main@sha1:" + "b" * 40,
    applied_revision="main@sha1:" + "a" * 40,
    spec_hash="abc",
    stable=Release(
        "1.0.0",
        "fraud-scorer:aaa",
        "2026-11-27T10:00:00Z",
        "fraud-scorer/aaa",
        "h1",
        "main@sha1:" + "a" * 40,
        41,
    ),
    canary=Release("1.1.0", "fraud-scorer:bbb"),
    weight=25,
    step=2,
    steps=5,
    verdicts=(Verdict("errors", 0.002, True, "0.2% <= 1%"),),
    gpus=(
        GPUHold("node-a", "GPU-1", 1.0, "stable", "2026-11-27T10:00:00Z"),
        GPUHold("node-b", "GPU-7", 1.0, "canary"),
    ),
    gpu_hours={"stable": 12.5, "canary": 0.25},
    conditions=(Condition("Ready", True, "Progressing", "step 2 of 5"),),
    history=(HistoryEntry("2026-11-27T10:05:00Z", "StepStarted", "weight 25%", "main@sha1:bb"),),
    canary_state={"spec_hash": "abc", "phase": "Progressing", "step": 1, "weight": 25},
    pull_request=42,
    phase_since="2026-11-27T10:04:00Z",
    monitor={"breached": {"latency": "2026-11-27T11:00:00Z"}, "drifting": {"score": None}},
)


def test_render_is_deterministic_and_round_trips() -> None:
    raw = render(FULL)
    assert raw == render(FULL)
    assert raw.startswith(b"# Written by mdc.")
    assert parse_model_status("models/fraud-scorer.yaml", raw) == FULL


def test_minimal_status_round_trips_and_omits_empty_fields() -> None:
    minimal = ModelStatus("m", Phase.PENDING)
    raw = render(minimal)
    assert b"verdicts" not in raw
    assert b"releases" not in raw
    assert parse_model_status("models/m.yaml", raw) == minimal


@pytest.mark.parametrize(
    ("status", "subject"),
    [
        (FULL, "fraud-scorer: Progressing step 2/5, weight 25%"),
        (ModelStatus("m", Phase.HEALTHY), "m: Healthy"),
        (ModelStatus("m", Phase.ROLLED_BACK, step=3, steps=5), "m: RolledBack step 3/5"),
        (ModelStatus("m", Phase.PAUSED, canary=Release("2"), weight=50), "m: Paused, weight 50%"),
    ],
)
def test_commit_message(status: ModelStatus, subject: str) -> None:
    got, trailers = commit_message(status, "main@sha1:abc")
    assert got == subject
    assert trailers == {
        "Model": status.name,
        "Phase": str(status.phase),
        "Source-Revision": "main@sha1:abc",
    }


def test_history_is_capped_newest_first() -> None:
    status = ModelStatus("m", Phase.PENDING)
    for i in range(HISTORY_LIMIT + 5):
        status = status.with_event(HistoryEntry(f"t{i}", "Event", str(i)))
    assert len(status.history) == HISTORY_LIMIT
    assert status.history[0].message == str(HISTORY_LIMIT + 4)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"- a\n- b\n",
        b"name: m\n",
        b"name: m\nphase: Exploded\n",
        b"name: [\n",
        b"a: 1\n---\nb: 2\n",
    ],
)
def test_bad_status_file_is_a_clear_error(raw: bytes) -> None:
    with pytest.raises(PermanentError) as caught:
        parse_model_status("models/m.yaml", raw)
    assert caught.value.reason == "BadStatusFile"
    assert "models/m.yaml" in str(caught.value)
