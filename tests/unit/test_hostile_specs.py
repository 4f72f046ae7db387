"""Hostile spec repositories (issue 18, items 1 and 2): values that validated
and then crashed or lied, and inputs that cost unbounded time or memory. Each
is refused with a diagnostic naming its file, never with an exception."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pygit2
import pytest

from controller.adapters.git import source as git_source
from controller.adapters.git.source import GitTree
from controller.errors import UnsafePath
from controller.spec import kinds, loader
from controller.spec import tree as spec_tree
from controller.spec.documents import Limits, parse_yaml
from controller.spec.kinds import ObjectRef
from controller.spec.loader import LoadResult, load_desired
from controller.spec.service_sources import service_sources
from controller.spec.tree import DirTree

BASE = Path(__file__).resolve().parents[1] / "fixtures" / "specs" / "base"


def _rules(result: LoadResult) -> list[tuple[str, str, str]]:
    return [(d.file, d.path, d.rule) for d in result.diagnostics]


def _edit(repo: Path, file: str, old: str, new: str) -> None:
    path = repo / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def repo(make_repo: Callable[..., Path]) -> Path:
    made: Path = make_repo()
    return made


# -- 1. numbers and strings that mean what they say -----------------------------


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN", "1.0e+400", "1" + "0" * 400])
def test_gpu_that_is_not_a_finite_number_is_refused(repo: Path, value: str) -> None:
    _edit(repo, "models/model.yaml", "gpu: 1", f"gpu: {value}")
    result = load_desired(DirTree(repo))
    assert _rules(result) == [("models/model.yaml", "spec.resources.gpu", "yaml.number")]
    assert result.diagnostics[0].line == 12
    assert "model-a" not in result.desired.models
    # refused for a value it holds, the model is invalid (held and shown), not unknown
    assert ObjectRef("Model", "model-a") in result.invalid


@pytest.mark.parametrize("field", ["guaranteed: 1", "limit: 2"])
@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_quota_that_is_not_a_finite_number_is_refused(repo: Path, field: str, value: str) -> None:
    key = field.split(":", maxsplit=1)[0]
    _edit(repo, "pools/pool.yaml", field, f"{key}: {value}")
    result = load_desired(DirTree(repo))
    assert ("pools/pool.yaml", f"spec.quotas[0].{key}", "yaml.number") in _rules(result)
    assert "pool-a" not in result.desired.pools


def test_check_bound_of_nan_is_refused_so_no_canary_passes_on_it(repo: Path) -> None:
    _edit(repo, "rollouts/policy.yaml", "max: 0.01", "max: .nan")
    result = load_desired(DirTree(repo))
    # the policy is invalid (known, refused), so the model naming it is held with
    # it rather than told its policy does not exist
    assert _rules(result) == [
        ("rollouts/policy.yaml", "spec.analysis.checks[0].max", "yaml.number"),
    ]
    assert ObjectRef("RolloutPolicy", "canary") in result.invalid
    assert "canary" not in result.desired.policies
    assert "model-a" not in result.desired.models


def test_a_number_of_thousands_of_digits_is_refused_unread() -> None:
    for text in ["gpu: " + "9" * 5000, "gpu: 0x" + "f" * 5000, "gpu: " + "1" * 3000 + ".5"]:
        documents, problems = parse_yaml("m.yaml", text.encode())
        assert documents == []
        assert [(p.file, p.line, p.rule) for p in problems] == [("m.yaml", 1, "yaml.number")]


def test_status_files_may_still_hold_infinities() -> None:
    """Only spec loading refuses non-finite numbers; the bound is the loader's."""
    documents, problems = parse_yaml("status.yaml", b"value: .inf\n")
    assert problems == []
    assert documents[0].data == {"value": float("inf")}


def test_a_trailing_newline_does_not_pass_a_name_pattern(repo: Path) -> None:
    _edit(repo, "models/model.yaml", "name: model-a", 'name: "model-a\\n"')
    result = load_desired(DirTree(repo))
    assert _rules(result) == [("models/model.yaml", "metadata.name", "schema.pattern")]
    assert result.desired.models == {}


def test_a_trailing_newline_does_not_pass_a_duration_pattern(repo: Path) -> None:
    _edit(repo, "rollouts/policy.yaml", "interval: 10s", 'interval: "30s\\n"')
    result = load_desired(DirTree(repo))
    assert _rules(result) == [("rollouts/policy.yaml", "spec.analysis.interval", "schema.pattern")]


def test_an_url_with_a_newline_is_refused(repo: Path) -> None:
    _edit(
        repo,
        "models/model.yaml",
        "path: artifacts/model-a.json",
        'url: "https://models.example.com/a\\nb.json"\n    sha256: ' + "a" * 64,
    )
    result = load_desired(DirTree(repo))
    assert ("models/model.yaml", "spec.artifact.url", "schema.pattern") in _rules(result)


@pytest.mark.parametrize(
    ("file", "old", "new", "path"),
    [
        ("rollouts/policy.yaml", "interval: 10s", "interval: 0s", "spec.analysis.interval"),
        ("rollouts/policy.yaml", "interval: 10s", "interval: 500ms", "spec.analysis.interval"),
        (
            "rollouts/policy.yaml",
            "steps:",
            "progressDeadline: 100000h\n  steps:",
            "spec.progressDeadline",
        ),
        (
            "rollouts/policy.yaml",
            "interval: 10s",
            "interval: " + "9" * 400 + "h",
            "spec.analysis.interval",
        ),
    ],
)
def test_durations_out_of_range_are_refused(
    repo: Path, file: str, old: str, new: str, path: str
) -> None:
    _edit(repo, file, old, new)
    result = load_desired(DirTree(repo))
    assert _rules(result) == [(file, path, "schema.duration")]


def test_a_memory_amount_of_hundreds_of_digits_is_refused(repo: Path) -> None:
    _edit(repo, "pools/pool.yaml", "memory: 24Gi", "memory: " + "9" * 400 + "Gi")
    result = load_desired(DirTree(repo))
    assert _rules(result) == [("pools/pool.yaml", "spec.nodes[0].gpus[0].memory", "schema.pattern")]


# -- 2. bounded work for any input ----------------------------------------------


def _merge_bomb(keys: int, merges: int) -> bytes:
    anchor = "a: &a {" + ", ".join(f"k{i}: {i}" for i in range(keys)) + "}\n"
    return (anchor + "b: {<<: [" + ", ".join(["*a"] * merges) + "]}\n").encode()


def test_merge_keys_count_against_the_expansion_budget() -> None:
    raw = _merge_bomb(1000, 40_000)  # about 160 KB
    assert len(raw) < 200_000
    started = time.perf_counter()
    documents, problems = parse_yaml("models/bomb.yaml", raw)
    elapsed = time.perf_counter() - started
    assert documents == []
    assert [(p.file, p.rule) for p in problems] == [("models/bomb.yaml", "yaml.alias-limit")]
    assert elapsed < 2.0


def test_nested_merges_are_flattened_not_kept_as_a_key() -> None:
    raw = b"a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: *b, z: 3}\n"
    documents, problems = parse_yaml("m.yaml", raw)
    assert problems == []
    assert documents[0].data["c"] == {"z": 3, "y": 2, "x": 1}


@pytest.mark.parametrize(
    "source",
    [
        "x = " + "-" * 100_000 + "1\n",
        "x = 1" + " + 1" * 100_000 + "\n",
        "x = " + "not " * 100_000 + "y\n",
    ],
)
def test_a_deeply_nested_service_module_is_a_diagnostic(repo: Path, source: str) -> None:
    (repo / "services" / "svc.py").write_text(source + "class Svc:\n    pass\n")
    result = load_desired(DirTree(repo))
    assert _rules(result) == [("models/model.yaml", "spec.service", "ref.service")]
    assert "nested" in result.diagnostics[0].message


def test_service_sources_survive_a_deeply_nested_module(repo: Path) -> None:
    (repo / "services" / "svc.py").write_text("x = " + "-" * 100_000 + "1\n")
    assert list(service_sources(DirTree(repo), "services/svc.py")) == ["svc.py"]


@pytest.mark.parametrize(
    "source",
    [
        "import os\nfrom __future__ import annotations\nclass Svc: pass\n",
        "def f():\n    from __future__ import annotations\nclass Svc: pass\n",
        "from __future__ import braces\nclass Svc: pass\n",
    ],
)
def test_a_misplaced_future_import_is_refused_at_validation(repo: Path, source: str) -> None:
    (repo / "services" / "svc.py").write_text(source)
    result = load_desired(DirTree(repo))
    assert _rules(result) == [("models/model.yaml", "spec.service", "ref.service")]
    assert (
        "__future__" in result.diagnostics[0].message or "future" in result.diagnostics[0].message
    )


def test_a_future_import_after_the_docstring_is_fine(repo: Path) -> None:
    (repo / "services" / "svc.py").write_text(
        '"""Doc."""\nfrom __future__ import annotations\nclass Svc: pass\n'
    )
    assert load_desired(DirTree(repo)).diagnostics == ()


def test_a_directory_tree_1500_deep_is_refused_by_path(repo: Path) -> None:
    deep = repo / "deep"
    deep.mkdir()
    here = os.getcwd()
    os.chdir(deep)  # keep each mkdir relative: the full path is long
    try:
        for _ in range(1500):
            os.mkdir("d")
            os.chdir("d")
        Path("x.yaml").write_text("a: 1\n")
    finally:
        os.chdir(here)
    try:
        result = load_desired(DirTree(repo))
        limit = [d for d in result.diagnostics if d.rule == "tree.limit"]
        assert len(limit) == 1
        assert limit[0].file == "deep" + "/d" * (spec_tree.MAX_TREE_DEPTH - 1)
        assert set(result.desired.models) == {"model-a"}
    finally:
        _remove_deep(deep, 1500)


def _remove_deep(top: Path, depth: int) -> None:
    """``shutil.rmtree`` recurses; undo the deep tree one level at a time."""
    here = os.getcwd()
    os.chdir(top)
    try:
        for _ in range(depth):
            os.chdir("d")
        os.remove("x.yaml")
        for _ in range(depth):
            os.chdir("..")
            os.rmdir("d")
    finally:
        os.chdir(here)
    top.rmdir()


def test_a_directory_tree_with_too_many_entries_is_refused(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spec_tree, "MAX_TREE_ENTRIES", 20)
    for i in range(30):
        (repo / f"extra-{i:02}.txt").write_text("")
    result = load_desired(DirTree(repo))
    assert [d.rule for d in result.diagnostics] == ["tree.limit"]
    assert result.diagnostics[0].file.startswith(("extra-", "artifacts", "models", "pools"))


# -- git trees ------------------------------------------------------------------


def _git_tree_of(repo: pygit2.Repository, files: dict[str, bytes]) -> str:
    """A tree object holding ``files`` (nested directories from their paths)."""
    nested: dict[str, object] = {}
    for path, data in files.items():
        node = nested
        *dirs, name = path.split("/")
        for part in dirs:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[name] = data

    def write(node: dict[str, object]) -> pygit2.Oid:
        builder = repo.TreeBuilder()
        for name, value in node.items():
            if isinstance(value, bytes):
                builder.insert(name, repo.create_blob(value), pygit2.GIT_FILEMODE_BLOB)
            else:
                builder.insert(name, write(value), pygit2.GIT_FILEMODE_TREE)  # type: ignore[arg-type]
        return builder.write()

    return str(write(nested))


def _base_files() -> dict[str, bytes]:
    return {p.relative_to(BASE).as_posix(): p.read_bytes() for p in BASE.rglob("*") if p.is_file()}


def _deep_tree(repo: pygit2.Repository, depth: int, leaf: bytes) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    builder.insert("x.yaml", repo.create_blob(leaf), pygit2.GIT_FILEMODE_BLOB)
    oid = builder.write()
    for _ in range(depth):
        builder = repo.TreeBuilder()
        builder.insert("d", oid, pygit2.GIT_FILEMODE_TREE)
        oid = builder.write()
    return oid


def test_a_git_tree_1500_deep_is_walked_without_recursion(tmp_path: Path) -> None:
    repo = pygit2.init_repository(str(tmp_path / "g"), bare=True)
    base = _git_tree_of(repo, _base_files())
    builder = repo.TreeBuilder(base)
    builder.insert("deep", _deep_tree(repo, 1500, b"a: 1\n"), pygit2.GIT_FILEMODE_TREE)
    result = load_desired(GitTree(repo, str(builder.write())))
    assert [(d.file, d.rule) for d in result.diagnostics] == [
        ("deep" + "/d" * (spec_tree.MAX_TREE_DEPTH - 1), "tree.limit")
    ]
    assert set(result.desired.models) == {"model-a"}


def test_a_git_tree_with_too_many_entries_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(git_source, "MAX_TREE_ENTRIES", 8)
    repo = pygit2.init_repository(str(tmp_path / "g"), bare=True)
    files = _base_files() | {f"extra/{i:02}.txt": b"" for i in range(20)}
    result = load_desired(GitTree(repo, _git_tree_of(repo, files)))
    assert "tree.limit" in [d.rule for d in result.diagnostics]
    assert all(d.file for d in result.diagnostics)


def test_a_big_git_blob_is_sized_from_its_header_and_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(git_source, "MAX_BLOB_BYTES", 1 << 20)
    repo = pygit2.init_repository(str(tmp_path / "g"), bare=True)
    big = b"a: 1\n" * (1 << 20)  # 5 MiB, compresses to a few KB
    tree = GitTree(repo, _git_tree_of(repo, _base_files() | {"models/big.yaml": big}))
    assert tree.size("models/big.yaml") == len(big)
    with pytest.raises(UnsafePath, match="over the limit"):
        tree.read("models/big.yaml")
    result = load_desired(tree)
    assert [(d.file, d.rule) for d in result.diagnostics] == [("models/big.yaml", "file.size")]


def test_a_value_the_builder_cannot_use_refuses_that_object_not_the_load(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the schema lets through that a builder then cannot use (it raises),
    the object is refused with a diagnostic naming its file, and the others load:
    before, one such value made every pass of the controller raise."""
    real = kinds.BUILDERS["RolloutPolicy"]

    def broken(document: object) -> object:
        raise ValueError("not a duration like 30s, 5m or 1h30m: '5s\\n'")

    monkeypatch.setattr(loader, "BUILDERS", {**kinds.BUILDERS, "RolloutPolicy": broken})
    result = load_desired(DirTree(repo))
    assert ("spec.value", "spec") in [(d.rule, d.path) for d in result.diagnostics]
    (said,) = [d for d in result.diagnostics if d.rule == "spec.value"]
    assert said.file.startswith("rollouts/")
    assert "not a duration" in said.message
    assert result.desired.pools  # the other kinds loaded
    assert not result.desired.policies
    assert real is kinds.BUILDERS["RolloutPolicy"]


def test_a_file_that_takes_longer_than_its_time_budget_is_refused() -> None:
    """The backstop behind the size and expansion caps: a file whose reading runs
    past ``max_seconds`` on the given clock is refused (file.time), not waited for;
    without a clock parsing stays pure and has no budget."""
    ticks = iter(range(10**6))

    def clock() -> float:
        return float(next(ticks))  # every look at the clock: one more second

    many = "items:\n" + "".join(f"  - {i}\n" for i in range(5000))
    limits = Limits(max_seconds=2.0, clock=clock)
    documents, problems = parse_yaml("models/slow.yaml", many.encode(), limits)
    assert documents == []
    assert [(p.file, p.rule) for p in problems] == [("models/slow.yaml", "file.time")]
    assert "more than 2s to read" in problems[0].message
    documents, problems = parse_yaml("models/slow.yaml", many.encode(), Limits(max_seconds=2.0))
    assert problems == []
    assert len(documents) == 1
