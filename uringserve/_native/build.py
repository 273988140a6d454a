"""cffi (API mode) builder for the native core; run by setuptools at install."""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _cdef() -> str:
    text = (HERE / "core.h").read_text()
    start = text.index("/* CDEF BEGIN */") + len("/* CDEF BEGIN */")
    return text[start : text.index("/* CDEF END */")]


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "uringserve._native._core",
    '#include "core.h"',
    sources=[str((HERE / "core.c").relative_to(Path.cwd())) if HERE.is_relative_to(Path.cwd()) else str(HERE / "core.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
