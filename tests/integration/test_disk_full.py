"""A full disk never stops the data plane's bookkeeping from moving traffic: the
local runtime's process table and the router's route table are kept in memory
and written when there is room, so a pass goes on (and rolls a failing canary
back) and a route change is applied. The disk is made full by failing the
writes with ENOSPC, as the kernel does; ``bench/bench_faults.py --part disk``
fills a real tmpfs."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import pytest

from controller.adapters.router import control
from controller.adapters.router.control import RouterService
from controller.adapters.runtime.local import LocalRuntime
from controller.core.traffic import RouteConfig

pytestmark = pytest.mark.integration


def _full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_the_runtime_ticks_on_a_full_disk_and_saves_its_table_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = LocalRuntime(tmp_path / "state", tmp_path / "home", rng=random.Random(0))
    with monkeypatch.context() as full:
        full.setattr(Path, "write_text", _full)
        assert runtime.tick(0.0) == []  # no OSError out of the pass
        assert runtime.save_error is not None
        assert "No space left" in runtime.save_error
        assert not runtime.table.exists()
        assert not list(runtime.table.parent.glob("*.tmp"))
    runtime.tick(1.0)
    assert runtime.save_error is None
    assert json.loads(runtime.table.read_text()) == []


def test_a_route_is_set_on_a_full_disk_and_the_table_written_with_the_next_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = RouterService(tmp_path / "router")
    try:
        service.open("m", 0)
        with monkeypatch.context() as full:
            full.setattr(control, "write_atomically", _full)
            service.configure("m", RouteConfig("127.0.0.1:1", None, 0))
            assert service.engine.models["m"].config.stable == "127.0.0.1:1"  # applied
            assert service.save_error is not None
        service.configure("m", RouteConfig("127.0.0.1:2", None, 0))
        assert service.save_error is None
        saved = json.loads(service.table.read_text())
        assert saved["m"]["config"]["stable"] == "127.0.0.1:2"
    finally:
        service.engine.close()
