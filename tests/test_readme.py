"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write result directories
    exec(compile(BLOCKS[i], f"README block {i}", "exec"), {})
