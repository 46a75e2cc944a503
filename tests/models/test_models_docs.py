"""The runnable example in docs/models.md runs and prints what the page says it prints."""

from __future__ import annotations

import re
from pathlib import Path

from model_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_docs_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    example = next(block for block in blocks if "from xal_core.models.runtime import load" in block)
    exec(compile(example, str(DOC), "exec"), {"__name__": "docs_example"})
    expected = re.search(r"^# (\(.*)$", example, flags=re.M).group(1)
    assert capsys.readouterr().out.strip().splitlines()[-1] == expected
