"""Router overhead: the same backend called directly, through mdc's embedded
router, and through nginx as a reverse proxy with upstream keep-alive -- in
one run -- plus the time from a canary's failure limit to weight 0.

Backend: nginx answering a fixed 200 (so the backend is not the bottleneck).
Latency: ``wrk -c1`` (one kept-alive connection, sequential) p50/p99.
Throughput: ``wrk -c32``. On 2 cores wrk and the proxy compete for CPU:
compare the ratios within this run, never across runs.

Needs nginx (Debian ``nginx-light``) and wrk. Run:
``.venv/bin/python bench/bench_router.py``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.adapters.router.embedded import EmbeddedRouter
from controller.core.canary import Observation, advance, start
from controller.core.traffic import BackendWindow, RouteConfig
from controller.spec.kinds import Analysis, Check, Metric, RolloutPolicy, Step, StepKind
from tests.gitservers import free_port

NGINX = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{backend}; location / {{ return 200 '{{"ok":true}}'; }} }}
  server {{ listen 127.0.0.1:{proxy};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }}
}}
"""


def wrk(url: str, connections: int, seconds: int = 4) -> tuple[float, float, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def micro(label: str) -> float:
        match = re.search(rf"{label}%\s+([0-9.]+)(us|ms|s)", out)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]

    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    return micro(" 50"), micro(" 99"), rps


def rollback_time() -> float:
    """Seconds from the tick that reaches the failure limit to weight 0 at the router."""
    policy = RolloutPolicy(
        "p",
        (Step(StepKind.SET_WEIGHT, weight=50), Step(StepKind.ANALYSIS, intervals=5)),
        Analysis(1.0, 0, 10, (Check("errors", Metric.ERROR_RATE, None, 0.01, None, None),)),
        None,
        None,
        None,
        source=None,  # type: ignore[arg-type]
    )
    router = EmbeddedRouter(admin_port=None)
    router.add_model("m")
    router.configure("m", RouteConfig("127.0.0.1:1", "127.0.0.1:2", 50))
    good = BackendWindow(100, 0, 1.0, {0.5: 0.01, 0.9: 0.01, 0.99: 0.01})
    bad = BackendWindow(100, 30, 1.0, {0.5: 0.01, 0.9: 0.01, 0.99: 0.01})
    state, _ = advance(policy, start("h", 0), Observation(True, True, good, good), 0)
    began = time.perf_counter()
    state, actions = advance(policy, state, Observation(True, True, bad, good), 1.0)
    for action in actions:
        if action.kind == "set-weight":
            router.configure("m", RouteConfig("127.0.0.1:1", None, action.weight))
    took = time.perf_counter() - began
    router.close()
    return took


def main() -> None:
    if not (shutil.which("nginx") and shutil.which("wrk")):
        print("needs nginx (nginx-light) and wrk")
        return
    with tempfile.TemporaryDirectory() as tmp:
        backend, proxy = free_port(), free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX.format(dir=tmp, backend=backend, proxy=proxy))
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
        router = EmbeddedRouter(admin_port=None)
        try:
            time.sleep(0.5)
            url = router.add_model("m")
            router.configure("m", RouteConfig(f"127.0.0.1:{backend}", f"127.0.0.1:{backend}", 10))
            targets = {
                "direct": f"http://127.0.0.1:{backend}/",
                "nginx proxy": f"http://127.0.0.1:{proxy}/",
                "mdc router": url + "/",
            }
            results = {name: (wrk(t, 1), wrk(t, 32)) for name, t in targets.items()}
        finally:
            router.close()
            nginx.terminate()
            nginx.wait(timeout=10)
    base = results["direct"]
    print("same backend (nginx return 200), wrk -t1; latency with 1 connection, throughput with 32")
    for name, ((p50, p99, _), (_, _, rps)) in results.items():
        print(
            f"  {name:<12} p50 {p50:7.0f} us (+{p50 - base[0][0]:5.0f})  p99 {p99:7.0f} us "
            f"(+{p99 - base[0][1]:6.0f})  {rps:8.0f} req/s ({rps / base[1][2]:.2f} of direct)"
        )
    print(
        f"failure limit reached -> weight 0 at the router: {rollback_time() * 1e6:.0f} us "
        "(same tick; the next request goes to stable)"
    )


if __name__ == "__main__":
    main()
