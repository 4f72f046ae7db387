"""Every model's state at a glance as rows and as text: what ``mdc status``
prints, and the first table of the dashboard.

Owns :func:`status_document` (the one JSON shape of every model's status:
``{"models": [ROW, ...]}``, what both ``mdc status --format json`` and the
controller's ``/api/status`` answer), :func:`status_rows` (one JSON-ready row
per model: versions, phase, step, weight, last verdict, GPUs held, age,
failing conditions, endpoint), :func:`render_status_table`
(those rows as aligned text, the phase coloured only when the
:class:`~controller.ui.terminal.Style` is on), :data:`COLUMNS`,
:data:`PHASE_TONES` and :func:`canary_state` (a status's canary state, or None
when it is unreadable).

Status files are untrusted input: odd types are shown as well as they can be,
control characters never reach a terminal, and a malformed canary state is
shown as absent. Pure: no I/O, no clock; ``now`` (epoch seconds) is a
parameter. Called through :mod:`controller.ui.dashboard` (which re-exports the
public names) by the CLI (``mdc status``), the daemon's ``/api/status`` and the
dashboard itself (:mod:`controller.ui.rollout_view`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from controller.core.canary import CanaryState, Outcome, state_from_dict
from controller.core.status import ModelStatus, Phase
from controller.ui.terminal import Style, visible
from controller.ui.values import as_int, as_number, as_text, epoch_of, format_age

__all__ = [
    "COLUMNS",
    "PHASE_TONES",
    "canary_state",
    "render_status_table",
    "status_document",
    "status_rows",
]

#: The columns of ``mdc status``, in order.
COLUMNS = (
    "MODEL",
    "TEAM",
    "STABLE",
    "CANARY",
    "PHASE",
    "STEP",
    "WEIGHT",
    "VERDICT",
    "GPUS",
    "AGE",
    "ENDPOINT",
)

#: How each phase reads: ``ok`` (green), ``warn`` (yellow), ``bad`` (red), ``idle``.
PHASE_TONES: Mapping[str, str] = {
    Phase.HEALTHY: "ok",
    Phase.PROGRESSING: "warn",
    Phase.PAUSED: "warn",
    Phase.WAITING: "warn",
    Phase.ROLLED_BACK: "bad",
    Phase.STALLED: "bad",
    Phase.DEGRADED: "bad",
    Phase.PENDING: "idle",
}


def canary_state(status: ModelStatus) -> CanaryState | None:
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
    since = epoch_of(status.phase_since)
    if since is None and status.stable is not None:
        since = epoch_of(status.stable.started_at)
    return None if since is None else max(0, int(now - since))


def _step_text(status: ModelStatus) -> str | None:
    step, steps = as_int(status.step), as_int(status.steps)
    return f"{step}/{steps}" if step is not None and steps else None


def _gpus(status: ModelStatus) -> float:
    return round(sum(s for h in status.gpus if (s := as_number(h.share)) is not None), 4)


def status_rows(statuses: Sequence[ModelStatus], now: float) -> list[dict[str, Any]]:
    """One JSON-ready row per model, sorted by name (``mdc status --format json``).

    Keys: ``model``, ``team``, ``stable`` and ``canary`` (versions or None),
    ``phase``, ``step`` (``"2/5"`` or None), ``weight`` (percent on the canary),
    ``verdict`` (``pass``, ``fail: CHECK, ...``, ``no-data`` or None), ``gpus``
    (shares held by stable and canary together), ``age`` (whole seconds since
    the phase began, else since the stable release started; None if unknown),
    ``conditions`` (the reasons of the conditions that are false) and
    ``endpoint`` (the model's route URL, None while unknown).
    """
    rows = []
    for status in sorted(statuses, key=lambda s: s.name):
        state = canary_state(status)
        rows.append(
            {
                "model": status.name,
                "team": as_text(status.team),
                "stable": None if status.stable is None else as_text(status.stable.version),
                "canary": None if status.canary is None else as_text(status.canary.version),
                "phase": str(status.phase),
                "step": _step_text(status),
                "weight": status.weight,
                "verdict": _last_verdict(status, state),
                "gpus": _gpus(status),
                "age": _age(status, now),
                "conditions": [str(c.reason) for c in status.conditions if not c.status],
                "endpoint": as_text(status.endpoint),
            }
        )
    return rows


def status_document(statuses: Sequence[ModelStatus], now: float) -> dict[str, Any]:
    """Every model's status as one JSON object, ``{"models": [ROW, ...]}`` (rows as
    :func:`status_rows` makes them): the only shape ``mdc status --format json``
    prints and the controller's ``/api/status`` answers."""
    return {"models": status_rows(statuses, now)}


def _cells(row: Mapping[str, Any]) -> list[str]:
    def text(value: object) -> str:
        return "-" if value is None or value == "" else visible(value)

    weight = row.get("weight")
    shown_weight = f"{weight}%" if row.get("canary") is not None or weight else "-"
    gpus = as_number(row.get("gpus"))
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
        format_age(as_number(row.get("age"))),
        text(row.get("endpoint")),
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
