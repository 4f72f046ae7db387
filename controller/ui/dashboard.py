"""Every model's state at a glance: the live dashboard (one self-contained HTML
page, and the same data as JSON), and the public face of ``mdc status``.

Owns :func:`dashboard_json` and :func:`render_dashboard`: each model's phase,
versions and canary progress; each GPU pool drawn as nodes with one box per
GPU, filled by share and coloured by team; each rollout's policy steps with
the current one highlighted, its analysis intervals (every check's value and
message) and its recent history; each promoted model's objectives, drift and
last hours. Re-exports the status table's names (:func:`status_rows`,
:func:`render_status_table`, :func:`format_age`, :data:`COLUMNS`,
:data:`PHASE_TONES`) and :data:`HISTORY_SHOWN`, which callers import from here.

The parts: :mod:`controller.ui.status_table` (the rows and the text table),
:mod:`controller.ui.rollout_view` (each model's rollout as data),
:mod:`controller.ui.dashboard_page` (the page's data) and the Jinja2 template
``controller/ui/templates/dashboard.html.j2`` (the page's markup), rendered
with autoescape on: status files and specs are untrusted input (anyone can open
a pull request, and the status branch can be edited by hand), so every value
reaches the page as escaped text. The page needs no JavaScript and loads
nothing from elsewhere; its Content-Security-Policy forbids scripts outright.

Pure: no I/O but reading the template, no clock; ``now`` (epoch seconds) is a
parameter. Called by the CLI (``mdc status``), by the daemon (``/api/status``)
and by the dashboard's page (:mod:`controller.app.pages`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from controller.core.status import ModelStatus
from controller.spec.kinds import RolloutPolicy
from controller.ui.dashboard_page import page_context
from controller.ui.rollout_view import HISTORY_SHOWN, CheckView, model_views
from controller.ui.status_table import COLUMNS, PHASE_TONES, render_status_table, status_rows
from controller.ui.values import as_text, format_age, iso

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

#: The templates, read from the package (so from the wheel too); autoescape on,
#: and a name the template reads but is not given is an error, not a blank.
_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("controller.ui", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def _pools(pool: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    if pool is None:
        return []
    if isinstance(pool, Mapping):
        return [pool]
    return list(pool)


def _check_json(c: CheckView) -> dict[str, Any]:
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
    for view in model_views(statuses, policies, now, policy_of):
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
                        "at": iso(i.at),
                        "weight": i.weight,
                        "outcome": i.outcome,
                        "checks": [_check_json(c) for c in i.checks],
                    }
                    for i in view.intervals
                ],
                "checks": [_check_json(c) for c in view.checks],
                "history": [
                    {
                        "at": as_text(h.at),
                        "event": as_text(h.event),
                        "message": as_text(h.message),
                        "revision": as_text(h.revision),
                    }
                    for h in view.history
                ],
                "reason": view.reason,
                "failures": view.failures,
            }
        )
    return {"generatedAt": iso(now), "models": models, "pools": [dict(p) for p in _pools(pool)]}


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
    previews: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The dashboard: one self-contained HTML page (inline CSS, no scripts, no
    external resources) that reloads itself every ``refresh`` seconds (never
    when ``refresh`` <= 0).

    ``pool`` is a report of :func:`controller.ui.pool_view.pool_report`, or a list
    of them (one per pool), or None. ``policies`` are keyed by policy name and
    ``policy_of`` maps a model to its policy's name (a status does not record
    it); a model without one still shows its step count. ``monitors`` are the
    running versions' monitor views (:meth:`controller.app.reconciler.Reconciler.monitor_view`):
    objective states, drift and the last hours' rollups. ``previews`` are the pull
    requests' previews (:meth:`controller.app.previews.Previews.views`).
    """
    context = page_context(
        model_views(statuses, policies, now, policy_of),
        _pools(pool),
        now,
        refresh=refresh,
        title=title,
        monitors=monitors,
        previews=previews,
    )
    return _ENVIRONMENT.get_template("dashboard.html.j2").render(context)
