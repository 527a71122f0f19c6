"""docs/operations.md documents every configuration key with its default.

The TOML block(s) of its "Configuration" section are read like a config file, plus the keys
commented out there (``# key = value``): those count as documented only when the default is None
(an optional setting shown with an example). Every section and key of ``pipeline.config``'s
Settings must be there, nothing else may be, and a key written out must carry its default.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
SECTION_HEADER = re.compile(r"^\[([A-Za-z0-9_]+)\]")
COMMENTED_KEY = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_]*\s*=.*)$")


def configuration_blocks(markdown: str) -> list[str]:
    """The ```toml blocks between "## Configuration" and the next second-level heading."""
    match = re.search(r"^## Configuration\n(.*?)(?=^## )", markdown, re.S | re.M)
    assert match, "docs/operations.md has no '## Configuration' section"
    blocks = re.findall(r"^```toml\n(.*?)^```", match.group(1), re.S | re.M)
    assert blocks, "the Configuration section has no ```toml block"
    return blocks


def _commented_value(text: str) -> dict[str, Any] | None:
    """``key = value  # prose`` as TOML, trying shorter cuts at each ``#`` until one parses."""
    cuts = [len(text)] + [m.start() for m in re.finditer(r"\s#", text)][::-1]
    for cut in cuts:
        try:
            return tomllib.loads(text[:cut])
        except tomllib.TOMLDecodeError:
            continue
    return None


def documented(blocks: list[str]) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """(the values written out, by section ("" for the top level); the keys commented out)."""
    values: dict[str, Any] = {}
    commented: dict[str, set[str]] = {}
    for block in blocks:
        for section, table in tomllib.loads(block).items():
            if isinstance(table, dict):
                values.setdefault(section, {}).update(table)
            else:
                values.setdefault("", {})[section] = table
        section = ""
        for line in block.splitlines():
            stripped = line.strip()
            if header := SECTION_HEADER.match(stripped):
                section = header.group(1)
            elif match := COMMENTED_KEY.match(stripped):
                parsed = _commented_value(match.group(1))
                if parsed:
                    commented.setdefault(section, set()).update(parsed)
    return values, commented


def model_defaults() -> dict[str, dict[str, Any]]:
    """Every section's keys with their defaults (as JSON values); "" holds the top-level keys."""
    defaults: dict[str, dict[str, Any]] = {"": {}}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            defaults[name] = annotation().model_dump(mode="json")
        else:
            defaults[""][name] = field.get_default(call_default_factory=True)
    return defaults


def test_the_parser_reads_values_and_commented_keys() -> None:
    block = (
        'top = "x"\n[a]\none = 1  # prose\n# two = "t#2"   # an example\n'
        "# prose that mentions a = sign\n[b]\n# three = [1, 2]\n"
    )
    values, commented = documented([block])
    assert values == {"": {"top": "x"}, "a": {"one": 1}, "b": {}}
    assert commented == {"a": {"two"}, "b": {"three"}}


def test_every_configuration_key_is_documented_with_its_default() -> None:
    values, commented = documented(configuration_blocks(DOC.read_text()))
    problems: list[str] = []
    for section, keys in model_defaults().items():
        where = f"[{section}]" if section else "top level"
        if section and section not in values and section not in commented:
            problems.append(f"{where}: section not documented")
            continue
        shown, hidden = values.get(section, {}), commented.get(section, set())
        for key, default in keys.items():
            if key in shown:
                if default is not None and shown[key] != default:
                    problems.append(
                        f"{where} {key}: documented {shown[key]!r}, default {default!r}"
                    )
            elif key in hidden:
                if default is not None:
                    problems.append(f"{where} {key}: commented out, but its default is {default!r}")
            else:
                problems.append(f"{where} {key}: not documented (default {default!r})")
        for key in sorted((set(shown) | hidden) - set(keys)):
            problems.append(f"{where} {key}: documented, but no such key")
    for section in sorted((set(values) | set(commented)) - set(model_defaults())):
        problems.append(f"[{section}]: documented, but no such section")
    assert not problems, "docs/operations.md, Configuration:\n" + "\n".join(problems)
