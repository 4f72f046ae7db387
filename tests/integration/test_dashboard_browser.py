"""The dashboard in a real browser: headless Chromium loads the page, lays it
out and takes a screenshot of the right size with far more on it than a blank
page's, and the DOM it built holds every model, with a hostile name as text,
never as an element.

Needs ``chromium`` (Debian package chromium): skipped without it on a
workstation, a failure in CI (``CI`` set), which must have it.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from controller.core.status import GPUHold, ModelStatus, Phase, Release, Verdict
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from controller.ui.dashboard import render_dashboard
from tests.conftest import EXAMPLE_REPO
from tests.unit.test_dashboard import FRAUD, NODE_B, NOW, POLICY_OF, SEARCH, report

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 1280, 900
HOSTILE = "<script>alert(1)</script>"


def require_chromium() -> str:
    """The browser's path; skip without it on a workstation, fail in CI."""
    found = shutil.which("chromium")
    if found is not None:
        return found
    why = "chromium is not installed (Debian package chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI is set, so this is an error, not a skip")
    pytest.skip(why)


@pytest.mark.parametrize(
    ("ci", "outcome"), [(None, pytest.skip.Exception), ("1", pytest.fail.Exception)]
)
def test_missing_chromium_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="Debian package chromium"):
        require_chromium()


def chromium(binary: str, profile: Path, url: str, *args: str) -> bytes:
    """Run headless Chromium once (as root here, hence ``--no-sandbox``) with a
    throwaway profile; its standard output."""
    done = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            *args,
            url,
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout


def screenshot(binary: str, tmp_path: Path, page: Path) -> bytes:
    png = tmp_path / f"{page.stem}.png"
    chromium(binary, tmp_path / f"profile-{page.stem}", page.as_uri(), f"--screenshot={png}")
    assert png.is_file(), f"no screenshot of {page.name}"
    return png.read_bytes()


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk; and the image data must inflate to
    exactly the rows that size and pixel format need (a whole, readable PNG)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert depth == 8
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    idat, at = b"", 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if kind == b"IDAT":
            idat += data[at + 8 : at + 8 + length]
        at += 12 + length
    assert len(zlib.decompress(idat)) == height * (1 + width * channels)
    return width, height


def test_dashboard_renders_in_chromium(tmp_path: Path) -> None:
    binary = require_chromium()
    desired = load_desired(DirTree(EXAMPLE_REPO)).desired
    hostile = ModelStatus(
        HOSTILE,
        Phase.ROLLED_BACK,
        team="search",
        stable=Release("0.9"),
        verdicts=(Verdict("errors", 0.2, False, "errorRate 0.2 > max 0.01"),),
        gpus=(GPUHold("gpu-node-b", f"{NODE_B}-1", 0.5, "stable"),),
    )
    statuses = [SEARCH, FRAUD, hostile]
    page = tmp_path / "dashboard.html"
    page.write_text(
        render_dashboard(
            statuses, report(desired, *statuses), desired.policies, NOW, policy_of=POLICY_OF
        ),
        encoding="utf-8",
    )
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")

    shot, empty = screenshot(binary, tmp_path, page), screenshot(binary, tmp_path, blank)
    assert png_size(shot) == (WIDTH, HEIGHT)
    assert png_size(empty) == (WIDTH, HEIGHT)
    # text, badges, bars and GPU boxes compress far worse than a white page
    assert len(shot) > 5 * len(empty), (len(shot), len(empty))

    built = chromium(binary, tmp_path / "profile-dom", page.as_uri(), "--dump-dom").decode()
    for name in ("fraud-scorer", "search-ranker", "gpu-node-a", "gpu-node-b"):
        assert name in built
    assert 'aria-current="step"' in built
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in built  # the name is text...
    assert "<script" not in built  # ...and no script element was ever made
