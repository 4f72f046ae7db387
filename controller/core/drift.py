"""What the running version predicts, and whether that drifts.

Owns :func:`predictions` (the values at a dotted path of a decoded answer),
:func:`redact` (a request or answer without the keys a spec marks sensitive,
at any depth: the router applies it before a sample is buffered), :func:`psi`
(the population stability index: numbers binned at the baseline's deciles,
labels by their frequencies) and :class:`DriftTracker` (the baseline captured
right after promotion and a rolling recent window, binned as predictions
arrive so a judgement costs the number of bins).

Pure: no I/O, time is a parameter. Called by :mod:`controller.core.monitor` and the
embedded router; tested in ``tests/unit/test_monitor.py``.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any

from controller.spec.kinds import DriftWatch

__all__ = ["DRIFT_VALUES_KEPT", "DriftTracker", "predictions", "psi", "redact"]

#: Predictions kept per side of the drift comparison (the oldest recent go first).
DRIFT_VALUES_KEPT = 20_000
_EPSILON = 1e-4


def predictions(value: Any, path: str) -> list[float | str]:
    """The values at ``path`` (dotted keys) in a decoded response; lists on the way
    are walked. Numbers stay numbers (booleans and others become labels)."""
    found: list[Any] = [value]
    for key in path.split("."):
        step: list[Any] = []
        for item in found:
            for each in item if isinstance(item, list) else [item]:
                if isinstance(each, dict) and key in each:  # decoded JSON: dicts
                    step.append(each[key])
        found = step
    out: list[float | str] = []
    for item in found:
        for each in item if isinstance(item, list) else [item]:
            if isinstance(each, bool) or not isinstance(each, int | float):
                if isinstance(each, str | bool | int):
                    out.append(str(each))
            else:
                try:
                    number = float(each)
                except OverflowError:  # an integer past a float's range
                    continue
                if math.isfinite(number):
                    out.append(number)
    return out


def redact(value: Any, sensitive: Iterable[str]) -> Any:
    """``value`` without any key named in ``sensitive``, at any depth."""
    drop = frozenset(sensitive)
    if not drop:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, dict):  # decoded JSON: dicts, lists and scalars
            return {k: walk(v) for k, v in item.items() if k not in drop}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return walk(value)


def psi(baseline: Sequence[float | str], recent: Sequence[float | str]) -> float:
    """The population stability index of ``recent`` against ``baseline``: numbers
    binned at the baseline's deciles, labels by their frequencies."""
    if not baseline or not recent:
        return 0.0
    edges = _edges(baseline)
    if edges is not None:

        def bins(values: Sequence[float | str]) -> list[float]:
            counts = [0] * (len(edges) + 2)  # the last: what is not a number
            for v in values:
                index = bisect.bisect_left(edges, v) if isinstance(v, float) else len(edges) + 1
                counts[index] += 1
            return [c / len(values) for c in counts]

        expected, actual = bins(baseline), bins(recent)
    else:
        then, now = Counter(map(str, baseline)), Counter(map(str, recent))
        labels = sorted(then.keys() | now.keys())  # counted once: linear in the values
        expected = [then[label] / len(baseline) for label in labels]
        actual = [now[label] / len(recent) for label in labels]
    total = 0.0
    for share_then, share_now in zip(expected, actual, strict=True):
        e, a = max(share_then, _EPSILON), max(share_now, _EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def _edges(baseline: Sequence[float | str]) -> list[float] | None:
    """The deciles of the baseline's numbers; None when it holds mostly labels (then
    every value is a label). A few odd values among numbers get a bin of their own."""
    numbers = sorted(v for v in baseline if isinstance(v, float))
    if not numbers or len(numbers) < 0.5 * len(baseline):
        return None
    return sorted({numbers[int(len(numbers) * q / 10)] for q in range(1, 10)})


class DriftTracker:
    """The baseline (predictions in the first ``baseline`` seconds after promotion)
    and a rolling recent window; :meth:`score` compares them.

    The baseline is captured for ``baseline`` seconds, and longer until it holds
    ``minSamples`` predictions. Then its bins are fixed (the deciles of its
    numbers, or its labels) and each recent prediction is binned once as it
    arrives, so a judgement costs the number of bins, not of predictions."""

    def __init__(self, watch: DriftWatch, started: float) -> None:
        self.watch = watch
        self.started = started
        self.baseline: list[float | str] = []
        self.recent: deque[tuple[float, int | str]] = deque()
        self.counts: dict[int | str, int] = {}
        self.edges: list[float] | None = None  # numeric baseline: the bin edges
        self.expected: dict[int | str, float] | None = None  # bin -> baseline share

    def _freeze(self) -> None:
        values = self.baseline
        self.edges = _edges(values)
        keys = [self._bin(v) for v in values]
        self.expected = {k: n / len(keys) for k, n in Counter(keys).items()} if keys else {}

    def _bin(self, value: float | str) -> int | str:
        if self.edges is not None:
            if isinstance(value, float):
                return bisect.bisect_left(self.edges, value)
            return "(not a number)"
        return str(value)

    def add(self, now: float, values: Iterable[float | str]) -> None:
        capturing = self.expected is None and (
            now < self.started + self.watch.baseline or len(self.baseline) < self.watch.min_samples
        )
        if capturing:
            room = DRIFT_VALUES_KEPT - len(self.baseline)
            self.baseline.extend(list(values)[: max(0, room)])
            return
        if self.expected is None:
            self._freeze()
        for value in values:
            key = self._bin(value)
            self.recent.append((now, key))
            self.counts[key] = self.counts.get(key, 0) + 1
        while self.recent and (
            self.recent[0][0] < now - self.watch.window or len(self.recent) > DRIFT_VALUES_KEPT
        ):
            _, key = self.recent.popleft()
            self.counts[key] -= 1
            if not self.counts[key]:
                del self.counts[key]  # labels come and go: keep only those in the window

    def score(self) -> float | None:
        """PSI of the recent window against the baseline; None with too few values."""
        need = self.watch.min_samples
        if self.expected is None or len(self.baseline) < need or len(self.recent) < need:
            return None
        total = len(self.recent)
        index = 0.0
        for key in set(self.expected) | set(self.counts):
            e = max(self.expected.get(key, 0.0), _EPSILON)
            a = max(self.counts.get(key, 0) / total, _EPSILON)
            index += (a - e) * math.log(a / e)
        return index
