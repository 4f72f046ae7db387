"""Untrusted text made safe for where it is shown: a terminal, or Markdown on GitHub.

Spec files, file names, commit authors and subjects, webhooks and GitHub's answers
are untrusted (anyone can open a pull request). Every value that comes from them
and is interpolated into a line mdc prints or a text it posts goes through the
helper of that medium, and only this module decides how:

* :func:`visible` -- a terminal: control, format and line-separator characters
  (``ESC``, ``\\r``, ``\\n``, C1 controls, bidi overrides, zero-width characters)
  are shown as Python escapes (``\\x1b``, ``\\n``, ``\\u202e``), so a value can
  neither forge a line nor send an escape sequence (colours, OSC titles and
  hyperlinks, cursor moves) to the terminal;
* :func:`md_text`, :func:`md_code` and :func:`md_html` -- Markdown for GitHub:
  a value in prose, in a code span, or inside an HTML block (``<summary>``).
  Each first makes control characters visible (a newline can open no heading,
  list or table row), then neutralises what GitHub would act on: emphasis,
  links and images, headings, HTML, table pipes, backticks and ``@mentions``.

HTML pages are escaped by Jinja2's autoescape (:mod:`controller.ui.dashboard`).
Pure: the standard library only.
"""

from __future__ import annotations

import html
import re
import unicodedata

__all__ = ["md_code", "md_html", "md_text", "visible", "visible_lines"]

#: Unicode categories a terminal or a renderer acts on rather than shows: controls,
#: format characters (bidi overrides, zero-width), line and paragraph separators,
#: surrogates and unassigned code points.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
#: The ASCII punctuation GitHub's Markdown reads as syntax anywhere in a line: code
#: spans, emphasis, links and images, HTML and entities, tables, strikethrough,
#: headings, math. CommonMark lets a backslash escape each; the rest (``-``, ``.``,
#: ``:``...) is left as it is, so the text stays readable.
_MARKDOWN_ACTIVE = re.compile(r"([\\`*_\[\]<>|~!#&{}$])")
#: A zero-width space after ``@``: GitHub mentions ``@name`` and ``@org/team`` only
#: when a name follows the ``@`` directly.
_NO_MENTION = "@\u200b"


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    if unicodedata.category(char) in _HIDDEN:
        return repr(char)[1:-1]
    return char


def visible(value: object) -> str:
    """``value`` as text with every control or invisible character shown as its escape
    (``\\x1b``, ``\\n``, ``\\t``, ``\\u202e``); other text, non-ASCII letters included,
    unchanged. For each untrusted value in a line printed on a terminal or a log."""
    return _NOT_PRINTABLE_ASCII.sub(_shown, str(value))


def visible_lines(text: str) -> str:
    """Text of many lines (a process's log) as :func:`visible` shows each of its lines:
    newlines and tabs kept, every other control character (escape sequences, ``\\r``
    that would overwrite a line) shown as its escape."""
    return "\n".join(
        "\t".join(visible(part) for part in line.split("\t")) for line in text.split("\n")
    )


def md_text(value: object) -> str:
    """``value`` as literal text in GitHub Markdown prose, a list item or a table cell:
    controls made :func:`visible`, each Markdown-active ASCII punctuation character
    backslash-escaped (pipes included, so a table cell stays one cell) and no
    ``@mention``."""
    escaped = _MARKDOWN_ACTIVE.sub(r"\\\1", visible(value))
    return escaped.replace("@", _NO_MENTION)


def md_code(value: object, *, in_table: bool = False) -> str:
    """``value`` as one inline code span: fenced by more backticks than the longest run
    inside it (and padded when it starts or ends with one), so no backtick closes it
    early; controls made :func:`visible`. Inside a code span GitHub links, mentions
    and renders nothing. ``in_table``: pipes escaped as GFM asks in a table cell."""
    text = visible(value)
    if in_table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    if not text or text.startswith(("`", " ")) or text.endswith(("`", " ")):
        text = f" {text} "
    return f"{fence}{text}{fence}"


def md_html(value: object) -> str:
    """``value`` as text inside an HTML block of GitHub Markdown (``<summary>…``):
    controls made :func:`visible`, HTML-escaped, and no ``@mention``."""
    return html.escape(visible(value)).replace("@", _NO_MENTION)
