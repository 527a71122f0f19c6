"""What reading rule text costs, against reading the same rule as JSON.

    python bench/rule_text.py [--rounds 200]

Every rule-text example of docs/rules.md (the ``text`` blocks: one per condition type, the
sample rules and the ``rules.txt`` file) is read with ``parse_rule`` (lark's LALR parser over
``pipeline/rules/grammar.lark``, then the tree to the Rule model) and, as the baseline (a), the
rule it gives is validated again from its JSON, as ``rules apply`` reads a JSON file. Each line
is the median of five passes over all examples.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.messages import Rule  # noqa: E402
from pipeline.rules.text import RuleTextError, parse_rule  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rules.md"


def examples() -> list[str]:
    """The rule texts of docs/rules.md that are whole rules (not just conditions)."""
    found: list[str] = []
    for block in re.findall(r"```text\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S):
        for line in block.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                parse_rule(line, user_id="u-bench")
            except RuleTextError:
                continue  # a fragment or a documented mistake
            found.append(line)
    return found


def per_rule(read: Callable[[], object], count: int, rounds: int) -> float:
    """Seconds per rule: the median of five passes of ``rounds`` reads of every example."""
    passes = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            read()
        passes.append((time.perf_counter() - started) / (rounds * count))
    return statistics.median(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    texts = examples()
    documents = [parse_rule(text, user_id="u-bench").model_dump_json() for text in texts]
    as_json = per_rule(
        lambda: [Rule.model_validate_json(doc) for doc in documents], len(texts), args.rounds
    )
    as_text = per_rule(
        lambda: [parse_rule(text, user_id="u-bench") for text in texts], len(texts), args.rounds
    )
    print(f"{len(texts)} rules from docs/rules.md, {args.rounds} rounds")
    print(f"{'read':<24} | {'µs/rule':>8} | {'rules/s':>8} | vs (a)")
    print("-" * 56)
    for name, seconds in (("JSON, Rule model (a)", as_json), ("rule text, parse_rule", as_text)):
        ratio = seconds / as_json
        print(f"{name:<24} | {seconds * 1e6:>8.1f} | {1 / seconds:>8,.0f} | {ratio:>5.1f}x")


if __name__ == "__main__":
    main()
