"""Opening and checking files (fs.h): for the static-file server, and for
doctor's openat2 check. Plain system calls in C; no ring is involved."""

from __future__ import annotations

import os
from typing import Any

from ._native import ffi, lib


def file_identity(st: os.stat_result) -> Any:
    """What same_file() compares: inode, device, size, mtime and ctime (ns)."""
    return ffi.new("uint64_t[5]", [st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns])


# same_file(path, file_identity(st)): 1 if the path still leads to that file,
# unchanged; 0 if not; -errno if nothing is there (one stat(), no stat_result)
same_file = lib.us_same_file


def open_beneath(dirfd: int, path: bytes, flags: int) -> int:
    """openat2() confined to `dirfd`'s tree (RESOLVE_BENEATH): a path or
    symlink leading out fails with EXDEV. Raises OSError (its subclass by
    errno, e.g. FileNotFoundError); ENOSYS where the kernel or a seccomp
    profile lacks openat2."""
    fd = lib.us_open_beneath(dirfd, path, flags)
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd), path.decode("utf-8", "surrogateescape"))
    return fd
