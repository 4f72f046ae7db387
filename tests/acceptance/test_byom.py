"""The README's "Bring your own model", as a user follows it: its code blocks are
the files and the commands, run from a fresh temporary directory through the
installed ``mdc`` (and ``python``, ``git``), against a real ``mlflow server``
this test starts in place of the README's first block. The model registered by
the README's ``train.py`` ends up answering the README's request."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import MDC
from tests.bentos import bentoml_processes
from tests.conftest import ROOT
from tests.mlflow_server import MlflowServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SECTION = "## Bring your own model"


def blocks() -> list[tuple[str, str, str]]:
    """(the prose line before it, language, code) of each fenced block of the section."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start : text.index("\n## ", start + len(SECTION))]
    found = []
    for match in re.finditer(
        r"(?P<before>[^\n]*)\n\n```(?P<lang>\w+)\n(?P<code>.*?)```", section, re.S
    ):
        found.append((match["before"], match["lang"], match["code"]))
    return found


def named(before: str) -> str | None:
    """The file a block is, from the prose before it (its last `path.ext`)."""
    paths = re.findall(r"`([\w./-]+\.(?:py|yaml))`", before)
    return paths[-1] if paths else None


def test_bring_your_own_model_as_the_readme_says(tmp_path: Path) -> None:
    found = blocks()
    files = {name: code for before, _, code in found if (name := named(before))}
    assert set(files) == {
        "train.py",
        "services/iris.py",
        "models/iris.yaml",
        "pools/local.yaml",
        "rollouts/canary.yaml",
    }
    shell = [code for before, lang, code in found if lang == "bash"]
    assert len(shell) == 2  # the setup (this test's server stands in for it), the run
    assert "mlflow server" in shell[0]
    env = {
        **os.environ,
        "PATH": f"{MDC.parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "Data Scientist",
        "GIT_AUTHOR_EMAIL": "ds@example.com",
        "GIT_COMMITTER_NAME": "Data Scientist",
        "GIT_COMMITTER_EMAIL": "ds@example.com",
    }
    work = tmp_path / "work"
    specs = work / "specs"
    with MlflowServer(tmp_path / "mlflow") as server:
        env["MLFLOW_TRACKING_URI"] = server.url
        work.mkdir()
        (work / "train.py").write_text(files.pop("train.py"))
        trained = subprocess.run(
            [sys.executable, "train.py"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert trained.returncode == 0, trained.stderr[-2000:]
        for name, code in files.items():
            (specs / name).parent.mkdir(parents=True, exist_ok=True)
            (specs / name).write_text(code)
        try:
            ran = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", shell[1]],
                cwd=specs,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert ran.returncode == 0, ran.stderr[-3000:]
            rows = [line.split("\t") for line in ran.stdout.splitlines() if "\t" in line]
            assert [row[:3] for row in rows] == [["iris", "Healthy", "1"]], ran.stdout
            url = rows[0][3]
            answer = httpx.post(
                f"{url}/predict",
                json={"rows": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json() == [0, 2]  # setosa, virginica
        finally:
            down = subprocess.run(
                [str(MDC), "down"],
                cwd=specs,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert down.returncode == 0, down.stderr
    assert bentoml_processes(tmp_path) == []
