"""The README's Python example must run as printed (docs that drift are worse than none)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write (a run folder) write here
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no ```python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
        if "top" in namespace:
            assert len(namespace["top"].result().ids) == 2
        if "outcome" in namespace:
            assert namespace["outcome"].report.is_file() and "dual" in namespace["outcome"].final_table
