"""A pull request's preview against the stable version: the pairs compared, judged
and shown.

The router mirrors a share of the stable's requests to a pull request's preview
and hands over :class:`~controller.core.traffic.Pair` objects. This module owns
what becomes of them: :class:`PairBook` (a bounded accumulator that keeps per pair
only the status codes, the seconds and the compared output of each side),
:class:`Comparison` (what the kept pairs show: agreement per the output's kind,
PSI of the two output distributions, differences of numbers, latency and error
rates per side; :meth:`Comparison.to_record` is its status-file form),
:func:`judge` (the ``mdc/preview`` commit status against a policy's bounds) and
:func:`render_markdown` (the section of the pull request's comment).

Conventions: a status outside 200..399 is an error (0: no answer, 4xx: the preview
refused what the stable took, 5xx: it failed); latency is over every answer, as
the router's histograms count it; quantiles are exact (nearest rank) over the
kept pairs; an output field that yields several values (a batch answer) is
compared by its first, except a ranking, which is the list itself, best first.

Pure: no I/O, no clock. Called by the preview manager in :mod:`controller.app`,
the pull request's comment and ``mdc preview``; tested in
``tests/unit/test_preview_core.py``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controller.core.drift import predictions, psi
from controller.core.safe_text import md_code, md_text
from controller.core.traffic import QUANTILES, Pair
from controller.spec.kinds import OutputKind, Preview, PreviewOutput

__all__ = [
    "DESCRIPTION_LIMIT",
    "PAIRS_KEPT",
    "PSI_MIN_PAIRS",
    "Comparison",
    "Differences",
    "PairBook",
    "PreviewJudgement",
    "PreviewReport",
    "PreviewState",
    "PreviewWish",
    "SideSummary",
    "judge",
    "render_markdown",
]

#: Pairs a :class:`PairBook` keeps (the oldest go first).
PAIRS_KEPT = 20_000
#: Compared pairs below which no PSI is given.
PSI_MIN_PAIRS = 10
#: GitHub's limit on a commit status's description (characters).
DESCRIPTION_LIMIT = 140
#: The stable's p90 is taken as at least this (seconds) in the latency ratio.
_P90_FLOOR = 1e-3

#: A side's compared output: a label, a number, a ranking's top k; None: missing.
Output = str | float | tuple[str | float, ...] | None


def _ok(status: int) -> bool:
    return 200 <= status <= 399


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of sorted values: the smallest value with at
    least ``q`` of them at or below it."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _present(answer: Any, path: str) -> bool:
    """Whether the last key of ``path`` is in the answer (walked as ``predictions``)."""
    found: list[Any] = [answer]
    for key in path.split("."):
        found = [
            each[key]
            for item in found
            for each in (item if isinstance(item, list) else [item])
            if isinstance(each, dict) and key in each
        ]
    return bool(found)


def _extract(answer: Any, output: PreviewOutput) -> Output:
    if output.kind is OutputKind.RANKING:
        if not _present(answer, output.field):
            return None
        return tuple(predictions(answer, output.field)[: max(output.top, 0)])
    values = predictions(answer, output.field)
    if not values:
        return None
    first = values[0]
    if output.kind is OutputKind.LABEL:
        return _label(first)
    if isinstance(first, float):
        return first
    try:
        number = float(first)  # a number sent as text
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _label(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a class id: 3, not 3.0
    return str(value)


def _agree(stable: Output, preview: Output, output: PreviewOutput) -> float:
    """1.0 for agreeing outputs, 0.0 for not; a ranking's overlap at k in between."""
    if output.kind is OutputKind.RANKING:
        a = stable if isinstance(stable, tuple) else ()
        b = preview if isinstance(preview, tuple) else ()
        k = min(output.top, max(len(a), len(b)))
        if k <= 0:
            return 1.0  # both empty: nothing to disagree on
        return len(set(a[:k]) & set(b[:k])) / k
    if output.kind is OutputKind.NUMBER:
        if not (isinstance(stable, float) and isinstance(preview, float)):
            return 0.0  # not reached: a number's outputs are floats
        return 1.0 if abs(preview - stable) <= output.tolerance else 0.0
    return 1.0 if stable == preview else 0.0


@dataclass(frozen=True, slots=True)
class _Kept:
    """What a :class:`PairBook` keeps of one pair."""

    stable_status: int
    stable_seconds: float
    stable: Output
    preview_status: int
    preview_seconds: float
    preview: Output


@dataclass(frozen=True)
class SideSummary:
    """One side's answers over the kept pairs: an error is a status outside
    200..399; latency quantiles (seconds) over every answer, None with none."""

    requests: int
    error_rate: float
    p50: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of(cls, statuses: Sequence[int], seconds: Sequence[float]) -> SideSummary:
        ordered = sorted(seconds)
        p50, p90, p99 = (_round(_quantile(ordered, q)) for q in QUANTILES)
        errors = sum(not _ok(s) for s in statuses)
        rate = errors / len(statuses) if statuses else 0.0
        return cls(len(statuses), round(rate, 6), p50, p90, p99)

    def to_record(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errorRate": round(self.error_rate, 6),
            "p50": _round(self.p50),
            "p90": _round(self.p90),
            "p99": _round(self.p99),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SideSummary:
        return cls(
            int(record["requests"]),
            float(record["errorRate"]),
            *(_float(record.get(key)) for key in ("p50", "p90", "p99")),
        )


@dataclass(frozen=True)
class Differences:
    """A number's preview minus stable over the compared pairs: the mean signed
    difference and quantiles of the absolute one."""

    mean: float
    p50: float
    p90: float
    p99: float

    def to_record(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 6) for k in ("mean", "p50", "p90", "p99")}


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Comparison:
    """What the kept pairs show. ``compared``: pairs both sides answered without
    error with the output field; ``missing``: pairs whose stable answered with the
    field and whose preview answered without error but without it. Figures are
    rounded to 6 digits, so a comparison equals the one read back from its record."""

    pairs: int  # kept
    total: int  # ever added
    kind: OutputKind
    compared: int
    missing: int
    agreement: float | None
    psi: float | None
    latency_ratio: float | None  # the preview's p90 over the stable's
    stable: SideSummary
    preview: SideSummary
    differences: Differences | None = None  # numbers only

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "pairs": self.pairs,
            "total": self.total,
            "kind": str(self.kind),
            "compared": self.compared,
            "missing": self.missing,
            "agreement": _round(self.agreement),
            "psi": _round(self.psi),
            "latencyRatio": _round(self.latency_ratio),
            "stable": self.stable.to_record(),
            "preview": self.preview.to_record(),
        }
        if self.differences is not None:
            record["differences"] = self.differences.to_record()
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Comparison:
        differences = record.get("differences")
        return cls(
            pairs=int(record["pairs"]),
            total=int(record["total"]),
            kind=OutputKind(record["kind"]),
            compared=int(record["compared"]),
            missing=int(record.get("missing", 0)),
            agreement=_float(record.get("agreement")),
            psi=_float(record.get("psi")),
            latency_ratio=_float(record.get("latencyRatio")),
            stable=SideSummary.from_record(record["stable"]),
            preview=SideSummary.from_record(record["preview"]),
            differences=None
            if differences is None
            else Differences(*(float(differences[k]) for k in ("mean", "p50", "p90", "p99"))),
        )


class PairBook:
    """The most recent ``kept`` pairs of one preview, reduced as they arrive to what
    is compared (never the requests or the answers themselves)."""

    def __init__(self, output: PreviewOutput, kept: int = PAIRS_KEPT) -> None:
        if kept < 1:
            raise ValueError(f"a pair book keeps at least one pair, not {kept}")
        self.output = output
        self.kept: deque[_Kept] = deque(maxlen=kept)
        self.total = 0

    def add(self, pairs: Iterable[Pair]) -> None:
        for pair in pairs:
            self.kept.append(
                _Kept(
                    pair.stable_status,
                    pair.stable_seconds,
                    _extract(pair.stable_answer, self.output) if _ok(pair.stable_status) else None,
                    pair.preview_status,
                    pair.preview_seconds,
                    _extract(pair.preview_answer, self.output)
                    if _ok(pair.preview_status)
                    else None,
                )
            )
            self.total += 1

    def comparison(self) -> Comparison:
        kept = list(self.kept)
        kind = self.output.kind
        stable = SideSummary.of([k.stable_status for k in kept], [k.stable_seconds for k in kept])
        preview = SideSummary.of(
            [k.preview_status for k in kept], [k.preview_seconds for k in kept]
        )
        both = [k for k in kept if k.stable is not None and k.preview is not None]
        missing = sum(
            k.stable is not None and k.preview is None and _ok(k.preview_status) for k in kept
        )
        agreement = (
            sum(_agree(k.stable, k.preview, self.output) for k in both) / len(both)
            if both
            else None
        )
        index = None
        if kind is not OutputKind.RANKING and len(both) >= PSI_MIN_PAIRS:
            index = psi(
                [k.stable for k in both if isinstance(k.stable, float | str)],
                [k.preview for k in both if isinstance(k.preview, float | str)],
            )
        differences = None
        if kind is OutputKind.NUMBER and both:
            signed = [
                k.preview - k.stable
                for k in both
                if isinstance(k.preview, float) and isinstance(k.stable, float)
            ]
            spread = sorted(abs(d) for d in signed)
            p50, p90, p99 = (_quantile(spread, q) or 0.0 for q in QUANTILES)
            differences = Differences(
                round(sum(signed) / len(signed), 6), round(p50, 6), round(p90, 6), round(p99, 6)
            )
        ratio = None
        if stable.p90 is not None and preview.p90 is not None:
            ratio = round(preview.p90 / max(stable.p90, _P90_FLOOR), 6)
        return Comparison(
            pairs=len(kept),
            total=self.total,
            kind=kind,
            compared=len(both),
            missing=missing,
            agreement=_round(agreement),
            psi=_round(index),
            latency_ratio=ratio,
            stable=stable,
            preview=preview,
            differences=differences,
        )


class PreviewState(StrEnum):
    """The ``mdc/preview`` commit status (GitHub's state names, used verbatim)."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class PreviewJudgement:
    state: PreviewState
    description: str  # at most DESCRIPTION_LIMIT characters, one line
    reasons: tuple[str, ...]  # full sentences: each figure and the bound it met or broke


def _description(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= DESCRIPTION_LIMIT else line[: DESCRIPTION_LIMIT - 1] + "…"


def judge(comparison: Comparison, bounds: Preview) -> PreviewJudgement:
    """The preview's commit status against the policy's ``bounds``.

    Agreement is judged once ``minPairs`` pairs were compared. Error rate, latency
    and a missing output field are judged once ``minPairs`` pairs were *seen* (kept
    or not), compared or not: a preview that errors, or answers without the field,
    keeps ``compared`` low, and must fail rather than pend forever. Its error rate
    fails when above both the bound and the stable's (errors the stable makes too
    are the traffic's, not the preview's); a field missing from more of its answers
    than ``1 - minAgreement`` fails as disagreement would. Else: PENDING below
    ``minPairs`` compared, SUCCESS at or above it."""
    c, need = comparison, max(bounds.min_pairs, 1)
    seen, decisive = c.total >= need, c.compared >= need
    failed: list[tuple[str, str]] = []  # (short, sentence)
    met: list[str] = []
    if decisive and c.agreement is not None:
        sentence = (
            f"agreement {c.agreement:.3f} {{}} the policy's minAgreement "
            f"{bounds.min_agreement:g} over {c.compared} compared pairs"
        )
        if c.agreement < bounds.min_agreement:
            short = f"agreement {c.agreement:.3f} < {bounds.min_agreement:g}"
            failed.append((short, sentence.format("is below")))
        else:
            met.append(sentence.format("meets"))
    if seen and c.latency_ratio is not None:
        sentence = (
            f"the preview's p90 latency is {c.latency_ratio:.2f}x the stable's "
            f"({_ms(c.preview.p90)} ms against {_ms(c.stable.p90)} ms), {{}} the policy's "
            f"maxLatencyRatio {bounds.max_latency_ratio:g} over {c.pairs} pairs"
        )
        if c.latency_ratio > bounds.max_latency_ratio:
            short = f"p90 {c.latency_ratio:.2f}x the stable's > {bounds.max_latency_ratio:g}x"
            failed.append((short, sentence.format("above")))
        else:
            met.append(sentence.format("within"))
    if seen:
        allowed = max(bounds.max_error_rate, c.stable.error_rate)
        sentence = (
            f"the preview's error rate {c.preview.error_rate:.3f} is {{}} the policy's "
            f"maxErrorRate {bounds.max_error_rate:g} and the stable's "
            f"{c.stable.error_rate:.3f} over {c.pairs} pairs"
        )
        if c.preview.error_rate > allowed:
            short = f"error rate {c.preview.error_rate:.3f} > {allowed:.3g}"
            failed.append((short, sentence.format("above both")))
        else:
            met.append(sentence.format("within the larger of"))
    if seen and c.missing:
        share = c.missing / (c.compared + c.missing)
        if share > 1 - bounds.min_agreement:
            failed.append(
                (
                    f"output missing from {share:.3f} of answers",
                    f"the preview's answers lacked the output field in {c.missing} of "
                    f"{c.compared + c.missing} pairs whose stable answer had it ({share:.3f}), "
                    f"more than the policy's minAgreement {bounds.min_agreement:g} allows",
                ),
            )
    if failed:
        return PreviewJudgement(
            PreviewState.FAILURE,
            _description("; ".join(short for short, _ in failed)),
            tuple(sentence for _, sentence in failed),
        )
    if not decisive:
        so_far = (
            "no agreement yet" if c.agreement is None else f"agreement so far {c.agreement:.3f}"
        )
        return PreviewJudgement(
            PreviewState.PENDING,
            _description(f"{c.compared} of {need} pairs compared; {so_far}"),
            (
                f"{c.compared} of the {need} compared pairs the policy's minPairs asks for "
                f"({c.total} pairs seen)",
            ),
        )
    latency = (
        "p90 unknown" if c.latency_ratio is None else f"p90 {c.latency_ratio:.2f}x the stable's"
    )
    agreement = f"{c.agreement:.3f}" if c.agreement is not None else "unknown"
    return PreviewJudgement(
        PreviewState.SUCCESS,
        _description(f"agreement {agreement}, {latency}, over {c.compared} pairs"),
        tuple(met),
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


_ICONS = {PreviewState.PENDING: "⏳", PreviewState.SUCCESS: "✅", PreviewState.FAILURE: "❌"}


def render_markdown(
    model: str, version: str, head: str, comparison: Comparison, judgement: PreviewJudgement
) -> str:
    """The preview's section of the pull request's comment. ``model``, ``version``
    and ``head`` come from specs and git: escaped where they are shown."""
    c = comparison
    lines = [
        f"#### Preview of {md_code(model)} {md_text(version)} at {md_code(head[:12])}: "
        f"{_ICONS[judgement.state]} {judgement.state}",
        "",
        "| | stable | preview |",
        "|---|---:|---:|",
    ]
    for name, key in (("p50", "p50"), ("p90", "p90"), ("p99", "p99")):
        stable, preview = getattr(c.stable, key), getattr(c.preview, key)
        lines.append(f"| latency {name} (ms) | {_ms(stable)} | {_ms(preview)} |")
    lines += [
        f"| error rate | {c.stable.error_rate:.2%} | {c.preview.error_rate:.2%} |",
        f"| requests | {c.stable.requests} | {c.preview.requests} |",
        "",
    ]
    agreement = "-" if c.agreement is None else f"**{c.agreement:.3f}**"
    lines.append(
        f"- agreement ({c.kind}): {agreement} over {c.compared} compared pairs "
        f"({c.total} seen, {c.pairs} kept)"
    )
    if c.latency_ratio is not None:
        lines.append(f"- p90 latency: {c.latency_ratio:.2f}x the stable's")
    if c.psi is not None:
        lines.append(f"- PSI of the outputs (stable as baseline): {c.psi:.4f}")
    if c.differences is not None:
        d = c.differences
        lines.append(
            f"- differences (preview minus stable): mean {d.mean:+.4g}, "
            f"absolute p50 {d.p50:.4g}, p90 {d.p90:.4g}, p99 {d.p99:.4g}"
        )
    if c.missing:
        lines.append(f"- output field missing from {c.missing} of the preview's answers")
    if judgement.reasons:
        lines.append("")
        lines += [f"- {md_text(reason)}" for reason in judgement.reasons]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PreviewWish:
    """What a pull request asks of its previews: ``head`` and its merge ``base``
    (both commits the mirror holds), or its end (``closed``; ``merged`` too when
    it was merged), or ``stop`` / ``restart`` (a person's ``/mdc preview``)."""

    number: int
    head: str = ""
    base: str = ""
    closed: bool = False
    merged: bool = False
    command: str = ""  # "", "stop" or "restart"
    who: str = ""


@dataclass(frozen=True)
class PreviewReport:
    """One preview's news for the pull request: a comment section and a status."""

    number: int
    head: str
    model: str
    state: str  # pending, success, failure (GitHub's commit status states)
    description: str
    section: str  # markdown, one section of mdc's comment
