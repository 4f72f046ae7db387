"""What ``mdc monitor MODEL`` shows: a model's objective states, its drift and
its last hourly and daily rollups, as one view and as lines of text.

Owns :func:`view_from_record` (the shape of
:meth:`~controller.core.monitor.ModelMonitor.live` rebuilt from what the status
branch holds, for when no controller is asked) and :func:`view_text` (either
view as the text ``mdc monitor`` prints). Pure: data in, text out. Called by
the CLI's ``mdc monitor``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.core.safe_text import visible
from controller.spec.kinds import DriftWatch, Objective

__all__ = ["view_from_record", "view_text"]


def view_from_record(  # noqa: PLR0917
    model: str,
    version: str | None,
    objectives: Sequence[Objective],
    watch: DriftWatch | None,
    record: Mapping[str, Any] | None,
    rollups: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The shape of :meth:`ModelMonitor.live` from what the status branch holds:
    breached objectives and drift (the rest is ok), and the rollups."""
    record = record or {}
    breached = record.get("breached") or {}
    drifting = record.get("drifting") or {}
    rollups = rollups or {}
    return {
        "model": model,
        "version": version,
        "objectives": [
            {
                "name": o.name,
                "metric": str(o.metric),
                "min": o.min,
                "max": o.max,
                "state": "breached" if o.name in breached else "ok",
                "value": None,
                "since": breached.get(o.name),
            }
            for o in objectives
        ],
        "drift": None
        if watch is None
        else {
            "field": watch.field,
            "threshold": watch.threshold,
            "state": "breached" if drifting else "ok",
            "score": (rollups.get("hourly") or [{}])[0].get("driftScore"),
            "since": drifting.get(watch.field),
        },
        "hourly": list(rollups.get("hourly", []))[:24],
        "daily": list(rollups.get("daily", []))[:7],
    }


def view_text(view: Mapping[str, Any], rows: int = 6) -> list[str]:
    """``mdc monitor MODEL`` as lines of text."""
    lines = [f"{view['model']} {view.get('version') or ''}".rstrip()]
    lines.append("objectives" if view["objectives"] else "objectives: none (no monitor, no checks)")
    for o in view["objectives"]:
        bounds = " ".join(
            f"{word} {o[word]:g}" for word in ("min", "max") if o.get(word) is not None
        )
        value = "" if o.get("value") is None else f"{o['value']:.4g}"
        since = f"since {o['since']}" if o.get("since") and o["state"] == "breached" else ""
        lines.append(
            f"  {o['name']:<16} {o['metric']:<18} {bounds:<14} {o['state']:<9} {value:>9}  {since}"
        )
    drift = view.get("drift")
    if drift:
        score = "no score yet" if drift.get("score") is None else f"PSI {drift['score']:.3f}"
        threshold = f"threshold {drift['threshold']:g}"
        lines.append(f"drift of {drift['field']}: {drift['state']} ({score}, {threshold})")
    for key, label in (("hourly", "hour"), ("daily", "day")):
        entries = list(view.get(key) or [])[:rows]
        if not entries:
            continue
        lines.append(
            f"last {label}s  {'start':<20} {'requests':>9} {'errors':>8} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'GPU-h':>6} {'drift':>6}  objectives"
        )
        for r in entries:
            latency = r.get("latency") or {}
            rate = "" if r.get("errorRate") is None else f"{100 * r['errorRate']:.2f}%"
            worst = ", ".join(f"{k} {v}" for k, v in (r.get("objectives") or {}).items())
            lines.append(
                f"{'':<12} {r['start']:<20} {r['requests']:>9} {rate:>8} "
                f"{_ms(latency.get('p50')):>7} {_ms(latency.get('p99')):>7} "
                f"{r.get('gpuHours', 0):>6.2f} {_score(r.get('driftScore')):>6}  {worst}"
            )
    return [visible(line) for line in lines]


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{1000 * seconds:.0f}"


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
