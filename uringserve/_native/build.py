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


# the public headers: each one's CDEF block is part of the cffi API (core.h
# first: it declares struct us_ring for the others)
HEADERS = ["core", "client", "http_scan", "http_frame", "fs", "loadgen", "faults", "tls", "ktls"]
# the sources: the ring's parts (ring_internal.h ties them together), then the rest
MODULES = ["ring", "conn", "send", "client", "faults", "http_scan", "http_frame", "fs", "loadgen", "tls", "ktls"]

ffibuilder = FFI()
ffibuilder.cdef("".join(_cdef(f"{h}.h") for h in HEADERS))
ffibuilder.set_source(
    "uringserve._native._core",
    "\n".join(f'#include "{h}.h"' for h in HEADERS),
    sources=[_source(f"{m}.c") for m in MODULES],
    include_dirs=[str(HERE)],
    # loadgen.c: inflating permessage-deflate echoes; tls.c: the libssl the
    # interpreter's ssl module links (one OpenSSL in the process)
    libraries=["z", "ssl", "crypto"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
