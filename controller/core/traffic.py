"""Traffic as numbers: the router's per-backend counters (codes and a latency
histogram), the window an analysis interval judges, a route's split, and the
sampled exchanges the monitor reads.

Pure value types shared by the canary state machine, the routers (embedded and
HAProxy), the metrics providers and the monitor; no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.spec.kinds import Metric

__all__ = [
    "BUCKETS",
    "QUANTILES",
    "BackendStats",
    "BackendWindow",
    "ObservedTraffic",
    "Pair",
    "PairingConfig",
    "RouteConfig",
    "Sample",
    "SamplingConfig",
    "router_window",
]


#: Latency histogram bounds (seconds): fine where SLOs usually sit.
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)


@dataclass
class BackendStats:
    """Counters of one backend since the router started (monotonic)."""

    codes: dict[int, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code >= 500)

    def copy(self) -> BackendStats:
        return BackendStats(dict(self.codes), list(self.buckets), self.seconds)

    def minus(self, earlier: BackendStats) -> BackendStats:
        codes = {c: n - earlier.codes.get(c, 0) for c, n in self.codes.items()}
        return BackendStats(
            {c: n for c, n in codes.items() if n},
            [a - b for a, b in zip(self.buckets, earlier.buckets, strict=True)],
            self.seconds - earlier.seconds,
        )

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile, interpolated inside its bucket (as Prometheus does)."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, count in enumerate(self.buckets):
            if seen + count >= rank and count:
                low = BUCKETS[i - 1] if i > 0 else 0.0
                high = BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1] * 2
                return low + (high - low) * (rank - seen) / count
            seen += count
        return BUCKETS[-1]

    def observe(self, code: int, seconds: float) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.seconds += seconds


@dataclass(frozen=True)
class BackendWindow:
    """What one backend did over an analysis interval."""

    requests: int
    errors: int  # 5xx answers
    seconds: float  # length of the window
    latency: Mapping[float, float] = field(default_factory=dict)  # quantile -> seconds
    buckets: tuple[int, ...] = ()  # the latency histogram (per BUCKETS bound); () unknown

    def value(self, metric: Metric) -> float | None:
        if metric is Metric.REQUEST_RATE:
            return self.requests / self.seconds if self.seconds > 0 else None
        if self.requests == 0:
            return None
        if metric is Metric.ERROR_RATE:
            return self.errors / self.requests
        quantile = {Metric.LATENCY_P50: 0.5, Metric.LATENCY_P90: 0.9, Metric.LATENCY_P99: 0.99}[
            metric
        ]
        return self.latency.get(quantile)


@dataclass(frozen=True)
class ObservedTraffic:
    """A model's traffic as its stable version saw it (over the day so far): what
    ``mdc plan`` and the PR comment size a canary's verdict time with."""

    rate: float  # requests per second
    error_rate: float
    buckets: tuple[int, ...] = ()  # the latency histogram (per BUCKETS bound); () unknown

    @property
    def requests(self) -> int:
        return sum(self.buckets)


@dataclass(frozen=True)
class RouteConfig:
    stable: str | None = None  # "127.0.0.1:PORT"
    canary: str | None = None
    weight: int = 0  # percent to the canary
    mirror: int = 0  # percent of requests also copied to the canary
    sticky: str | None = None  # a header (or "cookie:NAME") whose value pins a user
    stable_more: tuple[str, ...] = ()  # the stable's other replicas (requests spread)
    canary_more: tuple[str, ...] = ()  # the canary's other replicas
    #: a pull request's preview ("127.0.0.1:PORT"): ``preview_share`` percent of the
    #: requests the stable answers are also sent to it, its answers never reach the
    #: client, and each is paired with the stable's answer (see :class:`Pair`)
    preview: str | None = None
    preview_share: int = 0

    def backends(self, side: str) -> tuple[str, ...]:
        """Every address of ``side`` ("stable" or "canary"), the first replica first."""
        first, more = (
            (self.canary, self.canary_more) if side == "canary" else (self.stable, self.stable_more)
        )
        return (first, *more) if first is not None else more

    @classmethod
    def of(
        cls, stable: tuple[str, ...], canary: tuple[str, ...] = (), weight: int = 0
    ) -> RouteConfig:
        """A split between the ready replicas of each side (none: no such side)."""
        return cls(
            stable[0] if stable else None,
            canary[0] if canary else None,
            weight if canary else 0,
            stable_more=tuple(stable[1:]),
            canary_more=tuple(canary[1:]),
        )


@dataclass(frozen=True)
class SamplingConfig:
    """Keep ``share`` of the requests and their answers, without the ``sensitive``
    keys (dropped before the sample is buffered)."""

    share: float
    sensitive: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Sample:
    """One sampled exchange, already redacted."""

    at: float  # epoch seconds
    backend: str  # "stable" or "canary"
    status: int
    seconds: float
    request: Any
    response: Any
    size: int  # bytes of request and response bodies


@dataclass(frozen=True)
class PairingConfig:
    """Keep the pairs of a preview's mirrored requests, without the ``sensitive``
    keys (dropped from the request and both answers before a pair is buffered)."""

    sensitive: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Pair:
    """One request the stable answered and the preview answered too, already
    redacted: the preview's answer went nowhere but here."""

    at: float  # epoch seconds
    request: Any
    stable_status: int
    stable_seconds: float
    stable_answer: Any  # decoded JSON (None: not JSON)
    preview_status: int
    preview_seconds: float
    preview_answer: Any
    size: int  # bytes of the request and both answers


QUANTILES = (0.5, 0.9, 0.99)


def router_window(now: BackendStats, then: BackendStats, seconds: float) -> BackendWindow:
    """A window from two snapshots of the router's counters."""
    delta = now.minus(then)
    return BackendWindow(
        requests=delta.requests,
        errors=delta.errors,
        seconds=seconds,
        latency={q: v for q in QUANTILES if (v := delta.quantile(q)) is not None},
        buckets=tuple(delta.buckets),
    )
