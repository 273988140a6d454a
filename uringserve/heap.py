"""glibc's heap trimming, set for a server that makes and frees large bytes objects.

Every received chunk becomes a `bytes` object (asyncio's data_received
contract). Those above pymalloc's 512 bytes come from glibc's heap, and when
one at the top of the heap is freed glibc returns the top to the kernel as
soon as it exceeds M_TRIM_THRESHOLD (128 KiB by default): the next large
object faults the same pages back in. Echoing 64 KiB messages, that cycle
cost 12 µs of the 40 µs per message (perf: 14 % of samples in page faults
under memmove). Keeping up to KEEP bytes at the top stops it, for at most
that much memory held after a burst. Setting it stops glibc's dynamic mmap
threshold, so the mmap threshold is raised too (MMAP_AT): bulk receives
(bulk.py) allocate 256 KiB per read, which would each be a fresh mmap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
KEEP = 32 << 20
MMAP_AT = 1 << 20  # objects below this come from the heap (bulk reads are 256 KiB)

_done = False


def keep_heap_top(nbytes: int = KEEP) -> bool:
    """Set glibc's trim threshold once per process; True if it was set.

    Left alone where the C library is not glibc, and where the user chose a
    value (MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES)."""
    global _done
    if _done:
        return False
    _done = True
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "malloc.trim_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # Setting any threshold stops glibc's dynamic mmap threshold, which would
    # otherwise have risen past the 256 KiB bulk reads (bulk.py) after the
    # first was freed: left at 128 KiB, each one is a fresh mmap whose pages
    # fault in as the kernel writes them. Up to MMAP_AT they come from the heap
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and "malloc.mmap_threshold" not in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        mallopt(M_MMAP_THRESHOLD, MMAP_AT)
    return bool(mallopt(M_TRIM_THRESHOLD, nbytes))
