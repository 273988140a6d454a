"""uringserve.heap: glibc keeps freed large objects' pages at the heap top
instead of returning them and faulting them back in (the 64 KiB echo cost).
Each case runs in a fresh interpreter: the setting is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = M
from uringserve import heap
print(heap.keep_heap_top(), heap.keep_heap_top())
x = [bytearray(100_000) for _ in range(20)]  # below the mmap threshold: from the heap
del x
m = libc.mallinfo2()
print(m.keepcost, m.fordblks)  # free at the top; free anywhere in the heap, not returned to the kernel
"""


def probe(**env: str) -> tuple[str, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
    assert out.returncode == 0, out.stderr
    first, free = out.stdout.split("\n")[:2]
    keepcost, fordblks = free.split()
    return first, int(keepcost), int(fordblks)


def test_the_heap_top_is_kept_once_set() -> None:
    first, _, free = probe()
    assert first == "True False"  # set once per process
    # the 2 MB just freed stayed with malloc (at the top, or below an object
    # allocated after them: the interpreter's own allocations vary)
    assert free >= 1_900_000


def test_a_users_own_setting_is_left_alone() -> None:
    first, keepcost, _ = probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert first == "False False"
    assert keepcost < 1_000_000  # glibc trimmed, as the user asked


@pytest.mark.parametrize("loop", ["uring", "asyncio"])
def test_a_server_sets_it(loop: str) -> None:
    code = (
        "import asyncio; from uringserve import heap; from uringserve.server import Server, new_loop\n"
        "async def main():\n"
        "    s = Server(asyncio.Protocol); await s.start('127.0.0.1', 0); await s.shutdown(1)\n"
        f"l = new_loop({loop!r}); l.run_until_complete(main()); l.close()\n"
        "print(heap.keep_heap_top())\n"  # already done by start()
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


MMAP_PROBE = """
import ctypes, sys
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = M
from uringserve import heap
heap.keep_heap_top()
before = libc.mallinfo2().hblks
x = [bytes(256 * 1024) for _ in range(8)]  # a bulk read's size (bulk.py)
print(libc.mallinfo2().hblks - before)  # of them mmapped one by one
"""


@pytest.mark.parametrize("env, mmapped", [({}, 0), ({"MALLOC_MMAP_THRESHOLD_": "131072"}, 8)])
def test_bulk_reads_come_from_the_heap_not_a_fresh_mmap_each(env: dict, mmapped: int) -> None:
    """Setting the trim threshold stops glibc's dynamic mmap threshold at
    128 KiB, so each 256 KiB bulk read was a fresh mmap whose pages faulted
    in as the kernel wrote them (a 64 KiB echo in bulk: 66 us a message,
    36 with this); a user's own MALLOC_MMAP_THRESHOLD_ is left alone."""
    out = subprocess.run(
        [sys.executable, "-c", MMAP_PROBE], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == mmapped
