"""Kernel TLS (kTLS) detection, for doctor and `--tls-ktls auto` (tls.py
asks once per process; where the kernel has it, each connection hands its
send direction to the kernel after the handshake: _native/ktls.c).

The probe is what kTLS itself needs first: the "tls" upper-layer protocol
set on an established TCP socket (setsockopt TCP_ULP). A kernel without
CONFIG_TLS (or without the module loaded and loadable) refuses it with
ENOENT."""

from __future__ import annotations

import errno
import os
import socket

TCP_ULP = getattr(socket, "TCP_ULP", 31)  # linux/tcp.h; the socket module names it from Python 3.12 only


def reason(err: int) -> str:
    """Why kTLS is unavailable, from the errno TCP_ULP "tls" failed with."""
    if err == errno.ENOENT:
        return "the kernel has no TLS upper-layer protocol (CONFIG_TLS off, or the tls module not loaded: modprobe tls)"
    if err in (errno.EPERM, errno.EACCES):
        return f"setting TCP_ULP is not permitted here ({os.strerror(err)}: a seccomp profile or security module)"
    if err == errno.ENOPROTOOPT:
        return "the kernel has no TCP_ULP socket option (older than 4.13)"
    return f"TCP_ULP tls failed: {os.strerror(err)}"


def probe() -> tuple[bool, str]:
    """(available, why not): TCP_ULP "tls" set on a loopback connection."""
    try:
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            with socket.create_connection(lsock.getsockname()[:2], timeout=5) as client:
                peer, _ = lsock.accept()
                with peer:
                    client.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as exc:
        if exc.errno is None:
            return False, f"no loopback connection to probe with: {exc}"
        return False, reason(exc.errno)
    return True, ""


__all__ = ["probe", "reason"]
