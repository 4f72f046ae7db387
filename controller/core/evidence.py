"""Sequential evidence about a canary against its stable version: the judge
behind ``analysis.judge: sequential``.

Owns the arithmetic of two always-valid tests per compared rate (the share of
5xx answers; the share of requests slower than a latency threshold), each
accumulated over the whole canary, across intervals and weight steps, and
each comparing the canary with the stable version over the same windows:

* **Worse** (rolls back): an e-process against "the canary's rate is no
  higher than the stable's". Conditioned on the events (errors, or slow
  requests) the two versions had in one window, the share that fell on the
  canary is, when the rates are equal, hypergeometric with the canary's share
  of the requests; the likelihood ratio of a canary ``theta`` times worse
  (``theta`` from the stable's rate *before* the window and the smallest
  regression the policy names) is then a nonnegative supermartingale, so by
  Ville's inequality the chance it ever reaches ``1/alpha`` is at most
  ``alpha``, however often it is looked at and whatever the traffic. No
  nuisance parameter enters: the stable's own error rate, bursts and all,
  cancels.
* **No worse** (lets a step end): a sequential probability ratio against
  "the canary's rate is the stable's plus the margin", with the stable's rate
  taken from its past windows (a lower confidence bound, so a canary exactly at
  the margin passes less often than ``beta``). Passing is a gate, not a
  verdict: the worse test keeps running until the canary is promoted.

A window carries no evidence until both versions served requests in it; no
data is never a pass. Pure: no I/O, no clock. Called by
:mod:`controller.core.canary` once per analysis interval, by ``mdc plan`` for
how long a verdict takes, and by ``bench/bench_judge.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from statistics import NormalDist
from typing import Any

from controller.core.traffic import BUCKETS

__all__ = [
    "Decision",
    "Evidence",
    "Tally",
    "evidence_from_dict",
    "evidence_to_dict",
    "expected_requests",
    "fixed_sample_requests",
    "latency_margin",
    "slow_count",
    "weigh",
]

#: Stable requests seen before the "no worse" test uses the stable's rate
STABLE_WARMUP = 20
#: The z of the lower confidence bound on the stable's rate in the "no worse" test
STABLE_BOUND_Z = 2.0
#: The smallest margin a latency comparison tests (a share of requests)
MIN_LATENCY_MARGIN = 0.02


class Decision(StrEnum):
    UNDECIDED = "undecided"
    NO_WORSE = "no-worse"
    WORSE = "worse"


@dataclass(frozen=True)
class Tally:
    """One window of one compared rate: events (errors, slow requests) out of
    requests, for each version. Events may be fractional (a latency threshold
    inside a histogram bucket)."""

    canary_events: float
    canary_requests: int
    stable_events: float
    stable_requests: int


@dataclass(frozen=True)
class Evidence:
    """Everything one compared rate has shown so far (plain data, recorded in the
    canary's state so a restarted controller goes on from it)."""

    metric: str  # "errorRate" or "latency"
    log_worse: float = 0.0  # log e-value against "no worse than stable"
    log_no_worse: float = 0.0  # log likelihood ratio for "no worse" over "worse by the margin"
    canary_events: float = 0.0
    canary_requests: int = 0
    stable_events: float = 0.0
    stable_requests: int = 0
    decision: Decision = Decision.UNDECIDED
    windows: int = 0  # windows that carried evidence
    stable_buckets: tuple[int, ...] = ()  # latency: the stable's histogram so far

    @property
    def canary_rate(self) -> float | None:
        return self.canary_events / self.canary_requests if self.canary_requests else None

    @property
    def stable_rate(self) -> float | None:
        return self.stable_events / self.stable_requests if self.stable_requests else None

    def toward_worse(self, alpha: float) -> float:
        """How far (0-1) the evidence has gone toward a rollback at budget ``alpha``."""
        return min(1.0, max(0.0, self.log_worse / math.log(1 / alpha)))

    def toward_no_worse(self, beta: float) -> float:
        """How far (0-1) the evidence has gone toward "no worse" at ``beta``."""
        return min(1.0, max(0.0, self.log_no_worse / math.log(1 / beta)))


def evidence_to_dict(evidence: Evidence) -> dict[str, Any]:
    return asdict(evidence)


def evidence_from_dict(data: Mapping[str, Any]) -> Evidence:
    """The inverse of :func:`evidence_to_dict`; raises ``ValueError`` on bad data."""
    try:
        return Evidence(
            **{
                **data,
                "decision": Decision(data.get("decision", "undecided")),
                "stable_buckets": tuple(data.get("stable_buckets", ())),
            }
        )
    except TypeError as exc:
        raise ValueError(f"not canary evidence: {exc}") from None


def _rate(events: float, requests: int) -> float:
    """A rate that is never 0 or 1 (half an event of prior each way)."""
    return (events + 0.5) / (requests + 1.0)


def weigh(
    evidence: Evidence,
    tally: Tally,
    margin: float,
    alpha: float,
    beta: float,
) -> Evidence:
    """``evidence`` with one more window.

    ``margin`` is the smallest increase of the canary's rate over the stable's
    that matters (for errors, the policy's ``maxIncrease``; for latency, the
    share of requests a slowdown by ``maxRatio`` would push over the threshold,
    from the stable's past histogram). It must come from data before this
    window. ``alpha`` is this rate's share of the false-rollback budget and
    ``beta`` of the missed-regression budget. A decision of ``WORSE`` is final;
    ``NO_WORSE`` is kept (the worse test goes on).
    """
    if evidence.decision is Decision.WORSE:
        return evidence
    nc, ns = tally.canary_requests, tally.stable_requests
    xc = min(float(nc), max(0.0, tally.canary_events))
    xs = min(float(ns), max(0.0, tally.stable_events))
    if nc <= 0 or ns <= 0:  # a window one version did not serve: no comparison
        return replace(
            evidence,
            canary_events=evidence.canary_events + xc,
            canary_requests=evidence.canary_requests + max(0, nc),
            stable_events=evidence.stable_events + xs,
            stable_requests=evidence.stable_requests + max(0, ns),
        )
    margin = max(margin, 1e-6)
    # the stable's rate before this window (predictable: the test stays valid)
    past = _rate(evidence.stable_events, evidence.stable_requests)
    log_worse = evidence.log_worse
    if xc + xs > 0:
        theta = min(1e6, (past + margin) / past)  # how many times worse a bad canary is
        pi0 = nc / (nc + ns)
        pi1 = nc * theta / (nc * theta + ns)
        log_worse += xc * math.log(pi1 / pi0) + xs * math.log((1 - pi1) / (1 - pi0))
    log_no_worse = evidence.log_no_worse
    if evidence.stable_requests >= STABLE_WARMUP:
        n = evidence.stable_requests
        low = max(0.0, past - STABLE_BOUND_Z * math.sqrt(past * (1 - past) / n))
        q0 = min(1 - 1e-9, low + margin)  # the canary worse by the margin
        q1 = max(1e-9, min(past, q0 - margin / 2))  # the canary as good as the stable
        log_no_worse += xc * math.log(q1 / q0) + (nc - xc) * math.log((1 - q1) / (1 - q0))
    decision: Decision = evidence.decision
    if log_worse >= math.log(1 / alpha):
        decision = Decision.WORSE
    elif decision is Decision.UNDECIDED and log_no_worse >= math.log(1 / beta):
        decision = Decision.NO_WORSE
    return replace(
        evidence,
        log_worse=log_worse,
        log_no_worse=log_no_worse,
        canary_events=evidence.canary_events + xc,
        canary_requests=evidence.canary_requests + nc,
        stable_events=evidence.stable_events + xs,
        stable_requests=evidence.stable_requests + ns,
        decision=decision,
        windows=evidence.windows + 1,
    )


def slow_count(buckets: Sequence[int], threshold: float) -> float:
    """How many requests of a latency histogram (counts per :data:`BUCKETS`
    bound, then the overflow) took longer than ``threshold`` seconds, linear
    inside the bucket the threshold falls in."""
    if not buckets:
        return 0.0
    slow = 0.0
    low = 0.0
    for i, count in enumerate(buckets):
        high = BUCKETS[i] if i < len(BUCKETS) else math.inf
        if threshold <= low:
            slow += count
        elif threshold < high:
            width = (BUCKETS[-1] * 2 if high == math.inf else high) - low
            slow += count * max(0.0, 1 - (threshold - low) / width)
        low = high
    return slow


def latency_margin(buckets: Sequence[int], threshold: float, max_ratio: float) -> float:
    """The increase of the share of requests over ``threshold`` that a slowdown
    by ``max_ratio`` would bring, from the stable's histogram ``buckets``: the
    share over ``threshold / max_ratio`` less the share over ``threshold``
    (at least :data:`MIN_LATENCY_MARGIN`)."""
    total = sum(buckets)
    if total <= 0:
        return MIN_LATENCY_MARGIN
    now = slow_count(buckets, threshold) / total
    slower = slow_count(buckets, threshold / max_ratio) / total
    return max(MIN_LATENCY_MARGIN, slower - now)


def _z(p: float) -> float:
    return NormalDist().inv_cdf(1 - p)


def fixed_sample_requests(
    rate: float, margin: float, alpha: float, beta: float, share: float
) -> float:
    """The canary requests one fixed-size test needs to tell a canary at the
    stable's ``rate`` from one at ``rate + margin`` with these error rates,
    when the canary gets ``share`` of the traffic (the stable the rest): the
    limit a sequential test is measured against."""
    p0, p1 = rate, min(0.999, rate + margin)
    k = (1 - share) / share  # stable requests per canary request
    a = _z(alpha) * math.sqrt(p0 * (1 - p0) * (1 + 1 / k))
    b = _z(beta) * math.sqrt(p1 * (1 - p1) + p0 * (1 - p0) / k)
    return ((a + b) / margin) ** 2


def expected_requests(rate: float, margin: float, beta: float) -> float:
    """About how many canary requests the "no worse" test needs to pass a canary
    as good as its stable version at ``rate`` (Wald's approximation: the
    threshold over the expected log-likelihood ratio of one request)."""
    q0 = min(1 - 1e-9, rate + margin)
    q1 = min(max(rate, 1e-9), q0 - 1e-9)
    if q1 <= 0:
        return math.inf
    drift = q1 * math.log(q1 / q0) + (1 - q1) * math.log((1 - q1) / (1 - q0))
    return math.log(1 / beta) / drift if drift > 0 else math.inf
