"""A pull request's preview beside the stable, pure and table-first: what a pair
book keeps and compares per output kind, the latency and error figures per side,
the commit status judged against a policy's bounds, the status-file record and
the pull request comment's section."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import yaml

from controller.core.preview import (
    DESCRIPTION_LIMIT,
    Comparison,
    Differences,
    PairBook,
    PreviewJudgement,
    PreviewState,
    SideSummary,
    judge,
    render_markdown,
)
from controller.core.traffic import Pair
from controller.spec.kinds import OutputKind, Preview, PreviewOutput

LABEL, NUMBER, RANKING = OutputKind.LABEL, OutputKind.NUMBER, OutputKind.RANKING
PENDING, SUCCESS, FAILURE = PreviewState.PENDING, PreviewState.SUCCESS, PreviewState.FAILURE


def pair(
    stable: Any,
    preview: Any,
    *,
    codes: tuple[int, int] = (200, 200),
    seconds: tuple[float, float] = (0.01, 0.01),
) -> Pair:
    return Pair(0.0, {"x": 1}, codes[0], seconds[0], stable, codes[1], seconds[1], preview, 10)


def book(kind: OutputKind = LABEL, field: str = "out", **options: Any) -> PairBook:
    return PairBook(PreviewOutput(field, kind, **options))


def compare(rows: list[Pair], kind: OutputKind = LABEL, **options: Any) -> Comparison:
    pairs = book(kind, **options)
    pairs.add(rows)
    return pairs.comparison()


def answers(*values: Any) -> list[dict[str, Any]]:
    return [{"out": v} for v in values]


@pytest.mark.parametrize(
    ("kind", "options", "stable", "preview", "agreement"),
    [
        # labels: equal, then a tenth flipped
        (LABEL, {}, ["cat"] * 10, ["cat"] * 10, 1.0),
        (LABEL, {}, ["cat"] * 10, ["cat"] * 9 + ["dog"], 0.9),
        # a class id is a label whether it comes as 3 or 3.0 or "3"
        (LABEL, {}, [3, 3.0, "3"], [3.0, "3", 3], 1.0),
        (LABEL, {}, [True, False], ["True", "False"], 1.0),
        # numbers: within the tolerance, outside it, exactly at it
        (NUMBER, {"tolerance": 0.1}, [1.0, 2.0], [1.05, 1.95], 1.0),
        (NUMBER, {"tolerance": 0.1}, [1.0, 2.0, 3.0, 4.0], [1.0, 2.5, 3.0, 3.0], 0.5),
        (NUMBER, {"tolerance": 0.5}, [1.0], [1.5], 1.0),
        (NUMBER, {}, [1.0, 2.0], [1.0, 2.0 + 1e-9], 0.5),  # no tolerance: exact
        (NUMBER, {}, [1.0], ["1.0"], 1.0),  # a number sent as text
        # rankings: overlap of the top k, order within it aside
        (RANKING, {"top": 3}, [["a", "b", "c"]], [["c", "a", "b"]], 1.0),
        (RANKING, {"top": 3}, [["a", "b", "c"]], [["a", "c", "d"]], 2 / 3),
        (RANKING, {"top": 2}, [["a", "b", "c"]], [["a", "c", "b"]], 0.5),
        (RANKING, {"top": 5}, [["a", "b"]], [["a", "b", "z"]], 2 / 3),  # k = 3 < top
        (RANKING, {"top": 5}, [[]], [[]], 1.0),  # both empty: full agreement
        (RANKING, {"top": 5}, [["a"]], [[]], 0.0),  # an empty list is an answer
        (RANKING, {"top": 2}, [["a", "b"], ["a", "b"]], [["a", "b"], ["x", "y"]], 0.5),
        (RANKING, {"top": 3}, [[1, 2, 3]], [[3.0, 2, 9]], 2 / 3),  # ids as numbers
    ],
)
def test_agreement_per_kind(
    kind: OutputKind,
    options: dict[str, Any],
    stable: list[Any],
    preview: list[Any],
    agreement: float,
) -> None:
    rows = [pair(a, b) for a, b in zip(answers(*stable), answers(*preview), strict=True)]
    found = compare(rows, kind, **options)
    assert found.compared == len(rows)
    assert found.agreement == pytest.approx(agreement, abs=1e-6)
    assert found.kind is kind


@pytest.mark.parametrize(
    ("field", "stable", "preview", "compared", "agreement"),
    [
        ("result.label", {"result": {"label": "a"}}, {"result": {"label": "a"}}, 1, 1.0),
        # a batch answer: the first value is compared
        ("items.label", {"items": [{"label": "a"}]}, {"items": [{"label": "a"}, {}]}, 1, 1.0),
        ("result.label", {"result": {"label": "a"}}, {"result": {"other": "a"}}, 0, None),
        ("result.label", {"result": {"label": None}}, {"result": {"label": "a"}}, 0, None),
        ("result.label", {"result": {"label": "a"}}, ["not", "a", "dict"], 0, None),
    ],
)
def test_the_output_is_found_at_a_dotted_path(
    field: str, stable: Any, preview: Any, compared: int, agreement: float | None
) -> None:
    found = compare([pair(stable, preview)], field=field)
    assert (found.compared, found.agreement) == (compared, agreement)


def test_a_rankings_field_present_but_empty_is_not_missing() -> None:
    rows = [
        pair({"out": []}, {"out": []}),
        pair({"out": ["a"]}, {"other": ["a"]}),  # the preview lacks the field
    ]
    found = compare(rows, RANKING, top=3)
    assert (found.compared, found.missing, found.agreement) == (1, 1, 1.0)


@pytest.mark.parametrize(
    ("codes", "stable", "preview", "compared", "missing", "errors"),
    [
        ((200, 200), {"out": "a"}, {"out": "a"}, 1, 0, (0.0, 0.0)),
        ((200, 204), {"out": "a"}, None, 0, 1, (0.0, 0.0)),  # not JSON: missing
        ((200, 200), {"out": "a"}, {"nope": "a"}, 0, 1, (0.0, 0.0)),  # field missing
        ((200, 200), None, {"out": "a"}, 0, 0, (0.0, 0.0)),  # the stable's: not counted
        ((302, 200), {"out": "a"}, {"out": "a"}, 1, 0, (0.0, 0.0)),  # a redirect answered
        ((200, 500), {"out": "a"}, {"out": "a"}, 0, 0, (0.0, 1.0)),  # an error's body
        ((200, 404), {"out": "a"}, {"out": "a"}, 0, 0, (0.0, 1.0)),  # refused: an error
        ((200, 0), {"out": "a"}, None, 0, 0, (0.0, 1.0)),  # no answer at all
        ((503, 200), {"out": "a"}, {"out": "a"}, 0, 0, (1.0, 0.0)),
        ((199, 400), {"out": "a"}, {"out": "a"}, 0, 0, (1.0, 1.0)),
    ],
)
def test_errors_and_missing_outputs_are_counted(
    codes: tuple[int, int],
    stable: Any,
    preview: Any,
    compared: int,
    missing: int,
    errors: tuple[float, float],
) -> None:
    found = compare([pair(stable, preview, codes=codes)])
    assert (found.compared, found.missing) == (compared, missing)
    assert (found.stable.error_rate, found.preview.error_rate) == errors
    assert found.stable.requests == found.preview.requests == found.pairs == 1


def test_the_book_keeps_the_most_recent_pairs_and_counts_them_all() -> None:
    pairs = PairBook(PreviewOutput("out"), kept=5)
    pairs.add(pair({"out": "a"}, {"out": "b"}) for _ in range(7))  # an iterator will do
    pairs.add([pair({"out": "a"}, {"out": "a"}) for _ in range(5)])
    found = pairs.comparison()
    assert (found.pairs, found.total, found.compared, found.agreement) == (5, 12, 5, 1.0)
    assert len(pairs.kept) == 5
    with pytest.raises(ValueError, match="at least one"):
        PairBook(PreviewOutput("out"), kept=0)


def test_the_book_keeps_no_answers() -> None:
    pairs = book(RANKING, top=2)
    pairs.add([pair({"out": ["a", "b", "c", "d"], "secret": "x"}, {"out": ["a"]})])
    (kept,) = pairs.kept
    assert kept.stable == ("a", "b")  # only the top k
    assert "secret" not in repr(kept)


def test_an_empty_book() -> None:
    found = book().comparison()
    assert (found.pairs, found.total, found.compared) == (0, 0, 0)
    assert found.agreement is found.psi is found.latency_ratio is None
    assert found.differences is None
    assert found.stable == SideSummary(0, 0.0, None, None, None)
    assert judge(found, Preview()).state is PENDING


@pytest.mark.parametrize(
    ("stable_ms", "preview_ms", "quantiles", "ratio"),
    [
        # nearest rank over 1..100 ms: p50 50, p90 90, p99 99
        (range(1, 101), range(1, 101), (0.050, 0.090, 0.099), 1.0),
        (range(1, 101), [2 * ms for ms in range(1, 101)], (0.050, 0.090, 0.099), 2.0),
        (range(1, 101), [ms / 2 for ms in range(1, 101)], (0.050, 0.090, 0.099), 0.5),
        ([7.0] * 10, [7.0] * 10, (0.007, 0.007, 0.007), 1.0),
        # a stable answering in no time: its p90 is taken as 1 ms
        ([0.0] * 10, [5.0] * 10, (0.0, 0.0, 0.0), 5.0),
    ],
)
def test_latency_quantiles_and_ratio(
    stable_ms: Any, preview_ms: Any, quantiles: tuple[float, ...], ratio: float
) -> None:
    rows = [
        pair({"out": "a"}, {"out": "a"}, seconds=(a / 1000, b / 1000))
        for a, b in zip(stable_ms, preview_ms, strict=True)
    ]
    found = compare(list(reversed(rows)))  # the order they came in does not matter
    assert (found.stable.p50, found.stable.p90, found.stable.p99) == pytest.approx(quantiles)
    assert found.latency_ratio == pytest.approx(ratio)


def test_psi_of_labels_and_numbers_and_not_of_rankings() -> None:
    same = [pair({"out": x}, {"out": x}) for x in ["a", "b"] * 50]
    shifted = [pair({"out": x}, {"out": "b"}) for x in ["a", "b"] * 50]
    assert compare(same).psi == pytest.approx(0.0)
    assert (compare(shifted).psi or 0.0) > 1.0
    assert compare(same[:9]).psi is None  # too few compared
    assert compare(same[:10]).psi is not None
    numbers = [pair({"out": float(i)}, {"out": float(i) + 50}) for i in range(100)]
    assert (compare(numbers, NUMBER).psi or 0.0) > 1.0
    rankings = [pair({"out": ["a"]}, {"out": ["a"]}) for _ in range(20)]
    assert compare(rankings, RANKING).psi is None


def test_differences_of_numbers() -> None:
    deltas = [float(d) for d in range(-50, 50)]  # |d| sorted: 0, 1, 1, 2, 2, ..., 49, 49, 50
    rows = [pair({"out": 10.0}, {"out": 10.0 + d}) for d in deltas]
    found = compare(rows, NUMBER, tolerance=5)
    assert found.differences == Differences(mean=-0.5, p50=25.0, p90=45.0, p99=49.0)
    assert found.agreement == pytest.approx(11 / 100)  # -5..5
    assert compare(rows[:1], LABEL).differences is None
    assert compare([pair({"out": 1.0}, None)], NUMBER).differences is None


def comparison(
    compared: int = 600,
    agreement: float | None = 0.99,
    *,
    total: int | None = None,
    missing: int = 0,
    ratio: float | None = 1.05,
    stable_errors: float = 0.0,
    preview_errors: float = 0.0,
) -> Comparison:
    seen = compared + missing if total is None else total
    return Comparison(
        pairs=seen,
        total=seen,
        kind=LABEL,
        compared=compared,
        missing=missing,
        agreement=agreement,
        psi=0.01,
        latency_ratio=ratio,
        stable=SideSummary(seen, stable_errors, 0.010, 0.020, 0.040),
        preview=SideSummary(seen, preview_errors, 0.011, 0.021, 0.042),
    )


BOUNDS = Preview(min_pairs=500, min_agreement=0.95, max_latency_ratio=1.3, max_error_rate=0.01)


@pytest.mark.parametrize(
    ("case", "state", "description", "reasons"),
    [
        (
            comparison(412, 0.993),
            PENDING,
            "412 of 500 pairs compared; agreement so far 0.993",
            ["412 of the 500 compared pairs"],
        ),
        (comparison(0, None), PENDING, "0 of 500 pairs compared; no agreement yet", []),
        # a low agreement below minPairs is not judged yet
        (comparison(100, 0.5), PENDING, "100 of 500 pairs compared", []),
        (
            comparison(600, 0.998),
            SUCCESS,
            "agreement 0.998, p90 1.05x the stable's, over 600 pairs",
            ["agreement 0.998 meets the policy's minAgreement 0.95 over 600 compared pairs"],
        ),
        (comparison(500, 0.95), SUCCESS, "agreement 0.950", []),  # the bounds are inclusive
        (comparison(600, 0.99, ratio=1.3), SUCCESS, "p90 1.30x", []),
        (comparison(600, 0.99, ratio=None), SUCCESS, "p90 unknown", []),
        (
            comparison(612, 0.9),
            FAILURE,
            "agreement 0.900 < 0.95",
            ["agreement 0.900 is below the policy's minAgreement 0.95 over 612 compared pairs"],
        ),
        (
            comparison(600, 0.99, ratio=1.62),
            FAILURE,
            "p90 1.62x the stable's > 1.3x",
            [
                "the preview's p90 latency is 1.62x the stable's (21.0 ms against 20.0 ms), "
                "above the policy's maxLatencyRatio 1.3 over 600 pairs"
            ],
        ),
        (
            comparison(600, 0.99, preview_errors=0.052, stable_errors=0.002),
            FAILURE,
            "error rate 0.052 > 0.01",
            [
                "the preview's error rate 0.052 is above both the policy's maxErrorRate 0.01 "
                "and the stable's 0.002 over 600 pairs"
            ],
        ),
        # errors the stable makes as often are the traffic's, not the preview's
        (comparison(600, 0.99, preview_errors=0.05, stable_errors=0.06), SUCCESS, "", []),
        (comparison(600, 0.99, preview_errors=0.01), SUCCESS, "", []),
        # every bound broken: every reason, the description kept short
        (
            comparison(600, 0.5, ratio=3.0, preview_errors=0.5),
            FAILURE,
            "agreement 0.500 < 0.95; p90 3.00x the stable's > 1.3x; error rate 0.500 > 0.01",
            ["agreement 0.500", "3.00x", "error rate 0.500"],
        ),
        # a preview that errors keeps compared low: decided on the pairs seen
        (
            comparison(50, 1.0, total=700, preview_errors=0.9),
            FAILURE,
            "error rate 0.900 > 0.01",
            ["error rate 0.900 is above both", "over 700 pairs"],
        ),
        (comparison(50, 1.0, total=499, preview_errors=0.9), PENDING, "50 of 500", []),
        # a preview that answers without the field: decided on the pairs seen too
        (
            comparison(100, 1.0, missing=450),
            FAILURE,
            "output missing from 0.818 of answers",
            ["lacked the output field in 450 of 550 pairs whose stable answer had it (0.818)"],
        ),
        (comparison(600, 0.99, missing=20), SUCCESS, "", []),  # 0.032 < 0.05
        # a stable that errors keeps compared low too, and is not the preview's fault
        (comparison(50, 1.0, total=700, stable_errors=0.9), PENDING, "50 of 500 pairs", []),
    ],
)
def test_judge(case: Comparison, state: PreviewState, description: str, reasons: list[str]) -> None:
    found = judge(case, BOUNDS)
    assert found.state is state
    assert description in found.description
    assert len(found.description) <= DESCRIPTION_LIMIT
    for part in reasons:
        assert any(part in reason for reason in found.reasons), (part, found.reasons)
    if state is FAILURE:
        assert len(found.reasons) == found.description.count(";") + 1


def test_judge_needs_at_least_one_compared_pair() -> None:
    assert judge(comparison(0, None), replace(BOUNDS, min_pairs=0)).state is PENDING


@pytest.mark.parametrize(
    "case",
    [
        comparison(10**15, 0.999999),
        comparison(10**15, 0.1, ratio=1e12, preview_errors=0.99, missing=10**15),
        comparison(10**14, 0.1, total=10**18),
    ],
)
def test_the_description_fits_a_commit_status(case: Comparison) -> None:
    for need in (1, 10**16):
        bounds = replace(BOUNDS, min_pairs=need, min_agreement=0.123456789)
        found = judge(case, bounds)
        assert len(found.description) <= DESCRIPTION_LIMIT, found.description
        assert "\n" not in found.description


@pytest.mark.parametrize(
    ("kind", "options", "rows"),
    [
        (LABEL, {}, [pair({"out": x}, {"out": x[::-1]}) for x in ["ab", "cc", "d"] * 10]),
        (
            NUMBER,
            {"tolerance": 0.01},
            [
                pair({"out": i / 3}, {"out": i / 3 + 0.001 * i}, seconds=(i / 7000, i / 6000))
                for i in range(40)
            ],
        ),
        (RANKING, {"top": 2}, [pair({"out": ["a", "b"]}, {"out": ["b", "c"]})]),
        (LABEL, {}, []),
        (LABEL, {}, [pair(None, None, codes=(500, 0))]),
    ],
)
def test_the_record_round_trips(
    kind: OutputKind, options: dict[str, Any], rows: list[Pair]
) -> None:
    found = compare(rows, kind, **options)
    record = found.to_record()
    assert Comparison.from_record(record) == found
    assert json.loads(json.dumps(record)) == record
    assert yaml.safe_load(yaml.safe_dump(record)) == record
    assert ("differences" in record) is (kind is NUMBER and found.compared > 0)
    assert set(record["stable"]) == {"requests", "errorRate", "p50", "p90", "p99"}


def test_the_record_is_camel_case_and_rounded() -> None:
    record = compare(
        [pair({"out": "a"}, {"out": "a" if i % 3 else "b"}) for i in range(30)]
    ).to_record()
    assert record["agreement"] == 0.666667
    assert record["latencyRatio"] == 1.0
    assert record["kind"] == "label"
    assert record["preview"]["errorRate"] == 0.0


def render(model: str = "iris", version: str = "7", state: PreviewState = SUCCESS) -> str:
    rows = [pair({"out": 1.0}, {"out": 1.5}, seconds=(0.01, 0.02)) for _ in range(20)]
    found = compare(rows, NUMBER)
    reasons = ("agreement 0.000 is below the policy's minAgreement 0.95",)
    return render_markdown(
        model, version, "0123456789abcdef", found, PreviewJudgement(state, "d", reasons)
    )


@pytest.mark.parametrize(("state", "icon"), [(SUCCESS, "✅"), (FAILURE, "❌"), (PENDING, "⏳")])
def test_markdown_section(state: PreviewState, icon: str) -> None:
    text = render(state=state)
    header, *rest = text.splitlines()
    assert header == f"#### Preview of `iris` 7 at `0123456789ab`: {icon} {state}"
    assert "| latency p90 (ms) | 10.0 | 20.0 |" in rest
    assert "| error rate | 0.00% | 0.00% |" in rest
    assert any(line.startswith("- agreement (number): **0.000** over 20") for line in rest)
    assert any("mean +0.5" in line for line in rest)
    assert any("minAgreement 0.95" in line for line in rest)


@pytest.mark.parametrize(
    "model",
    ["a`b", "``x``", "<script>alert(1)</script>", "x\n#### forged\n| a | b |", "@org/team"],
)
def test_markdown_escapes_a_hostile_model_name(model: str) -> None:
    text = render(model=model, version="<img src=x>\n- [link](http://evil)")
    header = text.splitlines()[0]
    assert header.startswith("#### Preview of ")
    assert "<script>" not in text.replace("`<script>", "")  # only inside a code span
    assert "<img" not in text.replace("\\<img", "")
    assert "[link](" not in text
    assert "#### forged" not in text.splitlines()  # no new heading
    assert text.count("\n#### ") == 0
    assert len([line for line in text.splitlines() if line.startswith("####")]) == 1
