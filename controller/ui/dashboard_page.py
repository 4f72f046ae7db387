"""What the dashboard page shows, as plain data for its template: the models
table, each GPU pool drawn as nodes with one box per GPU (filled by share,
coloured by team), each rollout (steps, analysis intervals, history) and each
promoted model's objectives, drift and last hours.

Owns :func:`page_context` (every value the template
``templates/dashboard.html.j2`` reads) and the view dataclasses it fills. The
markup is the template's: here every value becomes plain text (the template
escapes it) or a number formatted here (the widths and heights in ``style``
attributes), never HTML. Pool reports and monitor views are read defensively:
a malformed entry is skipped or shown as text. Pure. Called by
:func:`controller.ui.dashboard.render_dashboard`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.ui.preview_view import preview_card
from controller.ui.rollout_view import CheckView, ModelView, StepView
from controller.ui.status_table import PHASE_TONES
from controller.ui.values import as_int, as_number, format_age, iso, value_text

__all__ = [
    "PALETTE",
    "CheckLine",
    "DriftLine",
    "GPUBox",
    "HistoryLine",
    "HourRow",
    "IntervalRow",
    "ModelRow",
    "MonitorBlock",
    "ObjectiveLine",
    "PoolNode",
    "PoolSection",
    "QuotaRow",
    "Rollout",
    "Share",
    "page_context",
]

#: Team colours in the pool picture (white text reads on each); teams beyond
#: these reuse them in order. The template makes CSS classes ``t0``, ``t1``, ...
PALETTE = (
    "#2f6fb0",
    "#c0602b",
    "#3c8a4c",
    "#8a4fb0",
    "#b03f5f",
    "#2a8585",
    "#8a7424",
    "#5a6a8a",
)

#: How each objective or drift state reads (the classes of the phase badges).
_LEVEL_TONES = {"ok": "ok", "at risk": "warn", "breached": "bad", "unknown": "idle"}


def _shown(value: object) -> str:
    """Any value as text for the page; None is empty."""
    return "" if value is None else str(value)


# -- the models table -----------------------------------------------------------


@dataclass(frozen=True)
class ModelRow:
    model: str
    team: str
    phase: str
    tone: str  # ok | warn | bad | idle
    conditions: str  # the reasons of the false conditions, joined; empty if none
    stable: str
    canary: str
    steps: tuple[StepView, ...]
    step_text: str  # "step 3/8", "" or "-"
    weight: int | None  # percent on the canary; None: no canary, nothing to show
    meter: str  # the weight bar's width in percent, formatted from an int here
    verdict: str
    verdict_tone: str  # pass | fail | no-data | ""
    gpus: str
    age: str
    endpoint: str  # the model's URL ("" while its route is not open)


def _model_row(view: ModelView) -> ModelRow:
    row = view.row
    step = row["step"]
    weight = as_int(row["weight"]) or 0
    shows_weight = row["canary"] is not None or weight != 0
    verdict = row["verdict"]
    return ModelRow(
        model=_shown(row["model"]),
        team=_shown(row["team"] or "-"),
        phase=_shown(row["phase"]),
        tone=PHASE_TONES.get(row["phase"], "idle"),
        conditions=", ".join(row["conditions"]),
        stable=_shown(row["stable"] or "-"),
        canary=_shown(row["canary"] or "-"),
        steps=view.timeline,
        step_text=f"step {step}" if step else ("" if view.timeline else "-"),
        weight=weight if shows_weight else None,
        meter=f"{max(0, min(100, weight)):d}",
        verdict=_shown(verdict or "-"),
        verdict_tone="" if verdict is None else str(verdict).split(":", 1)[0],
        gpus=f"{row['gpus']:g}",
        age=format_age(row["age"]),
        endpoint=_shown(row.get("endpoint") or ""),
    )


# -- the pools ------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """One holding drawn in its GPU's box."""

    team_class: str  # t0 ... t7
    kind: str  # stable | canary
    height: str  # percent of the box, formatted from a float here
    model: str
    release: str
    share: str
    label: str
    team: str


@dataclass(frozen=True)
class GPUBox:
    uuid: str
    index: str
    memory: str
    product: str
    over: bool  # over-committed: its shares add up to more than one GPU
    shares: tuple[Share, ...]
    foot: str


@dataclass(frozen=True)
class PoolNode:
    name: str
    gpus: tuple[GPUBox, ...]


@dataclass(frozen=True)
class QuotaRow:
    team: str
    held: str
    guaranteed: str
    limit: str
    borrowed: str


@dataclass(frozen=True)
class PoolSection:
    key: str  # the pool's name for data-pool (empty when absent)
    name: str
    summary: str
    nodes: tuple[PoolNode, ...]
    legend: tuple[tuple[str, str], ...]  # (team, its colour class)
    disagreements: tuple[str, ...]
    waiting: tuple[str, ...]
    quotas: tuple[QuotaRow, ...]


def _gpus_of(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [g for g in report.get("gpus") or () if isinstance(g, Mapping)]


def _held(gpu: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [h for h in gpu.get("held") or () if isinstance(h, Mapping)]


def _holdings(report: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Every (GPU, holding) of a pool report; malformed entries are skipped."""
    return [(g, h) for g in _gpus_of(report) for h in _held(g)]


def _team_classes(teams: Iterable[str]) -> dict[str, str]:
    return {team: f"t{i % len(PALETTE)}" for i, team in enumerate(sorted(set(teams)))}


def _gpu_box(gpu: Mapping[str, Any], colours: Mapping[str, str]) -> GPUBox:
    held = _held(gpu)
    amounts = [max(0.0, as_number(h.get("share")) or 0.0) for h in held]
    total = sum(amounts)
    scale = 1.0 / total if total > 1.0 else 1.0  # an over-committed GPU still fits its box
    shares = []
    for h, amount in zip(held, amounts, strict=True):
        release = str(h.get("release", ""))
        label = f"{h.get('model', '?')} {release} {amount:g}"
        shares.append(
            Share(
                team_class=colours.get(str(h.get("team")), "t0"),
                kind="canary" if release == "canary" else "stable",
                height=f"{amount * scale * 100:.1f}",
                model=_shown(h.get("model")),
                release=release,
                share=f"{amount:g}",
                label=label,
                team=_shown(h.get("team")),
            )
        )
    free = as_number(gpu.get("free"))
    over = total > 1.0
    foot = (
        f"over-committed: {total:g} GPUs" if over else f"free {free:g}" if free is not None else ""
    )
    return GPUBox(
        uuid=_shown(gpu.get("uuid")),
        index=_shown(gpu.get("index", "?")),
        memory=_shown(gpu.get("memory", "")),
        product=_shown(gpu.get("product", "")),
        over=over,
        shares=tuple(shares),
        foot=foot,
    )


def _pool_section(report: Mapping[str, Any], colours: Mapping[str, str]) -> PoolSection:
    gpus = _gpus_of(report)
    nodes: dict[str, list[Mapping[str, Any]]] = {}
    for g in gpus:
        nodes.setdefault(str(g.get("node", "?")), []).append(g)
    teams = sorted({str(h.get("team")) for _, h in _holdings(report)})
    stranded = report.get("stranded") or {}
    summary = (
        f"sharing {_shown(report.get('sharing', '?'))}, {len(gpus)} GPUs, "
        f"holdings {_shown(report.get('holdings', '?'))}; "
        f"free {value_text(report.get('free'))} GPUs, "
        f"stranded {value_text(stranded.get('gpus', 0))} on {_shown(stranded.get('on', 0))}"
    )
    quotas = tuple(
        QuotaRow(
            team=_shown(t.get("team")),
            held=value_text(t.get("held")),
            guaranteed=value_text(t.get("guaranteed")),
            limit=value_text(t.get("limit")),
            borrowed=value_text(t.get("borrowed")),
        )
        for t in report.get("teams") or ()
        if isinstance(t, Mapping)
    )
    return PoolSection(
        key=_shown(report.get("pool")),
        name=_shown(report.get("pool", "?")),
        summary=summary,
        nodes=tuple(
            PoolNode(node, tuple(_gpu_box(g, colours) for g in on_node))
            for node, on_node in nodes.items()
        ),
        legend=tuple((t, colours.get(t, "t0")) for t in teams),
        disagreements=tuple(_shown(t) for t in report.get("disagreements") or ()),
        waiting=tuple(_shown(t) for t in report.get("waiting") or ()),
        quotas=quotas,
    )


# -- the rollouts ---------------------------------------------------------------


@dataclass(frozen=True)
class CheckLine:
    check: str
    outcome: str  # pass | fail | no-data
    value: str
    message: str


@dataclass(frozen=True)
class IntervalRow:
    at: str  # ISO 8601, or "?"
    ago: str  # "30s" or empty when unknown
    weight: str
    outcome: str
    checks: tuple[CheckLine, ...]


@dataclass(frozen=True)
class HistoryLine:
    at: str
    event: str
    message: str
    revision: str  # empty when none


@dataclass(frozen=True)
class Rollout:
    model: str
    phase: str
    tone: str
    policy: str  # "policy NAME", "policy NAME (not found)" or "policy unknown"
    stable: str
    canary: str | None  # None: no canary
    weight: str
    steps: tuple[StepView, ...]
    reason: str  # the canary state's reason and failure count; empty if none
    intervals: tuple[IntervalRow, ...]  # newest first
    checks: tuple[CheckLine, ...]  # the status's last verdicts
    history: tuple[HistoryLine, ...]


def _check_lines(checks: Sequence[CheckView]) -> tuple[CheckLine, ...]:
    return tuple(CheckLine(c.check, c.outcome, value_text(c.value), c.message) for c in checks)


def _ago(seconds: float) -> str:
    age = format_age(seconds)
    return "" if age == "-" else age


def _rollout(view: ModelView, now: float) -> Rollout:
    status = view.status
    if view.policy is None:
        policy = "policy unknown"
    else:
        policy = f"policy {view.policy}" + ("" if view.policy_known else " (not found)")
    reason = ""
    if view.reason:
        failures = f" ({view.failures} failed intervals)" if view.failures else ""
        reason = view.reason + failures
    return Rollout(
        model=_shown(status.name),
        phase=str(status.phase),
        tone=PHASE_TONES.get(str(status.phase), "idle"),
        policy=policy,
        stable=_shown(status.stable.version if status.stable else "-"),
        canary=None if status.canary is None else _shown(status.canary.version),
        weight=_shown(status.weight),
        steps=view.timeline,
        reason=reason,
        intervals=tuple(
            IntervalRow(
                at=iso(i.at),
                ago=_ago(now - i.at),
                weight=_shown(i.weight),
                outcome=i.outcome,
                checks=_check_lines(i.checks),
            )
            for i in view.intervals
        ),
        checks=_check_lines(view.checks),
        history=tuple(
            HistoryLine(
                at=_shown(h.at),
                event=_shown(h.event),
                message=_shown(h.message),
                revision=_shown(h.revision) if h.revision else "",
            )
            for h in view.history
        ),
    )


# -- after promotion --------------------------------------------------------------


@dataclass(frozen=True)
class ObjectiveLine:
    state: str
    tone: str
    name: str
    metric: str
    value: str
    bounds: str  # " (max 0.3)", " (min 0.1)", both or empty


@dataclass(frozen=True)
class DriftLine:
    state: str
    tone: str
    field: str
    score: str
    threshold: str


@dataclass(frozen=True)
class HourRow:
    start: str
    meter: str  # the requests bar's width in percent, formatted from an int here
    requests: str
    errors: str
    p99: str
    gpu_hours: str
    drift: str
    worst: str


@dataclass(frozen=True)
class MonitorBlock:
    model: str
    version: str
    objectives: tuple[ObjectiveLine, ...]
    drift: DriftLine | None
    hours: tuple[HourRow, ...]  # newest first, at most 12


def _objective(o: Mapping[str, Any]) -> ObjectiveLine:
    bounds = "".join(
        f" ({bound} {o.get(bound)})" for bound in ("max", "min") if o.get(bound) is not None
    )
    return ObjectiveLine(
        state=_shown(o.get("state")),
        tone=_LEVEL_TONES.get(str(o.get("state")), "idle"),
        name=_shown(o.get("name")),
        metric=_shown(o.get("metric")),
        value=value_text(o.get("value")),
        bounds=bounds,
    )


def _drift(drift: Mapping[str, Any]) -> DriftLine:
    score = drift.get("score")
    return DriftLine(
        state=_shown(drift.get("state")),
        tone=_LEVEL_TONES.get(str(drift.get("state")), "idle"),
        field=_shown(drift.get("field")),
        score="none yet" if score is None else f"{float(score):.3f}",
        threshold=_shown(drift.get("threshold")),
    )


def _width(requests: object, most: int) -> int:
    number = as_int(requests) or 0
    return max(0, min(100, 100 * number // most))


def _percent(value: object) -> str:
    number = as_number(value)
    return "" if number is None else f"{100 * number:.2f}%"


def _ms(value: object) -> str:
    number = as_number(value)
    return "" if number is None else f"{1000 * number:.0f} ms"


def _hour(h: Mapping[str, Any], most: int) -> HourRow:
    return HourRow(
        start=_shown(h.get("start")),
        meter=f"{_width(h.get('requests'), most):d}",
        requests=_shown(h.get("requests")),
        errors=_percent(h.get("errorRate")),
        p99=_ms((h.get("latency") or {}).get("p99")),
        gpu_hours=_shown(h.get("gpuHours")),
        drift=_shown(h.get("driftScore")),
        worst=", ".join(f"{k} {v}" for k, v in (h.get("objectives") or {}).items()),
    )


def _monitor(view: Mapping[str, Any]) -> MonitorBlock:
    """After promotion: a model's objectives and drift now, and its last hours."""
    hours = list(view.get("hourly") or [])[:12]
    most = max((int(h.get("requests") or 0) for h in hours), default=0) or 1
    drift = view.get("drift")
    return MonitorBlock(
        model=_shown(view.get("model")),
        version=_shown(view.get("version")),
        objectives=tuple(_objective(o) for o in view.get("objectives") or []),
        drift=_drift(drift) if drift else None,
        hours=tuple(_hour(h, most) for h in hours),
    )


# -- the page -----------------------------------------------------------------------


def page_context(
    views: Sequence[ModelView],
    reports: Sequence[Mapping[str, Any]],
    now: float,
    *,
    refresh: int,
    title: str,
    monitors: Sequence[Mapping[str, Any]],
    previews: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Every value ``dashboard.html.j2`` reads: ``title``, ``refresh`` (seconds;
    0 or less: never), ``updated``, ``counts`` (models per phase), ``palette``
    (colour class, colour), ``models``, ``pools``, ``rollouts``, ``monitors``, ``previews``."""
    colours = _team_classes(
        [str(h.get("team")) for r in reports for _, h in _holdings(r)]
        + [str(v.status.team) for v in views if v.status.team]
    )
    phases: dict[str, int] = {}
    for v in views:
        phases[str(v.status.phase)] = phases.get(str(v.status.phase), 0) + 1
    return {
        "title": str(title),
        "refresh": int(refresh) if refresh > 0 else 0,
        "updated": iso(now),
        "counts": ", ".join(f"{n} {p}" for p, n in sorted(phases.items())),
        "palette": tuple((f"t{i}", colour) for i, colour in enumerate(PALETTE)),
        "models": tuple(_model_row(v) for v in views),
        "pools": tuple(_pool_section(r, colours) for r in reports),
        "rollouts": tuple(_rollout(v, now) for v in views),
        "monitors": tuple(_monitor(m) for m in monitors),
        "previews": tuple(preview_card(p) for p in previews),
    }
