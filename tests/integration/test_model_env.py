"""Model processes run without the controller's secrets (issue 18, item 5): a
service that dumps its environment is built and served with credentials set in
the controller's environment, and none of them reaches the build or the release
(nor, read from /proc, any process of it)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import httpx
import pytest

from controller.adapters.packaging import FetchPolicy, Packager, Source
from controller.adapters.runtime.base import ReleaseSpec, State
from controller.adapters.runtime.local import LocalRuntime
from controller.spec.kinds import Probe
from controller.spec.tree import DirTree
from tests.bentos import bentoml_processes, repo_with_service

pytestmark = pytest.mark.integration

SECRETS = {
    "MDC_GIT_TOKEN": "git-s3cret",
    "MDC_GIT_PASSWORD": "git-passw0rd",
    "MDC_GITHUB_TOKEN": "gh-s3cret",
    "MDC_WEBHOOK_SECRET": "hook-s3cret",
    "MDC_ARTIFACT_TOKEN": "artifact-s3cret",
    "MDC_PROMETHEUS_URL": "http://prometheus.internal:9090",
    "GITHUB_TOKEN": "actions-s3cret",
    "GH_TOKEN": "cli-s3cret",
    "AWS_SECRET_ACCESS_KEY": "aws-s3cret",
    "HTTPS_PROXY": "http://proxy.internal:3128",
}

SERVICE = """
import json, os, sys
import bentoml

with open({dump!r} + f"/env-{{os.getpid()}}.json", "w") as out:
    json.dump({{"argv": sys.argv, "env": dict(os.environ)}}, out)

@bentoml.service
class Svc:
    @bentoml.api
    def env(self) -> dict:
        return dict(os.environ)
"""


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANG", "C.UTF-8")


def leaked(env: dict[str, str]) -> list[str]:
    values = set(SECRETS.values())
    return sorted(k for k, v in env.items() if k in SECRETS or v in values)


def test_neither_the_build_nor_the_release_sees_the_controllers_secrets(
    tmp_path: Path, secrets: None
) -> None:
    dump = tmp_path / "dumps"
    dump.mkdir()
    repo, model = repo_with_service(
        tmp_path / "repo", "env-dump", SERVICE.format(dump=str(dump)), api="env"
    )
    packager = Packager(tmp_path / "home", tmp_path / "state", fetch=FetchPolicy())
    bento = packager.build(model, DirTree(repo), Source()).bento_tag
    build_dumps = [json.loads(p.read_text()) for p in dump.glob("env-*.json")]
    assert build_dumps, "the build did not import the service"
    for seen in build_dumps:
        assert leaked(seen["env"]) == [], seen["argv"]
        assert seen["env"]["BENTOML_DO_NOT_TRACK"].lower() == "true"
        assert seen["env"]["LANG"] == "C.UTF-8"  # what a process needs still gets there
        assert "PATH" in seen["env"]
    for p in dump.glob("env-*.json"):
        p.unlink()

    runtime = LocalRuntime(tmp_path / "rt", tmp_path / "home", rng=random.Random(0))
    gpu = {"CUDA_VISIBLE_DEVICES": "GPU-test-0001", "MDC_GPU_MEMORY_LIMIT_BYTES": "1073741824"}
    try:
        runtime.start(
            ReleaseSpec(
                "env-dump/stable",
                "env-dump",
                "1",
                bento,
                probe=Probe("/env", {}, timeout=2.0, interval=0.2, failure_threshold=2),
                ready_timeout=60,
                env=gpu,
            )
        )
        release = runtime.wait_ready("env-dump/stable", 60)
        assert release.state is State.READY
        served = httpx.post(f"{release.url}/env", json={}, timeout=10).json()
        assert leaked(served) == []
        assert served["CUDA_VISIBLE_DEVICES"] == "GPU-test-0001"  # the release's own
        assert served["MDC_GPU_MEMORY_LIMIT_BYTES"] == "1073741824"
        serve_dumps = [json.loads(p.read_text()) for p in dump.glob("env-*.json")]
        assert serve_dumps, "the release did not import the service"
        assert all(leaked(seen["env"]) == [] for seen in serve_dumps)
        for pid in bentoml_processes(runtime.home("env-dump/stable")):
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            assert not any(value in environ for value in SECRETS.values()), pid
    finally:
        runtime.stop_all(drain=2.0)
        deadline = time.monotonic() + 10
        while bentoml_processes(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert bentoml_processes(tmp_path) == [], "a process outlived its test"
