"""A real Prometheus for tests: :func:`prometheus_server` starts ``prometheus`` on a
free loopback port, scraping the given targets every second, and stops it. A
missing binary skips the test locally and fails it in CI (``.ci/run`` installs it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gitservers import free_port


@contextlib.contextmanager
def prometheus_server(folder: Path, targets: dict[str, str]) -> Iterator[str]:
    """Prometheus scraping ``targets`` (job name -> ``host:port``); yields its URL."""
    if shutil.which("prometheus") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI lacks prometheus (Debian package prometheus)")
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    port = free_port()
    config = folder / "prometheus.yml"
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"
        for job, address in targets.items()
    )
    config.write_text(
        f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}"
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("prometheus did not become ready within 20s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
