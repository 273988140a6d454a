"""Listening sockets a Server serves: TCP host/port, a Unix-domain path or
abstract name, or a socket someone else bound (an inherited fd, socket
activation, a prefork supervisor). Each spec opens its sockets; the loop
installs them (UringEventLoop: in the fixed-file table's reserved slots)."""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Any


class Listener:
    """A spec that opens one or more bound, listening stream sockets."""

    backlog: int = 1024

    def open(self) -> list[socket.socket]:
        raise NotImplementedError

    def close(self) -> None:
        """Undo what open() left on the system (a socket file), after the sockets closed."""

    def describe(self, sock: socket.socket) -> str:
        return str(sock.getsockname())


@dataclass
class TCP(Listener):
    """host None or "" binds every interface: one IPv6 socket that also takes
    IPv4 (dual stack) where the host has IPv6, else 0.0.0.0. A name binds
    every address it resolves to. `dual_stack` says whether an IPv6 socket
    also takes IPv4 (False: IPv6 only, IPV6_V6ONLY)."""

    host: str | None = "127.0.0.1"
    port: int = 8000
    backlog: int = 1024
    reuse_port: bool = False
    dual_stack: bool = True

    def open(self) -> list[socket.socket]:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"TCP port must be 0..65535, got {self.port}")
        addrs: list[tuple[int, tuple[Any, ...]]]
        if self.host in (None, ""):
            addrs = [(socket.AF_INET6, ("::", self.port))] if socket.has_ipv6 and _ipv6_works() else []
            addrs = addrs or [(socket.AF_INET, ("0.0.0.0", self.port))]
        else:
            try:
                infos = socket.getaddrinfo(
                    self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
                )
            except socket.gaierror as exc:
                raise OSError(f"cannot resolve listener host {self.host!r}: {exc.strerror}") from None
            addrs = []
            for info in infos:
                if (info[0], info[4]) not in addrs:
                    addrs.append((info[0], info[4]))
        socks: list[socket.socket] = []
        port = self.port
        try:
            for fam, found in addrs:
                # port 0 and several addresses: all on the port the kernel gave the first
                addr = (found[0], port, *found[2:])
                s = socket.socket(fam, socket.SOCK_STREAM)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.reuse_port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if fam == socket.AF_INET6:
                    # a name resolving to both families gets two sockets: the v6 one stays v6-only
                    v6only = not self.dual_stack or len(addrs) > 1
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
                try:
                    s.bind(addr)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot listen on {_fmt(addr)}: {exc.strerror}") from None
                s.listen(self.backlog)
                port = s.getsockname()[1]
        except BaseException:
            for s in socks:
                s.close()
            raise
        return socks

    def describe(self, sock: socket.socket) -> str:
        return _fmt(sock.getsockname())


@dataclass
class Unix(Listener):
    """A Unix-domain stream socket. `path` "@name" is an abstract name (no file).
    A file path is created with `mode` (e.g. 0o660) before anyone can connect
    (without one, as bind(2) makes it: 0o777 less the umask, so 0o755 under
    the usual 022 and only the owner may connect, a socket needing write),
    replaces a stale socket file left by a server that died, and is refused
    when another server is listening on it or it is not a socket. The file is
    removed at shutdown if it is still this server's (not a newer one's)."""

    path: str
    mode: int | None = None
    backlog: int = 1024
    _ino: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def open(self) -> list[socket.socket]:
        if self.path.startswith("@"):
            if self.mode is not None:
                raise ValueError("an abstract Unix socket has no file: mode does not apply")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind("\0" + self.path[1:])
                s.listen(self.backlog)
            except OSError as exc:
                s.close()
                raise OSError(exc.errno, f"cannot listen on abstract socket {self.path!r}: {exc.strerror}") from None
            return [s]
        path = self.path
        if self._check_existing(path):
            _unlink_socket(path)  # stale: a server died without removing it
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.mode is not None:
                # Linux creates the file with the socket inode's mode (less the
                # umask): set before bind, nobody can connect with more rights
                # than `mode` gives, even before the chmod makes it exact
                os.fchmod(s.fileno(), self.mode)
            s.bind(path)
            if self.mode is not None:
                os.chmod(path, self.mode)
            s.listen(self.backlog)
        except OSError as exc:
            s.close()
            raise OSError(exc.errno, f"cannot listen on {path}: {exc.strerror}") from None
        st = os.stat(path)
        self._ino = (st.st_dev, st.st_ino)
        return [s]

    @staticmethod
    def _check_existing(path: str) -> bool:
        """True when `path` is a stale socket file; raises when it must not be replaced."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"cannot listen on {path}: it exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            return True  # refused: nobody listens
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"cannot listen on {path}: another server is listening on it")

    def close(self) -> None:
        if self._ino is None:
            return
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ino:  # not a newer server's socket
                os.unlink(self.path)
        except OSError:
            pass
        self._ino = None

    def describe(self, sock: socket.socket) -> str:
        return f"unix:{self.path}"


@dataclass
class Inherited(Listener):
    """A socket bound by someone else: a socket object, or an inherited fd
    number (socket activation, a supervisor). It must be a stream socket; it
    is put in listening state if it is not yet. The Server owns it from here
    and closes it at shutdown."""

    sock: socket.socket | int
    backlog: int = 1024
    name: str = ""  # socket activation's FileDescriptorName, if any

    def open(self) -> list[socket.socket]:
        s = self.sock
        if isinstance(s, int):
            try:
                os.fstat(s)
            except OSError:
                raise OSError(errno.EBADF, f"inherited fd {s} is not open") from None
            try:
                s = socket.socket(fileno=s)
            except OSError as exc:
                raise OSError(exc.errno, f"inherited fd {self.sock} is not a socket") from None
        if s.type != socket.SOCK_STREAM:
            raise OSError(errno.EPROTOTYPE, f"inherited socket {s!r} is not a stream socket")
        if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            try:
                s.listen(self.backlog)
            except OSError as exc:
                raise OSError(exc.errno, f"inherited socket {s!r} cannot listen: {exc.strerror}") from None
        return [s]

    def describe(self, sock: socket.socket) -> str:
        addr = sock.getsockname()
        where = _fmt(addr) if isinstance(addr, tuple) else f"unix:{addr!r}" if addr else "unix"
        return f"{where} (fd {sock.fileno()}{', ' + self.name if self.name else ''})"


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _fmt(addr: tuple) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
