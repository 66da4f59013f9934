"""Run the Python code blocks of the user documentation, in order, per page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/quickstart.md", "docs/bring_your_own_model.md", "README.md"]


def blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = blocks(ROOT / page)
    assert code, f"{page} has no python blocks"
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{page}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"{page} block {i} failed: {e!r}\n{block}") from e
