"""The schema files are valid Draft 2020-12 schemas and double as reference docs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from controller import API_VERSION
from controller.spec.schema import KINDS, schemas

FILES = sorted(schemas())


def test_every_kind_has_a_schema_file() -> None:
    assert set(KINDS.values()) <= set(FILES)
    assert "common.schema.json" in FILES


@pytest.mark.parametrize("name", FILES)
def test_schema_is_valid_against_the_meta_schema(name: str) -> None:
    body = schemas()[name]
    assert body["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(body)  # raises SchemaError when invalid
    assert body["$id"].endswith("/" + name)


def properties(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            yield f"{path}.{key}", sub
        for key, sub in node.items():
            if key != "if":  # a condition, not a field definition
                yield from properties(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from properties(sub, f"{path}[{i}]")


@pytest.mark.parametrize("name", FILES)
def test_every_field_is_documented(name: str) -> None:
    body = schemas()[name]
    defs = body.get("$defs", {})
    missing = []
    for path, sub in properties(body):
        ref = sub.get("$ref", "")
        target = defs.get(ref.rsplit("/", 1)[-1], {}) if ref.startswith("#/") else {}
        documented = (
            "description" in sub or "description" in target or ref.startswith("common.schema.json")
        )
        if not documented:
            missing.append(path)
    assert missing == []


@pytest.mark.parametrize("name", [KINDS[k] for k in KINDS])
def test_objects_refuse_unknown_fields(name: str) -> None:
    """Every object schema with properties closes itself (unknown fields are errors)."""
    open_objects = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, sub in node.items():
                if key != "if":  # a condition, not an object definition
                    visit(sub, f"{path}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                visit(sub, f"{path}[{i}]")

    visit(schemas()[name], "")
    assert open_objects == []


def test_api_version_matches_the_package() -> None:
    assert schemas()["common.schema.json"]["$defs"]["apiVersion"]["const"] == API_VERSION
