"""Property-based fuzzing of spec loading (issue 18, item 8): generated spec
documents, hostile values and small trees never make ``load_desired`` or
``mdc validate`` raise, stay within a time and memory budget, and every
refusal names a file. Bounded (derandomized, a fixed number of examples) so
it runs in CI in seconds; the figures are printed (``pytest -s``)."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.cli.main import main
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree

BASE = Path(__file__).resolve().parents[1] / "fixtures" / "specs" / "base"
EXAMPLES = 60
TIME_BUDGET_S = 2.0
MEMORY_BUDGET = 64 << 20

HOSTILE_SCALARS: list[str] = [
    ".nan",
    ".inf",
    "-.inf",
    "1" + "0" * 400,
    "0x" + "f" * 300,
    "1.0e+400",
    '"30s\\n"',
    '"model-a\\n"',
    '"\\x1b[31mred"',
    '"a\\tb"',
    "0s",
    "99999999999h",
    '"1%"',
    "-1",
    "!!binary aGk=",
    "!!python/object:os.system {}",
    "~",
    "[]",
    "{}",
    "''",
    "yes",
]

FIELDS: list[tuple[str, str]] = [
    ("models/model.yaml", "gpu: 1"),
    ("models/model.yaml", "name: model-a"),
    ("models/model.yaml", 'version: "1.0"'),
    ("models/model.yaml", "pool: pool-a"),
    ("pools/pool.yaml", "memory: 24Gi"),
    ("pools/pool.yaml", "count: 2"),
    ("pools/pool.yaml", "guaranteed: 1"),
    ("pools/pool.yaml", "limit: 2"),
    ("rollouts/policy.yaml", "interval: 10s"),
    ("rollouts/policy.yaml", "max: 0.01"),
    ("rollouts/policy.yaml", "setWeight: 50"),
]

_stats = {"examples": 0, "max_s": 0.0, "max_bytes": 0, "refusals": 0}


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    print(
        f"\nspec fuzz: {_stats['examples']} examples, max {_stats['max_s'] * 1000:.0f} ms, "
        f"max {_stats['max_bytes'] / 2**20:.1f} MiB traced, {_stats['refusals']} refusals"
    )


def _json_values() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(["30s", "30s\n", "fraud-scorer\n", "1%", "10Gi", "\x00", "\u202e"]),
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.sampled_from(["spec", "name", "gpu", "steps", "<<", "a"]), inner, max_size=4
            ),
        ),
        max_leaves=20,
    )


def _yaml_documents() -> st.SearchStrategy[bytes]:
    """Documents shaped like specs (one of our kinds) with hostile values, and
    raw YAML with anchors, merge keys and deep nesting."""
    spec = st.builds(
        lambda kind, name, body: yaml.safe_dump(
            {
                "apiVersion": "mdc.dev/v1alpha1",
                "kind": kind,
                "metadata": {"name": name},
                "spec": body,
            },
            allow_unicode=True,
        ).encode(),
        st.sampled_from(["Model", "GPUPool", "RolloutPolicy", "Other"]),
        st.one_of(st.text(max_size=10), st.sampled_from(["model-a", "model-a\n", "pool-a"])),
        _json_values(),
    )
    merges = st.builds(
        lambda keys, n: (
            "a: &a {" + ", ".join(f"k{i}: {i}" for i in range(keys)) + "}\n"
            "b: {<<: [" + ", ".join(["*a"] * n) + "]}\n"
        ).encode(),
        st.integers(1, 200),
        st.integers(1, 2000),
    )
    nested = st.builds(lambda d: ("x: " + "[" * d + "]" * d + "\n").encode(), st.integers(1, 3000))
    raw = st.binary(max_size=200)
    return st.one_of(spec, merges, nested, raw)


def _edits() -> st.SearchStrategy[tuple[str, str, str]]:
    return st.tuples(
        st.sampled_from(FIELDS).map(lambda f: f[0]),
        st.sampled_from(FIELDS).map(lambda f: f[1]),
        st.sampled_from(HOSTILE_SCALARS),
    )


def _check(repo: Path) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = load_desired(DirTree(repo))
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    _stats["examples"] += 1
    _stats["max_s"] = max(_stats["max_s"], elapsed)
    _stats["max_bytes"] = max(_stats["max_bytes"], peak)
    _stats["refusals"] += len(result.diagnostics)
    assert elapsed < TIME_BUDGET_S
    assert peak < MEMORY_BUDGET
    for diagnostic in result.diagnostics:
        assert diagnostic.file
        assert (repo / diagnostic.file).exists() or diagnostic.rule == "tree.limit"
        assert diagnostic.line >= 1
        assert diagnostic.rule


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(_edits(), min_size=1, max_size=3), extra=st.lists(_yaml_documents(), max_size=3)
)
def test_hostile_repos_are_refused_with_a_file_never_an_exception(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[str, str, str]], extra: list[bytes]
) -> None:
    repo = tmp_path_factory.mktemp("fuzz") / "repo"
    shutil.copytree(BASE, repo)
    for file, field, value in edits:
        path = repo / file
        text = path.read_text()
        if field in text:
            key = field.split(":", maxsplit=1)[0]
            path.write_text(text.replace(field, f"{key}: {value}", 1))
    for i, raw in enumerate(extra):
        (repo / "models" / f"extra-{i}.yaml").write_bytes(raw)
    _check(repo)


@settings(
    max_examples=EXAMPLES // 3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(edit=_edits())
def test_mdc_validate_in_process_never_raises(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    edit: tuple[str, str, str],
) -> None:
    repo = tmp_path_factory.mktemp("cli") / "repo"
    shutil.copytree(BASE, repo)
    file, field, value = edit
    path = repo / file
    key = field.split(":", maxsplit=1)[0]
    path.write_text(path.read_text().replace(field, f"{key}: {value}", 1))
    capsys.readouterr()
    code = main(["validate", str(repo), "--format", "json"])
    out, err = capsys.readouterr()
    assert code in (0, 1)
    assert "Traceback" not in out + err
    report = json.loads(out)
    assert all(e["file"] for e in report["errors"])
    _stats["examples"] += 1
