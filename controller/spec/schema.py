"""The JSON Schemas of the spec kinds, and schema errors as plain sentences.

Owns loading ``schemas/*.schema.json`` (Draft 2020-12; shipped inside the
wheel as ``controller/schemas``, read from the repository root in a source
checkout) and turning :mod:`jsonschema` errors into :class:`Diagnostic` values
that point at the exact key or value in the file and read like a compiler's:
``spec.resources.gpu: must be > 0 (got -1)``.

Called by :mod:`controller.spec.kinds`; pure apart from reading the schema files
once.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path as FilePath
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.validators import extend

from controller.spec.documents import Diagnostic, Document, Path
from controller.spec.units import format_duration, parse_duration

__all__ = ["KINDS", "check", "schema_dir", "schemas", "suggest"]

#: Spec kind -> schema file name.
KINDS: Mapping[str, str] = {
    "Model": "model.schema.json",
    "GPUPool": "gpupool.schema.json",
    "RolloutPolicy": "rolloutpolicy.schema.json",
}


def schema_dir() -> FilePath:
    """Where the schema files are: inside the installed package, or the repo."""
    packaged = FilePath(__file__).resolve().parent.parent / "schemas"
    if packaged.is_dir():
        return packaged
    return FilePath(__file__).resolve().parents[2] / "schemas"


@functools.cache
def schemas() -> dict[str, dict[str, Any]]:
    """Every schema file by name, parsed."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(schema_dir().glob("*.schema.json"))
    }


@functools.cache
def _anchored(pattern: str) -> re.Pattern[str]:
    """``pattern`` with ``\\A...\\Z`` semantics: a final ``$`` matches only at
    the very end (in Python's ``re`` it also matches before a final newline,
    so ``"fraud-scorer\\n"`` would pass ``^[a-z-]+$``)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not _anchored(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _duration_bound(
    validator: Any, bound: str, instance: Any, schema: Mapping[str, Any], *, lowest: bool
) -> Iterator[ValidationError]:
    if not isinstance(instance, str):
        return
    try:
        seconds = parse_duration(instance)
    except ValueError:
        return  # the pattern says what is wrong
    limit = parse_duration(bound)
    if (seconds < limit) if lowest else (seconds > limit):
        word = "at least" if lowest else "at most"
        yield ValidationError(f"must be {word} {format_duration(limit)} (got {instance!r})")


def _min_duration(
    validator: Any, bound: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    return _duration_bound(validator, bound, instance, schema, lowest=True)


def _max_duration(
    validator: Any, bound: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    return _duration_bound(validator, bound, instance, schema, lowest=False)


#: Draft 2020-12 with anchored patterns and two keywords of ours for the
#: ``duration`` strings (``minDuration``, ``maxDuration``; other validators
#: ignore them as unknown keywords).
_Validator = extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {"pattern": _pattern, "minDuration": _min_duration, "maxDuration": _max_duration},
)


@functools.cache
def _validators() -> dict[str, Any]:
    loaded = schemas()
    return {kind: _Validator(_inline(loaded[name], name, loaded)) for kind, name in KINDS.items()}


def _inline(node: Any, base: str, loaded: Mapping[str, Any]) -> Any:
    """``node`` with every ``$ref`` replaced by a copy of its target.

    Our schemas refer only to ``$defs`` (in the same file or in
    ``common.schema.json``) and never in a cycle; inlining them once saves
    jsonschema a reference lookup per field per document (about half of the
    validation time). Keys beside a ``$ref`` (its ``description``) win.
    """
    if isinstance(node, list):
        return [_inline(item, base, loaded) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _inline(value, base, loaded) for key, value in node.items() if key != "$ref"}
    ref = node.get("$ref")
    if ref is None:
        return out
    file, _, pointer = str(ref).partition("#")
    target: Any = loaded[file or base]
    for part in pointer.strip("/").split("/"):
        target = target[part]
    return _inline(target, file or base, loaded) | out


def check(kind: str, document: Document) -> list[Diagnostic]:
    """Every schema problem of ``document`` (of ``kind``), in file order."""
    validator = _validators()[kind]
    found: list[Diagnostic] = []
    for error in validator.iter_errors(document.data):
        for path, message, rule in _explain(error):
            found.append(document.diagnostic(path, message, rule))
    found.sort(key=lambda d: (d.line, d.column, d.path))
    return found


def suggest(word: str, choices: Iterator[str] | list[str] | set[str]) -> str:
    """`` (did you mean 'x'?)`` when ``word`` is a near miss of a choice."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _explain(error: ValidationError) -> Iterator[tuple[Path, str, str]]:
    path: Path = tuple(error.absolute_path)
    keyword = str(error.validator)
    value: Any = error.validator_value
    instance: Any = error.instance
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    rule = f"schema.{keyword}"
    if keyword == "required":
        for name in value:
            if isinstance(instance, dict) and name not in instance:
                yield (*path, name), "required field is missing", rule
    elif keyword == "additionalProperties":
        known = list(schema.get("properties", {}))
        for name in instance:
            if name not in known:
                yield (*path, name), f"unknown field{suggest(name, known)}", "schema.unknown-field"
    elif keyword == "dependentRequired":
        for name, needs in value.items():
            for need in needs:
                if name in instance and need not in instance:
                    yield (*path, need), f"required when {name!r} is set", rule
    elif keyword == "type":
        hint = "; quote it" if value == "string" and _is_scalar(instance) else ""
        yield path, f"must be {_article(value)} (got {_describe(instance)}){hint}", rule
    elif keyword == "enum":
        options = ", ".join(repr(o) for o in value)
        near = suggest(instance, [str(o) for o in value]) if isinstance(instance, str) else ""
        yield path, f"must be one of {options} (got {instance!r}){near}", rule
    elif keyword == "const":
        yield path, f"must be {value!r} (got {instance!r})", rule
    elif keyword in _COMPARE:
        yield path, f"must be {_COMPARE[keyword]} {value} (got {instance})", rule
    elif keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        bound = "at least" if keyword.startswith("min") else "at most"
        unit = "characters" if keyword.endswith("Length") else "items"
        yield path, f"must have {bound} {value} {unit} (got {len(instance)})", rule
    elif keyword in ("minProperties", "maxProperties"):
        names = list(schema.get("properties", {}))
        if names and schema.get("minProperties") == schema.get("maxProperties") == 1:
            given = ", ".join(instance) or "none"
            yield path, f"must set exactly one of {', '.join(names)} (got {given})", rule
        else:
            bound = "at least" if keyword.startswith("min") else "at most"
            yield path, f"must have {bound} {value} fields (got {len(instance)})", rule
    elif keyword == "pattern":
        title = schema.get("title")
        examples = schema.get("examples", [])
        if title:
            like = f" such as {', '.join(examples)}" if examples else ""
            yield path, f"must be {_article(title)}{like} (got {instance!r})", rule
        else:
            yield path, f"must match the pattern {value} (got {instance!r})", rule
    elif keyword in ("minDuration", "maxDuration"):
        yield path, error.message, "schema.duration"
    elif keyword == "propertyNames":
        yield path, f"has an invalid key: {error.message}", rule
    else:
        yield path, error.message, rule


_COMPARE = {
    "minimum": ">=",
    "maximum": "<=",
    "exclusiveMinimum": ">",
    "exclusiveMaximum": "<",
}

_TYPE_WORDS = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "object": "mapping",
    "array": "list",
    "null": "null",
}


def _article(word: Any) -> str:
    if isinstance(word, list):
        return " or ".join(_article(w) for w in word)
    text = _TYPE_WORDS.get(str(word), str(word))
    return ("an " if text[0] in "aeiouAEIOU" else "a ") + text


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | bool) or value is None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    return "a mapping"
