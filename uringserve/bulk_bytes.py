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
    # the object is passed through a c_void_p cell, never a py_object: a
    # py_object keeps its own reference to the old address, which a resize
    # that moves the object (a realloc) frees
    _resize.restype = ctypes.c_int
    _resize.argtypes = (ctypes.POINTER(ctypes.c_void_p), ctypes.c_ssize_t)
_incref = _api.Py_IncRef
_incref.restype = None
_incref.argtypes = (ctypes.py_object,)
_decref = _api.Py_DecRef
_decref.restype = None
_decref.argtypes = (ctypes.c_void_p,)
_getrefcount = sys.getrefcount


def fresh(n: int) -> bytes:
    """A new `n`-byte bytes object, not zeroed: write it whole before anyone
    reads it, or `take` only what was written."""
    b: bytes = _new(None, n)
    return b


def take(parked: dict[int, Any], key: int, n: int) -> bytes:
    """parked.pop(key), a fresh() object whose first `n` bytes were written,
    as a bytes object of those `n` bytes: shrunk (in place or moved by the
    allocator) when the dict held the only reference, else copied."""
    b = parked.pop(key)
    if len(b) == n:
        return b
    # `b` and getrefcount's argument: a third reference means someone else sees it
    if _getrefcount(b) != 2 or _resize is None:
        return b[:n]
    # The cell owns the one reference _PyBytes_Resize needs (refcount 1, as
    # asyncio's sock.recv has it); nothing else holds the old address, so a
    # move updates the only pointer to it.
    cell = ctypes.c_void_p(id(b))
    _incref(b)  # cell's reference: 2
    del b  # 1, the cell's
    try:
        _resize(ctypes.byref(cell), n)
    except MemoryError:
        raise  # the object is freed and the cell NULL: nothing to give back
    if not cell.value:
        raise MemoryError("_PyBytes_Resize failed")
    # py_object.value returns a new reference (2), the cast object keeps none;
    # then the cell's is given back (1: `out`'s alone)
    out: bytes = ctypes.cast(cell, ctypes.py_object).value
    _decref(cell)
    return out
