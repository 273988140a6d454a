"""The C parsers (http_scan.c, http_frame.c) as a separate cffi module built
with AddressSanitizer and UndefinedBehaviorSanitizer, for the fuzz run only.

gcc has no -fsanitize=fuzzer, so the fuzzer's coverage comes from the Python
side (the parser that calls the recogniser); the sanitizers turn any
out-of-bounds read, overflow or undefined shift in the C into a crash. The
interpreter is not instrumented, so the ASan runtime is preloaded
(LD_PRELOAD, set by tests/fuzz/run.py); gcc's instrumentation speaks the
same ASan ABI as clang's runtime."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
NATIVE = ROOT / "uringserve" / "_native"
BUILD = ROOT / "tests" / "fuzz" / "build"
# UBSan traps (no runtime to load): undefined behaviour is a SIGILL the fuzzer reports
SANITIZE = [
    "-fsanitize=address,undefined",
    "-fsanitize-undefined-trap-on-error",
    "-fno-omit-frame-pointer",
    "-g",
    "-O1",
]


def _cdef(header: str) -> str:
    text = (NATIVE / header).read_text()
    start = text.index("/* CDEF BEGIN */") + len("/* CDEF BEGIN */")
    return text[start : text.index("/* CDEF END */")]


def build() -> Path:
    """Build (when a source is newer) and return the folder to import from."""
    from cffi import FFI

    sources = [NATIVE / "http_scan.c", NATIVE / "http_frame.c"]
    BUILD.mkdir(parents=True, exist_ok=True)
    built = list(BUILD.glob("_native_asan*.so"))
    newest = max(p.stat().st_mtime for p in [*sources, NATIVE / "http_scan.h", NATIVE / "http_frame.h"])
    if built and built[0].stat().st_mtime > newest:
        return BUILD
    ffi = FFI()
    ffi.cdef(_cdef("http_scan.h") + _cdef("http_frame.h"))
    ffi.set_source(
        "_native_asan",
        '#include "http_scan.h"\n#include "http_frame.h"',
        sources=[str(s) for s in sources],
        include_dirs=[str(NATIVE)],
        extra_compile_args=SANITIZE,
        # the ASan runtime is atheris's (preloaded, with libFuzzer), not linked in
        extra_link_args=[],
    )
    ffi.compile(tmpdir=str(BUILD), verbose=False)
    return BUILD


def asan_preload() -> str:
    """The ASan runtime to preload into the uninstrumented interpreter: the one
    atheris ships with libFuzzer in it, so coverage and ASan share one runtime."""
    import atheris

    return str(Path(atheris.path()) / "asan_with_fuzzer.so")


if __name__ == "__main__":
    print(build())
