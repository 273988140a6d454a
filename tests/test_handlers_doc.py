"""Every Python block in docs/handlers.md runs, as a program of its own,
and ends cleanly: the handler guide cannot drift from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "handlers.md")


def snippets() -> list[str]:
    with open(GUIDE) as f:
        return re.findall(r"^```python\n(.*?)^```$", f.read(), re.S | re.M)


def test_the_guide_has_its_snippets() -> None:
    # one per section: protocol, buffered, flow control, timeouts, drain, embedding, loops
    assert len(snippets()) == 7


@pytest.mark.parametrize("index", range(len(snippets())))
def test_snippet_runs(index: int) -> None:
    code = snippets()[index]
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"snippet {index} failed:\n{code}\n--- stderr ---\n{out.stderr}"
    assert "Traceback" not in out.stderr and "Error" not in out.stderr, out.stderr
