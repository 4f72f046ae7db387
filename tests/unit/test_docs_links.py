"""Every relative link in the user's documents points at a file or folder that
exists inside the repository (a clone has nothing beside it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCUMENTS = sorted(
    {ROOT / "README.md", ROOT / "example-repo" / "README.md", *(ROOT / "docs").glob("*.md")}
)

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...


def links(text: str) -> list[str]:
    """The targets of inline and reference links, outside code."""
    text = _CODE.sub("", _FENCE.sub("", text))
    return [*_INLINE.findall(text), *_REFERENCE.findall(text)]


def broken_links(document: Path, root: Path) -> list[str]:
    """``target: why`` for each relative link of ``document`` that leaves ``root``
    or names nothing."""
    out = []
    for target in links(document.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target) or target.startswith(("#", "//")):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path.startswith("/"):
            out.append(f"{target}: absolute")
            continue
        resolved = (document.parent / path).resolve()
        if not resolved.is_relative_to(root.resolve()):
            out.append(f"{target}: outside the repository")
        elif not resolved.exists():
            out.append(f"{target}: does not exist")
    return out


def test_the_documents_are_there() -> None:
    names = {d.relative_to(ROOT).as_posix() for d in DOCUMENTS}
    assert {"README.md", "example-repo/README.md", "docs/DESIGN.md"} <= names
    assert "docs/DESIGN.md" in links((ROOT / "README.md").read_text(encoding="utf-8"))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    assert broken_links(document, ROOT) == []


def test_the_check_finds_what_it_should(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("x")
    readme = tmp_path / "README.md"
    readme.write_text(
        "See [design](../shared/DESIGN.md), [gone](docs/gone.md#top), ![pic](/etc/passwd),\n"
        "[fine](docs/there.md#part), [web](https://example.com/x), [anchor](#usage),\n"
        "[`docs/`](docs/) and `[in code](nowhere.md)`.\n\n"
        "```md\n[fenced](nowhere-either.md)\n```\n\n"
        "[ref]: docs/missing.md\n"
    )
    assert broken_links(readme, tmp_path) == [
        "../shared/DESIGN.md: outside the repository",
        "docs/gone.md#top: does not exist",
        "/etc/passwd: absolute",
        "docs/missing.md: does not exist",
    ]
