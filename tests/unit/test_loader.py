"""Loading valid repositories: typed objects, defaults, which files count."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from controller.core.plan import spec_hash
from controller.spec.kinds import (
    Discovery,
    Judge,
    LatencyBound,
    Metric,
    OutputKind,
    Preview,
    PreviewOutput,
    Sharing,
    StepKind,
)
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO


def test_example_repo_loads_completely() -> None:
    result = load_desired(DirTree(EXAMPLE_REPO))
    assert result.diagnostics == ()
    assert result.invalid == frozenset()
    desired = result.desired
    assert set(desired.models) == {"fraud-scorer", "search-ranker"}
    assert set(desired.pools) == {"shared-a100"}
    assert set(desired.policies) == {"standard-canary", "fast"}
    teams = {m.team for m in desired.models.values()}
    assert teams == {"fraud", "search"}


def test_typed_values_and_defaults() -> None:
    desired = load_desired(DirTree(EXAMPLE_REPO)).desired
    fraud = desired.models["fraud-scorer"]
    assert fraud.service_module == "services/fraud_scorer.py"
    assert fraud.service_class == "FraudScorer"
    assert (fraud.resources.gpu, fraud.resources.replicas, fraud.resources.whole_gpus) == (
        1.0,
        2,
        1,
    )
    ranker = desired.models["search-ranker"]
    assert ranker.resources.gpu_memory == 10 * 2**30
    assert ranker.resources.replicas == 1  # default
    pool = desired.pools["shared-a100"]
    assert pool.sharing is Sharing.FRACTIONAL
    assert [n.discovery for n in pool.nodes] == [Discovery.DECLARED, Discovery.DECLARED]
    assert pool.declared_gpus == 8
    assert pool.nodes[0].gpus[0].memory == 80 * 2**30
    assert pool.quota("search") is not None
    assert pool.quota("search").priority == 100
    policy = desired.policies["standard-canary"]
    assert [s.kind for s in policy.steps][:3] == [
        StepKind.SET_WEIGHT,
        StepKind.ANALYSIS,
        StepKind.SET_WEIGHT,
    ]
    assert policy.steps[3].duration == 120
    assert policy.steps[5].duration is None  # waits for a person
    assert policy.analysis is not None
    assert policy.analysis.interval == 15
    assert policy.analysis.judge is Judge.SEQUENTIAL
    assert (policy.analysis.false_rollback, policy.analysis.missed_regression) == (0.01, 0.01)
    assert policy.analysis.error_increase == 0.02  # "2%"
    assert policy.analysis.latency == LatencyBound(0.25, 1.5)
    assert policy.analysis.checks[1].metric is Metric.LATENCY_P99
    assert policy.analysis.checks[1].max == 2
    assert (policy.warmup_timeout, policy.warmup_hold, policy.progress_deadline) == (120, 5, 600)


def test_foreign_yaml_outside_spec_dirs_is_ignored(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".github" / "workflows" / "ci.yml").write_text("on: [push\n")  # broken, but hidden
    (repo / "charts").mkdir()
    (repo / "charts" / "deploy.yaml").write_text("x: {{ .Values.x }}\n")  # a template, not YAML
    (repo / "services" / "bentofile.yaml").write_text("service: svc:Svc\n")
    result = load_desired(DirTree(repo))
    assert result.diagnostics == ()


def test_specs_outside_spec_dirs_are_read(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    (repo / "teams" / "b").mkdir(parents=True)
    text = (repo / "models" / "model.yaml").read_text().replace("name: model-a", "name: model-b")
    (repo / "teams" / "b" / "model.yml").write_text(text)
    assert set(load_desired(DirTree(repo)).desired.models) == {"model-a", "model-b"}


def test_symlinked_spec_inside_repo_is_read(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    (repo / "shared").mkdir()
    (repo / "models" / "model.yaml").rename(repo / "shared" / "model.yaml")
    (repo / "models" / "model.yaml").symlink_to("../shared/model.yaml")
    result = load_desired(DirTree(repo))
    assert result.diagnostics == ()
    assert set(result.desired.models) == {"model-a"}


def test_one_bad_model_leaves_the_others(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    good = (repo / "models" / "model.yaml").read_text()
    (repo / "models" / "bad.yaml").write_text(
        good.replace("name: model-a", "name: model-b").replace("pool: pool-a", "pool: nowhere")
    )
    result = load_desired(DirTree(repo))
    assert [d.rule for d in result.diagnostics] == ["ref.pool"]
    assert set(result.desired.models) == {"model-a"}


@pytest.mark.parametrize(
    ("artifact", "ok"),
    [
        ("bentoModel: model-a:abc123", True),
        ("url: https://h.example/a.json\n    sha256: " + "ab" * 32, True),
        ("url: http://h.example/a.json\n    sha256: " + "ab" * 32, True),
        ("url: https:///a.json\n    sha256: " + "ab" * 32, False),  # no host
        ("path: artifacts", True),  # a directory is fine
        ("url: https://h.example/a.json\n    sha256: " + "A" * 64, False),  # lowercase hex only
    ],
)
def test_artifact_sources(make_repo: Callable[..., Path], artifact: str, ok: bool) -> None:
    repo = make_repo()
    path = repo / "models" / "model.yaml"
    path.write_text(path.read_text().replace("path: artifacts/model-a.json", artifact))
    assert load_desired(DirTree(repo)).ok is ok


def test_service_module_that_does_not_parse(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    (repo / "services" / "svc.py").write_text("class Svc(:\n")
    result = load_desired(DirTree(repo))
    assert [d.rule for d in result.diagnostics] == ["ref.service"]
    assert "cannot parse services/svc.py (line 1)" in result.diagnostics[0].message


def test_service_module_is_parsed_not_run(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    repo = make_repo()
    (repo / "services" / "svc.py").write_text(f"open({str(marker)!r}, 'w')\nclass Svc: ...\n")
    assert load_desired(DirTree(repo)).ok
    assert not marker.exists()


def test_nvml_node_without_gpus_is_not_fit_checked(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    pool = repo / "pools" / "pool.yaml"
    text = pool.read_text()
    start = text.index("      gpus:")
    end = text.index("  quotas:")
    pool.write_text((text[:start] + text[end:]).replace("discovery: Declared", "discovery: NVML"))
    model = repo / "models" / "model.yaml"
    model.write_text(model.read_text().replace("gpu: 1", "gpu: 8"))
    result = load_desired(DirTree(repo))
    assert result.diagnostics == ()
    assert result.desired.pools["pool-a"].declared_gpus is None


_PREVIEW_POLICY = "\n  preview:\n    share: 25\n    minPairs: 300\n    minAgreement: 99%\n"


@pytest.mark.parametrize(
    ("model_tail", "expected"),
    [
        # nothing to compare: valid, and not previewed
        ("", None),
        (
            "\n  preview:\n    field: label\n    kind: label\n    sensitive: [user]",
            PreviewOutput("label", OutputKind.LABEL, 10, 0.0, ("user",)),
        ),
        (
            "\n  preview:\n    field: items.id\n    kind: ranking\n    top: 5",
            PreviewOutput("items.id", OutputKind.RANKING, 5, 0.0, ()),
        ),
        # field and sensitive keys default to the monitor's
        (
            "\n  monitor:\n    drift: {field: score}"
            "\n    sampling: {share: 0.1, sensitive: [email]}"
            "\n  preview: {kind: number, tolerance: 0.01}",
            PreviewOutput("score", OutputKind.NUMBER, 10, 0.01, ("email",)),
        ),
    ],
)
def test_preview_fields(
    make_repo: Callable[..., Path], model_tail: str, expected: PreviewOutput | None
) -> None:
    repo = make_repo()
    model = repo / "models" / "model.yaml"
    model.write_text(model.read_text().rstrip("\n") + model_tail + "\n")
    policy = repo / "rollouts" / "policy.yaml"
    policy.write_text(policy.read_text().rstrip("\n") + _PREVIEW_POLICY)
    result = load_desired(DirTree(repo))
    preview = result.desired.policies["canary"].preview
    assert preview == Preview(share=25, min_pairs=300, min_agreement=0.99)
    # the policy previews; a model that names nothing to compare is valid, not previewed
    assert result.diagnostics == ()
    assert result.desired.models["model-a"].preview == expected


def test_a_preview_field_changes_no_hash(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    model = repo / "models" / "model.yaml"
    before = load_desired(DirTree(repo)).desired.models["model-a"]
    model.write_text(model.read_text().rstrip("\n") + "\n  preview: {field: label}\n")
    after = load_desired(DirTree(repo)).desired.models["model-a"]
    assert after.preview is not None
    assert spec_hash(after, "b:1") == spec_hash(before, "b:1")
