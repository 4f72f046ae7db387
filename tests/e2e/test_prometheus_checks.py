"""PromQL checks under ``mdc run``, as a user runs it: a configuration file with a
``prometheus:`` setting, a real Prometheus server, and a rollout policy whose only
check is a query. The canary is promoted while the query's value is inside its
bound and rolled back when it is not (before the wiring gave the rollout driver a
Prometheus provider, every such canary was rolled back: "could not be read")."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from controller.demo import RANKER, Demo, Traffic, _bump, ranker_request, version_classifier
from tests.e2e.conftest import Controller, mdc_config
from tests.e2e.conftest import wait_for as _wait
from tests.prometheus_server import prometheus_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

POLICY = """\
apiVersion: mdc.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: promql
spec:
  warmup:
    timeout: 1m
  progressDeadline: 2m
  steps:
    - setWeight: 50
    - analysis: {intervals: 2}
  analysis:
    interval: 3s
    failureLimit: 0
    minRequests: 3
    checks:
      - name: quality
        query: max(mdc_test_quality)
        min: 0.9
"""


class Quality:
    """A scrape target whose one gauge the test sets."""

    def __init__(self) -> None:
        self.value = 0.99
        quality = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"# TYPE mdc_test_quality gauge\nmdc_test_quality {quality.value}\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Quality]]:
    quality = Quality()
    try:
        with prometheus_server(tmp_path, {"quality": quality.address}) as base:
            yield base, quality
    finally:
        quality.close()


def _promql_policy(repo: Path) -> None:
    (repo / "rollouts" / "promql.yaml").write_text(POLICY)
    spec = repo / "models" / f"{RANKER}.yaml"
    spec.write_text(spec.read_text().replace("rollout: fast", "rollout: promql"))


def _query(base: str) -> float | None:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": "max(mdc_test_quality)"})
    result = answer.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_mdc_run_judges_a_canary_on_a_promql_query(
    tmp_path: Path, cleanup: list[Controller], prometheus: tuple[str, Quality]
) -> None:
    base, quality = prometheus
    with Demo(tmp_path / "demo") as demo:
        demo.setup(prepare=_promql_policy)
        assert demo.github is not None
        config, router_port = mdc_config(tmp_path, demo, prometheus=base)
        env = {k: v for k, v in os.environ.items() if k != "MDC_PROMETHEUS_URL"}
        controller = Controller(config, tmp_path / "controller.log", env)
        cleanup.append(controller)
        controller.start()
        demo.hook_url = controller.url() + "/webhook"
        _wait(lambda: (controller.status(RANKER) or {}).get("phase") == "Healthy", 240, "healthy")
        traffic = Traffic(
            f"http://127.0.0.1:{router_port}/rank", ranker_request, version_classifier(demo.work)
        ).start()
        try:
            _wait(lambda: _query(base) == 0.99, 30, "Prometheus has the good value")
            demo.open_pr("ranker-v2", "search-ranker 2026.11.2", _bump("2026.11.2", "v2.json"))
            demo.merge("ranker-v2")
            promoted = _wait(
                lambda: (
                    (row := controller.status(RANKER))
                    and row["stable"] == "2026.11.2"
                    and row["phase"] == "Healthy"
                    and row
                ),
                180,
                "promoted on the query's value",
            )
            assert promoted["canary"] is None

            quality.value = 0.5
            _wait(lambda: _query(base) == 0.5, 30, "Prometheus has the bad value")
            demo.open_pr("ranker-v3", "search-ranker 2026.11.3", _bump("2026.11.3", "v3.json"))
            demo.merge("ranker-v3")
            rolled = _wait(
                lambda: (row := controller.status(RANKER)) and row["phase"] == "RolledBack" and row,
                180,
                "rolled back on the query's value",
            )
            assert rolled["stable"] == "2026.11.2"
        finally:
            traffic.stop()
        log = (tmp_path / "controller.log").read_text()
        assert "could not be read" not in log
        assert controller.stop() == 0
