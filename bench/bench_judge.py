"""How often the canary judge is right, at the traffic real models see: the
threshold judge (the example policies as they were, Flagger's way) beside the
sequential judge (the example policies now), in the same run, on the same
seeded traffic.

Drives the real state machine (:func:`controller.core.canary.advance`) one
analysis interval at a time with synthetic traffic: Poisson arrivals split by
the canary's weight, binomial 5xx answers, and latencies drawn from a
lognormal (median 65 ms, p99 239 ms: 0.8% of requests over 250 ms) into the router's own
histogram (``router_window``), so the latency checks and the judge read what
they read in production. A person approves at once where a policy waits for
one. A run ends at promotion, at rollback, or at three times the policy's
progress deadline (undecided).

Canaries:

* ``healthy``: the stable's 0.5% errors and latency;
* ``+1pt`` / ``+2pt``: 1.5% / 2.5% errors;
* ``lat x1.2`` / ``lat x1.5``: every latency 1.2 / 1.5 times the stable's;
* ``noisy``: healthy, but one interval in ten both versions fail 8 times as
  often (a shared dependency in trouble).

Per cell: ``rollback`` (false rollbacks for healthy and noisy, detections
otherwise), ``undecided`` (still neutral at the horizon), the median time from
the first canary request to the judge's decision (sequential: rollback, or
"no worse" on every compared rate; threshold: rollback or promotion), and
``limit``: the time a single fixed-size test with the same error rates
(falseRollback, missedRegression, the policy's smallest regression) would
need at the first analysis step's weight, rounded up to whole intervals (the
theoretical best; for canaries between "no worse" and the margins, none).

Run: ``.venv/bin/python bench/bench_judge.py [--runs N] [--seed S]``. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.core.canary import (
    CanaryPhase,
    Command,
    Observation,
    advance,
    start,
)
from controller.core.evidence import Decision, fixed_sample_requests, latency_margin
from controller.core.traffic import BUCKETS, BackendStats, router_window
from controller.spec.kinds import Judge, RolloutPolicy, StepKind
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree

ROOT = Path(__file__).resolve().parent.parent
RATES = (1, 2, 5, 10, 50, 200)
BASE_ERRORS = 0.005
MEDIAN, SIGMA = 0.065, 0.56  # lognormal latency: p99 239 ms, 0.8% of requests over 250 ms

#: The example policies as they were before the sequential judge (threshold judge).
THRESHOLD_POLICIES = {
    "fast": """
apiVersion: mdc.dev/v1alpha1
kind: RolloutPolicy
metadata: {name: fast}
spec:
  warmup: {timeout: 1m}
  progressDeadline: 3m
  steps:
    - setWeight: 20
    - analysis: {intervals: 2}
    - setWeight: 60
    - analysis: {intervals: 2}
  analysis:
    interval: 5s
    failureLimit: 0
    minRequests: 20
    checks:
      - {name: errors, metric: errorRate, max: 0.05}
      - {name: latency, metric: latencyP90, max: 0.5, maxRatioToStable: 3}
""",
    "standard-canary": """
apiVersion: mdc.dev/v1alpha1
kind: RolloutPolicy
metadata: {name: standard-canary}
spec:
  warmup: {timeout: 2m, holdFor: 5s}
  progressDeadline: 10m
  steps:
    - setWeight: 10
    - analysis: {intervals: 3}
    - setWeight: 25
    - pause: {duration: 2m}
    - analysis: {intervals: 3}
    - pause: {}
    - setWeight: 50
    - analysis: {intervals: 5}
  analysis:
    interval: 30s
    failureLimit: 1
    minRequests: 20
    checks:
      - {name: errors, metric: errorRate, max: 0.01}
      - {name: latency, metric: latencyP99, max: 0.25, maxRatioToStable: 1.2}
""",
}


@dataclass(frozen=True)
class Canary:
    name: str
    errors: float = BASE_ERRORS
    slower: float = 1.0
    noisy: bool = False


CANARIES = (
    Canary("healthy"),
    Canary("noisy", noisy=True),
    Canary("+1pt", errors=BASE_ERRORS + 0.01),
    Canary("+2pt", errors=BASE_ERRORS + 0.02),
    Canary("lat x1.2", slower=1.2),
    Canary("lat x1.5", slower=1.5),
)


def policies() -> dict[tuple[str, str], RolloutPolicy]:
    """(judge, name) -> policy: the threshold ones above, the sequential ones
    from example-repo."""
    out = {}
    sequential = load_desired(DirTree(ROOT / "example-repo")).desired.policies
    for name, policy in sequential.items():
        out[("sequential", name)] = policy
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rollouts").mkdir()
        for name, text in THRESHOLD_POLICIES.items():
            (Path(tmp) / "rollouts" / f"{name}.yaml").write_text(text)
        loaded = load_desired(DirTree(Path(tmp)))
        assert loaded.ok, loaded.diagnostics
        for name, policy in loaded.desired.policies.items():
            out[("threshold", name)] = policy
    return out


def bucket_shares(slower: float) -> np.ndarray:
    """The share of requests in each router bucket for latencies ``slower``
    times the stable's lognormal."""
    unit = NormalDist()
    edges = [unit.cdf(math.log(b / (MEDIAN * slower)) / SIGMA) for b in BUCKETS]
    cdf = [0.0, *edges, 1.0]
    return np.diff(np.array(cdf))


def window(
    rng: np.random.Generator, requests: int, errors: float, shares: np.ndarray, seconds: float
) -> tuple[BackendStats, int]:
    failed = int(rng.binomial(requests, min(1.0, errors))) if requests else 0
    stats = BackendStats(
        {c: n for c, n in ((200, requests - failed), (500, failed)) if n},
        [int(v) for v in rng.multinomial(requests, shares)],
    )
    return stats, failed


def first_weight(policy: RolloutPolicy) -> int:
    weight = 0
    for step in policy.steps:
        if step.kind is StepKind.SET_WEIGHT:
            weight = step.weight or 0
        if step.kind is StepKind.ANALYSIS:
            return weight
    return weight


def limit_seconds(policy: RolloutPolicy, rate: float, canary: Canary) -> float | None:
    """The fixed-sample limit for the regressions the policy names (None for
    canaries that are not regressions)."""
    analysis = policy.analysis
    if analysis is None or analysis.judge is not Judge.SEQUENTIAL:
        return None
    if canary.name in ("+1pt", "lat x1.2"):  # between no worse and the margin: no limit
        return None
    share = first_weight(policy) / 100
    alpha = analysis.false_rollback / max(1, len(analysis.compared))
    needed = 0.0
    if analysis.error_increase is not None and canary.slower == 1.0:
        needed = fixed_sample_requests(
            BASE_ERRORS, analysis.error_increase, alpha, analysis.missed_regression, share
        )
    if analysis.latency is not None and canary.errors == BASE_ERRORS:
        hist = [int(v * 1e6) for v in bucket_shares(1.0)]
        slow = float(1 - bucket_shares(1.0)[: BUCKETS.index(0.25) + 1].sum())
        margin = latency_margin(hist, analysis.latency.threshold, analysis.latency.max_ratio)
        needed = max(
            needed,
            fixed_sample_requests(slow, margin, alpha, analysis.missed_regression, share),
        )
    if not needed:
        return None
    # evidence arrives an interval at a time: a fixed-size test too can only end on one
    return math.ceil(needed / (rate * share) / analysis.interval) * analysis.interval


def run_one(
    policy: RolloutPolicy, rate: float, canary: Canary, seed: int
) -> tuple[str, float | None]:
    """One canary: ("rollback" | "promoted" | "undecided", seconds to decision)."""
    assert policy.analysis is not None
    rng = np.random.default_rng(seed)
    dt = policy.analysis.interval
    horizon = 3 * (policy.progress_deadline or 600.0)
    stable_shares = bucket_shares(1.0)
    canary_shares = bucket_shares(canary.slower)
    now = 0.0
    state = start("bench", now)
    zero = BackendStats()
    first_traffic: float | None = None
    decided_at: float | None = None
    while now < horizon:
        now += dt
        weight = state.weight / 100
        burst = 8.0 if canary.noisy and rng.random() < 0.1 else 1.0
        nc = int(rng.poisson(rate * weight * dt))
        ns = int(rng.poisson(rate * (1 - weight) * dt))
        c_stats, _ = window(rng, nc, canary.errors * burst, canary_shares, dt)
        s_stats, _ = window(rng, ns, BASE_ERRORS * burst, stable_shares, dt)
        observed = Observation(
            canary_ready=True,
            smoke_ok=True,
            canary=router_window(c_stats, zero, dt),
            stable=router_window(s_stats, zero, dt),
        )
        command = Command.RESUME if state.phase is CanaryPhase.WAITING_FOR_APPROVAL else None
        state, _ = advance(policy, state, observed, now, command)
        if first_traffic is None and state.weight > 0:
            first_traffic = now
        if (
            decided_at is None
            and state.evidence
            and all(e.decision is Decision.NO_WORSE for e in state.evidence)
        ):
            decided_at = now
        if state.phase is CanaryPhase.ROLLED_BACK:
            return "rollback", now - (first_traffic or now)
        if state.phase is CanaryPhase.PROMOTED:
            at = decided_at if decided_at is not None else now
            return "promoted", at - (first_traffic or at)
    return "undecided", None


def cell(args: tuple[str, str, RolloutPolicy, float, Canary, int, int]) -> dict[str, object]:
    judge, name, policy, rate, canary, runs, seed = args
    outcomes = [run_one(policy, rate, canary, seed * 1_000_003 + i) for i in range(runs)]
    times = [t for o, t in outcomes if t is not None]
    return {
        "judge": judge,
        "policy": name,
        "rate": rate,
        "canary": canary.name,
        "rollback": sum(o == "rollback" for o, _ in outcomes) / runs,
        "undecided": sum(o == "undecided" for o, _ in outcomes) / runs,
        "median": statistics.median(times) if times else None,
        "limit": limit_seconds(policy, rate, canary) if judge == "sequential" else None,
        "deadline": policy.progress_deadline,
    }


def seconds(value: object) -> str:
    if not isinstance(value, float | int):
        return "-"
    return f"{value:.0f}s" if value < 600 else f"{value / 60:.0f}m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="canaries per cell")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    known = policies()
    jobs = [
        (judge, name, policy, rate, canary, args.runs, args.seed)
        for name in ("fast", "standard-canary")
        for rate in rates
        for canary in CANARIES
        for judge in ("threshold", "sequential")
        for policy in [known[(judge, name)]]
    ]
    started = time.monotonic()
    with multiprocessing.Pool() as pool:
        rows = pool.map(cell, jobs, chunksize=1)
    print(
        f"bench_judge: {args.runs} seeded canaries per cell, stable at {BASE_ERRORS:.1%} errors, "
        f"latency lognormal median {MEDIAN * 1000:.0f}ms (p99 239ms); "
        f"{time.monotonic() - started:.0f}s"
    )
    header = (
        f"{'policy':<16}{'req/s':>6}  {'canary':<9}"
        f"{'thr rollback':>13}{'undecided':>10}{'median':>8}   "
        f"{'seq rollback':>13}{'undecided':>10}{'median':>8}{'limit':>8}{'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    by = {(r["judge"], r["policy"], r["rate"], r["canary"]): r for r in rows}
    for name in ("fast", "standard-canary"):
        for rate in rates:
            for canary in CANARIES:
                t = by[("threshold", name, rate, canary.name)]
                s = by[("sequential", name, rate, canary.name)]
                limit = s["limit"]
                median = s["median"]
                ratio = (
                    f"{median / limit:.2f}"
                    if isinstance(limit, float) and isinstance(median, float | int) and limit
                    else "-"
                )
                print(
                    f"{name:<16}{rate:>6g}  {canary.name:<9}"
                    f"{t['rollback']:>13.1%}{t['undecided']:>10.1%}{seconds(t['median']):>8}   "
                    f"{s['rollback']:>13.1%}{s['undecided']:>10.1%}{seconds(median):>8}"
                    f"{seconds(limit):>8}{ratio:>7}"
                )
        print()
    summary(rows)


def summary(rows: list[dict[str, object]]) -> None:
    """The issue's bars, read off the table: the sequential judge's worst false
    rollbacks, worst detection where a decision fits before the deadline, and
    worst time to decision against the fixed-sample limit (the threshold judge's
    false rollbacks beside it)."""
    seq = [r for r in rows if r["judge"] == "sequential"]
    thr = [r for r in rows if r["judge"] == "threshold"]

    def worst(cells: list[dict[str, object]], key: str, pick: object) -> str:
        values = [(float(str(r[key])), r) for r in cells]
        value, row = pick(values, key=lambda v: v[0])  # type: ignore[operator]
        return f"{value:.1%} ({row['policy']}, {row['rate']:g} req/s, {row['canary']})"

    healthy = [r for r in seq if r["canary"] in ("healthy", "noisy")]
    print("sequential judge, false rollbacks, worst cell:", worst(healthy, "rollback", max))
    print(
        "threshold judge, false rollbacks, worst cell: ",
        worst([r for r in thr if r["canary"] in ("healthy", "noisy")], "rollback", max),
    )
    fits = [
        r
        for r in seq
        if r["canary"] in ("+2pt", "lat x1.5")
        and isinstance(r["limit"], float | int)
        and isinstance(r["deadline"], float | int)
        and r["limit"] <= r["deadline"]
    ]
    print(
        "sequential judge, detection where it fits the deadline, worst:",
        worst(fits, "rollback", min),
    )
    ratios = [
        (float(str(r["median"])) / float(str(r["limit"])), r)
        for r in seq
        if isinstance(r["limit"], float | int) and isinstance(r["median"], float | int)
    ]
    ratio, row = max(ratios, key=lambda v: v[0])
    print(
        f"sequential judge, time to decision / fixed-sample limit, worst: {ratio:.2f} "
        f"({row['policy']}, {row['rate']:g} req/s, {row['canary']})"
    )


if __name__ == "__main__":
    main()
