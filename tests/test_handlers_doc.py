"""Every Python block in docs/handlers.md runs as the guide says to run it
(saved as a file outside the checkout, with this virtualenv's Python; the
demo servers one of them embeds come from the installed package), ends
cleanly, and prints what the "Prints ..." line after it says: the handler
guide cannot drift from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "handlers.md")


def snippets() -> list[tuple[str, list[str]]]:
    """Each block with the lines the guide says it prints (the backticked
    spans of the "Prints ..." paragraph that follows it, before the next
    block or heading)."""
    with open(GUIDE) as f:
        text = f.read()
    out = []
    for m in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M):
        after = re.split(r"^(?:```|#)", text[m.end() :], maxsplit=1, flags=re.M)[0]
        said = re.search(r"^Prints (.*?)(?:\n\n|\Z)", after, re.S | re.M)
        out.append((m.group(1), re.findall(r"`([^`]*)`", said.group(1).replace("\n", " ")) if said else []))
    return out


def test_the_guide_has_its_snippets_and_says_what_each_prints() -> None:
    # one per section: protocol, buffered, flow control, timeouts, drain, embedding, loops, WebSockets
    found = snippets()
    assert len(found) == 8
    assert all(printed for _, printed in found), [code[:60] for code, printed in found if not printed]
    # the demo servers are the package's: no block needs the checkout's apps/
    assert [i for i, (code, _) in enumerate(found) if "from apps" in code] == []


def expected(line: str) -> re.Pattern[str]:
    """A line the guide says is printed; a capital N in it stands for a number."""
    return re.compile("".join(r"\d+" if part == "N" else re.escape(part) for part in re.split(r"\b(N)\b", line)))


@pytest.mark.parametrize("index", range(len(snippets())))
def test_snippet_runs_as_a_file_and_prints_what_the_guide_says(index: int, tmp_path) -> None:
    code, printed = snippets()[index]
    path = tmp_path / f"snippet{index}.py"
    path.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(path)],
        cwd=tmp_path,  # not the checkout: a file saved anywhere
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"snippet {index} failed:\n{code}\n--- stderr ---\n{out.stderr}"
    assert out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(printed) and all(
        expected(p).fullmatch(got) for p, got in zip(printed, lines, strict=True)
    ), (
        lines,
        printed,
    )
