"""Fresh `bytes` for a bulk receive to write into, and shrinking one to what
arrived: what asyncio's selector loop does inside sock.recv(256 KiB)
(allocate, read, _PyBytes_Resize), here with the kernel's write in between.

The kernel may write only into an object no Python code can see yet: the
bytes made here are uninitialised, never interned or shared (only the empty
and one-byte objects are), referenced by the ring's keep-alive alone until
the receive completes, and only then shrunk and handed over. Nothing reads
past what arrived.

CPython's C API through ctypes: PyBytes_FromStringAndSize(NULL, n) gives an
object without zeroing 256 KiB, and _PyBytes_Resize shrinks it in place
(a realloc) where nothing else refers to it -- which only an object's sole
owner may do, so `take` checks that first and copies otherwise. The core is
a cffi module in API mode with the limited API, which has neither call.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

_api = ctypes.pythonapi
_new = _api.PyBytes_FromStringAndSize
_new.restype = ctypes.py_object
_new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
# private, but exported by every CPython since 2.x; without it: a copy of what arrived
_resize = getattr(_api, "_PyBytes_Resize", None)
if _resize is not None:
    _resize.restype = ctypes.c_int
    _resize.argtypes = (ctypes.POINTER(ctypes.py_object), ctypes.c_ssize_t)
_getrefcount = sys.getrefcount


def fresh(n: int) -> bytes:
    """A new `n`-byte bytes object, not zeroed: write it whole before anyone
    reads it, or `take` only what was written."""
    b: bytes = _new(None, n)
    return b


def take(parked: dict[int, Any], key: int, n: int) -> bytes:
    """parked.pop(key), a fresh() object whose first `n` bytes were written,
    as a bytes object of those `n` bytes: shrunk in place when the dict held
    the only reference, else copied."""
    box = ctypes.py_object(parked.pop(key))
    b = box.value
    if len(b) == n:
        return b
    # box and b: a third reference means someone else sees it; never resize that
    if _getrefcount(b) != 3 or _resize is None:
        return b[:n]
    del b
    _resize(ctypes.byref(box), n)  # raises (and frees) only on a broken invariant
    out: bytes = box.value
    return out
