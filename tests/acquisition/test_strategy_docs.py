"""The runnable example of docs/strategies.md prints what the page says it prints."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"


def test_docs_example_prints_what_it_says(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    example = next(block for block in blocks if "make_strategy(name)" in block)
    exec(compile(example, str(DOC), "exec"), {"__name__": "docs_example"})
    expected = re.findall(r"^# (.*)$", example, flags=re.M)
    assert capsys.readouterr().out.strip().splitlines() == expected
