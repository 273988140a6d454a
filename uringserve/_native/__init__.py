"""The native core, loaded: `ffi`, `lib` and the errno convention.

The only module that imports the compiled `_core` (built by build.py from
the C files beside it); every Python module that calls C imports `ffi` and
`lib` from here, so a missing build is one clear error, raised in one place.
C functions return a negative errno on failure; `check` turns it into an
`OSError` naming the operation.
"""

from __future__ import annotations

import os

try:
    from ._core import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "uringserve's native core is not built: reinstall with `pip install .` "
        f"on Linux with a C compiler and Python headers ({exc})"
    ) from exc


def oserror(err: int, what: str) -> OSError:
    """The OSError (its subclass by errno) for positive errno `err` while doing `what`."""
    return OSError(err, f"{what}: {os.strerror(err)}")


def check(ret: int, what: str) -> int:
    """`ret` when it is not an error; a negative errno raises oserror()."""
    if ret < 0:
        raise oserror(-ret, what)
    return ret


__all__ = ["check", "ffi", "lib", "oserror"]
