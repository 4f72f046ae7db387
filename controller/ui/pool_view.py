"""The picture of a GPU pool that ``mdc pool`` shows: the inventory, who holds
what (team, model, release, share), free and stranded capacity, quota use and
cost per team, and a bar per node a person reads at a glance.

Holdings come from status records (what runs) when there are any, else from
placing every model's stable release in a fresh ledger (what the specs would
take), and the report says which. Pure: built from loaded specs, an
inventory and statuses; ``now`` is a parameter. Called by the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from controller.core.allocation import Placed, ReleaseKind, request_for
from controller.core.costs import model_cost, per_day, team_totals
from controller.core.inventory import Inventory
from controller.core.ledger import Ledger
from controller.core.safe_text import visible
from controller.core.status import ModelStatus
from controller.spec.kinds import Desired, GPUPool
from controller.spec.units import format_bytes

__all__ = ["CELLS", "Holding", "planned_holdings", "pool_report", "recorded_holdings", "render"]

#: Characters per GPU in the node bars.
CELLS = 8


@dataclass(frozen=True)
class Holding:
    gpu: str
    node: str
    model: str
    team: str
    release: str  # "stable" or "canary"
    share: float


def recorded_holdings(statuses: Iterable[ModelStatus]) -> list[Holding]:
    return [
        Holding(h.gpu, h.node, s.name, s.team or "?", h.release, h.share)
        for s in statuses
        for h in s.gpus
    ]


def planned_holdings(
    desired: Desired, pool: GPUPool, inventory: Inventory
) -> tuple[list[Holding], list[str]]:
    """Where each model's stable release would go in an empty pool, and what would wait."""
    ledger = Ledger(inventory.gpus, pool.quotas)
    holdings: list[Holding] = []
    waiting: list[str] = []
    for model in sorted(desired.models.values(), key=lambda m: m.name):
        if model.pool != pool.name:
            continue
        decision = ledger.place(
            request_for(model.name, model.team, model.resources, ReleaseKind.STABLE)
        )
        if not isinstance(decision, Placed):
            waiting.append(decision.reason)
            continue
        for replica in decision.allocation.replicas:
            for s in replica:
                holdings.append(
                    Holding(s.gpu, s.node, model.name, model.team, "stable", s.units / 1000)
                )
    return holdings, waiting


def pool_report(
    pool: GPUPool,
    inventory: Inventory,
    holdings: Sequence[Holding],
    source: str,
    *,
    statuses: Sequence[ModelStatus] = (),
    waiting: Sequence[str] = (),
    now: float = 0.0,
) -> dict[str, Any]:
    """Everything ``mdc pool`` shows for one pool, JSON-ready."""
    by_gpu: dict[str, list[Holding]] = {}
    for h in holdings:
        by_gpu.setdefault(h.gpu, []).append(h)
    gpus: list[dict[str, Any]] = []
    for g in inventory.gpus:
        on_gpu = by_gpu.get(g.uuid, [])
        used = min(1.0, sum(h.share for h in on_gpu))
        gpus.append(
            {
                "node": g.node,
                "index": g.index,
                "uuid": g.uuid,
                "product": g.product,
                "memory": format_bytes(g.memory),
                "source": g.source,
                "utilization": g.utilization,
                "held": [
                    {"model": h.model, "team": h.team, "release": h.release, "share": h.share}
                    for h in on_gpu
                ],
                "free": round(1.0 - used, 4),
            }
        )
    known = {g.uuid for g in inventory.gpus}
    unknown = sorted({h.gpu for h in holdings if h.gpu not in known})
    costs = team_totals(model_cost(s, now) for s in statuses)
    teams = []
    for quota in pool.quotas:
        held = round(sum(h.share for h in holdings if h.team == quota.team), 4)
        cost = costs.get(quota.team, {})
        teams.append(
            {
                "team": quota.team,
                "guaranteed": quota.guaranteed,
                "limit": quota.limit,
                "priority": quota.priority,
                "held": held,
                "borrowed": round(max(0.0, held - quota.guaranteed), 4),
                "gpuHoursPerDay": round(per_day(held), 4),
                "stableHours": cost.get("stableHours", 0.0),
                "canaryHours": cost.get("canaryHours", 0.0),
            }
        )
    partial = [g for g in gpus if 0 < g["free"] < 1]
    return {
        "pool": pool.name,
        "sharing": str(pool.sharing),
        "holdings": source,
        "gpus": gpus,
        "declared": inventory.declared_count,
        "discovered": inventory.discovered_count,
        "free": round(sum(g["free"] for g in gpus), 4),
        "stranded": {"gpus": round(sum(g["free"] for g in partial), 4), "on": len(partial)},
        "teams": teams,
        "disagreements": list(inventory.disagreements)
        + [f"status records name GPU {u}, which the inventory does not have" for u in unknown],
        "waiting": list(waiting),
        # every recorded model, with the GPUs it holds: 0 for a CPU-only one
        "models": [
            {
                "model": s.name,
                "team": s.team or "?",
                "held": round(sum(h.share for h in holdings if h.model == s.name), 4),
            }
            for s in sorted(statuses, key=lambda s: s.name)
        ],
    }


def _letters(teams: Iterable[str]) -> dict[str, str]:
    taken: dict[str, str] = {}
    for team in sorted(set(teams)):
        for ch in team.upper() + "0123456789":
            if ch.isalnum() and ch not in taken.values():
                taken[team] = ch
                break
    return taken


def render(report: dict[str, Any], emphasis: Callable[[str], str] = str) -> list[str]:
    """The report as lines of text, with one bar of ``CELLS`` characters per GPU."""
    letters = _letters(h["team"] for g in report["gpus"] for h in g["held"])
    lines = [
        emphasis(visible(f"Pool {report['pool']}"))
        + visible(
            f"  sharing {report['sharing']}, {len(report['gpus'])} GPUs "
            f"({report['discovered']} discovered, {report['declared']} declared); "
            f"holdings {report['holdings']}"
        )
    ]
    nodes: dict[str, list[dict[str, Any]]] = {}
    for g in report["gpus"]:
        nodes.setdefault(g["node"], []).append(g)
    width = max((len(n) for n in nodes), default=4)
    for node, gpus in nodes.items():
        bars = "".join(f"[{_bar(g, letters)}]" for g in gpus)
        kinds = sorted({f"{g['product']} {g['memory']} ({g['source']})" for g in gpus})
        lines.append(f"  {node:<{width}}  {bars}  {', '.join(kinds)}")
    if letters:
        legend = "  ".join(f"{ch} {team}" for team, ch in sorted(letters.items()))
        lines.append(f"  {'':<{width}}  {legend}  . free")
    lines.append(
        f"  free {report['free']:g} GPUs; stranded {report['stranded']['gpus']:g} GPUs "
        f"on {report['stranded']['on']} partly used GPUs"
    )
    lines.append(
        f"  {'team':<12}{'guaranteed':>11}{'limit':>7}{'priority':>9}{'held':>7}"
        f"{'borrowed':>10}{'GPU-h/day':>11}{'GPU-h stable':>14}{'+canary':>9}"
    )
    for t in report["teams"]:
        lines.append(
            f"  {t['team']:<12}{t['guaranteed']:>11g}{t['limit']:>7g}{t['priority']:>9}"
            f"{t['held']:>7g}{t['borrowed']:>10g}{t['gpuHoursPerDay']:>11g}"
            f"{t['stableHours']:>14g}{t['canaryHours']:>9g}"
        )
    idle = [m["model"] for m in report.get("models", []) if not m["held"]]
    if idle:
        lines.append(f"  holding no GPU: {', '.join(idle)}")
    for text in report["disagreements"]:
        lines.append(f"  ! {text}")
    for text in report["waiting"]:
        lines.append(f"  waits: {text}")
    return lines[:1] + [visible(line) for line in lines[1:]]


def _bar(gpu: dict[str, Any], letters: dict[str, str]) -> str:
    cells = ""
    for h in gpu["held"]:
        cells += letters[h["team"]] * max(1, round(h["share"] * CELLS))
    return (cells + "." * CELLS)[:CELLS]
