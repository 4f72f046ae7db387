"""`mdc plan --base --head`: what a pull request would change, from two real
git commits -- fields, new bentos, canary fit, errors, and the PR comment."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.cli.main import EXIT_INVALID, EXIT_OK, main
from controller.core.pr_plan import MARKER
from tests.conftest import EXAMPLE_REPO
from tests.gitservers import run_git

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "specs"
    shutil.copytree(EXAMPLE_REPO, path)
    run_git("init", "-q", "-b", "main", cwd=path)
    run_git("add", "-A", cwd=path)
    run_git("commit", "-qm", "base", cwd=path)
    return path


def change(repo: Path, file: str, old: str, new: str) -> None:
    target = repo / file
    target.write_text(target.read_text().replace(old, new))
    run_git("commit", "-qam", f"edit {file}", cwd=repo)


def plan(repo: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["plan", str(repo), "--base", "HEAD~1", "--head", "HEAD", *extra])
    return code, capsys.readouterr().out


Edit = Callable[[Path], None]


@pytest.mark.parametrize(
    ("edit", "code", "expect"),
    [
        (
            lambda r: change(
                r, "models/fraud-scorer.yaml", "fraud-scorer/v1.json", "fraud-scorer/v2.json"
            ),
            EXIT_OK,
            {
                "fraud-scorer": (
                    "changed",
                    True,
                    [
                        "spec.artifact.path: 'artifacts/fraud-scorer/v1.json' -> "
                        "'artifacts/fraud-scorer/v2.json'"
                    ],
                )
            },
        ),
        (
            lambda r: change(r, "models/fraud-scorer.yaml", "# Scores card", "# Scores all card"),
            EXIT_OK,
            {"fraud-scorer": ("unchanged", False, [])},
        ),
        (
            lambda r: change(r, "services/search_ranker.py", "best first;", "best first, always;"),
            EXIT_OK,
            {"search-ranker": ("unchanged", True, [])},
        ),  # same spec, new code: new bento
        (
            lambda r: change(r, "models/fraud-scorer.yaml", "replicas: 2", "replicas: 5"),
            EXIT_INVALID,
            {"fraud-scorer": ("changed", False, ["spec.resources.replicas: 2 -> 5"])},
        ),
    ],
    ids=["new-artifact", "comment-only", "service-code", "canary-cannot-fit"],
)
def test_plan_of_a_change(
    repo: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Edit,
    code: int,
    expect: dict[str, tuple[str, bool, list[str]]],
) -> None:
    edit(repo)
    got, out = plan(repo, capsys, "--format", "json")
    assert got == code
    data = json.loads(out)
    models = {m["model"]: m for m in data["models"]}
    for name, (kind, new_bento, fields) in expect.items():
        assert models[name]["change"] == kind
        assert models[name]["new_bento"] is new_bento
        assert models[name]["fields"] == fields
    assert data["applicable"] is (code == EXIT_OK)
    if code == EXIT_INVALID:
        assert any("canary would wait" in r for r in data["reasons"])


def test_invalid_head_names_file_and_line(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    change(repo, "models/fraud-scorer.yaml", "gpu: 1 ", "gpu: -1 ")
    code, out = plan(repo, capsys)
    assert code == EXIT_INVALID
    assert "CANNOT be applied" in out
    assert "models/fraud-scorer.yaml:" in out
    assert "spec.resources.gpu: must be > 0 (got -1)" in out


def test_removed_model_and_markdown_comment(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "models" / "search-ranker.yaml").unlink()
    run_git("commit", "-qam", "retire the ranker", cwd=repo)
    code, out = plan(repo, capsys, "--markdown")
    assert code == EXIT_OK
    assert out.startswith(MARKER)
    assert "| search-ranker | removed |" in out
    assert "✅ can be applied" in out


def test_bad_refs_are_usage_errors(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(repo), "--base", "nope", "--head", "HEAD"]) == 2
    assert "'nope' names no commit" in capsys.readouterr().err
    assert main(["plan", str(repo), "--base", "HEAD"]) == 2


def test_plan_posted_as_one_comment_with_a_status(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.testing import FakeGitHub  # noqa: PLC0415

    change(repo, "models/fraud-scorer.yaml", "fraud-scorer/v1.json", "fraud-scorer/v2.json")
    head = run_git("rev-parse", "HEAD", cwd=repo).stdout.strip()
    with FakeGitHub("acme/models", token="t0ken") as github:
        pull = github.repo.add_pull("bump", head_sha=head)
        monkeypatch.setenv("MDC_GITHUB_TOKEN", "t0ken")
        monkeypatch.setenv("MDC_GITHUB_API_URL", github.url)
        args = ["--comment", str(pull.number), "--github-repository", "acme/models"]
        assert plan(repo, capsys, *args)[0] == EXIT_OK
        change(repo, "models/fraud-scorer.yaml", "replicas: 2", "replicas: 40")  # over quota
        head2 = run_git("rev-parse", "HEAD", cwd=repo).stdout.strip()
        code = main(["plan", str(repo), "--base", "HEAD~2", "--head", "HEAD", *args])
        assert code == EXIT_INVALID
        bodies = [c.body for c in github.comments[pull.number]]
        assert len(bodies) == 1  # upserted, never a second comment
        assert bodies[0].startswith(MARKER)
        assert "cannot be applied" in bodies[0]
        assert [s["state"] for s in github.statuses[head]] == ["success"]
        assert [(s["context"], s["state"]) for s in github.statuses[head2]] == [
            ("mdc/plan", "failure")
        ]
        monkeypatch.delenv("MDC_GITHUB_TOKEN")
        monkeypatch.delenv("GITHUB_TOKEN", raising=False)
        capsys.readouterr()
        assert main(["plan", str(repo), "--base", "HEAD~1", "--head", "HEAD", *args]) == 2
        assert "MDC_GITHUB_TOKEN" in capsys.readouterr().err


def test_repo_flag_and_markdown_format(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    change(repo, "models/fraud-scorer.yaml", '"1.0.0"', '"1.0.1"')
    args = ["plan", "--repo", str(repo), "--base", "HEAD~1", "--head", "HEAD"]
    assert main([*args, "--format", "markdown"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith(MARKER)
    assert "| fraud-scorer | changed |" in out
    assert main(["plan", "--repo", str(repo), "--format", "markdown"]) == 2
    assert "needs --base and --head" in capsys.readouterr().err
