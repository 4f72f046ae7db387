"""What a spec repository asks for, summed up: GPUs per team against quota
(with the extra share a canary holds while both versions run), and each
rollout policy's steps and shortest timeline.

This is the "plan of models, pools and policies" that ``mdc plan`` prints
before any runtime exists: with the GPU-hours per day each team's models
cost, and for each model whether a canary of a new version would fit beside
the stable releases (asked of a copy of the GPU ledger, so nothing changes).
Later the reconciler's plan adds what is running.
Pure: a function of :class:`~controller.spec.kinds.Desired` only. Called by the CLI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from controller.core.allocation import Placed, ReleaseKind, request_for
from controller.core.costs import per_day
from controller.core.evidence import expected_requests, latency_margin, slow_count
from controller.core.inventory import build_inventory
from controller.core.ledger import Ledger
from controller.core.traffic import ObservedTraffic
from controller.spec.kinds import Desired, GPUPool, Model, RolloutPolicy, StepKind
from controller.spec.units import format_bytes, format_duration

__all__ = [
    "CanaryCheck",
    "PolicyTimeline",
    "TeamUsage",
    "VerdictEstimate",
    "canary_checks",
    "gpu_equivalent",
    "policy_timeline",
    "summarize",
    "team_usage",
    "verdict_estimate",
]


@dataclass(frozen=True)
class TeamUsage:
    pool: str
    team: str
    guaranteed: float
    limit: float
    priority: int
    requested: float  # GPUs the team's models hold once rolled out
    canary_peak: float  # GPUs held while every one of them runs a canary at once
    models: tuple[str, ...]

    @property
    def verdict(self) -> str:
        if self.requested > self.limit:
            return "over limit"
        if self.canary_peak > self.limit:
            return "canary may wait"
        if self.requested > self.guaranteed:
            return "borrows"
        return "ok"


@dataclass(frozen=True)
class PolicyTimeline:
    policy: str
    steps: tuple[str, ...]
    min_seconds: float  # paused and analysed time, without approvals
    approvals: int  # pauses that wait for a person

    def describe(self) -> str:
        text = " -> ".join(self.steps) + " -> promote"
        total = f"at least {format_duration(self.min_seconds)}"
        if self.approvals:
            total += f" + {self.approvals} approval" + ("s" if self.approvals > 1 else "")
        return f"{text}  ({total})"


@dataclass(frozen=True)
class VerdictEstimate:
    """How long the sequential judge needs to show a healthy canary no worse, at a
    model's observed traffic (Wald's approximation: an estimate, not a promise)."""

    requests: float  # canary requests
    weight: int  # percent: the first analysis step's weight, where the verdict is reached
    rate: float  # the model's requests per second
    deadline: float | None  # the policy's progress deadline

    @property
    def seconds(self) -> float:
        share = self.rate * self.weight / 100
        return self.requests / share if share > 0 else float("inf")

    @property
    def waits(self) -> bool:
        """Whether the canary will still be deciding at its progress deadline."""
        return self.deadline is not None and self.seconds > self.deadline

    def describe(self) -> str:
        took = self.seconds
        when = format_duration(took) if took < 360_000 else "more than 100h"
        text = (
            f"the judge needs about {self.requests:.0f} canary requests: about {when} at "
            f"{self.weight}% of {self.rate:.3g} req/s"
        )
        if self.waits and self.deadline is not None:
            text += (
                f"; past the {format_duration(self.deadline)} progress deadline, so the "
                "canary will wait for traffic"
            )
        return text


def verdict_estimate(
    policy: RolloutPolicy, traffic: ObservedTraffic | None
) -> VerdictEstimate | None:
    """How long a canary of a model with ``traffic`` needs under ``policy``'s
    sequential judge (None: another judge, or the traffic is not known)."""
    analysis = policy.analysis
    if analysis is None or not analysis.compared or traffic is None or traffic.rate <= 0:
        return None
    needed = 0.0
    if analysis.error_increase is not None:
        needed = expected_requests(
            traffic.error_rate, analysis.error_increase, analysis.missed_regression
        )
    if analysis.latency is not None:
        bound = analysis.latency
        seen = traffic.requests
        slow = slow_count(traffic.buckets, bound.threshold) / seen if seen else 0.0
        margin = latency_margin(traffic.buckets, bound.threshold, bound.max_ratio)
        needed = max(needed, expected_requests(slow, margin, analysis.missed_regression))
    weight = 0
    for step in policy.steps:
        if step.kind is StepKind.SET_WEIGHT:
            weight = step.weight or 0
        elif step.kind is StepKind.ANALYSIS and weight:
            break
    return VerdictEstimate(needed, weight, traffic.rate, policy.progress_deadline)


def gpu_equivalent(model: Model, pool: GPUPool) -> float:
    """GPUs one release of ``model`` holds in ``pool``; a memory request counts
    as its share of the smallest declared GPU that can hold it (1 when unknown).
    """
    res = model.resources
    if res.cpu_only:
        return 0.0
    if res.gpu is not None:
        return res.gpu * res.replicas
    memory = res.gpu_memory or 0
    sizes = sorted(g.memory for node in pool.nodes for g in node.gpus if g.memory >= memory)
    share = memory / sizes[0] if sizes else 1.0
    return round(share * res.replicas, 4)


def team_usage(desired: Desired) -> list[TeamUsage]:
    rows = []
    for pool in desired.pools.values():
        for quota in pool.quotas:
            models = [
                m for m in desired.models.values() if m.pool == pool.name and m.team == quota.team
            ]
            requested = round(sum(gpu_equivalent(m, pool) for m in models), 4)
            rows.append(
                TeamUsage(
                    pool=pool.name,
                    team=quota.team,
                    guaranteed=quota.guaranteed,
                    limit=quota.limit,
                    priority=quota.priority,
                    requested=requested,
                    canary_peak=round(requested * 2, 4),
                    models=tuple(sorted(m.name for m in models)),
                )
            )
    return rows


@dataclass(frozen=True)
class CanaryCheck:
    """Would a new version's canary fit beside every stable release, and at what cost?"""

    model: str
    pool: str
    fits: bool
    preempted: tuple[str, ...]  # borrowed releases that would give their GPUs back
    reason: str  # why it would wait, when it would
    gpu_hours_per_day: float  # what the canary adds while it runs
    cpu_only: bool = False  # the model asks for no GPU: its canary holds none

    def describe(self) -> str:
        cost = f"+{self.gpu_hours_per_day:g} GPU-h/day while it runs"
        if self.cpu_only and self.fits:
            return f"{self.model}: CPU only: a canary holds no GPU"
        if not self.fits:
            return f"{self.model}: a canary would wait: {self.reason}"
        if self.preempted:
            return f"{self.model}: a canary fits by preempting {', '.join(self.preempted)} ({cost})"
        return f"{self.model}: a canary fits beside the stable release ({cost})"


def canary_checks(desired: Desired) -> list[CanaryCheck]:
    """Place every model's stable release in its pool (declared GPUs), then ask,
    for each model, whether its canary would fit too -- on a copy, so the
    answers do not depend on each other. Nothing is changed anywhere."""
    checks = []
    for pool in sorted(desired.pools.values(), key=lambda p: p.name):
        models = sorted(
            (m for m in desired.models.values() if m.pool == pool.name), key=lambda m: m.name
        )
        ledger = Ledger(build_inventory(pool, {}).gpus, pool.quotas)
        for model in models:
            stable = request_for(model.name, model.team, model.resources, ReleaseKind.STABLE)
            ledger.place(replace(stable, serving=True))
        for model in models:
            trial = ledger.clone()
            decision = trial.place(
                request_for(model.name, model.team, model.resources, ReleaseKind.CANARY)
            )
            if isinstance(decision, Placed):
                checks.append(
                    CanaryCheck(
                        model.name,
                        pool.name,
                        True,
                        decision.preempted,
                        "",
                        per_day(decision.allocation.gpus),
                        model.resources.cpu_only,
                    )
                )
            else:
                checks.append(
                    CanaryCheck(
                        model.name,
                        pool.name,
                        False,
                        (),
                        decision.reason,
                        per_day(gpu_equivalent(model, pool)),
                    )
                )
    return checks


def policy_timeline(policy: RolloutPolicy) -> PolicyTimeline:
    steps: list[str] = []
    seconds = 0.0
    approvals = 0
    interval = policy.analysis.interval if policy.analysis else 0.0
    for step in policy.steps:
        if step.kind is StepKind.SET_WEIGHT:
            steps.append(f"{step.weight}%")
        elif step.kind is StepKind.PAUSE and step.duration is None:
            steps.append("wait for approval")
            approvals += 1
        elif step.kind is StepKind.PAUSE:
            steps.append(f"pause {format_duration(step.duration or 0)}")
            seconds += step.duration or 0
        else:
            count = step.intervals or 1
            steps.append(f"analyse {count}x{format_duration(interval)}")
            seconds += count * interval
    return PolicyTimeline(policy.name, tuple(steps), seconds, approvals)


def summarize(desired: Desired) -> dict[str, Any]:
    """Everything ``mdc plan`` shows, as JSON-ready data."""
    return {
        "pools": [
            {
                "name": pool.name,
                "sharing": str(pool.sharing),
                "declaredGPUs": pool.declared_gpus,
                "cluster": None
                if pool.cluster is None
                else {
                    "discovery": str(pool.cluster.discovery),
                    "nodeSelector": dict(pool.cluster.selector),
                },
                "nodes": [
                    {
                        "name": node.name,
                        "discovery": str(node.discovery),
                        "gpus": [
                            {
                                "product": g.product,
                                "memory": format_bytes(g.memory),
                                "count": g.count,
                            }
                            for g in node.gpus
                        ],
                    }
                    for node in pool.nodes
                ],
            }
            for pool in sorted(desired.pools.values(), key=lambda p: p.name)
        ],
        "teams": [
            asdict(row) | {"verdict": row.verdict, "gpuHoursPerDay": per_day(row.requested)}
            for row in team_usage(desired)
        ],
        "canaries": [asdict(c) | {"summary": c.describe()} for c in canary_checks(desired)],
        "policies": [
            asdict(t) | {"summary": t.describe()}
            for t in (
                policy_timeline(p) for p in sorted(desired.policies.values(), key=lambda p: p.name)
            )
        ],
        "models": [
            {
                "name": m.name,
                "version": m.version,
                "team": m.team,
                "pool": m.pool,
                "rollout": m.rollout,
                "resources": m.resources.describe(),
                "gpus": gpu_equivalent(m, desired.pools[m.pool]),
                "service": f"{m.service_module}:{m.service_class}",
            }
            for m in sorted(desired.models.values(), key=lambda m: m.name)
        ],
    }
