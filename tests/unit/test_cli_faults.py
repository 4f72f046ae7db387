"""Faults a user met in ``mdc``, each pinned by a test: config files that report
every error at once, the help and usage a person is shown, and what the CLI
prints on a pipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.app.daemon import load_config
from controller.errors import PermanentError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mdc.yaml"
    path.write_text(text)
    return path


# -- mdc.yaml: every error at once -----------------------------------------------------


def test_config_reports_every_error_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "repo: x\n"
        "polInterval: 5\n"  # unknown (a typo)
        "tick: soon\n"  # wrong type
        "router: nginx\n"  # not one of the choices
        "routerPorts:\n"
        "  fraud-scorer: 9001\n"
        "  search-ranker: 70000\n"  # out of range
        "listen: localhost\n"  # not HOST:PORT
        "colour: blue\n",  # unknown
    )
    with pytest.raises(PermanentError) as caught:
        load_config(path)
    assert caught.value.reason == "BadConfig"
    lines = caught.value.message.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{path}:2:1",
        f"{path}:3:1",
        f"{path}:4:1",
        f"{path}:5:1",
        f"{path}:8:1",
        f"{path}:9:1",
    ]
    assert "unknown key 'polInterval'" in lines[0]
    assert "tick must be a number, not 'soon'" in lines[1]
    assert "router must be one of embedded, haproxy, not 'nginx'" in lines[2]
    assert (
        f"routerPorts must be a port (0-65535) for each model: search-ranker (at {path}:7:3)"
        " is 70000" in lines[3]
    )
    assert "listen must be HOST:PORT" in lines[4]
    assert "unknown key 'colour'" in lines[5]


def test_config_reports_every_yaml_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "repo: a\nrepo: b\nbranch: x\nbranch: y\n")
    with pytest.raises(PermanentError) as caught:
        load_config(path)
    lines = caught.value.message.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:2:")
    assert "duplicate key 'repo'" in lines[0]
    assert lines[1].startswith(f"{path}:4:")
    assert "duplicate key 'branch'" in lines[1]


def test_a_good_config_still_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "repo: x\nrouterPorts: {a: 9001}\nlisten: :9000\n"))
    assert (config.repo, dict(config.router_ports), config.port) == ("x", {"a": 9001}, 9000)
