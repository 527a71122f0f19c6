"""The rows sinks.postgres writes for rules, built without a database: the leaves' JSON taken
from the tree's, and the storage keys computed without UUID objects."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from pipeline.evaluate.specs import LEAF_CONDITIONS, AllOf, AnyOf, ConditionNode, iter_conditions
from pipeline.ids import storage_uuid
from sinks.postgres import _key_hex, _leaves

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def _doc_trees() -> list[Any]:
    """Every condition tree of the JSON examples of docs/rules.md (every leaf type is there)."""
    node = TypeAdapter(ConditionNode)
    trees = []
    for block in re.findall(r"```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S):
        example = json.loads(block)
        trees.append(node.validate_python(example.get("conditions", example)))
    return trees


def _dumped(node: Any) -> Any:
    return node.model_dump(mode="json", exclude_none=True)


def test_leaves_are_each_leaf_dumped_depth_first() -> None:
    trees = _doc_trees()
    covered = {leaf.type for tree in trees for leaf in iter_conditions(tree)}
    assert len(covered) == len(LEAF_CONDITIONS)
    nested = AllOf.model_construct(
        all=[trees[0], AnyOf.model_construct(any=trees[1:4]), AllOf.model_construct(all=trees[4:])]
    )
    for tree in [*trees, nested]:
        assert _leaves(tree, _dumped(tree)) == [_dumped(leaf) for leaf in iter_conditions(tree)]


@pytest.mark.parametrize(
    "wire_id",
    [
        "r-1",
        "",
        "règle ✓",
        "x" * 31,
        "x" * 32,
        "y" * 40,
        "0123456789abcdef0123456789abcdef",  # 32 hex digits: a UUID without hyphens
        str(uuid.UUID(int=7)),
        str(uuid.UUID(int=7)).upper(),
        "{" + str(uuid.UUID(int=8)) + "}",
        "urn:uuid:" + str(uuid.UUID(int=9)),
    ],
)
@pytest.mark.parametrize("kind", ["rule", "user"])
def test_key_hex_is_the_storage_uuid(kind: str, wire_id: str) -> None:
    assert _key_hex(kind, wire_id) == storage_uuid(kind, wire_id).hex
