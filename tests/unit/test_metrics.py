"""Reading Prometheus text and turning counters into windows."""

from __future__ import annotations

import pytest

from controller.adapters.metrics import _quantile, bentoml_window, parse_prometheus_text
from controller.core.traffic import BackendStats, router_window

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


def test_parse_text_format() -> None:
    samples = parse_prometheus_text(BEFORE)
    assert samples[0] == (
        "bentoml_service_request_total",
        {
            "endpoint": "/score",
            "http_response_code": "200",
            "service_name": "s",
            "service_version": "v",
        },
        10.0,
    )
    assert len(samples) == 5  # comments skipped


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
