"""Every ```python block of README.md runs as pasted, each in a fresh namespace, in a
temporary directory (the files it writes land there).

A block that needs an optional extra says so on a line of its own,
``# requires: sklearn`` (importable module names, comma-separated): it is skipped
only when one of them cannot be imported.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_REQUIRES = re.compile(r"^#\s*requires:(.*)$", re.M)


def readme_blocks(text):
    """(line number of the block's first line of code, code) for every python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


BLOCKS = readme_blocks(README.read_text(encoding="utf-8")) if README.exists() else []


def test_the_readme_has_python_blocks():
    if not README.exists():
        pytest.skip("README.md is not next to the tests (installed tests)")
    assert len(BLOCKS) >= 4


def test_block_extraction():
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\n# requires: a, b\nb = 2\n```\n"
    assert readme_blocks(text) == [(3, "a = 1\n"), (9, "# requires: a, b\nb = 2\n")]
    assert [n.strip() for n in _REQUIRES.findall(readme_blocks(text)[1][1])[0].split(",")] \
        == ["a", "b"]


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path, monkeypatch):
    for names in _REQUIRES.findall(code):
        for name in filter(None, (n.strip() for n in names.split(","))):
            pytest.importorskip(name, reason=f"README.md:{line} needs {name}")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
