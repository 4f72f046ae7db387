"""The wheel a stranger installs: built from this checkout, installed into a
fresh virtual environment (its dependencies borrowed from the development one,
so no network is needed), and run from outside the source tree -- the schemas
and the example repository ``mdc demo`` serves come from the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

PROBE = textwrap.dedent(
    """
    import json, importlib.metadata
    import controller, controller.demo, controller.spec.schema
    print(json.dumps({
        "controller": controller.__file__,
        "example": str(controller.demo.EXAMPLE_REPO),
        "schemas": str(controller.spec.schema.schema_dir()),
        "version": controller.__version__,
        "dist": importlib.metadata.version("mdc-gitops"),
    }))
    """
)


def run(argv: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A venv holding only the wheel (no editable install, no source tree on its
    path), its interpreter's directory, and the environment to run it in."""
    tmp = tmp_path_factory.mktemp("install")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env["PIP_NO_INDEX"] = "1"  # nothing from the network: the build backend is a dev dependency
    dist = tmp / "dist"
    built = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            ROOT,
            "-w",
            dist,
        ],
        tmp,
        env,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("mdc_gitops-*.whl")

    venv = tmp / "v"
    made = run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    done = run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", wheel], tmp, env
    )
    assert done.returncode == 0, done.stderr

    # Dependencies from the development venv: its site-packages as a plain path
    # entry (its own .pth files -- the editable install's among them -- are not
    # processed from there), after the wheel's.
    site = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env
        ).stdout.strip()
    )
    deps = Path(sysconfig.get_paths()["purelib"])
    assert deps.resolve() != ROOT.resolve()
    # the editable install is a .pth to the checkout (plus, from hatch, a bare
    # controller/schemas folder), never the package itself
    assert not (deps / "controller" / "__init__.py").exists()
    (site / "zz-dev-dependencies.pth").write_text(f"{deps}\n")
    return venv, env


def test_wheel_runs_from_its_own_files(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    probe = run([venv / "bin" / "python", "-c", PROBE], tmp_path, env)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    package = Path(found["controller"]).resolve().parent
    assert package.is_relative_to(venv.resolve()), found  # not the checkout's controller
    assert not package.is_relative_to(ROOT.resolve()), found
    assert Path(found["example"]) == package / "example-repo"
    assert Path(found["schemas"]) == package / "schemas"
    assert (package / "example-repo" / "models" / "fraud-scorer.yaml").is_file()
    assert (package / "example-repo" / ".github" / "workflows" / "mdc-plan.yml").is_file()
    assert found["version"] == found["dist"]

    help_ = run([venv / "bin" / "mdc", "demo", "--help"], tmp_path, env)
    assert help_.returncode == 0, help_.stderr
    assert "--keep" in help_.stdout

    valid = run(
        [venv / "bin" / "python", "-m", "controller", "validate", found["example"]], tmp_path, env
    )
    assert valid.returncode == 0, valid.stdout + valid.stderr
