"""Listening sockets passed by systemd socket activation (sd_listen_fds(3)):
LISTEN_PID names the process they are for, LISTEN_FDS how many (from fd 3
on), LISTEN_FDNAMES their names (the socket units' FileDescriptorName=)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from .listeners import Inherited

LISTEN_FDS_START = 3


def activated(environ: MutableMapping[str, str] | None = None, unset: bool = True) -> list[Inherited]:
    """The sockets systemd passed to this process, as listeners; [] when
    none were (or they were meant for another process). `unset` removes the
    variables, so the processes this one starts do not take them as theirs."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    names = env.get("LISTEN_FDNAMES", "")
    if unset:
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(var, None)
    if not pid or not count:
        return []
    try:
        if int(pid) != os.getpid():
            return []
        n = int(count)
    except ValueError:
        raise OSError(f"socket activation: LISTEN_PID={pid!r} LISTEN_FDS={count!r} are not numbers") from None
    labels = names.split(":") if names else []
    out = []
    for i in range(n):
        fd = LISTEN_FDS_START + i
        os.set_inheritable(fd, False)  # sd_listen_fds() sets FD_CLOEXEC too
        out.append(Inherited(fd, name=labels[i] if i < len(labels) else ""))
    return out
