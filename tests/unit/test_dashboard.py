"""`mdc status` and the dashboard: the rows (phases, verdicts, ages, GPU sums),
the text table (aligned with and without colour), and the HTML page (every
model, the current step highlighted, the pool drawn by share, hostile names
escaped), read back with a real HTML parser."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest

from controller.core.canary import (
    CanaryPhase,
    CanaryState,
    CheckResult,
    IntervalVerdict,
    Outcome,
    state_to_dict,
)
from controller.core.inventory import build_inventory
from controller.core.status import (
    Condition,
    GPUHold,
    HistoryEntry,
    ModelStatus,
    Phase,
    Release,
    Verdict,
    parse_model_status,
)
from controller.spec.kinds import Desired
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from controller.ui.dashboard import (
    COLUMNS,
    dashboard_json,
    format_age,
    render_dashboard,
    render_status_table,
    status_rows,
)
from controller.ui.pool_view import pool_report, recorded_holdings
from controller.ui.terminal import Style
from tests.conftest import EXAMPLE_REPO

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp()
POOL = "shared-a100"
NODE_A = f"declared-{POOL}-gpu-node-a"
NODE_B = f"declared-{POOL}-gpu-node-b"
POLICY_OF = {"fraud-scorer": "standard-canary", "search-ranker": "fast"}


def iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(NOW - seconds_ago, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def interval(ago: float, outcome: Outcome, weight: int, *checks: CheckResult) -> IntervalVerdict:
    return IntervalVerdict(NOW - ago, outcome, weight, checks)


PASSED = interval(
    90,
    Outcome.PASS,
    10,
    CheckResult("errors", Outcome.PASS, 0.002, "errorRate 0.002"),
    CheckResult("latency", Outcome.PASS, 0.18, "latencyP99 0.18"),
)
FAILED = interval(
    30,
    Outcome.FAIL,
    25,
    CheckResult("errors", Outcome.PASS, 0.004, "errorRate 0.004"),
    CheckResult("latency", Outcome.FAIL, 0.31, "latencyP99 0.31 > max 0.25"),
)
NO_DATA = interval(
    10, Outcome.NO_DATA, 25, CheckResult("errors", Outcome.NO_DATA, None, "3 requests")
)


def canary_state(*verdicts: IntervalVerdict, step: int = 2) -> dict[str, Any]:
    state = CanaryState(
        "h2", CanaryPhase.STEPPING, step=step, weight=25, failures=1, reason="weight 25%"
    )
    return state_to_dict(replace(state, verdicts=verdicts))


FRAUD = ModelStatus(
    name="fraud-scorer",
    phase=Phase.PROGRESSING,
    team="fraud",
    stable=Release("1.0.0", started_at=iso(86400 * 3)),
    canary=Release("1.1.0"),
    weight=25,
    step=3,
    steps=8,
    gpus=(
        GPUHold("gpu-node-a", f"{NODE_A}-0", 1.0, "stable", iso(86400 * 3)),
        GPUHold("gpu-node-a", f"{NODE_A}-1", 1.0, "canary", iso(720)),
    ),
    history=(
        HistoryEntry(iso(120), "StepStarted", "weight 25%", "main@sha1:bbbb"),
        HistoryEntry(iso(720), "CanaryStarted", "1.1.0 beside 1.0.0"),
    ),
    canary_state=canary_state(PASSED, FAILED),
    phase_since=iso(720),
)
SEARCH = ModelStatus(
    name="search-ranker",
    phase=Phase.HEALTHY,
    team="search",
    stable=Release("2.0.0", started_at=iso(3 * 3600 + 5)),
    gpus=(GPUHold("gpu-node-b", f"{NODE_B}-0", 0.25, "stable"),),
    phase_since=iso(3 * 3600 + 5),
)


@pytest.fixture(scope="module")
def example() -> Desired:
    return load_desired(DirTree(EXAMPLE_REPO)).desired


def report(example: Desired, *statuses: ModelStatus) -> dict[str, Any]:
    pool = example.pools[POOL]
    return pool_report(
        pool,
        build_inventory(pool, {}),
        recorded_holdings(statuses),
        "recorded",
        statuses=statuses,
        now=NOW,
    )


# -- a small DOM, so the tests read the page the way a browser would ----------

VOID = {"meta", "br", "hr", "img", "input", "link", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # own text and children's, in order

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.texts)).strip()

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self) -> list[Node]:
        return [self, *(n for c in self.children for n in c.walk())]

    def find(self, tag: str = "", cls: str = "", **attrs: str) -> list[Node]:
        return [
            n
            for n in self.walk()
            if (not tag or n.tag == tag)
            and (not cls or cls in n.classes)
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str = "", cls: str = "", **attrs: str) -> Node:
        (found,) = self.find(tag, cls, **attrs)
        return found


class Builder(HTMLParser):
    """Builds :class:`Node` trees and insists that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        for node in self.stack:
            node.texts.append(data)


def dom(page: str) -> Node:
    builder = Builder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


@pytest.fixture(scope="module")
def page(example: Desired) -> Node:
    return dom(
        render_dashboard(
            [SEARCH, FRAUD],
            report(example, SEARCH, FRAUD),
            example.policies,
            NOW,
            policy_of=POLICY_OF,
        )
    )


# -- status_rows ---------------------------------------------------------------

ROW_CASES = [
    pytest.param(
        ModelStatus("m", Phase.PENDING),
        {
            "model": "m",
            "team": None,
            "stable": None,
            "canary": None,
            "phase": "Pending",
            "step": None,
            "weight": 0,
            "verdict": None,
            "gpus": 0.0,
            "age": None,
            "conditions": [],
        },
        id="bare",
    ),
    pytest.param(
        FRAUD,
        {
            "model": "fraud-scorer",
            "team": "fraud",
            "stable": "1.0.0",
            "canary": "1.1.0",
            "phase": "Progressing",
            "step": "3/8",
            "weight": 25,
            "verdict": "fail: latency",
            "gpus": 2.0,
            "age": 720,
            "conditions": [],
        },
        id="progressing",
    ),
    pytest.param(ModelStatus("m", Phase.PAUSED, step=2), {"step": None}, id="step-without-total"),
    pytest.param(
        ModelStatus("m", Phase.PROGRESSING, verdicts=(Verdict("errors", 0.001, True, "ok"),)),
        {"verdict": "pass"},
        id="verdicts-pass",
    ),
    pytest.param(
        ModelStatus(
            "m",
            Phase.ROLLED_BACK,
            verdicts=(
                Verdict("errors", 0.2, False, "errorRate 0.2 > max 0.01"),
                Verdict("latency", None, False, "could not be read"),
                Verdict("rate", 3.0, True, "requestRate 3"),
            ),
        ),
        {"verdict": "fail: errors, latency", "phase": "RolledBack"},
        id="verdicts-fail",
    ),
    pytest.param(
        ModelStatus("m", Phase.PROGRESSING, canary_state=canary_state(FAILED, PASSED)),
        {"verdict": "pass"},
        id="last-interval-pass",
    ),
    pytest.param(
        ModelStatus("m", Phase.PROGRESSING, canary_state=canary_state(NO_DATA)),
        {"verdict": "no-data"},
        id="last-interval-no-data",
    ),
    pytest.param(
        ModelStatus(
            "m",
            Phase.PROGRESSING,
            # what the planner records for a no-data interval: "passed"
            verdicts=(Verdict("errors", None, True, "3 requests"),),
            canary_state=canary_state(NO_DATA),
        ),
        {"verdict": "no-data"},
        id="canary-state-wins",
    ),
    pytest.param(
        ModelStatus(
            "m",
            Phase.PROGRESSING,
            verdicts=(Verdict("errors", 0.0, True, "ok"),),
            canary_state=canary_state(),
        ),
        {"verdict": "pass"},
        id="status-verdicts-without-intervals",
    ),
    pytest.param(
        ModelStatus("m", Phase.PROGRESSING, canary_state={"phase": "nonsense", "verdicts": 3}),
        {"verdict": None},
        id="corrupt-canary-state",
    ),
    pytest.param(
        ModelStatus(
            "m",
            Phase.PROGRESSING,
            gpus=(
                GPUHold("n", "g0", 0.25, "stable"),
                GPUHold("n", "g0", 0.25, "stable", replica=1),
                GPUHold("n", "g1", 0.5, "canary"),
                GPUHold("n", "g2", 0.1, "canary"),
            ),
        ),
        {"gpus": 1.1},
        id="gpus-stable-plus-canary",
    ),
    pytest.param(
        ModelStatus("m", Phase.HEALTHY, stable=Release("1", started_at=iso(45))),
        {"age": 45},
        id="age-from-stable-start",
    ),
    pytest.param(
        ModelStatus(
            "m",
            Phase.HEALTHY,
            stable=Release("1", started_at=iso(9999)),
            phase_since="2026-11-27T13:00:00+02:00",
        ),
        {"age": 3600},
        id="age-with-offset",
    ),
    pytest.param(
        ModelStatus("m", Phase.HEALTHY, phase_since="2026-11-27T11:59:00"),
        {"age": 60},
        id="age-naive-is-utc",
    ),
    pytest.param(
        ModelStatus("m", Phase.HEALTHY, phase_since="yesterday"), {"age": None}, id="age-garbage"
    ),
    pytest.param(
        ModelStatus("m", Phase.HEALTHY, phase_since=iso(-30)), {"age": 0}, id="age-clock-skew"
    ),
    pytest.param(
        ModelStatus("m", Phase.HEALTHY, phase_since=datetime(2026, 11, 27, 10, tzinfo=UTC)),  # type: ignore[arg-type]
        {"age": 7200},
        id="age-unquoted-yaml-timestamp",
    ),
    pytest.param(
        ModelStatus(
            "m",
            Phase.DEGRADED,
            conditions=(
                Condition("Ready", True, "Serving", "ok"),
                Condition("Probe", False, "ProbeFailing", "3 failed probes"),
                Condition("Quota", False, "OverQuota", "borrowing"),
            ),
        ),
        {"conditions": ["ProbeFailing", "OverQuota"]},
        id="false-conditions",
    ),
]


@pytest.mark.parametrize(("status", "expected"), ROW_CASES)
def test_status_row(status: ModelStatus, expected: dict[str, Any]) -> None:
    (row,) = status_rows([status], NOW)
    assert {k: row[k] for k in expected} == expected
    assert list(row) == [
        "model",
        "team",
        "stable",
        "canary",
        "phase",
        "step",
        "weight",
        "verdict",
        "gpus",
        "age",
        "conditions",
        "endpoint",
    ]
    json.dumps(row, allow_nan=False)  # what `mdc status --format json` prints


def test_rows_are_sorted_by_name() -> None:
    rows = status_rows([SEARCH, ModelStatus("aaa", Phase.PENDING), FRAUD], NOW)
    assert [r["model"] for r in rows] == ["aaa", "fraud-scorer", "search-ranker"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0s"),
        (45, "45s"),
        (59.9, "59s"),
        (60, "1m"),
        (720, "12m"),
        (3599, "59m"),
        (3600, "1h"),
        (3 * 3600 + 5, "3h"),
        (86399, "23h"),
        (86400 * 2 + 7, "2d"),
        (-5, "0s"),
    ],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


# -- the text table --------------------------------------------------------------

ANSI = re.compile(r"\033\[[0-9;]*m")


def style(on: bool) -> Style:
    chosen = Style(io.StringIO())
    chosen.on = on
    return chosen


def test_table_without_colour() -> None:
    rows = status_rows([SEARCH, FRAUD, ModelStatus("new", Phase.PENDING)], NOW)
    assert render_status_table(rows, style(False)) == "\n".join(
        [
            "MODEL          TEAM    STABLE  CANARY  PHASE        STEP  WEIGHT"
            "  VERDICT        GPUS  AGE  ENDPOINT",
            "fraud-scorer   fraud   1.0.0   1.1.0   Progressing  3/8   25%   "
            "  fail: latency  2     12m  -",
            "new            -       -       -       Pending      -     -     "
            "  -              0     -    -",
            "search-ranker  search  2.0.0   -       Healthy      -     -     "
            "  -              0.25  3h   -",
        ]
    )


def test_table_of_nothing_is_its_header() -> None:
    assert render_status_table([], style(False)).split() == list(COLUMNS)


PHASE_COLOURS = [
    (Phase.HEALTHY, "32"),
    (Phase.PROGRESSING, "33"),
    (Phase.PAUSED, "33"),
    (Phase.WAITING, "33"),
    (Phase.ROLLED_BACK, "31"),
    (Phase.STALLED, "31"),
    (Phase.DEGRADED, "31"),
    (Phase.PENDING, None),
]


@pytest.mark.parametrize(("phase", "code"), PHASE_COLOURS)
def test_phase_colour_only_with_colour(phase: Phase, code: str | None) -> None:
    rows = status_rows([ModelStatus("a-long-model-name", phase), FRAUD], NOW)
    plain = render_status_table(rows, style(False))
    coloured = render_status_table(rows, style(True))
    assert "\033" not in plain
    assert ANSI.sub("", coloured) == plain  # colour codes never shift a column
    line = coloured.splitlines()[1]
    if code is None:
        assert ANSI.search(line) is None
    else:
        assert f"\033[{code}m{phase}\033[0m" in line
        assert ANSI.sub("", line).index(str(phase)) == plain.splitlines()[0].index("PHASE")


def test_table_columns_line_up() -> None:
    rows = status_rows([SEARCH, FRAUD, ModelStatus("x", Phase.STALLED, team="t" * 20)], NOW)
    lines = ANSI.sub("", render_status_table(rows, style(True))).splitlines()
    starts = [lines[0].index(c) for c in COLUMNS]
    for line in lines[1:]:
        assert line == line.rstrip()
        for start in starts[1:]:
            assert line[start - 2 : start] == "  ", (line, start)
            assert line[start] != " ", (line, start)


def test_table_never_sends_control_characters() -> None:
    hostile = ModelStatus("evil\033[2J", Phase.HEALTHY, team="t\rx", stable=Release("1\n2"))
    text = render_status_table(status_rows([hostile], NOW), style(False))
    assert "\033" not in text
    assert "\r" not in text
    assert len(text.splitlines()) == 2
    assert r"evil\x1b[2J" in text  # shown as its escape, as every terminal line does


# -- the HTML page ---------------------------------------------------------------


def test_every_model_in_the_table(page: Node) -> None:
    rows = page.find("tr", "model")
    assert [r.attrs["data-model"] for r in rows] == ["fraud-scorer", "search-ranker"]
    fraud = rows[0]
    for text in ("fraud-scorer", "fraud", "Progressing", "1.0.0", "1.1.0", "step 3/8", "25%"):
        assert text in fraud.text
    assert fraud.one("span", "badge").classes == {"badge", "warn"}
    assert [s.classes - {"seg"} for s in fraud.find("span", "seg")] == [{"done"}] * 2 + [
        {"current"}
    ] + [{"pending"}] * 5
    assert fraud.one("div", "meter").children[0].attrs["style"] == "width:25%"
    search = rows[1]
    assert search.one("span", "badge").classes == {"badge", "ok"}
    assert [s.classes for s in search.find("span", "seg")] == [{"seg", "done"}] * 4


def test_current_step_is_highlighted(page: Node) -> None:
    fraud = page.one("article", "rollout", data_model="fraud-scorer")
    steps = fraud.one("ol", "timeline").find("li")
    assert [s.text for s in steps] == [
        "1. setWeight 10%",
        "2. analysis 3x15s",
        "3. setWeight 25%",
        "4. pause 2m",
        "5. analysis 3x15s",
        "6. pause until approved",
        "7. setWeight 50%",
        "8. analysis 5x15s",
        "promote",
    ]
    (current,) = [s for s in steps if "current" in s.classes]
    assert current.attrs["aria-current"] == "step"
    assert current.text == "3. setWeight 25%"
    assert [next(iter(s.classes)) for s in steps[:-1]] == ["done"] * 2 + ["current"] + [
        "pending"
    ] * 5
    assert "policy standard-canary" in fraud.one("h3").text


@pytest.mark.parametrize(
    ("status", "states"),
    [
        (replace(FRAUD, phase=Phase.ROLLED_BACK, step=2), ["done", "failed"] + ["pending"] * 6),
        (replace(FRAUD, step=None), ["done"] * 2 + ["current"] + ["pending"] * 5),  # canary state
        (replace(FRAUD, step=None, canary_state=None), ["pending"] * 8),
        (replace(FRAUD, step=9), ["done"] * 8),
        (replace(SEARCH, step=None), ["done"] * 8),  # healthy, nothing in flight
        (replace(FRAUD, phase=Phase.HEALTHY, step=8), ["done"] * 8),  # promoted
        (replace(FRAUD, phase=Phase.PAUSED, step=6), ["done"] * 5 + ["current"] + ["pending"] * 2),
    ],
)
def test_step_states(example: Desired, status: ModelStatus, states: list[str]) -> None:
    page = dom(
        render_dashboard(
            [status], None, example.policies, NOW, policy_of={status.name: "standard-canary"}
        )
    )
    steps = page.one("ol", "timeline").find("li")[:-1]
    assert [" ".join(sorted(s.classes)) for s in steps] == states


def test_intervals_and_history(page: Node) -> None:
    fraud = page.one("article", "rollout", data_model="fraud-scorer")
    rows = fraud.one("table", "intervals").find("tbody")[0].find("tr")
    assert len(rows) == 2
    newest, oldest = rows
    assert newest.find("td")[1].text == "25%"
    assert newest.one("td", "fail").text == "fail"
    assert [li.text for li in newest.find("li")] == [
        "errors 0.004: errorRate 0.004",
        "latency 0.31: latencyP99 0.31 > max 0.25",
    ]
    assert [next(iter(li.classes)) for li in newest.find("li")] == ["pass", "fail"]
    assert "2026-11-27T11:59:30Z" in newest.text
    assert "30s ago" in newest.text
    assert oldest.one("td", "pass").text == "pass"
    assert "1m ago" in oldest.text
    assert "weight 25% (1 failed intervals)" in fraud.text
    history = [li.text for li in fraud.one("ul", "history").find("li")]
    assert history == [
        f"{iso(120)} StepStarted weight 25% main@sha1:bbbb",
        f"{iso(720)} CanaryStarted 1.1.0 beside 1.0.0",
    ]


def test_status_verdicts_shown_without_intervals(example: Desired) -> None:
    status = ModelStatus(
        "m",
        Phase.ROLLED_BACK,
        step=2,
        steps=3,
        verdicts=(Verdict("errors", 0.2, False, "errorRate 0.2 > 0.01"),),
    )
    page = dom(render_dashboard([status], None, example.policies, NOW))
    rollout = page.one("article", "rollout")
    assert rollout.one("li", "fail").text == "errors 0.2: errorRate 0.2 > 0.01"
    assert "policy unknown" in rollout.text
    steps = rollout.one("ol", "timeline").find("li")  # the step count, without the policy
    assert [(s.text, s.attrs["class"]) for s in steps] == [
        ("1. step", "done"),
        ("2. step", "failed"),
        ("3. step", "pending"),
        ("promote", "end"),
    ]


def test_pool_boxes_filled_by_share(page: Node) -> None:
    pool = page.one("section", "pool", data_pool=POOL)
    nodes = pool.find("div", "node")
    assert [n.attrs["data-node"] for n in nodes] == ["gpu-node-a", "gpu-node-b"]
    assert [len(n.find("div", "gpu")) for n in nodes] == [4, 4]
    shares = {
        (s.attrs["data-model"], s.attrs["data-release"]): s for s in pool.find("div", "share")
    }
    assert set(shares) == {
        ("fraud-scorer", "stable"),
        ("fraud-scorer", "canary"),
        ("search-ranker", "stable"),
    }
    stable, canary = shares["fraud-scorer", "stable"], shares["fraud-scorer", "canary"]
    ranker = shares["search-ranker", "stable"]
    assert (stable.attrs["style"], stable.attrs["data-share"]) == ("height:100.0%", "1")
    assert ranker.attrs["style"] == "height:25.0%"
    assert ranker.text == "search-ranker stable 0.25"
    assert "canary" in canary.classes
    assert "canary" not in stable.classes
    team = {c for c in stable.classes if re.fullmatch(r"t\d", c)}
    assert team == {c for c in canary.classes if re.fullmatch(r"t\d", c)}
    assert team != {c for c in ranker.classes if re.fullmatch(r"t\d", c)}
    box = pool.one("div", "gpu", data_gpu=f"{NODE_B}-0")
    assert box.one("div", "gpu-foot").text == "free 0.75"
    assert "A100-SXM4-40GB" in box.one("div", "gpu-head").text
    legend = pool.one("div", "legend").text
    assert "fraud" in legend
    assert "search" in legend


def test_over_committed_gpu_still_fits_its_box() -> None:
    report = {
        "pool": "p",
        "gpus": [
            {
                "node": "n",
                "index": 0,
                "uuid": "g0",
                "held": [
                    {"model": "a", "team": "x", "release": "stable", "share": 1.0},
                    {"model": "b", "team": "y", "release": "canary", "share": 0.5},
                ],
                "free": 0.0,
            }
        ],
    }
    page = dom(render_dashboard([], report, {}, NOW))
    box = page.one("div", "gpu-box")
    assert "over" in box.classes
    assert [s.attrs["style"] for s in box.find("div", "share")] == [
        "height:66.7%",
        "height:33.3%",
    ]
    assert page.one("div", "gpu-foot").text == "over-committed: 1.5 GPUs"


HOSTILE = "<script>alert(1)</script>"


def test_hostile_values_are_escaped(example: Desired) -> None:
    status = ModelStatus(
        name=HOSTILE,
        phase=Phase.ROLLED_BACK,
        team='"><img src=x onerror=alert(2)>',
        stable=Release("<b>1</b>"),
        canary=Release("&amp;"),
        verdicts=(Verdict("<i>c</i>", None, False, "<svg onload=alert(3)>"),),
        conditions=(Condition("Ready", False, "<u>why</u>", "m"),),
        history=(HistoryEntry("<t>", "<e>", "<m>", "<r>"),),
        gpus=(GPUHold("gpu-node-a", f"{NODE_A}-2", 0.5, "canary"),),
    )
    text = render_dashboard(
        [status],
        report(example, status),
        example.policies,
        NOW,
        title="<title>x",
        policy_of={HOSTILE: "<p>"},
    )
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = dom(text)
    for tag in ("script", "img", "svg", "i", "u", "t", "e", "m", "r", "p"):
        assert not page.find(tag), tag
    assert not [n for n in page.walk() if any(a.startswith("on") for a in n.attrs)]
    assert page.one("tr", "model").attrs["data-model"] == HOSTILE
    assert page.one("tr", "model").find("td")[0].text == HOSTILE
    assert page.one("div", "share").attrs["data-model"] == HOSTILE
    assert page.one("h1").text == "<title>x"
    assert "&amp;" in page.one("tr", "model").text  # shown as typed, not decoded
    assert "policy <p> (not found)" in page.one("article", "rollout").text


PAYLOAD = '<script>alert(1)</script>"onmouseover=alert(2) x="'


def test_the_template_escapes_every_value(example: Desired) -> None:
    """The page's template autoescapes: a hostile model name, team, condition,
    check message, history message and monitored model reach the page as
    escaped text, in element text and in attribute values alike, never as
    markup or as a way out of an attribute."""
    status = ModelStatus(
        name=PAYLOAD,
        phase=Phase.DEGRADED,
        team=PAYLOAD,
        stable=Release(PAYLOAD),
        verdicts=(Verdict("errors", 0.2, False, PAYLOAD),),
        conditions=(Condition("Ready", False, PAYLOAD, PAYLOAD),),
        history=(HistoryEntry(iso(60), "Degraded", PAYLOAD),),
        gpus=(GPUHold("gpu-node-a", f"{NODE_A}-2", 0.5, "stable"),),
    )
    monitor = {"model": PAYLOAD, "version": PAYLOAD, "objectives": [], "hourly": []}
    text = render_dashboard(
        [status],
        report(example, status),
        example.policies,
        NOW,
        title=PAYLOAD,
        policy_of={PAYLOAD: "standard-canary"},
        monitors=[monitor],
    )
    assert "<script" not in text
    assert '"onmouseover=' not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&#34;onmouseover=" in text or "&quot;onmouseover=" in text
    page = dom(text)
    assert not page.find("script")
    assert not [n for n in page.walk() if any(a.startswith("on") or a == "x" for a in n.attrs)]
    row = page.one("tr", "model")
    assert row.attrs["data-model"] == PAYLOAD
    cells = row.find("td")
    assert (cells[0].text, cells[1].text, cells[3].text) == (PAYLOAD, PAYLOAD, PAYLOAD)
    assert row.one("div", "conditions").text == PAYLOAD
    share = page.one("div", "share")
    assert share.attrs["data-model"] == PAYLOAD
    assert share.attrs["title"].endswith(f"GPU ({PAYLOAD})")
    assert PAYLOAD in page.one("div", "legend").text
    rollout = page.one("article", "rollout", data_model=PAYLOAD)
    assert rollout.one("li", "fail").text == f"errors 0.2: {PAYLOAD}"
    assert rollout.one("ul", "history").text == f"{iso(60)} Degraded {PAYLOAD}"
    assert page.one("div", "rollout", data_monitor=PAYLOAD).one("h3").text == f"{PAYLOAD} {PAYLOAD}"
    assert page.one("h1").text == PAYLOAD
    assert page.one("title").text == f"{PAYLOAD} dashboard"


def test_page_is_self_contained_and_refreshes(page: Node) -> None:
    (refresh,) = [m for m in page.find("meta") if m.attrs.get("http-equiv") == "refresh"]
    assert refresh.attrs["content"] == "5"
    (csp,) = [
        m for m in page.find("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"
    ]
    assert "default-src 'none'" in csp.attrs["content"]
    assert not page.find("script")
    assert not [n for n in page.walk() if {"src", "href"} & set(n.attrs)]


@pytest.mark.parametrize(("refresh", "content"), [(30, "30"), (0, None), (-1, None)])
def test_refresh_interval(refresh: int, content: str | None) -> None:
    page = dom(render_dashboard([], None, {}, NOW, refresh=refresh, title="t"))
    found = [
        m.attrs["content"] for m in page.find("meta") if m.attrs.get("http-equiv") == "refresh"
    ]
    assert found == ([] if content is None else [content])


def test_empty_dashboard() -> None:
    page = dom(render_dashboard([], None, {}, NOW))
    assert "No model status recorded yet." in page.one("section", id="models").text
    assert "No pool report." in page.one("section", "pool").text
    assert page.one("title").text == "mdc dashboard"


def test_each_model_links_its_endpoint() -> None:
    routed = replace(SEARCH, endpoint="http://127.0.0.1:9002")
    page = dom(render_dashboard([routed, FRAUD], None, {}, NOW))
    rows = {r.attrs["data-model"]: r for r in page.find("tr", "model")}
    links = rows["search-ranker"].find("a")
    assert [a.attrs["href"] for a in links] == ["http://127.0.0.1:9002"]
    assert rows["fraud-scorer"].find("a") == []  # no route yet: no link
    assert rows["fraud-scorer"].find("td")[-1].text.strip() == "-"


def test_several_pools(example: Desired) -> None:
    first = report(example, FRAUD)
    second: Mapping[str, Any] = {**first, "pool": "other", "gpus": first["gpus"][:1]}
    page = dom(render_dashboard([FRAUD], [first, second], example.policies, NOW))
    assert [s.attrs["data-pool"] for s in page.find("section", "pool")] == [POOL, "other"]


def test_dashboard_json(example: Desired) -> None:
    pool = report(example, SEARCH, FRAUD)
    data = dashboard_json([SEARCH, FRAUD], pool, example.policies, NOW, policy_of=POLICY_OF)
    json.dumps(data, allow_nan=False)
    assert data["generatedAt"] == "2026-11-27T12:00:00Z"
    assert data["pools"] == [pool]
    fraud, search = data["models"]
    rows = status_rows([SEARCH, FRAUD], NOW)
    assert {k: fraud[k] for k in rows[0]} == rows[0]
    assert fraud["policy"] == "standard-canary"
    assert [s["state"] for s in fraud["timeline"]] == ["done"] * 2 + ["current"] + ["pending"] * 5
    assert fraud["timeline"][2] == {
        "index": 3,
        "kind": "setWeight",
        "label": "25%",
        "state": "current",
    }
    assert [i["outcome"] for i in fraud["intervals"]] == ["fail", "pass"]
    assert fraud["intervals"][0]["checks"][1] == {
        "check": "latency",
        "outcome": "fail",
        "value": 0.31,
        "message": "latencyP99 0.31 > max 0.25",
    }
    assert fraud["history"][0]["event"] == "StepStarted"
    assert (fraud["reason"], fraud["failures"]) == ("weight 25%", 1)
    assert search["policy"] == "fast"
    assert [s["label"] for s in search["timeline"]] == [
        "20%",
        "2x5s",
        "60%",
        "2x5s",
    ]
    assert {s["state"] for s in search["timeline"]} == {"done"}
    assert (search["intervals"], search["reason"], search["failures"]) == ([], None, None)


HAND_EDITED = b"""\
name: edited
phase: Progressing
phaseSince: 2026-11-27T11:00:00Z
team: 7
step: two
steps: [5]
weight: 30
releases:
  stable: {version: 1.0, startedAt: not a time}
  canary: {version: 2}
gpus:
  - {node: n, gpu: g, share: .nan, release: canary}
  - {node: n, gpu: h, share: 0.5, release: stable}
history:
  - {at: 12, event: 3, message: [x]}
  - {at: 2026-11-27T10:00:00Z, event: E, message: m, revision: 4}
conditions:
  - {type: Ready, status: false, reason: 404, message: m}
canaryState:
  spec_hash: h
  phase: stepping
  step: 1
  reason: 5
  verdicts:
    - at: .inf
      outcome: fail
      weight: 30
      checks: [{check: errors, outcome: fail, value: oops, message: 9}]
"""


def test_a_hand_edited_status_file_never_breaks_anything(example: Desired) -> None:
    """The status branch can be edited by hand: odd types and values are shown
    as well as they can be, never a crash or a NaN in the JSON."""
    status = parse_model_status("models/edited.yaml", HAND_EDITED)
    (row,) = status_rows([status], NOW)
    assert row["step"] is None  # "two" of [5] is no step
    assert row["age"] == 3600  # the unquoted timestamp YAML read as a datetime
    assert row["gpus"] == 0.5  # the NaN share is left out
    assert row["verdict"] == "fail: errors"
    assert (row["team"], row["stable"], row["canary"]) == ("7", "1.0", "2")
    assert row["conditions"] == ["404"]
    table = render_status_table([row], style(True))
    assert "30%" in ANSI.sub("", table)
    data = dashboard_json(
        [status], report(example, FRAUD), example.policies, NOW, policy_of={"edited": "fast"}
    )
    json.dumps(data, allow_nan=False)
    (model,) = data["models"]
    assert model["intervals"][0]["at"] == "?"
    assert model["intervals"][0]["checks"][0]["value"] is None
    assert model["history"][1] == {
        "at": "2026-11-27T10:00:00Z",
        "event": "E",
        "message": "m",
        "revision": "4",
    }
    assert [s["state"] for s in model["timeline"]] == ["done", "current", "pending", "pending"]
    page = dom(
        render_dashboard(
            [status], report(example, FRAUD), example.policies, NOW, policy_of={"edited": "fast"}
        )
    )
    rollout = page.one("article", "rollout", data_model="edited")
    (row_of_interval,) = rollout.one("table", "intervals").find("tbody")[0].find("tr")
    assert [td.text for td in row_of_interval.find("td")] == ["?", "30%", "fail", "errors -: 9"]
    assert "12 3 ['x']" in rollout.one("ul", "history").text


def test_the_monitor_section_shows_states_now_and_the_last_hours() -> None:
    view = {
        "model": "<script>alert(1)</script>",
        "version": "2",
        "objectives": [
            {
                "name": "latency",
                "metric": "latencyP99",
                "min": None,
                "max": 0.3,
                "state": "breached",
                "value": 0.41,
                "since": "T",
            },
            {
                "name": "errors",
                "metric": "errorRate",
                "min": None,
                "max": 0.01,
                "state": "at risk",
                "value": 0.0095,
                "since": "T",
            },
        ],
        "drift": {"field": "score", "threshold": 0.2, "state": "ok", "score": 0.031},
        "hourly": [
            {
                "start": "2026-11-28T05:00:00Z",
                "requests": 1000,
                "errorRate": 0.001,
                "latency": {"p99": 0.25},
                "gpuHours": 0.5,
                "driftScore": 0.03,
                "objectives": {"latency": "breached"},
            },
            {
                "start": "2026-11-28T04:00:00Z",
                "requests": 500,
                "errorRate": None,
                "latency": {},
                "gpuHours": 0.5,
                "driftScore": None,
                "objectives": {},
            },
        ],
    }
    page = render_dashboard([], None, {}, 0.0, monitors=[view])
    section = page.split('<section id="monitor">', 1)[1]
    assert "<script>" not in page
    assert "&lt;script&gt;" in section
    assert '<span class="badge bad">breached</span> <b>latency</b>' in section
    assert '<span class="badge warn">at risk</span> <b>errors</b>' in section
    assert "PSI 0.031" in section
    assert 'style="width:100%"' in section
    assert 'style="width:50%"' in section
    assert "0.10%" in section
    assert "250 ms" in section
    assert 'id="monitor"' not in render_dashboard([], None, {}, 0.0)  # nothing monitored
