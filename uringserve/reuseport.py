"""Steering new connections away from SO_REUSEPORT sockets that are going
away: a classic BPF program on the socket group (SO_ATTACH_REUSEPORT_CBPF)
picks one of its first `n` sockets at random.

Why: the kernel hashes each new connection to a socket of the group; a
socket whose worker has stopped accepting still receives its share, and
when it closes, what waits in its backlog is reset (unless the host set
net.ipv4.tcp_migrate_req). The supervisor removes a worker slot (SIGTTOU)
by draining the slot's worker and then closing the socket: steered, the
socket gets no new connection meanwhile. A group keeps its sockets in the
order they started listening, and a closed one's place is taken by the
last, so while the sockets kept are the ones opened first (the supervisor
opens slots in order and removes the highest), they are indices 0..n-1.

Hand-written: no library attaches a reuseport cBPF program; it is three
instructions."""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM: a pseudo-random u32
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_ALU_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
_RET_A = 0x16  # BPF_RET | BPF_A


def steer(sock: socket.socket, n: int) -> None:
    """New connections to `sock`'s group go to its first `n` sockets only."""
    if n < 1:
        raise ValueError(f"steer() needs at least one socket to steer to, got {n}")
    code = [(_LD_W_ABS, 0, 0, _SKF_AD_RANDOM), (_ALU_MOD_K, 0, 0, n), (_RET_A, 0, 0, 0)]
    insns = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in code))
    prog = struct.pack("HxxxxxxP", len(code), ctypes.addressof(insns))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, prog)


def unsteer(sock: socket.socket) -> None:
    """The kernel's own hash again (nothing attached: nothing to do)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError:  # ENOENT: no program attached
        pass
