"""The C parsers (http_scan.c, http_frame.c) as a separate cffi module built
with AddressSanitizer and UndefinedBehaviorSanitizer, for the fuzz run only;
and the whole core the same way (build_core, load_core) for the harnesses
that need the ring (tls_records: the TLS record layer over the real ring).

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


CORE = "_core_asan"


def _core_lists() -> tuple[list[str], list[str], list[str]]:
    """build.py's HEADERS, MODULES and libraries, read without importing
    uringserve (whose package would load the uninstrumented core)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_uringserve_core_build", NATIVE / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.HEADERS, mod.MODULES, ["z", "ssl", "crypto"]


def build_core() -> Path:
    """The whole native core (the ring, tls.c and the rest) as the module
    `_core_asan`, built with the sanitizers: load_core() makes uringserve use
    it, so a harness drives the real ring and the TLS record layer under ASan.
    Built when a C source or header is newer; returns the folder."""
    from cffi import FFI

    headers, modules, libraries = _core_lists()
    BUILD.mkdir(parents=True, exist_ok=True)
    built = list(BUILD.glob(f"{CORE}*.so"))
    newest = max(p.stat().st_mtime for p in [*NATIVE.glob("*.c"), *NATIVE.glob("*.h"), NATIVE / "build.py"])
    if built and built[0].stat().st_mtime > newest:
        return BUILD
    ffi = FFI()
    ffi.cdef("".join(_cdef(f"{h}.h") for h in headers))
    ffi.set_source(
        CORE,
        "\n".join(f'#include "{h}.h"' for h in headers),
        sources=[str(NATIVE / f"{m}.c") for m in modules],
        include_dirs=[str(NATIVE)],
        libraries=libraries,
        extra_compile_args=[*SANITIZE, "-std=gnu11"],
    )
    ffi.compile(tmpdir=str(BUILD), verbose=False)
    return BUILD


def load_core() -> None:
    """Make `uringserve._native` load the sanitized core: called before
    uringserve is first imported (the package's `from ._core import` finds
    the module already in sys.modules). The process must have the ASan
    runtime preloaded (run.py's env_for)."""
    import importlib
    import sys

    assert "uringserve._native" not in sys.modules, "load_core() after uringserve was imported"
    sys.path.insert(0, str(BUILD))
    sys.modules["uringserve._native._core"] = importlib.import_module(CORE)


def asan_preload() -> str:
    """The ASan runtime to preload into the uninstrumented interpreter: the one
    atheris ships with libFuzzer in it, so coverage and ASan share one runtime."""
    import atheris

    return str(Path(atheris.path()) / "asan_with_fuzzer.so")


if __name__ == "__main__":
    print(build())
