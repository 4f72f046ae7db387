"""Test support for BentoML: spec repos with services that misbehave on purpose,
and checks that no process a test started outlives it."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

from controller.spec.kinds import Model
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO

__all__ = ["bentoml_processes", "example_copy", "repo_with_service"]


def example_copy(dest: Path) -> Path:
    shutil.copytree(EXAMPLE_REPO, dest)
    return dest


def repo_with_service(dest: Path, name: str, code: str, api: str = "ping") -> tuple[Path, Model]:
    """The example repo plus a model ``name`` served by ``code`` (class ``Svc``)."""
    example_copy(dest)
    (dest / "services" / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(code))
    (dest / "models" / f"{name}.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: mdc.dev/v1alpha1
            kind: Model
            metadata:
              name: {name}
            spec:
              version: "1"
              team: search
              artifact:
                path: artifacts/search-ranker/v1.json
              service: services/{name.replace("-", "_")}:Svc
              resources:
                gpu: 0.25
              pool: shared-a100
              rollout: fast
              serving:
                readyTimeout: 3s
                probe:
                  path: /{api}
                  body: {{}}
            """
        )
    )
    result = load_desired(DirTree(dest))
    assert result.ok, result.diagnostics
    return dest, result.desired.models[name]


def bentoml_processes(marker: Path, where: str = "environ") -> list[int]:
    """Live processes whose environment (or, with ``where="cmdline"``, command line)
    mentions ``marker`` (a test's tmp dir)."""
    wanted = str(marker).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / where).read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if wanted in environ and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found
