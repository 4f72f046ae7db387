"""The example repository is real: reproducible artifacts, working scoring code,
and a PR workflow that calls only commands mdc has."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from controller.cli.main import _parser, verbs
from tests.conftest import EXAMPLE_REPO

ARTIFACTS = [
    "fraud-scorer/v1.json",
    "fraud-scorer/v2.json",
    "search-ranker/v1.json",
    "search-ranker/v2.json",
    "search-ranker/v3.json",
]


def test_training_script_rebuilds_the_committed_artifacts(tmp_path: Path) -> None:
    copy = tmp_path / "artifacts"
    copy.mkdir()
    shutil.copy(EXAMPLE_REPO / "artifacts" / "train.py", copy / "train.py")
    subprocess.run([sys.executable, str(copy / "train.py")], check=True, timeout=120)
    for name in ARTIFACTS:
        assert (copy / name).read_bytes() == (EXAMPLE_REPO / "artifacts" / name).read_bytes(), name


def load_service(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", EXAMPLE_REPO / "services" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        # bentoml's own imports raise DeprecationWarnings from pydantic/pathspec
        warnings.simplefilter("ignore", DeprecationWarning)
        spec.loader.exec_module(module)
    return module


def weights(name: str) -> dict[str, Any]:
    return dict(json.loads((EXAMPLE_REPO / "artifacts" / name).read_text()))


def test_artifacts_are_plain_json_weights() -> None:
    for name in ARTIFACTS:
        body = weights(name)
        assert len(body["weights"]) == len(body["features"])
        assert all(isinstance(w, float) for w in body["weights"])


@pytest.mark.parametrize("version", ["v1.json", "v2.json"])
def test_fraud_score_rises_with_risk(version: str) -> None:
    service = load_service("fraud_scorer")
    w = weights(f"fraud-scorer/{version}")
    calm = service.score_transaction(w, {"amount_log": 0.5})
    risky = service.score_transaction(
        w, {"amount_log": 3.5, "foreign_merchant": 1, "night_hour": 1, "recent_declines": 2}
    )
    assert 0 < calm < 0.5 < risky < 1


def test_fraud_v2_differs_from_v1() -> None:
    service = load_service("fraud_scorer")
    tx = {"amount_log": 2.0, "foreign_merchant": 1}
    v1 = service.score_transaction(weights("fraud-scorer/v1.json"), tx)
    v2 = service.score_transaction(weights("fraud-scorer/v2.json"), tx)
    assert abs(v1 - v2) > 0.01


def test_ranker_orders_by_relevance() -> None:
    service = load_service("search_ranker")
    docs = [
        {"id": "stale", "bm25": 0.2, "click_rate": 0.1, "freshness": 0.0},
        {"id": "best", "bm25": 0.9, "click_rate": 0.8, "freshness": 0.9},
        {"id": "mid", "bm25": 0.5, "click_rate": 0.4, "freshness": 0.5},
    ]
    ranked = service.rank_documents(weights("search-ranker/v1.json"), docs)
    assert [d["id"] for d in ranked] == ["best", "mid", "stale"]
    assert ranked[0]["score"] > ranked[1]["score"] > ranked[2]["score"]


def test_services_are_bentoml_services_pinned_by_build_argument() -> None:
    for module_name, cls in (("fraud_scorer", "FraudScorer"), ("search_ranker", "SearchRanker")):
        service = load_service(module_name)
        assert type(getattr(service, cls)).__name__ == "Service"
        assert service.MODEL_TAG is None  # only set by `bentoml build --arg model_tag=...`


def test_pr_workflow_calls_only_existing_commands() -> None:
    workflow = yaml.safe_load((EXAMPLE_REPO / ".github" / "workflows" / "mdc-plan.yml").read_text())
    calls = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "").replace("\\\n", " ")
            for line in script.splitlines():
                words = shlex.split(line.split(">>", 1)[0])
                if words and words[0] == "mdc":
                    calls.append([w if not w.startswith("$") else "7" for w in words[1:]])
    assert calls, "the workflow should call mdc"
    assert {c[0] for c in calls} <= set(verbs())
    for call in calls:  # every flag exists: the real parser accepts the line
        parsed = _parser().parse_args(call)
        assert parsed.verb == call[0]
