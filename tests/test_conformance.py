"""CPython's own test_asyncio modules on UringEventLoop (tests/conformance/run.py):
no failures beyond the checked-in expected list, and most tests really ran
on the loop under test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent / "conformance" / "run.py"


@pytest.mark.timeout(660)  # pyproject's 120 s would cut the run's own 600 s limit short
def test_cpython_asyncio_suite_on_uring_loop() -> None:
    try:
        import test.test_asyncio  # noqa: F401
    except ImportError:
        pytest.skip(
            "CPython's test package is not installed (Debian: libpython3.11-testsuite, which `make test` installs)"
        )
    out = subprocess.run([sys.executable, str(RUN), "--loop", "uring"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    total = re.search(r"^total\s+(\d+)\s+(\d+)\s+(\d+)", out.stdout, re.M)
    assert total, out.stdout
    run, on_loop, failed = map(int, total.groups())
    assert run > 1000 and on_loop > 800, out.stdout
    assert failed == len(
        [
            line
            for line in (RUN.parent / "expected_failures.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    )
