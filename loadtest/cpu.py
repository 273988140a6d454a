"""CPU time of processes from /proc, in nanoseconds.

/proc/PID/task/TID/schedstat gives each thread's time on a CPU in ns (the
tick-based utime/stime in /proc/PID/stat is 10 ms coarse, too coarse for a
one-second run). A server's figure includes its descendants (prefork
workers) alive at both samples.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_ns(pid: int) -> int:
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_ns(pids: list[int]) -> dict[int, int]:
    """CPU ns of each process in the trees rooted at `pids`."""
    return {p: process_ns(p) for root in pids for p in descendants(root)}


def window_ns(before: dict[int, int], after: dict[int, int]) -> int:
    """CPU used between two tree_ns() samples by processes alive at both."""
    return sum(after[p] - before[p] for p in after if p in before)


def check_pids(pids: list[int]) -> None:
    for p in pids:
        if not Path(f"/proc/{p}").exists():
            raise ValueError(f"--server-pid {p}: no such process")
