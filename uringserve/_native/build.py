"""cffi (API mode) builder for the native core; run by setuptools at install."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _cdef(header: str) -> str:
    text = (HERE / header).read_text()
    start = text.index("/* CDEF BEGIN */") + len("/* CDEF BEGIN */")
    return text[start : text.index("/* CDEF END */")]


def _source(name: str) -> str:
    return str((HERE / name).relative_to(Path.cwd())) if HERE.is_relative_to(Path.cwd()) else str(HERE / name)


ffibuilder = FFI()
ffibuilder.cdef(_cdef("core.h") + _cdef("http_scan.h") + _cdef("http_frame.h") + _cdef("fs.h") + _cdef("loadgen.h"))
ffibuilder.set_source(
    "uringserve._native._core",
    '#include "core.h"\n#include "http_scan.h"\n#include "http_frame.h"\n#include "fs.h"\n#include "loadgen.h"',
    sources=[_source("core.c"), _source("http_scan.c"), _source("http_frame.c"), _source("fs.c"), _source("loadgen.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
