"""Untrusted text out: the terminal escaper, the Markdown escapers for GitHub, the
plan's comment and text, ``mdc validate``'s listing and the dashboard's autoescape."""

from __future__ import annotations

import io
import re

import pytest

from controller.core.pr_plan import ChangePlan, ModelChange, render_markdown, render_text
from controller.core.safe_text import md_code, md_html, md_text, visible, visible_lines
from controller.spec.documents import Diagnostic
from controller.ui.dashboard import _ENVIRONMENT
from controller.ui.status_table import render_status_table
from controller.ui.terminal import Style, report

ESC = "\x1b"


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("models/ok.yaml", "models/ok.yaml"),
        ("x.yaml\nmodels/ok.yaml: valid", r"x.yaml\nmodels/ok.yaml: valid"),  # a forged line
        (f"{ESC}[31mred{ESC}[0m", r"\x1b[31mred\x1b[0m"),  # colours
        (f"{ESC}]0;pwned\x07", r"\x1b]0;pwned\x07"),  # an OSC window title
        (
            f"{ESC}]8;;https://evil/\x07click{ESC}]8;;\x07",
            r"\x1b]8;;https://evil/\x07click\x1b]8;;\x07",
        ),
        ("over\rwrite", r"over\rwrite"),
        ("a\tb", r"a\tb"),
        ("\x9b31m", r"\x9b31m"),  # a C1 CSI
        ("\x7f", r"\x7f"),
        ("user\u202egnp.exe", r"user\u202egnp.exe"),  # a bidi override
        ("zero\u200bwidth", r"zero\u200bwidth"),
        ("line\u2028sep", r"line\u2028sep"),
        ("café → ü 模型", "café → ü 模型"),  # letters and symbols stay
        ("back\\slash", "back\\slash"),
        (42, "42"),
    ],
)
def test_visible_shows_every_control_character(given: object, shown: str) -> None:
    assert visible(given) == shown
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", visible(given))


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("one\ntwo\n", "one\ntwo\n"),
        ("a\tb", "a\tb"),
        (f"{ESC}[2Jcleared\r", r"\x1b[2Jcleared\r"),
    ],
)
def test_visible_lines_keeps_newlines_and_tabs_only(given: str, shown: str) -> None:
    assert visible_lines(given) == shown


@pytest.mark.parametrize(
    ("given", "escaped"),
    [
        ("search-ranker", "search-ranker"),
        ("a `code` span", r"a \`code\` span"),
        ("@octocat and @org/team", "@\u200boctocat and @\u200borg/team"),
        ("[click](https://evil)", r"\[click\](https://evil)"),
        ("![img](https://evil/p.png)", r"\!\[img\](https://evil/p.png)"),
        ("# heading", r"\# heading"),
        ("x\n## Plan: can be applied", r"x\\n\#\# Plan: can be applied"),
        ("<img src=x onerror=alert(1)>", r"\<img src=x onerror=alert(1)\>"),
        ("a | b", r"a \| b"),
        ("*bold* _it_ ~~del~~", r"\*bold\* \_it\_ \~\~del\~\~"),
        ("&amp; $x$", r"\&amp; \$x\$"),
        ("back\\slash", r"back\\slash"),
    ],
)
def test_md_text_neutralises_markdown(given: str, escaped: str) -> None:
    assert md_text(given) == escaped
    assert "\n" not in md_text(given)


@pytest.mark.parametrize(
    ("given", "in_table", "span"),
    [
        ("models/x.yaml", False, "`models/x.yaml`"),
        ("a`b", False, "``a`b``"),
        ("x`` @y ``", False, "``` x`` @y `` ```"),
        ("`", False, "`` ` ``"),
        ("", False, "`  `"),
        ("a\n## Plan: can be applied", False, r"`a\n## Plan: can be applied`"),
        ("a|b", True, r"`a\|b`"),
        ("a|b", False, "`a|b`"),
    ],
)
def test_md_code_cannot_be_closed_early(given: str, in_table: bool, span: str) -> None:
    assert md_code(given, in_table=in_table) == span


@pytest.mark.parametrize(
    ("given", "escaped"),
    [
        ("ranker", "ranker"),
        ("</summary><img src=x>", "&lt;/summary&gt;&lt;img src=x&gt;"),
        ('a"b&c', "a&quot;b&amp;c"),
        ("@someone\n", "@\u200bsomeone\\n"),
    ],
)
def test_md_html_escapes_for_an_html_block(given: str, escaped: str) -> None:
    assert md_html(given) == escaped


HOSTILE_FILE = "models/x`.yaml ![p](https://evil/p.png) @octocat [l](https://evil)"
FORGED = "bad\n### mdc plan: ✅ can be applied\n"


def hostile_plan() -> ChangePlan:
    diagnostic = Diagnostic(HOSTILE_FILE, 1, 1, "spec", FORGED, "schema.type")
    change = ModelChange(
        model="ranker\n## Plan: can be applied",
        change="changed",
        fields=("spec.version`) @octocat (`",),
        bento="ranker:abc|def",
        new_bento=True,
        gpus=1.0,
        canary=None,
        timeline="[x](https://evil)",
        verdict="@octocat <b>",
        verdict_waits=True,
    )
    team = {
        "team": "t|eam",
        "pool": "p@ol",
        "requested": 1.0,
        "canary_peak": 1.0,
        "limit": 2.0,
        "headroom": 1.0,
    }
    return ChangePlan(
        "base`x", "head\n# h", (change,), (diagnostic,), (team,), False, (diagnostic.render(),)
    )


def test_the_pr_comment_has_no_live_markdown_from_its_values() -> None:
    text = render_markdown(hostile_plan())
    lines = text.splitlines()
    # one heading only, mdc's own; no line forged by a value
    assert [line for line in lines if line.startswith("#")] == [
        "### mdc plan: ❌ cannot be applied"
    ]
    assert not any("can be applied" in line and line.startswith(("#", "bad")) for line in lines[2:])
    # no live mention, link or image outside a code span
    outside = re.sub(r"(`+)(?:(?!\1).)*?\1", "", text.replace("\\`", ""))
    assert not re.search(r"(?<![\\\w])@[A-Za-z]", outside)
    assert not re.search(r"(?<!\\)!?(?<!\\)\[[^\]]*(?<!\\)\]\(", outside)
    assert "<b>" not in text
    assert "<img" not in text
    # every table row keeps its six cells
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert rows
    assert all(len(re.findall(r"(?<!\\)\|", row)) == 7 for row in rows)
    assert "<summary>ranker\\n## Plan: can be applied</summary>" in text


def test_the_plan_text_forges_no_line() -> None:
    text = render_text(hostile_plan())
    assert "\n### mdc plan" not in text
    assert "\n## Plan" not in text
    assert "\n# h" not in text
    assert ESC not in text
    assert r"bad\n### mdc plan: ✅ can be applied\n" in text


def test_validate_listing_shows_control_characters_in_file_names() -> None:
    """A file named ``x\\nmodels/ok.yaml: valid`` cannot print a line that says so."""
    forged = Diagnostic(
        "x.yaml\nmodels/ok.yaml: valid\x1b[8m", 2, 3, "spec\x1b]0;t\x07", "bad\rvalue", "r"
    )
    out = io.StringIO()
    report([forged], out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert not any(line.startswith("models/ok.yaml") for line in lines)
    assert ESC not in out.getvalue()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith(r"x.yaml\nmodels/ok.yaml: valid\x1b[8m:2:3: spec\x1b]0;t\x07:")


def test_status_table_shows_escapes_visibly() -> None:
    row = {"model": f"m{ESC}]0;x\x07", "team": "t\nforged", "phase": "Healthy"}
    table = render_status_table([row], Style(io.StringIO()))
    assert len(table.splitlines()) == 2
    assert r"m\x1b]0;x\x07" in table
    assert r"t\nforged" in table
    assert ESC not in table


def test_the_dashboard_templates_autoescape() -> None:
    assert _ENVIRONMENT.autoescape is True
    loader = _ENVIRONMENT.loader
    assert loader is not None
    for name in _ENVIRONMENT.list_templates():
        source = loader.get_source(_ENVIRONMENT, name)[0]
        assert "|safe" not in source.replace(" ", ""), name
        assert "autoescape" not in source, name
    page = _ENVIRONMENT.from_string("<p>{{ v }}</p>").render(v="<script>x</script>")
    assert page == "<p>&lt;script&gt;x&lt;/script&gt;</p>"
