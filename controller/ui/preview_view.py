"""A pull request's preview as people read it: ``mdc preview MODEL``'s lines and
the dashboard's card.

Owns :func:`preview_text` and :func:`preview_card`, both over one row of
:meth:`controller.app.previews.Previews.views` (the controller's
``/api/previews``) or the ``previews/MODEL.yaml`` record of the status branch:
``model``, ``version``, ``pullRequest``, ``head``, ``phase``, ``state``,
``description``, and once pairs are compared ``comparison`` (the record of
:class:`controller.core.preview.Comparison`) and ``reasons``.

Pure formatting. Called by :mod:`controller.cli.records` and
:mod:`controller.ui.dashboard_page`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.ui.terminal import visible

__all__ = ["preview_card", "preview_text"]

_TONES = {"success": "ok", "failure": "bad", "pending": "warn"}


def _ms(value: Any) -> str:
    return f"{float(value) * 1000:.1f} ms" if isinstance(value, int | float) else "-"


def _share(value: Any) -> str:
    return f"{float(value):.3f}" if isinstance(value, int | float) else "-"


def _rate(value: Any) -> str:
    return f"{float(value):.2%}" if isinstance(value, int | float) else "-"


def _figures(comparison: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(what, stable, preview) rows of a comparison record."""
    stable = comparison.get("stable") or {}
    preview = comparison.get("preview") or {}
    rows = [
        (f"latency {q}", _ms(stable.get(q)), _ms(preview.get(q))) for q in ("p50", "p90", "p99")
    ]
    rows.append(("error rate", _rate(stable.get("errorRate")), _rate(preview.get("errorRate"))))
    return rows


def _summary(comparison: Mapping[str, Any]) -> list[str]:
    out = [
        f"agreement {_share(comparison.get('agreement'))} over {comparison.get('compared', 0)} "
        f"compared pairs ({comparison.get('total', 0)} mirrored)"
    ]
    if comparison.get("psi") is not None:
        out.append(f"PSI of the outputs {_share(comparison.get('psi'))}")
    if comparison.get("latencyRatio") is not None:
        out.append(f"p90 {float(comparison['latencyRatio']):.2f}x the stable's")
    return out


def preview_text(row: Mapping[str, Any]) -> list[str]:
    """One preview as lines of text (already made safe for a terminal)."""
    head = str(row.get("head") or "")[:12]
    lines = [
        f"  #{row.get('pullRequest')} {visible(str(row.get('version') or ''))} at {head}: "
        f"{visible(str(row.get('state') or ''))} ({visible(str(row.get('phase') or ''))})",
        f"    {visible(str(row.get('description') or ''))}",
    ]
    comparison = row.get("comparison")
    if isinstance(comparison, Mapping):
        lines.append(f"    {'':<12} {'stable':>12} {'preview':>12}")
        lines += [f"    {what:<12} {a:>12} {b:>12}" for what, a, b in _figures(comparison)]
        lines += [f"    {line}" for line in _summary(comparison)]
    lines += [f"    - {visible(str(reason))}" for reason in row.get("reasons") or ()]
    if row.get("why"):
        lines.append(f"    ended: {visible(str(row['why']))}")
    return lines


def preview_card(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the dashboard's template shows of one preview (it escapes every value)."""
    comparison = row.get("comparison")
    figures: list[tuple[str, str, str]] = []
    summary: list[str] = []
    if isinstance(comparison, Mapping):
        figures, summary = _figures(comparison), _summary(comparison)
    state = str(row.get("state") or "pending")
    return {
        "model": str(row.get("model") or ""),
        "version": str(row.get("version") or ""),
        "pull": row.get("pullRequest"),
        "head": str(row.get("head") or "")[:12],
        "phase": str(row.get("phase") or ""),
        "state": state,
        "tone": _TONES.get(state, "warn"),
        "description": str(row.get("description") or ""),
        "figures": tuple(figures),
        "summary": tuple(summary),
        "reasons": tuple(str(r) for r in row.get("reasons") or ()),
    }
