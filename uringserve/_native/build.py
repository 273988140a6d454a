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


# each module: its header's CDEF block, its #include, its source
MODULES = ["core", "http_scan", "http_frame", "fs", "loadgen", "faults"]

ffibuilder = FFI()
ffibuilder.cdef("".join(_cdef(f"{m}.h") for m in MODULES))
ffibuilder.set_source(
    "uringserve._native._core",
    "\n".join(f'#include "{m}.h"' for m in MODULES),
    sources=[_source(f"{m}.c") for m in MODULES],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
