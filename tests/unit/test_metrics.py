"""Reading Prometheus text and turning counters into windows."""

from __future__ import annotations

import math

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from controller.adapters.metrics import (
    PrometheusProvider,
    _bentoml_counts,
    _quantile,
    bentoml_window,
)
from controller.core.traffic import BackendStats, router_window
from controller.errors import TransientError

BEFORE = """# HELP bentoml_service_request_total Total number of requests
# TYPE bentoml_service_request_total counter
bentoml_service_request_total{endpoint="/score",http_response_code="200",service_name="s",service_version="v"} 10.0
bentoml_service_request_total{endpoint="/readyz",http_response_code="200",service_name="s",service_version="v"} 50.0
bentoml_service_request_duration_seconds_bucket{endpoint="/score",http_response_code="200",le="0.005"} 8.0
bentoml_service_request_duration_seconds_bucket{endpoint="/score",http_response_code="200",le="0.01"} 10.0
bentoml_service_request_duration_seconds_bucket{endpoint="/score",http_response_code="200",le="+Inf"} 10.0
"""
AFTER = """bentoml_service_request_total{endpoint="/score",http_response_code="200",service_name="s",service_version="v"} 28.0
bentoml_service_request_total{endpoint="/score",http_response_code="500",service_name="s",service_version="v"} 2.0
bentoml_service_request_total{endpoint="/readyz",http_response_code="200",service_name="s",service_version="v"} 90.0
bentoml_service_request_duration_seconds_bucket{endpoint="/score",http_response_code="200",le="0.005"} 16.0
bentoml_service_request_duration_seconds_bucket{endpoint="/score",http_response_code="200",le="0.01"} 28.0
bentoml_service_request_duration_seconds_bucket{endpoint="/score",http_response_code="200",le="+Inf"} 30.0
"""


def test_bentoml_counts_by_code_and_cumulative_bucket() -> None:
    codes, buckets = _bentoml_counts(BEFORE)
    assert codes == {"200": 10.0}  # /readyz left out
    assert buckets == {0.005: 8.0, 0.01: 10.0, math.inf: 10.0}


def test_bentoml_counts_read_what_prometheus_client_writes() -> None:
    """BentoML exports with prometheus_client: ``_created`` series, escaped labels."""
    registry = CollectorRegistry()
    labels = ("endpoint", "http_response_code", "service_name")
    requests = Counter("bentoml_service_request", "Total requests", labels, registry=registry)
    duration = Histogram(
        "bentoml_service_request_duration_seconds",
        "Latency",
        labels,
        buckets=(0.005, 0.01),
        registry=registry,
    )
    for endpoint, code, seconds in [
        ("/score", "200", 0.004),
        ("/score", "200", 0.02),
        ("/score", "503", 0.004),
        ("/other", "200", 0.009),
        ("/readyz", "200", 0.001),
    ]:
        requests.labels(endpoint, code, 'say "hi"\n').inc()
        duration.labels(endpoint, code, 'say "hi"\n').observe(seconds)
    codes, buckets = _bentoml_counts(generate_latest(registry).decode())
    assert codes == {"200": 3.0, "503": 1.0}
    assert buckets == {0.005: 2.0, 0.01: 3.0, math.inf: 4.0}


@pytest.mark.parametrize("text", ["<html>502 Bad Gateway</html>", 'm{le="0.1" 1\n'])
def test_text_that_is_not_prometheus_is_unreadable(text: str) -> None:
    with pytest.raises(TransientError, match="not Prometheus text"):
        bentoml_window(BEFORE, text, 10.0)


def test_bentoml_window_leaves_out_health_checks() -> None:
    window = bentoml_window(BEFORE, AFTER, 10.0)
    assert (window.requests, window.errors) == (20, 2)
    assert window.latency[0.5] == pytest.approx(0.005 + 0.005 * (10 - 8) / 10)


@pytest.mark.parametrize(
    ("cumulative", "q", "value"),
    [
        ([(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.5, 0.1),
        ([(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.75, 0.15),
        ([(0.1, 0.0), (float("inf"), 10.0)], 0.9, 0.1),  # past the last bound: the last bound
        ([], 0.5, None),
        ([(0.1, 0.0), (float("inf"), 0.0)], 0.5, None),
    ],
)
def test_quantile_like_prometheus(
    cumulative: list[tuple[float, float]], q: float, value: float | None
) -> None:
    assert _quantile(cumulative, q) == (pytest.approx(value) if value is not None else None)


def test_router_window() -> None:
    then = BackendStats()
    now = BackendStats()
    for i in range(100):
        now.observe(500 if i < 5 else 200, 0.004 if i < 90 else 0.09)
    window = router_window(now, then, 10.0)
    assert (window.requests, window.errors) == (100, 5)
    assert 0.0025 < window.latency[0.5] <= 0.005
    assert 0.075 < window.latency[0.99] <= 0.1


def test_a_window_from_prometheus_asks_every_figure_at_one_instant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by CI: under load the error query ran seconds after the request query,
    over a window holding half the traffic: a canary failing everything read 50%."""
    asked: list[tuple[str, str | None]] = []
    clock = iter(range(1_000, 2_000, 3))  # seconds pass between the queries
    monkeypatch.setattr("controller.adapters.metrics.time.time", lambda: float(next(clock)))

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append((request.url.params["query"], request.url.params.get("time")))
        value = ["0", "10"]
        return httpx.Response(
            200,
            json={
                "status": "success",
                "data": {"resultType": "vector", "result": [{"value": value}]},
            },
        )

    provider = PrometheusProvider(
        "http://p", client=httpx.Client(transport=httpx.MockTransport(answer))
    )
    window = provider.window("m", "canary", 8)
    assert (window.requests, window.errors) == (10, 10)
    assert len(asked) == 5  # requests, errors, three quantiles
    assert {at for _, at in asked} == {"1000.000"}
