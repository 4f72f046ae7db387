"""The Prometheus provider against a real Prometheus server scraping the
embedded router; a provider that cannot answer fails, never passes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.adapters.metrics import PrometheusProvider, make_provider
from controller.adapters.router.embedded import EmbeddedRouter
from controller.app.rollout import query_values
from controller.core.canary import judge
from controller.core.traffic import RouteConfig
from controller.errors import TransientError
from controller.spec.kinds import Check, Metric
from tests.gitservers import free_port
from tests.integration.test_router import Backend
from tests.prometheus_server import prometheus_server

pytestmark = pytest.mark.integration


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, EmbeddedRouter, str, Backend, Backend]]:
    stable, canary = Backend("stable"), Backend("canary", status=500)
    router = EmbeddedRouter()
    url = router.add_model("m")
    router.configure("m", RouteConfig(stable.address, canary.address, 25))
    admin = router.admin_url.removeprefix("http://")
    try:
        with prometheus_server(tmp_path, {"mdc-router": admin}) as base:
            yield base, router, url, stable, canary
    finally:
        router.close()
        stable.close()
        canary.close()


def test_window_from_prometheus_matches_the_router(prometheus: tuple) -> None:
    base, router, url, _, _ = prometheus
    provider = make_provider("prometheus", url=base)
    assert isinstance(provider, PrometheusProvider)
    try:
        with httpx.Client() as client:
            started = time.monotonic()
            while time.monotonic() - started < 6:  # six scrapes of steady traffic
                client.post(f"{url}/score", json={})
        time.sleep(1.5)  # one more scrape after the last request
        snapshot = router.snapshot("m")
        total = provider.value('sum(mdc_router_requests_total{model="m"})')
        assert total == snapshot["stable"].requests + snapshot["canary"].requests
        canary = provider.window("m", "canary", 8)
        assert canary.requests > 0
        # this canary answers 500 to everything (increase() extrapolates: not exact)
        assert abs(canary.errors - canary.requests) <= 0.02 * canary.requests + 1
        stable = provider.window("m", "stable", 8)
        assert stable.errors == 0
        assert 0.5 < (canary.requests / stable.requests) / (25 / 75) < 2.0
        assert 0 < stable.latency[0.99] < 0.5
        outcome, results = judge(
            (Check("errors", Metric.ERROR_RATE, None, 0.05, None, None),), canary, stable, 1
        )
        assert outcome.value == "fail"
        assert "> max 0.05" in results[0].message
    finally:
        provider.close()


def test_query_checks_read_prometheus(prometheus: tuple) -> None:
    base, _, url, _, _ = prometheus
    with httpx.Client() as client:
        for _ in range(20):
            client.post(f"{url}/score", json={})
    checks = (
        Check(
            "total",
            None,
            None,
            10_000.0,
            None,
            None,
            query='sum(mdc_router_requests_total{model="m"})',
        ),
        Check("nothing", None, None, 1.0, None, None, query='sum(no_such_metric{model="m"})'),
        Check("broken", None, None, 1.0, None, None, query="sum(rate("),
        Check("builtin", Metric.ERROR_RATE, None, 0.1, None, None),
    )
    provider = PrometheusProvider(base)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # until Prometheus has scraped the 20 requests
            if provider.value('sum(mdc_router_requests_total{model="m"})') == 20:
                break
            time.sleep(0.2)
        values = query_values(checks, provider)
    finally:
        provider.close()
    assert values["total"] == 20
    assert values["nothing"] is None  # an empty answer cannot be judged: the check fails
    assert values["broken"] is None
    assert "builtin" not in values
    assert query_values(checks, None)["total"] is None  # no Prometheus configured


def test_a_provider_that_cannot_answer_is_an_error_not_a_pass() -> None:
    provider = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=1)
    with pytest.raises(TransientError) as caught:
        provider.window("m", "canary", 10)
    assert caught.value.reason == "MetricsUnavailable"
    outcome, _ = judge((Check("errors", Metric.ERROR_RATE, None, 0.05, None, None),), None, None, 1)
    assert outcome.value == "fail"  # what the driver judges when the provider raised


def test_bad_promql_is_refused(prometheus: tuple) -> None:
    base = prometheus[0]
    provider = PrometheusProvider(base)
    try:
        with pytest.raises(TransientError, match="Prometheus refused"):
            provider.value("sum(rate(")
    finally:
        provider.close()


def test_unknown_provider_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown metrics provider 'graphite'"):
        make_provider("graphite")
