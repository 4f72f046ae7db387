"""Metrics providers: where an analysis interval's numbers come from.

Three sources, each giving the :class:`~controller.core.canary.BackendWindow` the
state machine judges (requests, 5xx errors, latency quantiles over a window):

* the router's own counters (:func:`router_window`, from two snapshots);
* the Prometheus HTTP API (:class:`PrometheusProvider`): ``increase`` and
  ``histogram_quantile`` over the router's metrics as Prometheus scraped
  them, or any custom PromQL (:meth:`PrometheusProvider.value`);
* BentoML's own ``/metrics`` (:func:`bentoml_window`, from two scrapes of a
  release), which counts what the server saw, health checks left out.

A provider that cannot answer raises :class:`~controller.errors.TransientError`;
the driver turns that into an unreadable window, which fails every check --
never a pass. :func:`make_provider` raises on an unknown name.

Called by the rollout driver.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.core.traffic import QUANTILES, BackendWindow
from controller.errors import Reason, TransientError

__all__ = [
    "PrometheusProvider",
    "QueryProvider",
    "bentoml_window",
    "make_provider",
]

_HEALTH = ("/readyz", "/livez", "/healthz", "/metrics")


class QueryProvider(Protocol):
    """What a PromQL check needs: the value of a query now."""

    def value(self, promql: str) -> float | None:
        """The query's single value (None: no data); :class:`TransientError` when it
        cannot be read."""
        ...


class PrometheusProvider:
    """Instant queries against a Prometheus server's HTTP API."""

    def __init__(self, url: str, timeout: float = 5.0, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.client = client or httpx.Client(timeout=timeout)

    def value(self, promql: str, at: float | None = None) -> float | None:
        """The single value ``promql`` gives now (or at epoch second ``at``); None for
        an empty result."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        try:
            answer = self.client.get(f"{self.url}/api/v1/query", params=params)
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TransientError(
                f"Prometheus at {self.url}: {exc}", reason=Reason.METRICS_UNAVAILABLE
            ) from None
        if answer.status_code != 200 or body.get("status") != "success":
            raise TransientError(
                f"Prometheus refused {promql!r}: {body.get('error', answer.status_code)}",
                reason=Reason.METRICS_UNAVAILABLE,
            )
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            number = float(result[1])
        elif not result:
            return None
        elif len(result) > 1:
            raise TransientError(
                f"{promql!r} gave {len(result)} series, not one", reason=Reason.METRICS_AMBIGUOUS
            )
        else:
            number = float(result[0]["value"][1])
        return None if math.isnan(number) else number

    def window(self, model: str, backend: str, seconds: float) -> BackendWindow:
        """The router's counters for one backend over the last ``seconds``, via Prometheus."""
        span = f"{max(1, round(seconds))}s"
        where = f'model="{model}",backend="{backend}"'
        at = time.time()  # every figure over the same window, however slow the answers
        requests = self.value(f"sum(increase(mdc_router_requests_total{{{where}}}[{span}]))", at)
        errors = self.value(
            f'sum(increase(mdc_router_requests_total{{{where},code=~"5.."}}[{span}]))', at
        )
        latency = {}
        for q in QUANTILES:
            v = self.value(
                f"histogram_quantile({q}, sum by (le) "
                f"(rate(mdc_router_request_duration_seconds_bucket{{{where}}}[{span}])))",
                at,
            )
            if v is not None:
                latency[q] = v
        return BackendWindow(round(requests or 0), round(errors or 0), seconds, latency)

    def close(self) -> None:
        self.client.close()


def _bentoml_counts(text: str) -> tuple[dict[str, float], dict[float, float]]:
    """Requests by HTTP code and the cumulative latency buckets (by upper bound) of
    one BentoML ``/metrics`` scrape, summed over endpoints, health checks left out;
    :class:`TransientError` if the text is not the Prometheus text format."""
    codes: dict[str, float] = {}
    buckets: dict[float, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("endpoint", "") in _HEALTH:
                    continue
                if sample.name == "bentoml_service_request_total":
                    code = sample.labels.get("http_response_code", "")
                    codes[code] = codes.get(code, 0.0) + sample.value
                elif sample.name == "bentoml_service_request_duration_seconds_bucket":
                    le = float(sample.labels.get("le", "+Inf"))
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    except ValueError as exc:
        raise TransientError(
            f"BentoML /metrics is not Prometheus text: {exc}", reason=Reason.METRICS_UNAVAILABLE
        ) from None
    return codes, buckets


def bentoml_window(before: str, after: str, seconds: float) -> BackendWindow:
    """A window from two scrapes of a BentoML server's ``/metrics``."""
    codes_a, buckets_a = _bentoml_counts(before)
    codes_b, buckets_b = _bentoml_counts(after)
    requests = sum(codes_b.values()) - sum(codes_a.values())
    errors = sum(v - codes_a.get(c, 0.0) for c, v in codes_b.items() if c.startswith("5"))
    cumulative = sorted((le, v - buckets_a.get(le, 0.0)) for le, v in buckets_b.items())
    latency = {q: v for q in QUANTILES if (v := _quantile(cumulative, q)) is not None}
    return BackendWindow(round(requests), round(errors), seconds, latency)


def _quantile(cumulative: list[tuple[float, float]], q: float) -> float | None:
    """``histogram_quantile`` over cumulative (le, count) pairs, as Prometheus computes it."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    previous_le, previous_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return previous_le
            if count == previous_count:
                return le
            return previous_le + (le - previous_le) * (rank - previous_count) / (
                count - previous_count
            )
        previous_le, previous_count = le, count
    return None


def make_provider(kind: str, **options: str) -> PrometheusProvider:
    """The provider named ``kind`` that needs setting up (the router's counters and
    BentoML's /metrics need none); an unknown name is an error."""
    if kind == "prometheus":
        return PrometheusProvider(options["url"])
    raise ValueError(
        f"unknown metrics provider {kind!r}; known: prometheus (router and bentoml need no setup)"
    )
