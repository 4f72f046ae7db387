"""Every case of tests/fixtures/specs/invalid makes `mdc validate` exit 1 with
exactly the expected file, line, column and rule -- and nothing else."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.cli.main import EXIT_INVALID, main
from controller.spec.kinds import ObjectRef
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.conftest import FIXTURES

# case, file, line, column, field path, rule
CASES = [
    ("alias-bomb", "models/bomb.yaml", 5, 44, "e[5][5][7][4][6]", "yaml.alias-limit"),
    (
        "analysis-step-without-analysis",
        "rollouts/policy.yaml",
        8,
        7,
        "spec.steps[1].analysis",
        "steps.analysis",
    ),
    ("api-version", "models/model.yaml", 1, 1, "apiVersion", "schema.const"),
    ("artifact-two-sources", "models/model.yaml", 8, 3, "spec.artifact", "artifact.source"),
    ("binary-tag", "models/model.yaml", 6, 12, "spec.version", "yaml.tag"),
    (
        "check-metric-and-query",
        "rollouts/policy.yaml",
        13,
        9,
        "spec.analysis.checks[0]",
        "analysis.metric",
    ),
    (
        "check-without-bounds",
        "rollouts/policy.yaml",
        13,
        9,
        "spec.analysis.checks[0]",
        "analysis.bounds",
    ),
    ("custom-tag", "models/model.yaml", 13, 9, "spec.pool", "yaml.tag"),
    ("declared-without-gpus", "pools/pool.yaml", 8, 7, "spec.nodes[0].gpus", "schema.required"),
    (
        "monitor-objective-without-bound",
        "models/model.yaml",
        17,
        9,
        "spec.monitor.objectives[0]",
        "monitor.bounds",
    ),
    (
        "monitor-drift-without-sampling",
        "models/model.yaml",
        16,
        5,
        "spec.monitor.drift",
        "monitor.drift",
    ),
    (
        "monitor-share-bound",
        "models/model.yaml",
        19,
        9,
        "spec.monitor.objectives[0].max",
        "monitor.bounds",
    ),
    ("pool-nodes-and-cluster", "pools/pool.yaml", 14, 3, "spec.cluster", "pool.nodes"),
    ("pool-without-nodes", "pools/pool.yaml", 5, 1, "spec", "pool.nodes"),
    ("cluster-bad-discovery", "pools/pool.yaml", 8, 5, "spec.cluster.discovery", "schema.enum"),
    ("duplicate-key", "models/model.yaml", 14, 3, "spec.pool", "yaml.duplicate-key"),
    ("duplicate-name", "models/model.yaml", 19, 3, "metadata.name", "spec.unique-name"),
    ("duplicate-node", "pools/pool.yaml", 14, 7, "spec.nodes[1].name", "spec.unique-node"),
    ("duration-bad", "rollouts/policy.yaml", 11, 5, "spec.analysis.interval", "schema.pattern"),
    ("fit-node", "models/model.yaml", 12, 5, "spec.resources.gpu", "fit.node"),
    ("fit-sharing", "models/model.yaml", 11, 3, "spec.resources", "fit.sharing"),
    ("gpu-and-memory", "models/model.yaml", 11, 3, "spec.resources", "resources.gpu"),
    ("gpu-memory-too-large", "models/model.yaml", 12, 5, "spec.resources.gpuMemory", "fit.node"),
    ("gpu-negative", "models/model.yaml", 12, 5, "spec.resources.gpu", "schema.exclusiveMinimum"),
    ("cpu-negative", "models/model.yaml", 12, 5, "spec.resources.cpu", "schema.exclusiveMinimum"),
    ("gpu-not-whole", "models/model.yaml", 12, 5, "spec.resources.gpu", "resources.gpu"),
    (
        "judge-false-rollback-too-high",
        "rollouts/policy.yaml",
        13,
        5,
        "spec.analysis.falseRollback",
        "analysis.budget",
    ),
    (
        "judge-latency-threshold-too-high",
        "rollouts/policy.yaml",
        14,
        7,
        "spec.analysis.latency.threshold",
        "analysis.budget",
    ),
    (
        "judge-sequential-compares-nothing",
        "rollouts/policy.yaml",
        10,
        3,
        "spec.analysis",
        "analysis.judge",
    ),
    (
        "judge-sequential-ratio-guardrail",
        "rollouts/policy.yaml",
        15,
        9,
        "spec.analysis.checks[0]",
        "analysis.judge",
    ),
    (
        "judge-threshold-false-rollback",
        "rollouts/policy.yaml",
        12,
        5,
        "spec.analysis.falseRollback",
        "analysis.judge",
    ),
    (
        "judge-analysis-at-full-weight",
        "rollouts/policy.yaml",
        10,
        7,
        "spec.steps[3].analysis",
        "analysis.judge",
    ),
    (
        "judge-threshold-without-checks",
        "rollouts/policy.yaml",
        10,
        3,
        "spec.analysis",
        "analysis.judge",
    ),
    ("missing-pool", "models/model.yaml", 5, 1, "spec.pool", "schema.required"),
    ("name-not-dns", "models/model.yaml", 4, 3, "metadata.name", "schema.pattern"),
    ("non-utf8", "models/model.yaml", 6, 16, "", "file.encoding"),
    ("not-a-spec", "models/notes.yaml", 2, 1, "", "spec.kind"),
    ("path-absolute", "models/model.yaml", 9, 5, "spec.artifact.path", "path.unsafe"),
    ("path-dotdot", "models/model.yaml", 9, 5, "spec.artifact.path", "path.unsafe"),
    ("python-tag", "models/model.yaml", 6, 12, "spec.version", "yaml.tag"),
    (
        "quota-guaranteed-over-limit",
        "pools/pool.yaml",
        16,
        7,
        "spec.quotas[0].guaranteed",
        "quota.limit",
    ),
    ("quota-over-capacity", "pools/pool.yaml", 14, 3, "spec.quotas", "quota.capacity"),
    (
        "recursive-alias",
        "models/loop.yaml",
        5,
        7,
        "spec" + ".nested" * 11 + "...",
        "yaml.depth-limit",
    ),
    ("ref-artifact", "models/model.yaml", 9, 5, "spec.artifact.path", "ref.artifact"),
    ("ref-pool", "models/model.yaml", 13, 3, "spec.pool", "ref.pool"),
    ("ref-rollout", "models/model.yaml", 14, 3, "spec.rollout", "ref.rollout"),
    ("ref-service-class", "models/model.yaml", 10, 3, "spec.service", "ref.service"),
    ("ref-service-module", "models/model.yaml", 10, 3, "spec.service", "ref.service"),
    ("ref-team", "models/model.yaml", 7, 3, "spec.team", "ref.team"),
    ("sharing-enum", "pools/pool.yaml", 6, 3, "spec.sharing", "schema.enum"),
    ("step-two-keys", "rollouts/policy.yaml", 7, 7, "spec.steps[0]", "schema.maxProperties"),
    ("symlink-artifact-out", "models/model.yaml", 9, 5, "spec.artifact.path", "path.unsafe"),
    ("symlink-spec-absolute", "models/evil.yaml", 1, 1, "", "path.symlink"),
    ("unknown-field", "models/model.yaml", 12, 5, "spec.resources.gpus", "schema.unknown-field"),
    ("unknown-kind", "models/model.yaml", 2, 1, "kind", "spec.kind"),
    ("url-not-http", "models/model.yaml", 9, 5, "spec.artifact.url", "schema.pattern"),
    ("url-with-credentials", "models/model.yaml", 9, 5, "spec.artifact.url", "artifact.url"),
    (
        "url-without-sha256",
        "models/model.yaml",
        8,
        3,
        "spec.artifact.sha256",
        "schema.dependentRequired",
    ),
    ("version-not-string", "models/model.yaml", 6, 3, "spec.version", "schema.type"),
    ("weight-over-100", "rollouts/policy.yaml", 9, 7, "spec.steps[2].setWeight", "schema.maximum"),
    ("weights-not-rising", "rollouts/policy.yaml", 9, 7, "spec.steps[2].setWeight", "steps.weight"),
    ("yaml-bool-team", "models/model.yaml", 7, 3, "spec.team", "schema.type"),
    ("yaml-syntax", "models/model.yaml", 7, 2, "", "yaml.syntax"),
    # issue 18: numbers and strings that mean what they say, bounded work
    ("number-nan", "models/model.yaml", 12, 10, "spec.resources.gpu", "yaml.number"),
    ("pattern-trailing-newline", "models/model.yaml", 4, 3, "metadata.name", "schema.pattern"),
    (
        "duration-out-of-range",
        "rollouts/policy.yaml",
        11,
        5,
        "spec.analysis.interval",
        "schema.duration",
    ),
    ("merge-key-bomb", "models/bomb.yaml", 1, 10205, "b", "yaml.alias-limit"),
    # issue 19: an MLflow version, never an alias; packages by name, no options or URLs
    ("mlflow-alias", "models/model.yaml", 11, 7, "spec.artifact.mlflow.alias", "artifact.mlflow"),
    (
        "mlflow-version-not-a-number",
        "models/model.yaml",
        11,
        7,
        "spec.artifact.mlflow.version",
        "artifact.mlflow",
    ),
    (
        "python-package-url",
        "models/model.yaml",
        15,
        9,
        "spec.python.packages[1]",
        "python.packages",
    ),
    (
        "python-requirements-option",
        "models/model.yaml",
        13,
        5,
        "spec.python.requirements",
        "python.requirements",
    ),
    ("service-misplaced-future", "models/model.yaml", 10, 3, "spec.service", "ref.service"),
]


def test_table_covers_every_case_directory() -> None:
    on_disk = {p.name for p in (FIXTURES / "invalid").iterdir() if p.is_dir()}
    assert on_disk == {case[0] for case in CASES}


def test_base_repo_is_valid(make_repo: Callable[..., Path]) -> None:
    result = load_desired(DirTree(make_repo()))
    assert result.diagnostics == ()
    assert set(result.desired.models) == {"model-a"}


@pytest.mark.parametrize(("case", "file", "line", "column", "path", "rule"), CASES)
def test_invalid_case(
    case: str,
    file: str,
    line: int,
    column: int,
    path: str,
    rule: str,
    make_repo: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = make_repo(case)
    code = main(["validate", str(repo), "--format", "json"])
    out, err = capsys.readouterr()
    assert code == EXIT_INVALID
    assert "Traceback" not in out + err
    report = json.loads(out)
    assert report["valid"] is False
    assert [
        (e["file"], e["line"], e["column"], e["path"], e["rule"]) for e in report["errors"]
    ] == [(file, line, column, path, rule)]
    assert report["errors"][0]["message"]


@pytest.mark.parametrize(
    ("case", "ref"),
    [
        ("ref-pool", ObjectRef("Model", "model-a")),
        ("quota-over-capacity", ObjectRef("GPUPool", "pool-a")),
        ("weights-not-rising", ObjectRef("RolloutPolicy", "canary")),
        ("duplicate-name", ObjectRef("Model", "model-a")),
        ("unknown-kind", ObjectRef("Modle", "model-a")),
    ],
)
def test_invalid_objects_are_left_out_and_named(
    case: str, ref: ObjectRef, make_repo: Callable[..., Path]
) -> None:
    result = load_desired(DirTree(make_repo(case)))
    assert ref in result.invalid
    assert ref.name not in {
        "Model": result.desired.models,
        "GPUPool": result.desired.pools,
        "RolloutPolicy": result.desired.policies,
    }.get(ref.kind, {})


def test_file_over_size_cap(
    make_repo: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo()
    (repo / "models" / "huge.yaml").write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    assert main(["validate", str(repo), "--format", "json"]) == EXIT_INVALID
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert [(e["file"], e["line"], e["rule"]) for e in errors] == [
        ("models/huge.yaml", 1, "file.size")
    ]


def test_fifo_is_refused_without_hanging(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    os.mkfifo(repo / "models" / "pipe.yaml")
    result = load_desired(DirTree(repo))
    assert [(d.file, d.rule) for d in result.diagnostics] == [("models/pipe.yaml", "file.type")]
    assert "model-a" in result.desired.models


def test_all_errors_are_reported_in_one_run(make_repo: Callable[..., Path]) -> None:
    """Five bad files in three directories: each is reported, none hides
    another, and the valid objects beside them still load."""
    repo = make_repo()
    invalid = FIXTURES / "invalid"
    for case, rel, new in (
        ("fit-node", "models/model.yaml", "models/model.yaml"),
        ("alias-bomb", "models/bomb.yaml", "models/bomb.yaml"),
        ("not-a-spec", "models/notes.yaml", "models/notes.yaml"),
        ("sharing-enum", "pools/pool.yaml", "pools/other.yaml"),
        ("weights-not-rising", "rollouts/policy.yaml", "rollouts/other.yaml"),
    ):
        text = (invalid / case / rel).read_text()
        if new != rel:  # a second object beside the valid one: give it its own name
            text = text.replace("name: pool-a", "name: pool-b").replace(
                "name: canary", "name: slow"
            )
        (repo / new).write_text(text)
    result = load_desired(DirTree(repo))
    assert sorted((d.file, d.rule) for d in result.diagnostics) == [
        ("models/bomb.yaml", "yaml.alias-limit"),
        ("models/model.yaml", "fit.node"),
        ("models/notes.yaml", "spec.kind"),
        ("pools/other.yaml", "schema.enum"),
        ("rollouts/other.yaml", "steps.weight"),
    ]
    assert set(result.desired.pools) == {"pool-a"}
    assert set(result.desired.policies) == {"canary"}
    assert result.desired.models == {}
