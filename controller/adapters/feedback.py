"""The feedback dataset: sampled requests and answers per model version, on disk,
rolling and capped, for data scientists to pull for analysis and retraining.

Owns :class:`FeedbackStore`. Layout, under the controller's state directory::

    feedback/MODEL/VERSION/samples-000001.jsonl
    feedback/MODEL/VERSION/samples-000002.jsonl   (the newest is written to)

Each line is one JSON object (:data:`SCHEMA` describes it): ``at`` (ISO 8601,
UTC, milliseconds), ``model``, ``version``, ``release``, ``backend`` (stable or
canary), ``status`` (the HTTP status), ``latencyMs``, ``request`` and
``response`` (the decoded JSON bodies, without the keys the spec marks
sensitive: the router drops those before a sample is even buffered).

A version's files never take more than its ``maxBytes`` together: a file is
closed at a quarter of the cap and the oldest files are deleted first; a single
sample larger than a file, or one that cannot be written as JSON, is not kept
(:attr:`Written.skipped` counts them; the reconciler logs it). Called by the reconciler
once a pass with what the router sampled.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from controller.core.traffic import Sample

__all__ = ["SCHEMA", "FeedbackStore", "Written"]

#: The JSON Schema of one line of a feedback file.
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "mdc feedback sample",
    "type": "object",
    "required": [
        "at",
        "model",
        "version",
        "release",
        "backend",
        "status",
        "latencyMs",
        "request",
        "response",
    ],
    "properties": {
        "at": {"type": "string", "description": "When the answer came, ISO 8601 UTC."},
        "model": {"type": "string"},
        "version": {"type": "string", "description": "spec.version of the release that answered"},
        "release": {"type": "string", "description": "the runtime's release name"},
        "backend": {"enum": ["stable", "canary"]},
        "status": {"type": "integer", "description": "the HTTP status of the answer"},
        "latencyMs": {"type": "number", "description": "as the router measured it"},
        "request": {"description": "the request body, decoded, sensitive keys dropped"},
        "response": {"description": "the answer body, decoded, sensitive keys dropped"},
    },
    "additionalProperties": False,
}

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Written:
    kept: int
    skipped: int  # larger than a file may be
    bytes: int  # the version's files together, after writing


class FeedbackStore:
    """The feedback files under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def directory(self, model: str, version: str) -> Path:
        return self.root / _SAFE.sub("_", model) / _SAFE.sub("_", version)

    def files(self, model: str, version: str) -> list[Path]:
        """The version's files, oldest first."""
        folder = self.directory(model, version)
        return sorted(folder.glob("samples-*.jsonl")) if folder.is_dir() else []

    def write(
        self,
        model: str,
        version: str,
        release: str,
        samples: Iterable[Sample],
        max_bytes: int,
    ) -> Written:
        folder = self.directory(model, version)
        folder.mkdir(parents=True, exist_ok=True)
        chunk = max(1, max_bytes // 4)
        files = self.files(model, version)
        sizes = {f: f.stat().st_size for f in files}
        current = files[-1] if files else None
        kept = skipped = 0
        lines: list[bytes] = []
        for sample in samples:
            try:
                line = _line(model, version, release, sample)
            except (ValueError, TypeError, RecursionError):  # cannot be written as JSON
                skipped += 1
                continue
            if len(line) > chunk:
                skipped += 1
                continue
            if current is None or sizes[current] + len(line) > chunk:
                if current is not None and lines:
                    _append(current, lines)
                    lines = []
                number = int(current.stem.split("-")[1]) + 1 if current is not None else 1
                current = folder / f"samples-{number:06d}.jsonl"
                sizes[current] = 0
            while sum(sizes.values()) + len(line) > max_bytes:
                oldest = min(sizes)
                if oldest == current:
                    break
                oldest.unlink(missing_ok=True)
                del sizes[oldest]
            lines.append(line)
            sizes[current] += len(line)
            kept += 1
        if current is not None and lines:
            _append(current, lines)
        return Written(kept, skipped, sum(sizes.values()))


def _line(model: str, version: str, release: str, sample: Sample) -> bytes:
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sample.at))
    record = {
        "at": f"{at}.{int(sample.at * 1000) % 1000:03d}Z",
        "model": model,
        "version": version,
        "release": release,
        "backend": sample.backend,
        "status": sample.status,
        "latencyMs": round(sample.seconds * 1000, 3),
        "request": sample.request,
        "response": sample.response,
    }
    # ASCII: a lone surrogate in a body is escaped, not an encoding error
    # and strict JSON: NaN or Infinity in a body make the sample unwritable (skipped)
    return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _append(path: Path, lines: list[bytes]) -> None:
    with path.open("ab") as out:
        out.write(b"".join(lines))
