"""What the fuzz harnesses share: input carving and the atheris entry point.

Each harness is a module with `one_input(data: bytes) -> None` that raises
on a broken invariant (atheris reports it as a crash) and `main()`. They are
run by tests/fuzz/run.py: short runs in `make test` (tests/test_fuzz.py),
long ones with `make fuzz`, the corpus under tests/fuzz/corpus/<name>/ and
every crash found kept as a regression input under tests/fuzz/regressions/.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class Carver:
    """Reads choices off the front of a fuzz input and hands out the rest:
    the fuzzer mutates both the choices and the payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def pieces(self, data: bytes, scale: int = 1) -> list[bytes]:
        """`data` cut where the next bytes say (each cut 1..64 bytes on, times `scale`)."""
        out, pos = [], 0
        while pos < len(data):
            step = (self.byte() % 64 + 1) * scale if self.left else len(data)
            out.append(data[pos : pos + step])
            pos += step
        return out


def fuzz(one_input: Callable[[bytes], None], instrument: Callable[[], None]) -> None:
    """atheris over `one_input`; `instrument` imports the code under test with
    coverage instrumentation (atheris.instrument_imports)."""
    import atheris

    with atheris.instrument_imports():
        instrument()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
