"""The import rule of the house (pipeline/__init__.py), read from the source with ``ast``.

Domain code (the stage packages and the top-level domain modules) never imports I/O
(``connectors``, ``sinks``) or Bytewax, nor what sits above it (``dataflow``, ``cli``); a stage
does not import another stage, except ``rules`` reading ``evaluate.specs``. Only
``pipeline/dataflow.py`` imports Bytewax.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline"
STAGES = ("evaluate", "personalize", "rules")
ABOVE = ("pipeline.dataflow", "pipeline.cli")
IO = ("connectors", "sinks", "bytewax")
ALLOWED_ACROSS = {("rules", "pipeline.evaluate.specs")}


def imported(path: Path) -> list[str]:
    """Every module a file imports, as written (``from x import y`` gives ``x`` and ``x.y``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def stage_of(path: Path) -> str | None:
    relative = path.relative_to(PIPELINE).parts
    return relative[0] if len(relative) > 1 and relative[0] in STAGES else None


def domain_files() -> list[Path]:
    files = [p for stage in STAGES for p in (PIPELINE / stage).rglob("*.py")]
    top = [p for p in PIPELINE.glob("*.py") if p.name != "dataflow.py"]
    return sorted(files + top)


def within(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(f"{root}.") for root in roots)


@pytest.mark.parametrize("path", domain_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_code_imports_no_io_no_bytewax_and_nothing_above_it(path: Path) -> None:
    stage = stage_of(path)
    broken = []
    for name in imported(path):
        if within(name, IO) or within(name, ABOVE):
            broken.append(name)
        other = name.split(".")[1] if name.startswith("pipeline.") else None
        across = stage is not None and other in STAGES and other != stage
        if across and not any(within(name, (a,)) for s, a in ALLOWED_ACROSS if s == stage):
            broken.append(name)
    assert broken == [], f"{path.relative_to(ROOT)} imports {sorted(set(broken))}"


def test_only_the_dataflow_module_imports_bytewax() -> None:
    users = {
        str(path.relative_to(ROOT))
        for path in [*PIPELINE.rglob("*.py"), *(ROOT / "connectors").rglob("*.py")]
        + [*(ROOT / "sinks").rglob("*.py"), *(ROOT / "api").rglob("*.py")]
        if any(within(name, ("bytewax",)) for name in imported(path))
    }
    assert users == {"pipeline/dataflow.py"}


@pytest.mark.parametrize("path", sorted((ROOT / "api").rglob("*.py")), ids=lambda p: p.name)
def test_the_api_reuses_the_stages_but_not_the_job(path: Path) -> None:
    """The API is a service beside the dataflow: it may use the models, stages and stores,
    never the dataflow or the CLI (nor is it imported by them, but for the `api` verb and the
    rules verbs, which write through its rule store)."""
    broken = [name for name in imported(path) if within(name, ABOVE)]
    assert broken == [], f"{path.relative_to(ROOT)} imports {sorted(set(broken))}"


def test_nothing_below_the_cli_imports_the_api() -> None:
    users = {
        str(path.relative_to(ROOT))
        for root in ("pipeline", "connectors", "sinks")
        for path in (ROOT / root).rglob("*.py")
        if any(within(name, ("api",)) for name in imported(path))
    }
    # The CLI sits above the API: `api` serves it, the demo runs it, the rules verbs write
    # through its rule store.
    assert users <= {"pipeline/cli/main.py", "pipeline/cli/demo.py", "pipeline/cli/rules.py"}


def test_the_rule_sees_a_violation() -> None:
    sample = "import bytewax.operators as op\nfrom sinks.kafka import CheckedProducer\n"
    tree = ast.parse(sample)
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert within(names[0], IO) and within("sinks.kafka", IO) and not within("sinkhole", IO)
