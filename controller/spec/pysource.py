"""Parsing an untrusted Python module, never running it, under a budget.

Owns :func:`parse_module`: the service modules of a spec repository (and the
modules they import) are parsed with :mod:`ast` to find their classes and
imports. Hostile source must cost bounded work and never escape as an
exception: the size is capped before parsing; the parser's own failures
(``SyntaxError``, ``ValueError`` for NUL bytes, ``RecursionError`` and
``MemoryError`` for deeply nested expressions) come back as a sentence; the
tree's nesting is capped; and a ``from __future__`` import that Python's
compiler would refuse (not at the top of the module, or naming an unknown
feature) is refused here too, at validation rather than in the build.

Pure. Called by :mod:`controller.spec.rules` and
:mod:`controller.spec.service_sources`.
"""

from __future__ import annotations
import __future__ as future_module

import ast

__all__ = ["MAX_MODULE_BYTES", "MAX_MODULE_DEPTH", "parse_module"]

MAX_MODULE_BYTES = 1 << 20
#: nodes nested deeper than this are refused (real code stays far below it)
MAX_MODULE_DEPTH = 200

_FEATURES = frozenset(future_module.all_feature_names)


def parse_module(source: bytes, shown: str) -> ast.Module | str:
    """The module parsed from ``source``, or a sentence saying why not."""
    if len(source) > MAX_MODULE_BYTES:
        return f"cannot parse {shown}: over {MAX_MODULE_BYTES} bytes"
    try:
        module = ast.parse(source, filename=shown)
    except SyntaxError as exc:
        return f"cannot parse {shown} (line {exc.lineno or '?'}): {exc.msg}"
    except ValueError as exc:
        return f"cannot parse {shown}: {exc}"
    except (RecursionError, MemoryError):
        return f"cannot parse {shown}: expressions nested too deeply"
    too_deep = _deeper_than(module, MAX_MODULE_DEPTH)
    if too_deep is not None:
        return f"cannot parse {shown} (line {too_deep}): nested deeper than {MAX_MODULE_DEPTH}"
    misplaced = _bad_future(module)
    if misplaced is not None:
        line, why = misplaced
        return f"cannot parse {shown} (line {line}): {why}"
    return module


def _deeper_than(module: ast.Module, limit: int) -> int | None:
    """The line of a node nested deeper than ``limit``, if any (iteratively)."""
    stack: list[tuple[ast.AST, int]] = [(module, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return int(getattr(node, "lineno", 1))
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return None


def _bad_future(module: ast.Module) -> tuple[int, str] | None:
    """Where a ``from __future__`` import breaks Python's rules, and how."""
    at_top = True
    for index, node in enumerate(module.body):
        is_doc = (
            index == 0
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if is_future and isinstance(node, ast.ImportFrom):
            if not at_top:
                return node.lineno, "from __future__ imports must be at the top of the module"
            for alias in node.names:
                if alias.name not in _FEATURES:
                    return node.lineno, f"future feature {alias.name!r} is not defined"
        elif not is_doc:
            at_top = False
    top = {id(node) for node in module.body}
    for inner in ast.walk(module):
        if (
            isinstance(inner, ast.ImportFrom)
            and inner.module == "__future__"
            and id(inner) not in top
        ):
            return inner.lineno, "from __future__ imports must be at the top of the module"
    return None
