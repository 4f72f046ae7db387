"""The feedback files: one JSON line per sample, in the documented schema,
rolling, and never more than the version's cap on disk."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest

from controller.adapters.feedback import SCHEMA, FeedbackStore
from controller.core.traffic import Sample


def sample(rng: random.Random, size: int = 40) -> Sample:
    return Sample(
        1_764_309_600.123 + rng.random(),
        rng.choice(["stable", "canary"]),
        200,
        0.012,
        {"x": rng.random(), "pad": "p" * rng.randrange(size)},
        {"score": rng.random()},
        100,
    )


@pytest.mark.parametrize("cap", [2048, 4096, 65536])
def test_a_version_never_takes_more_than_its_cap(tmp_path: Path, cap: int) -> None:
    store = FeedbackStore(tmp_path)
    rng = random.Random(cap)
    kept = 0
    for _ in range(60):
        written = store.write("m", "1.0", "m/abc", [sample(rng) for _ in range(25)], cap)
        on_disk = sum(f.stat().st_size for f in store.files("m", "1.0"))
        assert on_disk == written.bytes
        assert on_disk <= cap
        kept += written.kept
    files = store.files("m", "1.0")
    assert files[0].name != "samples-000001.jsonl"  # the oldest went first
    assert kept == 60 * 25  # every sample fitted in a file
    newest = files[-1].read_text().splitlines()[-1]
    assert json.loads(newest)["response"]["score"] >= 0


def test_lines_follow_the_schema_and_odd_names_stay_in_their_folder(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    rng = random.Random(1)
    store.write("m", "../../etc", "m/abc", [sample(rng) for _ in range(3)], 10_000)
    (folder,) = [p for p in tmp_path.rglob("*") if p.is_dir() and any(p.glob("*.jsonl"))]
    assert folder.is_relative_to(tmp_path)
    for line in store.files("m", "../../etc")[0].read_text().splitlines():
        record = json.loads(line)
        jsonschema.validate(record, SCHEMA)
        assert record["at"].startswith("2025-11-28T06:00:0")
        assert record["at"].endswith("Z")
        assert record["latencyMs"] == 12.0


def test_a_sample_bigger_than_a_file_is_skipped(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    rng = random.Random(2)
    written = store.write("m", "1", "m/abc", [sample(rng, size=2000)], 1000)
    assert (written.kept, written.skipped) == (0, 1)
    assert written.bytes == 0


def test_what_cannot_be_written_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    odd = Sample(1.0, "stable", 200, 0.01, {"text": "\ud800"}, {"n": 1}, 10)
    nan = Sample(1.0, "stable", 200, 0.01, {}, {"n": float("nan")}, 10)
    deep: dict[str, object] = {}
    for _ in range(5000):
        deep = {"d": deep}
    deeper = Sample(1.0, "stable", 200, 0.01, deep, {}, 10)
    good = sample(random.Random(3))
    written = store.write("m", "1", "m/abc", [odd, nan, deeper, good], 1_000_000)
    assert (written.kept, written.skipped) == (2, 2)
    lines = store.files("m", "1")[0].read_text().splitlines()
    assert "\\ud800" in lines[0]  # escaped, not an encoding error
