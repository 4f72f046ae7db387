"""The plan for a pull request: what merging ``head`` into ``base`` would change.

Owns comparing two snapshots of a spec repository model by model (added,
removed, changed -- with the fields that changed -- or untouched), whether a
change needs a new bento (the content-addressed tag is computed, nothing is
built), the validation errors of ``head`` with file:line, the GPUs the change
needs including the canary's extra share and what it would preempt, quota
headroom per team, and each changed model's canary timeline. A change that
cannot be applied (invalid specs, a canary that cannot fit, a team over its
limit) makes the plan not applicable, with the reasons.

Renders as text, JSON and the Markdown of the PR comment (with a hidden
marker, so the reporter updates one comment instead of adding one per push).

Pure over two :class:`~controller.spec.tree.Tree` values. Called by ``mdc plan
--base --head`` and, later, the GitHub reporter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from controller.core.costs import per_day
from controller.core.demand import (
    CanaryCheck,
    canary_checks,
    gpu_equivalent,
    policy_timeline,
    team_usage,
    verdict_estimate,
)
from controller.core.safe_text import md_code, md_html, md_text, visible
from controller.core.traffic import ObservedTraffic
from controller.spec.documents import Diagnostic
from controller.spec.identity import field_changes, planned_bento_tag
from controller.spec.kinds import Model
from controller.spec.loader import LoadResult, load_desired
from controller.spec.tree import Tree

__all__ = ["MARKER", "ChangePlan", "ModelChange", "plan_change", "render_markdown", "render_text"]

#: Finds the plan comment again on a pull request.
MARKER = "<!-- mdc:plan -->"


@dataclass(frozen=True)
class ModelChange:
    model: str
    change: str  # added, removed, changed, unchanged
    fields: tuple[str, ...]
    bento: str | None  # the bento tag head would build
    new_bento: bool
    gpus: float  # GPUs the stable release holds (head; base for a removal)
    canary: CanaryCheck | None
    timeline: str | None
    #: how long the sequential judge needs at the model's observed traffic
    verdict: str | None = None
    verdict_waits: bool = False  # past the progress deadline: a warning
    cpu_only: bool = False  # asks for no GPU (head; base for a removal)
    #: GPUs the PR's preview books while it is open (its policy previews); None: none
    preview: float | None = None

    def gpu_text(self) -> str:
        """The GPUs it holds as the plan says them: a number, or that it is CPU-only."""
        return "CPU only" if self.cpu_only else f"{self.gpus:g} GPU"


@dataclass(frozen=True)
class ChangePlan:
    base: str
    head: str
    models: tuple[ModelChange, ...]
    diagnostics: tuple[Diagnostic, ...]
    teams: tuple[dict[str, Any], ...]
    applicable: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "head": self.head,
            "applicable": self.applicable,
            "reasons": list(self.reasons),
            "models": [asdict(m) for m in self.models],
            "errors": [d.as_dict() for d in self.diagnostics],
            "teams": list(self.teams),
        }


def _bento(model: Model, tree: Tree) -> str | None:
    try:
        return planned_bento_tag(model, tree)
    except Exception:
        return None


def plan_change(
    base: Tree | None,
    head: Tree,
    base_rev: str = "",
    head_rev: str = "",
    traffic: Mapping[str, ObservedTraffic] | None = None,
) -> ChangePlan:
    """The plan; ``traffic`` (by model: what its stable version serves, from the
    controller's monitor) sizes how long each changed model's canary needs."""
    before: LoadResult | None = load_desired(base) if base is not None else None
    after = load_desired(head)
    old = before.desired.models if before is not None else {}
    new = after.desired.models
    checks = {c.model: c for c in canary_checks(after.desired)}
    changes: list[ModelChange] = []
    for name in sorted(set(old) | set(new)):
        was, now = old.get(name), new.get(name)
        if now is None:
            if was is None or any(r.name == name for r in after.invalid):
                continue  # invalid in head: reported with the diagnostics
            pool = before.desired.pools.get(was.pool) if before is not None else None
            gpus = gpu_equivalent(was, pool) if pool is not None else 0.0
            changes.append(
                ModelChange(
                    name,
                    "removed",
                    (),
                    None,
                    False,
                    gpus,
                    None,
                    None,
                    cpu_only=was.resources.cpu_only,
                )
            )
            continue
        bento = _bento(now, head)
        fields = field_changes(was.source.data, now.source.data) if was is not None else ()
        old_bento = _bento(was, base) if was is not None and base is not None else None
        change = "added" if was is None else ("changed" if fields else "unchanged")
        policy = after.desired.policies.get(now.rollout)
        gpus = gpu_equivalent(now, after.desired.pools[now.pool])
        estimate = (
            verdict_estimate(policy, (traffic or {}).get(name))
            if policy is not None and was is not None and change == "changed"
            else None
        )
        changes.append(
            ModelChange(
                name,
                change,
                fields,
                bento,
                bento is not None and bento != old_bento,
                gpus,
                checks.get(name) if change == "changed" else None,
                policy_timeline(policy).describe()
                if policy is not None and change == "changed"
                else None,
                estimate.describe() if estimate is not None else None,
                estimate is not None and estimate.waits,
                now.resources.cpu_only,
                gpus
                if change == "changed"
                and policy is not None
                and policy.preview is not None
                and now.preview is not None
                else None,
            )
        )
    previews: dict[tuple[str, str], float] = {}  # (team, pool) -> GPUs previews book
    for c in changes:
        model = new.get(c.model)
        if c.preview is not None and model is not None:
            key = (model.team, model.pool)
            previews[key] = round(previews.get(key, 0.0) + c.preview, 4)
    teams = tuple(
        asdict(row)
        | {
            "verdict": row.verdict,
            "headroom": round(row.limit - row.canary_peak, 4),
            "gpuHoursPerDay": per_day(row.requested),
            "preview": previews.get((row.team, row.pool), 0.0),
        }
        for row in team_usage(after.desired)
    )
    reasons = [d.render() for d in after.diagnostics]
    reasons += [
        f"{c.model}: {c.canary.describe()}"
        for c in changes
        if c.canary is not None and not c.canary.fits
    ]
    reasons += [
        f"team {t['team']} in pool {t['pool']} would hold {t['requested']:g} GPUs, over its "
        f"limit of {t['limit']:g}"
        for t in teams
        if t["verdict"] == "over limit"
    ]
    return ChangePlan(
        base_rev, head_rev, tuple(changes), after.diagnostics, teams, not reasons, tuple(reasons)
    )


def _preview_line(gpus: float) -> str:
    return (
        f"preview: {gpus:g} GPU while the PR is open, on free GPUs only (it never displaces "
        "a release, and is the first to give way)"
    )


def render_text(plan: ChangePlan) -> str:
    """The plan as terminal lines; every value from the repository made :func:`visible`."""
    v = visible
    lines = [
        f"Plan for {v(plan.head or 'head')} against {v(plan.base or 'base')}: "
        + ("can be applied" if plan.applicable else "CANNOT be applied")
    ]
    for reason in plan.reasons:
        lines.append(f"  ! {v(reason)}")
    for m in plan.models:
        if m.change == "unchanged" and not m.new_bento:
            continue
        bento = f", new bento {v(m.bento)}" if m.new_bento else ""
        lines.append(
            f"  {v(m.model)}: {v(m.change)}{bento} ({m.gpu_text()}, {per_day(m.gpus):g} GPU-h/day)"
        )
        lines += [f"      {v(f)}" for f in m.fields]
        if m.canary is not None:
            lines.append(f"      {v(m.canary.describe())}")
        if m.timeline:
            lines.append(f"      rollout: {v(m.timeline)}")
        if m.verdict:
            lines.append(f"      {'! ' if m.verdict_waits else ''}verdict: {v(m.verdict)}")
        if m.preview is not None:
            lines.append(f"      {_preview_line(m.preview)}")
    for t in plan.teams:
        preview = f", preview {t['preview']:g} (free GPUs only)" if t.get("preview") else ""
        lines.append(
            f"  team {v(t['team'])} ({v(t['pool'])}): {t['requested']:g} of limit {t['limit']:g} "
            f"GPUs, canary peak {t['canary_peak']:g}{preview}, headroom {t['headroom']:g}"
        )
    return "\n".join(lines)


def render_markdown(plan: ChangePlan) -> str:
    """The PR comment. Starts with :data:`MARKER`; stays under GitHub's 65,536 characters.

    Every value from the repository or the PR (revisions, file names, messages, model,
    team and pool names, field paths) goes through :mod:`controller.core.safe_text`:
    it can close no code span, open no heading, link, image, mention or HTML, and
    split no table cell."""
    status = "✅ can be applied" if plan.applicable else "❌ cannot be applied"
    out = [MARKER, f"### mdc plan: {status}", ""]
    if plan.base or plan.head:
        out += [f"{md_code(plan.base[:12])} → {md_code(plan.head[:12])}", ""]
    if plan.reasons:
        out += ["**Problems**", ""] + [f"- {md_code(r)}" for r in plan.reasons] + [""]
    waits = [m for m in plan.models if m.verdict_waits]
    if waits:
        out += ["**Warnings**", ""]
        out += [f"- ⚠️ {md_text(m.model)}: {md_text(m.verdict)}" for m in waits] + [""]
    touched = [m for m in plan.models if m.change != "unchanged" or m.new_bento]
    if touched:
        out += [
            "| model | change | bento | GPUs | GPU-h/day | canary |",
            "|---|---|---|---|---|---|",
        ]
        for m in touched:
            canary = m.canary.describe().split(": ", 1)[1] if m.canary is not None else ""
            bento = f"{md_code(m.bento, in_table=True)} (new)" if m.new_bento else "unchanged"
            gpus = f"{m.gpus:g} (CPU only)" if m.cpu_only else f"{m.gpus:g}"
            out.append(
                f"| {md_text(m.model)} | {md_text(m.change)} | {bento} | {gpus} | "
                f"{per_day(m.gpus):g} | {md_text(canary)} |"
            )
        out.append("")
        for m in touched:
            if m.fields or m.timeline:
                out.append(f"<details><summary>{md_html(m.model)}</summary>\n")
                out += [f"- {md_code(f)}" for f in m.fields]
                if m.timeline:
                    out.append(f"- rollout: {md_text(m.timeline)}")
                if m.verdict:
                    out.append(f"- verdict: {md_text(m.verdict)}")
                if m.preview is not None:
                    out.append(f"- {_preview_line(m.preview)}")
                out.append("\n</details>")
        out.append("")
    else:
        out += ["No model changes.", ""]
    previewing = any(t.get("preview") for t in plan.teams)  # its own column, when any
    out += [
        "| team | pool | requested | canary peak | "
        + ("preview | " if previewing else "")
        + "limit | headroom |",
        "|---|---|---|---|---|---|" + ("---|" if previewing else ""),
    ]
    out += [
        f"| {md_text(t['team'])} | {md_text(t['pool'])} | {t['requested']:g} | "
        f"{t['canary_peak']:g} | "
        + (f"{t.get('preview', 0.0):g} | " if previewing else "")
        + f"{t['limit']:g} | {t['headroom']:g} |"
        for t in plan.teams
    ]
    text = "\n".join(out) + "\n"
    limit = 65_000
    if len(text) > limit:
        text = text[:limit] + "\n\n…(cut: the full plan is in the job log)\n"
    return text
