"""Every model's state at a glance: the rows and text table of ``mdc status``,
and the live dashboard (one self-contained HTML page, and the same data as JSON).

Owns :func:`status_rows` (one JSON-ready row per model: versions, phase, step,
weight, last verdict, GPUs held, age, failing conditions),
:func:`render_status_table` (those rows as aligned text, the phase coloured only
when the :class:`~controller.ui.terminal.Style` is on), :func:`dashboard_json` and
:func:`render_dashboard`: each model's phase, versions and canary progress; each
GPU pool drawn as nodes with one box per GPU, filled by share and coloured by
team; each rollout's policy steps with the current one highlighted, its
analysis intervals (every check's value and message) and its recent history.

Status files and specs are untrusted input (anyone can open a pull request, and
the status branch can be edited by hand): every value is HTML-escaped, control
characters never reach a terminal, and a malformed canary state is shown as
absent instead of breaking the page. The page needs no JavaScript and loads
nothing from elsewhere; its Content-Security-Policy forbids scripts outright.

Pure: no I/O, no clock; ``now`` (epoch seconds) is a parameter. Called by the
CLI (``mdc status``) and by the dashboard's HTTP server (``/`` and
``/api/status``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

from controller.core.canary import CanaryState, Outcome, state_from_dict
from controller.core.status import HistoryEntry, ModelStatus, Phase
from controller.spec.kinds import RolloutPolicy, Step, StepKind
from controller.spec.units import format_duration
from controller.ui.terminal import Style

__all__ = [
    "COLUMNS",
    "HISTORY_SHOWN",
    "PHASE_TONES",
    "dashboard_json",
    "format_age",
    "render_dashboard",
    "render_status_table",
    "status_rows",
]

#: The columns of ``mdc status``, in order.
COLUMNS = ("MODEL", "TEAM", "STABLE", "CANARY", "PHASE", "STEP", "WEIGHT", "VERDICT", "GPUS", "AGE")

#: History entries the dashboard shows per model (the status file keeps more).
HISTORY_SHOWN = 8

#: How each phase reads: ``ok`` (green), ``warn`` (yellow), ``bad`` (red), ``idle``.
PHASE_TONES: Mapping[str, str] = {
    Phase.HEALTHY: "ok",
    Phase.PROGRESSING: "warn",
    Phase.PAUSED: "warn",
    Phase.WAITING: "warn",
    Phase.BUILDING: "warn",
    Phase.ROLLED_BACK: "bad",
    Phase.STALLED: "bad",
    Phase.DEGRADED: "bad",
    Phase.PENDING: "idle",
}

#: Team colours in the pool picture (white text reads on each); teams beyond
#: these reuse them in order.
_PALETTE = (
    "#2f6fb0",
    "#c0602b",
    "#3c8a4c",
    "#8a4fb0",
    "#b03f5f",
    "#2a8585",
    "#8a7424",
    "#5a6a8a",
)


# -- small helpers ------------------------------------------------------------


def _int(value: object) -> int | None:
    """``value`` when it is a real integer (status files are untrusted: a
    hand-edited ``step: two`` must not break anything)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _epoch(value: object) -> float | None:
    """Epoch seconds of an ISO 8601 time (``Z`` or an offset; naive is UTC).

    A hand-edited status file may hold an unquoted timestamp, which YAML reads
    as a ``datetime``: that counts too. Anything else is unknown (None).
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _iso(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "?"


def format_age(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h``, ``2d`` (whole units, rounded down); ``-`` if unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    if whole < 86400:
        return f"{whole // 3600}h"
    return f"{whole // 86400}d"


def _text(value: object) -> str | None:
    """A value from a status file as text for JSON (YAML may have read a hand-edited
    ``1.0`` as a number or an unquoted time as a ``datetime``)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        epoch = _epoch(value)
        return None if epoch is None else _iso(epoch)
    return str(value)


def _value_text(value: object) -> str:
    number = _number(value)
    if number is not None:
        return f"{number:.4g}"
    return "-" if value is None else str(value)


def _canary_state(status: ModelStatus) -> CanaryState | None:
    """The recorded canary state, or None when absent or unreadable."""
    if not status.canary_state:
        return None
    try:
        return state_from_dict(status.canary_state)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _last_verdict(status: ModelStatus, state: CanaryState | None) -> str | None:
    """``pass``, ``fail: CHECK, ...`` or ``no-data``: the canary state's last
    interval when it records one (only it tells no verdict from a pass: the
    status's ``verdicts`` count a check without data as passed), else the
    status's own verdicts."""
    if state is not None and state.verdicts:
        last = state.verdicts[-1]
        if last.outcome is Outcome.FAIL:
            failed = [str(c.check) for c in last.checks if c.outcome is Outcome.FAIL]
            return "fail: " + ", ".join(failed) if failed else "fail"
        return str(last.outcome)
    if status.verdicts:
        failed = [str(v.check) for v in status.verdicts if not v.passed]
        return "fail: " + ", ".join(failed) if failed else "pass"
    return None


def _age(status: ModelStatus, now: float) -> int | None:
    since = _epoch(status.phase_since)
    if since is None and status.stable is not None:
        since = _epoch(status.stable.started_at)
    return None if since is None else max(0, int(now - since))


def _step_text(status: ModelStatus) -> str | None:
    step, steps = _int(status.step), _int(status.steps)
    return f"{step}/{steps}" if step is not None and steps else None


def _gpus(status: ModelStatus) -> float:
    return round(sum(s for h in status.gpus if (s := _number(h.share)) is not None), 4)


# -- mdc status ---------------------------------------------------------------


def status_rows(statuses: Sequence[ModelStatus], now: float) -> list[dict[str, Any]]:
    """One JSON-ready row per model, sorted by name (``mdc status --format json``).

    Keys: ``model``, ``team``, ``stable`` and ``canary`` (versions or None),
    ``phase``, ``step`` (``"2/5"`` or None), ``weight`` (percent on the canary),
    ``verdict`` (``pass``, ``fail: CHECK, ...``, ``no-data`` or None), ``gpus``
    (shares held by stable and canary together), ``age`` (whole seconds since
    the phase began, else since the stable release started; None if unknown)
    and ``conditions`` (the reasons of the conditions that are false).
    """
    rows = []
    for status in sorted(statuses, key=lambda s: s.name):
        state = _canary_state(status)
        rows.append(
            {
                "model": status.name,
                "team": _text(status.team),
                "stable": None if status.stable is None else _text(status.stable.version),
                "canary": None if status.canary is None else _text(status.canary.version),
                "phase": str(status.phase),
                "step": _step_text(status),
                "weight": status.weight,
                "verdict": _last_verdict(status, state),
                "gpus": _gpus(status),
                "age": _age(status, now),
                "conditions": [str(c.reason) for c in status.conditions if not c.status],
            }
        )
    return rows


def _printable(value: object) -> str:
    """Text safe for a terminal: control characters (escapes) become ``?``."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))


def _cells(row: Mapping[str, Any]) -> list[str]:
    def text(value: object) -> str:
        return "-" if value is None or value == "" else _printable(value)

    weight = row.get("weight")
    shown_weight = f"{weight}%" if row.get("canary") is not None or weight else "-"
    gpus = _number(row.get("gpus"))
    return [
        text(row.get("model")),
        text(row.get("team")),
        text(row.get("stable")),
        text(row.get("canary")),
        text(row.get("phase")),
        text(row.get("step")),
        shown_weight,
        text(row.get("verdict")),
        "-" if gpus is None else f"{gpus:g}",
        format_age(_number(row.get("age"))),
    ]


def render_status_table(rows: Sequence[Mapping[str, Any]], style: Style) -> str:
    """The ``mdc status`` table: aligned columns, the phase coloured only when
    ``style`` is on (padding is measured on the plain text, so colour codes
    never shift a column), no trailing spaces, no final newline."""
    table = [list(COLUMNS), *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    phase_at = COLUMNS.index("PHASE")
    paint: dict[str, Callable[[str], str]] = {
        "ok": style.green,
        "warn": style.yellow,
        "bad": style.red,
    }
    lines = []
    for number, line in enumerate(table):
        parts = []
        for i, cell in enumerate(line):
            pad = "" if i == len(line) - 1 else " " * (widths[i] - len(cell))
            shown = cell
            if number == 0:
                shown = style.bold(cell)
            elif i == phase_at and (tone := PHASE_TONES.get(cell)) in paint:
                shown = paint[tone](cell)
            parts.append(shown + pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


# -- the dashboard's data -----------------------------------------------------


@dataclass(frozen=True)
class _Step:
    index: int  # 1-based
    kind: str  # setWeight | pause | analysis
    label: str
    state: str  # done | current | failed | pending


@dataclass(frozen=True)
class _Check:
    check: str
    outcome: str  # pass | fail | no-data
    value: float | None
    message: str


@dataclass(frozen=True)
class _Interval:
    at: float
    weight: int
    outcome: str
    checks: tuple[_Check, ...]


@dataclass(frozen=True)
class _ModelView:
    status: ModelStatus
    row: Mapping[str, Any]
    policy: str | None  # its name, when known
    policy_known: bool
    timeline: tuple[_Step, ...]
    intervals: tuple[_Interval, ...]  # newest first
    checks: tuple[_Check, ...]  # the status's own last verdicts
    history: tuple[HistoryEntry, ...]
    reason: str | None
    failures: int | None


def _current_index(status: ModelStatus, state: CanaryState | None) -> int | None:
    """0-based index of the current step: the status's 1-based ``step``, else the
    canary state's."""
    step = _int(status.step)
    if step is not None:
        return step - 1
    if state is not None:
        return _int(state.step)
    return None


def _step_label(policy: RolloutPolicy, step: Step) -> str:
    """``25%``, ``2m`` or ``until approved``, ``3x30s``: what follows the step's kind."""
    if step.kind is StepKind.SET_WEIGHT:
        return f"{step.weight}%"
    if step.kind is StepKind.PAUSE:
        return "until approved" if step.duration is None else format_duration(step.duration)
    interval = policy.analysis.interval if policy.analysis is not None else 0.0
    return f"{step.intervals or 1}x{format_duration(interval)}"


def _timeline(
    policy: RolloutPolicy | None, status: ModelStatus, state: CanaryState | None
) -> tuple[_Step, ...]:
    if policy is not None:
        labels = tuple(_step_label(policy, step) for step in policy.steps)
        kinds = [str(step.kind) for step in policy.steps]
    else:  # the policy is unknown: only how many steps there are
        total = _int(status.steps) or 0
        labels = ("",) * total
        kinds = ["step"] * total
    current = _current_index(status, state)
    steps = []
    for i, (kind, label) in enumerate(zip(kinds, labels, strict=True)):
        if status.phase is Phase.HEALTHY:  # the desired version serves everything
            where = "done"
        elif current is None:
            where = "pending"
        elif i < current:
            where = "done"
        elif i == current:
            where = "failed" if status.phase is Phase.ROLLED_BACK else "current"
        else:
            where = "pending"
        steps.append(_Step(i + 1, kind, label, where))
    return tuple(steps)


def _check(check: object, outcome: object, value: object, message: object) -> _Check:
    return _Check(str(check), str(outcome), _number(value), str(message))


def _view(
    status: ModelStatus,
    row: Mapping[str, Any],
    policies: Mapping[str, RolloutPolicy],
    policy_of: Mapping[str, str],
) -> _ModelView:
    state = _canary_state(status)
    name = policy_of.get(status.name)
    policy = policies.get(name) if name is not None else None
    intervals = tuple(
        _Interval(
            v.at,
            v.weight,
            str(v.outcome),
            tuple(_check(c.check, c.outcome, c.value, c.message) for c in v.checks),
        )
        for v in reversed(state.verdicts if state is not None else ())
    )
    return _ModelView(
        status=status,
        row=row,
        policy=name,
        policy_known=policy is not None,
        timeline=_timeline(policy, status, state),
        intervals=intervals,
        checks=tuple(
            _check(v.check, "pass" if v.passed else "fail", v.value, v.message)
            for v in status.verdicts
        ),
        history=status.history[:HISTORY_SHOWN],
        reason=(str(state.reason) or None) if state is not None else None,
        failures=_int(state.failures) if state is not None else None,
    )


def _views(
    statuses: Sequence[ModelStatus],
    policies: Mapping[str, RolloutPolicy],
    now: float,
    policy_of: Mapping[str, str] | None,
) -> list[_ModelView]:
    ordered = sorted(statuses, key=lambda s: s.name)  # the order of status_rows
    return [
        _view(status, row, policies, policy_of or {})
        for status, row in zip(ordered, status_rows(ordered, now), strict=True)
    ]


def _pools(pool: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    if pool is None:
        return []
    if isinstance(pool, Mapping):
        return [pool]
    return list(pool)


def _check_json(c: _Check) -> dict[str, Any]:
    return {"check": c.check, "outcome": c.outcome, "value": c.value, "message": c.message}


def dashboard_json(
    statuses: Sequence[ModelStatus],
    pool: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    policies: Mapping[str, RolloutPolicy],
    now: float,
    *,
    policy_of: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What the dashboard shows, JSON-ready (for ``/api/status``).

    ``models``: each :func:`status_rows` row plus ``policy``, ``timeline`` (the
    policy's steps, each ``done``, ``current``, ``failed`` or ``pending``),
    ``intervals`` (the canary state's analysis intervals, newest first),
    ``checks`` (the status's last verdicts), ``history`` (newest first, at most
    :data:`HISTORY_SHOWN`), ``reason`` and ``failures`` (from the canary state).
    ``pools``: the pool reports as given (:func:`controller.ui.pool_view.pool_report`).
    """
    models = []
    for view in _views(statuses, policies, now, policy_of):
        models.append(
            {
                **view.row,
                "policy": view.policy,
                "timeline": [
                    {"index": s.index, "kind": s.kind, "label": s.label, "state": s.state}
                    for s in view.timeline
                ],
                "intervals": [
                    {
                        "at": _iso(i.at),
                        "weight": i.weight,
                        "outcome": i.outcome,
                        "checks": [_check_json(c) for c in i.checks],
                    }
                    for i in view.intervals
                ],
                "checks": [_check_json(c) for c in view.checks],
                "history": [
                    {
                        "at": _text(h.at),
                        "event": _text(h.event),
                        "message": _text(h.message),
                        "revision": _text(h.revision),
                    }
                    for h in view.history
                ],
                "reason": view.reason,
                "failures": view.failures,
            }
        )
    return {"generatedAt": _iso(now), "models": models, "pools": [dict(p) for p in _pools(pool)]}


# -- the dashboard's HTML -----------------------------------------------------


def _e(value: object) -> str:
    """HTML-escaped text of any value (quotes too, so it is safe in attributes)."""
    return escape("" if value is None else str(value), quote=True)


_CSS = """
*{box-sizing:border-box}
body{margin:0;padding:16px 24px;font:14px/1.4 "DejaVu Sans",system-ui,sans-serif;
color:#1d2330;background:#f4f6f9}
h1{margin:0 0 2px;font-size:22px}h2{margin:0 0 8px;font-size:17px}
h3{margin:0 0 6px;font-size:15px}h4{margin:0 0 6px;font-size:13px;color:#44506a}
small,.muted{color:#5c6780;font-weight:normal}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:12px 16px;
margin-bottom:14px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e8ebf0;vertical-align:top}
th{font-size:12px;color:#5c6780;text-transform:uppercase}
code{font:12px "DejaVu Sans Mono",monospace;white-space:nowrap}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;
font-weight:bold;color:#fff;background:#7a8499}
.ok{background:#2e8540}.warn{background:#c98a00}.bad{background:#c0392b}.idle{background:#7a8499}
.conditions{color:#c0392b;font-size:12px}
.steps{display:flex;gap:2px;width:140px;margin-bottom:2px}
.seg{flex:1;height:10px;border-radius:2px;background:#dde2ea}
.seg.done{background:#2e8540}.seg.current{background:#c98a00;outline:2px solid #7a5400}
.seg.failed{background:#c0392b}
.meter{width:120px;height:10px;background:#dde2ea;border-radius:2px;overflow:hidden}
.meter>div{height:100%;background:#2f6fb0}
.nodes{display:flex;flex-wrap:wrap;gap:14px}
.node{border:1px solid #dde2ea;border-radius:6px;padding:8px;background:#fafbfc}
.gpus{display:flex;gap:8px}
.gpu{width:168px}
.gpu-head{font-size:11px;color:#44506a;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.gpu-box{height:96px;border:2px solid #44506a;border-radius:4px;background:#fff;
display:flex;flex-direction:column-reverse;overflow:hidden}
.gpu-box.over{border-color:#c0392b}
.share{color:#fff;font-size:11px;padding:1px 4px;overflow:hidden;white-space:nowrap;
text-overflow:ellipsis;border-top:1px solid #fff;min-height:4px}
.share.canary{background-image:repeating-linear-gradient(45deg,rgba(255,255,255,.28) 0 6px,
transparent 6px 12px)}
.gpu-foot{font-size:11px;color:#5c6780}
.legend{display:flex;gap:14px;margin-top:8px;font-size:12px;flex-wrap:wrap}
.chip{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:middle;
margin-right:4px}
.chip.canary{background-color:#7a8499}
.rollouts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px;
align-items:start}
.rollout{border:1px solid #dde2ea;border-radius:6px;padding:10px 12px}
ol.timeline{list-style:none;display:flex;flex-wrap:wrap;gap:4px;padding:0;margin:6px 0}
ol.timeline li{padding:3px 8px;border-radius:4px;font-size:12px;background:#eef1f5;
border:1px solid #dde2ea}
ol.timeline li .kind{color:#5c6780;margin-right:4px}
ol.timeline li.done{background:#e3f3e6;border-color:#9ccfa6}
ol.timeline li.current{background:#fff1cc;border:2px solid #c98a00;font-weight:bold}
ol.timeline li.failed{background:#fbe1de;border:2px solid #c0392b;font-weight:bold}
ol.timeline li.end{background:none;border-style:dashed}
.pass{color:#2e8540}.fail{color:#c0392b}.no-data{color:#8a7424}
ul.checks{margin:0;padding-left:16px}
ul.history{margin:4px 0 0;padding-left:18px;font-size:12px}
""" + "".join(f".t{i}{{background-color:{colour}}}" for i, colour in enumerate(_PALETTE))


def _badge(phase: str) -> str:
    return f'<span class="badge {PHASE_TONES.get(phase, "idle")}">{_e(phase)}</span>'


def _progress(view: _ModelView) -> str:
    segs = "".join(
        f'<span class="seg {s.state}" title="step {s.index}: {_e(s.label)}"></span>'
        for s in view.timeline
    )
    step = view.row["step"]
    text = f"step {_e(step)}" if step else ("" if view.timeline else "-")
    return (f'<div class="steps">{segs}</div>' if segs else "") + f"<small>{text}</small>"


def _weight(view: _ModelView) -> str:
    weight = _int(view.row["weight"]) or 0
    if view.row["canary"] is None and weight == 0:
        return "-"
    width = max(0, min(100, weight))
    return f'<div class="meter"><div style="width:{width}%"></div></div><small>{weight}%</small>'


def _models_table(views: Sequence[_ModelView]) -> str:
    if not views:
        return '<p class="muted">No model status recorded yet.</p>'
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "Model",
            "Team",
            "Phase",
            "Stable",
            "Canary",
            "Progress",
            "Weight",
            "Verdict",
            "GPUs",
            "Age",
        )
    )
    body = []
    for v in views:
        row = v.row
        conditions = (
            f'<div class="conditions">{_e(", ".join(row["conditions"]))}</div>'
            if row["conditions"]
            else ""
        )
        verdict = row["verdict"]
        tone = "" if verdict is None else str(verdict).split(":", 1)[0]
        body.append(
            f'<tr class="model" data-model="{_e(row["model"])}">'
            f"<td><b>{_e(row['model'])}</b></td>"
            f"<td>{_e(row['team'] or '-')}</td>"
            f"<td>{_badge(row['phase'])}{conditions}</td>"
            f"<td>{_e(row['stable'] or '-')}</td>"
            f"<td>{_e(row['canary'] or '-')}</td>"
            f"<td>{_progress(v)}</td>"
            f"<td>{_weight(v)}</td>"
            f'<td class="{_e(tone)}">{_e(verdict or "-")}</td>'
            f"<td>{row['gpus']:g}</td>"
            f"<td>{_e(format_age(row['age']))}</td>"
            "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _gpus_of(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [g for g in report.get("gpus") or () if isinstance(g, Mapping)]


def _held(gpu: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [h for h in gpu.get("held") or () if isinstance(h, Mapping)]


def _holdings(report: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Every (GPU, holding) of a pool report; malformed entries are skipped."""
    return [(g, h) for g in _gpus_of(report) for h in _held(g)]


def _team_classes(teams: Iterable[str]) -> dict[str, str]:
    return {team: f"t{i % len(_PALETTE)}" for i, team in enumerate(sorted(set(teams)))}


def _gpu_box(gpu: Mapping[str, Any], colours: Mapping[str, str]) -> str:
    held = _held(gpu)
    shares = [max(0.0, _number(h.get("share")) or 0.0) for h in held]
    total = sum(shares)
    scale = 1.0 / total if total > 1.0 else 1.0  # an over-committed GPU still fits its box
    parts = []
    for h, share in zip(held, shares, strict=True):
        release = str(h.get("release", ""))
        kind = "canary" if release == "canary" else "stable"
        label = f"{h.get('model', '?')} {release} {share:g}"
        parts.append(
            f'<div class="share {colours.get(str(h.get("team")), "t0")} {kind}" '
            f'style="height:{share * scale * 100:.1f}%" data-model="{_e(h.get("model"))}" '
            f'data-release="{_e(release)}" data-share="{share:g}" '
            f'title="{_e(label)} GPU ({_e(h.get("team"))})">{_e(label)}</div>'
        )
    free = _number(gpu.get("free"))
    head = (
        f"<b>GPU {_e(gpu.get('index', '?'))}</b> {_e(gpu.get('memory', ''))}"
        f"<br>{_e(gpu.get('product', ''))}"
    )
    over = " over" if total > 1.0 else ""
    foot = (
        f"over-committed: {total:g} GPUs" if over else f"free {free:g}" if free is not None else ""
    )
    return (
        f'<div class="gpu" data-gpu="{_e(gpu.get("uuid"))}" title="{_e(gpu.get("uuid"))}">'
        f'<div class="gpu-head">{head}</div>'
        f'<div class="gpu-box{over}">{"".join(parts)}</div>'
        f'<div class="gpu-foot">{_e(foot)}</div></div>'
    )


def _pool_section(report: Mapping[str, Any], colours: Mapping[str, str]) -> str:
    gpus = _gpus_of(report)
    nodes: dict[str, list[Mapping[str, Any]]] = {}
    for g in gpus:
        nodes.setdefault(str(g.get("node", "?")), []).append(g)
    drawn = "".join(
        f'<div class="node" data-node="{_e(node)}"><h4>{_e(node)}</h4><div class="gpus">'
        + "".join(_gpu_box(g, colours) for g in on_node)
        + "</div></div>"
        for node, on_node in nodes.items()
    )
    teams = sorted({str(h.get("team")) for _, h in _holdings(report)})
    legend = "".join(
        f'<span><span class="chip {colours.get(t, "t0")}"></span>{_e(t)}</span>' for t in teams
    )
    legend += '<span><span class="chip share canary"></span>canary (striped)</span>'
    stranded = report.get("stranded") or {}
    summary = (
        f"sharing {_e(report.get('sharing', '?'))}, {len(gpus)} GPUs, "
        f"holdings {_e(report.get('holdings', '?'))}; "
        f"free {_e(_value_text(report.get('free')))} GPUs, "
        f"stranded {_e(_value_text(stranded.get('gpus', 0)))} on {_e(stranded.get('on', 0))}"
    )
    quota_rows = "".join(
        f"<tr><td>{_e(t.get('team'))}</td><td>{_e(_value_text(t.get('held')))}</td>"
        f"<td>{_e(_value_text(t.get('guaranteed')))}</td>"
        f"<td>{_e(_value_text(t.get('limit')))}</td>"
        f"<td>{_e(_value_text(t.get('borrowed')))}</td></tr>"
        for t in report.get("teams") or ()
        if isinstance(t, Mapping)
    )
    quotas = (
        "<table><thead><tr><th>Team</th><th>Held</th><th>Guaranteed</th><th>Limit</th>"
        f"<th>Borrowed</th></tr></thead><tbody>{quota_rows}</tbody></table>"
        if quota_rows
        else ""
    )
    notes = "".join(f'<li class="fail">{_e(t)}</li>' for t in report.get("disagreements") or ())
    notes += "".join(f"<li>waits: {_e(t)}</li>" for t in report.get("waiting") or ())
    return (
        f'<section class="pool" data-pool="{_e(report.get("pool"))}">'
        f"<h2>GPU pool {_e(report.get('pool', '?'))} <small>{summary}</small></h2>"
        f'<div class="nodes">{drawn}</div><div class="legend">{legend}</div>'
        + (f"<ul>{notes}</ul>" if notes else "")
        + quotas
        + "</section>"
    )


def _checks_list(checks: Sequence[_Check]) -> str:
    items = "".join(
        f'<li class="{_e(c.outcome)}"><b>{_e(c.check)}</b> {_e(_value_text(c.value))}: '
        f"{_e(c.message)}</li>"
        for c in checks
    )
    return f'<ul class="checks">{items}</ul>'


def _ago(seconds: float) -> str:
    age = format_age(seconds)
    return "" if age == "-" else f"<br><small>{age} ago</small>"


def _rollout(view: _ModelView, now: float) -> str:
    status = view.status
    policy = (
        f"policy {_e(view.policy)}" + ("" if view.policy_known else " (not found)")
        if view.policy is not None
        else "policy unknown"
    )
    versions = _e(status.stable.version if status.stable else "-")
    if status.canary is not None:
        versions += f" &rarr; {_e(status.canary.version)} at {_e(status.weight)}%"
    steps = "".join(
        f'<li class="{s.state}"' + (' aria-current="step"' if s.state == "current" else "") + ">"
        f'<span class="kind">{s.index}. {_e(s.kind)}</span> {_e(s.label)}</li>'
        for s in view.timeline
    )
    timeline = f'<ol class="timeline">{steps}<li class="end">promote</li></ol>' if steps else ""
    reason = ""
    if view.reason:
        failures = f" ({view.failures} failed intervals)" if view.failures else ""
        reason = f'<p class="muted">{_e(view.reason)}{_e(failures)}</p>'
    if view.intervals:
        rows = "".join(
            f"<tr><td><code>{_e(_iso(i.at))}</code>{_ago(now - i.at)}</td><td>{i.weight}%</td>"
            f'<td class="{_e(i.outcome)}">{_e(i.outcome)}</td>'
            f"<td>{_checks_list(i.checks)}</td></tr>"
            for i in view.intervals
        )
        analysis = (
            '<table class="intervals"><thead><tr><th>Interval</th><th>Weight</th>'
            f"<th>Outcome</th><th>Checks</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    elif view.checks:
        analysis = f"<h4>Last verdict</h4>{_checks_list(view.checks)}"
    else:
        analysis = '<p class="muted">No analysis interval recorded.</p>'
    history = "".join(
        f"<li><code>{_e(h.at)}</code> <b>{_e(h.event)}</b> {_e(h.message)}"
        + (f" <code>{_e(h.revision)}</code>" if h.revision else "")
        + "</li>"
        for h in view.history
    )
    return (
        f'<article class="rollout" data-model="{_e(status.name)}">'
        f"<h3>{_e(status.name)} {_badge(str(status.phase))} <small>{policy}</small></h3>"
        f'<div class="muted">{versions}</div>{timeline}{reason}{analysis}'
        + (f'<h4>History</h4><ul class="history">{history}</ul>' if history else "")
        + "</article>"
    )


_LEVEL_TONES = {"ok": "ok", "at risk": "warn", "breached": "bad", "unknown": "idle"}


def _monitor_section(views: Sequence[Mapping[str, Any]]) -> str:
    """After promotion: each model's objectives and drift now, and its last hours."""
    if not views:
        return ""
    blocks = []
    for view in views:
        states = "".join(
            f'<li><span class="badge {_LEVEL_TONES.get(str(o.get("state")), "idle")}">'
            f"{_e(o.get('state'))}</span> <b>{_e(o.get('name'))}</b> "
            f"<code>{_e(o.get('metric'))}</code> {_e(_value_text(o.get('value')))}"
            f"{' (max ' + _e(o.get('max')) + ')' if o.get('max') is not None else ''}"
            f"{' (min ' + _e(o.get('min')) + ')' if o.get('min') is not None else ''}</li>"
            for o in view.get("objectives") or []
        )
        drift = view.get("drift")
        if drift:
            score = drift.get("score")
            states += (
                f'<li><span class="badge {_LEVEL_TONES.get(str(drift.get("state")), "idle")}">'
                f"{_e(drift.get('state'))}</span> <b>drift</b> of <code>{_e(drift.get('field'))}"
                f"</code> PSI {_e('none yet' if score is None else f'{float(score):.3f}')} "
                f"(threshold {_e(drift.get('threshold'))})</li>"
            )
        hours = list(view.get("hourly") or [])[:12]
        most = max((int(h.get("requests") or 0) for h in hours), default=0) or 1
        rows = "".join(
            f"<tr><td><code>{_e(h.get('start'))}</code></td>"
            f'<td><div class="meter"><div style="width:{_width(h.get("requests"), most)}%">'
            f"</div></div>{_e(h.get('requests'))}</td>"
            f"<td>{_e(_percent(h.get('errorRate')))}</td>"
            f"<td>{_e(_ms((h.get('latency') or {}).get('p99')))}</td>"
            f"<td>{_e(h.get('gpuHours'))}</td>"
            f"<td>{_e('' if h.get('driftScore') is None else h.get('driftScore'))}</td>"
            f"<td>{_e(', '.join(f'{k} {v}' for k, v in (h.get('objectives') or {}).items()))}</td>"
            "</tr>"
            for h in hours
        )
        table = (
            "<table><tr><th>hour</th><th>requests</th><th>errors</th><th>p99</th>"
            f"<th>GPU-h</th><th>drift</th><th>worst</th></tr>{rows}</table>"
            if rows
            else '<p class="muted">No hour has closed yet.</p>'
        )
        blocks.append(
            f'<div class="rollout" data-monitor="{_e(view.get("model"))}">'
            f"<h3>{_e(view.get('model'))} <small>{_e(view.get('version'))}</small></h3>"
            f'<ul class="checks">{states}</ul><h4>Last hours</h4>{table}</div>'
        )
    return (
        '<section id="monitor"><h2>After promotion</h2>'
        f'<div class="rollouts">{"".join(blocks)}</div></section>\n'
    )


def _width(requests: object, most: int) -> int:
    number = _int(requests) or 0
    return max(0, min(100, 100 * number // most))


def _percent(value: object) -> str:
    number = _number(value)
    return "" if number is None else f"{100 * number:.2f}%"


def _ms(value: object) -> str:
    number = _number(value)
    return "" if number is None else f"{1000 * number:.0f} ms"


def render_dashboard(
    statuses: Sequence[ModelStatus],
    pool: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    policies: Mapping[str, RolloutPolicy],
    now: float,
    *,
    refresh: int = 5,
    title: str = "mdc",
    policy_of: Mapping[str, str] | None = None,
    monitors: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The dashboard: one self-contained HTML page (inline CSS, no scripts, no
    external resources) that reloads itself every ``refresh`` seconds (never
    when ``refresh`` <= 0).

    ``pool`` is a report of :func:`controller.ui.pool_view.pool_report`, or a list
    of them (one per pool), or None. ``policies`` are keyed by policy name and
    ``policy_of`` maps a model to its policy's name (a status does not record
    it); a model without one still shows its step count. ``monitors`` are the
    running versions' monitor views (:meth:`controller.app.reconciler.Reconciler.monitor_view`):
    objective states, drift and the last hours' rollups.
    """
    views = _views(statuses, policies, now, policy_of)
    reports = _pools(pool)
    colours = _team_classes(
        [str(h.get("team")) for r in reports for _, h in _holdings(r)]
        + [str(v.status.team) for v in views if v.status.team]
    )
    phases: dict[str, int] = {}
    for v in views:
        phases[str(v.status.phase)] = phases.get(str(v.status.phase), 0) + 1
    counts = ", ".join(f"{n} {_e(p)}" for p, n in sorted(phases.items()))
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else ""
    every = f"; refreshes every {int(refresh)}s" if refresh > 0 else ""
    pools = (
        "".join(_pool_section(r, colours) for r in reports)
        or '<section class="pool"><h2>GPU pool</h2><p class="muted">No pool report.</p></section>'
    )
    rollouts = "".join(_rollout(v, now) for v in views)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f'{meta}<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} dashboard</title><style>{_CSS}</style></head>\n<body>"
        f'<header><h1>{_e(title)}</h1><div class="muted">{len(views)} models'
        f"{': ' + counts if counts else ''}; updated <code>{_iso(now)}</code>{every}</div>"
        "</header>\n"
        f'<section id="models"><h2>Models</h2>{_models_table(views)}</section>\n'
        f"{pools}\n"
        f'<section id="rollouts"><h2>Rollouts</h2><div class="rollouts">{rollouts}</div>'
        + ("" if rollouts else '<p class="muted">Nothing to show.</p>')
        + "</section>\n"
        + _monitor_section(monitors)
        + "</body></html>\n"
    )
