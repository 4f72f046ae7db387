"""A real MLflow tracking server for tests (the demo's own harness,
:class:`controller.demo_registry.MlflowServer`) that registers the example
repository's iris-classifier with its own training script."""

from __future__ import annotations

import socket
from pathlib import Path

from controller.demo_registry import MlflowServer as _Server
from controller.demo_registry import train_script
from tests.conftest import EXAMPLE_REPO

__all__ = ["TRAIN", "MlflowServer", "free_port"]

TRAIN = train_script(EXAMPLE_REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer(_Server):
    """The demo's server, with the example repository's training script."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        super().__init__(root, port, train=TRAIN)
