"""Safe YAML reading: values, locations, and every refusal."""

from __future__ import annotations

from typing import Any

import pytest

from controller.spec.documents import Limits, Location, format_path, parse_yaml


def one(text: str) -> Any:
    docs, problems = parse_yaml("f.yaml", text.encode())
    assert problems == []
    assert len(docs) == 1
    return docs[0]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a: 1", {"a": 1}),
        ("a: 1.5", {"a": 1.5}),
        ("a: '1.5'", {"a": "1.5"}),
        ("a: true", {"a": True}),
        ("a: no", {"a": False}),  # YAML 1.1 booleans still parse (and fail schemas clearly)
        ("a: null", {"a": None}),
        ("a: ~", {"a": None}),
        ("a: 2026-11-27", {"a": "2026-11-27"}),  # timestamps stay strings
        ("on: push", {"on": "push"}),  # keys are taken verbatim, never booleans
        ("1: x", {"1": "x"}),
        ("a: [1, {b: c}]", {"a": [1, {"b": "c"}]}),
        ("a: &x {k: 1}\nb: *x", {"a": {"k": 1}, "b": {"k": 1}}),
        (
            "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3",
            {"base": {"x": 1, "y": 2}, "c": {"x": 1, "y": 3}},
        ),
        ("a: !!str 12", {"a": "12"}),
        ("\ufeffa: 1", {"a": 1}),
    ],
)
def test_values(text: str, value: Any) -> None:
    assert one(text).data == value


def test_locations_of_keys_and_values() -> None:
    doc = one("spec:\n  steps:\n    - setWeight: 10\n    - pause: {}\n")
    assert doc.locate(("spec", "steps", 0, "setWeight")) == Location(3, 7)
    assert doc.locate(("spec", "steps", 1)) == Location(4, 7)
    assert doc.locate(("spec", "steps", 1, "pause", "duration")) == Location(
        4, 7
    )  # missing: the parent
    assert doc.locate(("spec", "missing")) == Location(1, 1)


def test_several_documents_keep_their_own_lines() -> None:
    docs, problems = parse_yaml("f.yaml", b"a: 1\n---\nb: 2\n---\n---\nc: 3\n")
    assert problems == []
    assert [d.data for d in docs] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert [d.index for d in docs] == [0, 1, 3]
    assert docs[2].locate(("c",)) == Location(6, 1)


BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{','.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("raw", "rule", "line"),
    [
        (b"a: 1\na: 2\n", "yaml.duplicate-key", 2),
        (b"a:\n  b: 1\n  b: 1\n", "yaml.duplicate-key", 3),
        (b"a: !!python/object/apply:os.system ['true']\n", "yaml.tag", 1),
        (b"a: !!python/name:os.system\n", "yaml.tag", 1),
        (b"a: !Ref x\n", "yaml.tag", 1),
        (b"a: !!binary aGk=\n", "yaml.tag", 1),
        (b"a: !!set {x: null}\n", "yaml.tag", 1),
        (b"a: !!omap [x: 1]\n", "yaml.tag", 1),
        (b"? [a, b]\n: c\n", "yaml.key", 1),
        (BOMB.encode(), "yaml.alias-limit", 1),
        (b"a: &a [*a]\n", "yaml.depth-limit", 1),
        (b"a: [\n", "yaml.syntax", 2),
        (b"a: 1\n b: 2\n", "yaml.syntax", 2),
        (b"a: \xff\xfe\n", "file.encoding", 1),
        (b"a: 1\nb: \xc3\x28\n", "file.encoding", 2),
        (b"<<: 5\n", "yaml.merge", 1),
    ],
)
def test_refusals(raw: bytes, rule: str, line: int) -> None:
    docs, problems = parse_yaml("f.yaml", raw)
    assert docs == []
    assert [(p.rule, p.line) for p in problems][:1] == [(rule, line)]
    assert all(p.file == "f.yaml" for p in problems)


def test_python_tag_is_never_executed(tmp_path: Any) -> None:
    marker = tmp_path / "pwned"
    raw = f"a: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    parse_yaml("f.yaml", raw)
    assert not marker.exists()


def test_documents_before_a_syntax_error_survive() -> None:
    docs, problems = parse_yaml("f.yaml", b"a: 1\n---\nb: [\n")
    assert [d.data for d in docs] == [{"a": 1}]
    assert [p.rule for p in problems] == ["yaml.syntax"]


def test_size_and_document_caps() -> None:
    limits = Limits(max_file_bytes=100, max_documents=2)
    _, problems = parse_yaml("f.yaml", b"a: 1\n" * 30, limits)
    assert [p.rule for p in problems] == ["file.size"]
    docs, problems = parse_yaml("f.yaml", b"a: 1\n---\nb: 1\n---\nc: 1\n", limits)
    assert len(docs) == 2
    assert [p.rule for p in problems] == ["file.size"]


def test_bomb_is_refused_quickly() -> None:
    """Expanded naively the bomb is 10**9 values; the cap stops it early."""
    _, problems = parse_yaml("f.yaml", BOMB.encode(), Limits(max_nodes=1000))
    assert "alias" in problems[0].message


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), ""),
        (("spec",), "spec"),
        (("spec", "steps", 2, "setWeight"), "spec.steps[2].setWeight"),
        ((0, "a"), "[0].a"),
    ],
)
def test_format_path(path: tuple[str | int, ...], text: str) -> None:
    assert format_path(path) == text


def test_diagnostic_renders_like_a_compiler() -> None:
    doc = one("spec:\n  resources:\n    gpu: -1\n")
    d = doc.diagnostic(
        ("spec", "resources", "gpu"), "must be > 0 (got -1)", "schema.exclusiveMinimum"
    )
    assert d.render() == "f.yaml:3:5: spec.resources.gpu: must be > 0 (got -1)"
    assert d.as_dict()["rule"] == "schema.exclusiveMinimum"
