"""A model's bento holds its service module and the repository modules it
imports -- found by parsing, never by running them -- and nothing else, so a
change to one model's code gives only that model a new bento tag."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from controller.errors import PermanentError
from controller.spec.identity import planned_bento_tag, service_files
from controller.spec.loader import load_desired
from controller.spec.service_sources import MAX_FILE_BYTES, service_sources
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO

RANKER, SCORER = "search-ranker", "fraud-scorer"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE_REPO, tmp_path / "repo"))


def tags(repo: Path) -> dict[str, str]:
    tree = DirTree(repo)
    result = load_desired(tree)
    assert result.ok, result.diagnostics
    return {name: planned_bento_tag(m, tree) for name, m in result.desired.models.items()}


def write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def sources(repo: Path, module: str = "services/svc.py", **bounds: int) -> dict[str, str]:
    return {k: v.decode() for k, v in service_sources(DirTree(repo), module, **bounds).items()}


def add_import(repo: Path, service: str, line: str) -> None:
    path = repo / "services" / service
    text = path.read_text()
    path.write_text(text.replace("import bentoml\n", f"import bentoml\n{line}\n", 1))


def test_each_example_model_gets_only_its_own_service(repo: Path) -> None:
    tree = DirTree(repo)
    models = load_desired(tree).desired.models
    assert set(service_files(models[SCORER], tree)) == {"fraud_scorer.py"}
    assert set(service_files(models[RANKER], tree)) == {"search_ranker.py"}


def test_a_comment_in_one_service_changes_only_its_models_tag(repo: Path) -> None:
    before = tags(repo)
    with (repo / "services" / "search_ranker.py").open("a") as f:
        f.write("# a comment\n")
    after = tags(repo)
    assert after[RANKER] != before[RANKER]
    assert after[SCORER] == before[SCORER]


def test_a_helper_changes_only_the_model_that_imports_it(repo: Path) -> None:
    before = tags(repo)
    write(repo, {"services/ranking_features.py": "def clamp(x):\n    return min(1, max(0, x))\n"})
    assert tags(repo) == before  # nobody imports it yet

    add_import(repo, "search_ranker.py", "from ranking_features import clamp  # noqa: F401")
    imported = tags(repo)
    assert imported[RANKER] != before[RANKER]
    assert imported[SCORER] == before[SCORER]
    assert set(sources(repo, "services/search_ranker.py")) == {
        "search_ranker.py",
        "ranking_features.py",
    }

    write(repo, {"services/ranking_features.py": "def clamp(x):\n    return x\n"})
    changed = tags(repo)
    assert changed[RANKER] != imported[RANKER]
    assert changed[SCORER] == before[SCORER]


def test_an_import_cycle_ends(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services/svc.py": "import a\n",
            "services/a.py": "import b\nimport svc\n",
            "services/b.py": "from a import thing\nimport a, b\n",
        },
    )
    assert set(sources(tmp_path)) == {"svc.py", "a.py", "b.py"}


def test_missing_modules_and_unparsable_ones_do_not_crash(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services/svc.py": """\
                import json, not_here
                from missing.pkg import x
                from . import nothing
                from .... import too_far
                import broken
                """,
            "services/broken.py": "def (:\n import a\n",
            "services/a.py": "",
        },
    )
    found = sources(tmp_path)
    assert set(found) == {"svc.py", "broken.py"}  # broken taken, its imports not followed


def test_packages_relative_imports_and_the_repository_root(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services/svc.py": """\
                from common.text import normalise
                import util
                from local import helpers
                """,
            "services/util.py": "SERVICE = 1\n",
            "util.py": "ROOT = 1\n",  # the service's directory comes first
            "services/local/__init__.py": "",
            "services/local/helpers.py": "from ..util import SERVICE\nfrom . import deep\n",
            "services/local/deep.py": "",
            "common/__init__.py": "",
            "common/text.py": "from .tokens import split\n",
            "common/tokens.py": "def split(s):\n    return s.split()\n",
            "common/unused.py": "",
            "services/other_service.py": "",
        },
    )
    found = sources(tmp_path)
    assert set(found) == {
        "svc.py",
        "util.py",
        "local/__init__.py",
        "local/helpers.py",
        "local/deep.py",
        "common/__init__.py",
        "common/text.py",
        "common/tokens.py",
    }
    assert found["util.py"] == "SERVICE = 1\n"


def test_imports_anywhere_in_the_module_and_literal_dynamic_ones(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services/svc.py": """\
                import importlib
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    import typed
                def load():
                    import lazy
                    return importlib.import_module("plugins.fast"), __import__("old")
                try:
                    import optional
                except ImportError:
                    pass
                """,
            "services/typed.py": "",
            "services/lazy.py": "",
            "services/plugins/fast.py": "",
            "services/old.py": "",
            "services/optional.py": "",
            "services/plugins/slow.py": "",
        },
    )
    assert set(sources(tmp_path)) == {
        "svc.py",
        "typed.py",
        "lazy.py",
        "plugins/fast.py",
        "old.py",
        "optional.py",
    }


def test_a_symlink_out_of_the_repository_is_not_followed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write(repo, {"services/svc.py": "import secret\nimport linked\n", "lib/real.py": "X = 1\n"})
    (tmp_path / "outside.py").write_text("TOKEN = 'x'\n")
    (repo / "services" / "secret.py").symlink_to(tmp_path / "outside.py")
    (repo / "services" / "linked.py").symlink_to("../lib/real.py")
    assert sources(repo) == {"svc.py": "import secret\nimport linked\n", "linked.py": "X = 1\n"}


def test_bounds_refuse_rather_than_leave_code_out(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services/svc.py": "import a, b\n",
            "services/a.py": "A = 1\n",
            "services/b.py": "B = 1\n",
        },
    )
    assert len(sources(tmp_path, max_files=3)) == 3
    with pytest.raises(PermanentError, match="more than 2 files") as caught:
        sources(tmp_path, max_files=2)
    assert caught.value.reason == "BuildFailed"
    with pytest.raises(PermanentError, match="bytes in all"):
        sources(tmp_path, max_bytes=20)
    (tmp_path / "services" / "b.py").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(PermanentError, match=r"services/b\.py is over"):
        sources(tmp_path)
