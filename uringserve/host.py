"""What this host lets a process do with io_uring, and the error that says
why a ring cannot be made here (UringUnavailable: the reason and its fix).

Read from /proc (sysctls, seccomp, capabilities), never from the kernel's
version. Ring setup uses it for its errors and its memory budget; doctor
(diagnose.py) reports it.
"""

from __future__ import annotations

import errno
import os
import platform


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def sysctl(name: str) -> str | None:
    """kernel.`name` (e.g. io_uring_disabled), or None where there is no such setting."""
    return _read(f"/proc/sys/kernel/{name}")


def has_cap_ipc_lock() -> bool:
    status = _read("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 14))
    return False


def seccomp_mode() -> int | None:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("Seccomp:"):
            return int(line.split()[1])
    return None


def unavailable_reason(err: int) -> str:
    """A sentence naming why io_uring_setup failed with `err` and how to fix it."""
    if platform.system() != "Linux":
        return f"io_uring exists only on Linux; this is {platform.system()}"
    disabled = sysctl("io_uring_disabled")
    if disabled == "2":
        return (
            "io_uring is disabled host-wide (sysctl kernel.io_uring_disabled=2): "
            "set it to 0 with `sysctl -w kernel.io_uring_disabled=0`"
        )
    if disabled == "1" and err == errno.EPERM:
        group = sysctl("io_uring_group") or "?"
        return (
            "io_uring is limited to one group (sysctl kernel.io_uring_disabled=1, "
            f"kernel.io_uring_group={group}): add this user to that group or set the sysctl to 0"
        )
    seccomp = seccomp_mode()
    if err in (errno.EPERM, errno.ENOSYS) and seccomp == 2:
        return (
            "io_uring system calls are blocked by a seccomp filter (container runtimes' default "
            "profiles block them): run with a profile that allows io_uring_setup, io_uring_enter "
            "and io_uring_register (e.g. docker --security-opt seccomp=<profile>)"
        )
    if err == errno.ENOSYS:
        return (
            f"this kernel ({platform.release()}) has no io_uring (CONFIG_IO_URING off or older "
            "than 5.1); uringserve needs Linux 6.1 or newer"
        )
    if err == errno.ENOMEM:
        return (
            "io_uring_setup ran out of locked memory: raise RLIMIT_MEMLOCK (ulimit -l) or lower sq_entries/cq_entries"
        )
    if err == errno.EINVAL:
        return (
            f"the kernel ({platform.release()}) refused every io_uring setup we tried; "
            "uringserve needs Linux 6.1 or newer"
        )
    return f"io_uring_setup failed: {os.strerror(err)}"


class UringUnavailable(OSError):
    """io_uring cannot be used in this process; the message says why and how to fix it."""


def unavailable_error(err: int) -> UringUnavailable:
    return UringUnavailable(
        err,
        f"io_uring is unavailable: {unavailable_reason(err)}. Run `python -m uringserve doctor` for the full picture.",
    )
