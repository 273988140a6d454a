"""A file an ASGI app hands over with `http.response.zerocopysend`, in the
shape HTTPProtocol.write_file() sends (static.OpenFile's: `fd`, `size`,
`slot_for`).

The app owns its file and may close it as soon as its send() resolves
(the spec makes closing it the app's job), but the ring reads a queued
range later, and a closed fd number can be reused by another open in the
meantime. So the file is opened anew here (a description of our own,
through /proc/self/fd), kept open by this object, which the ring or the
sending task holds until the range is read, and closed when the last
holder lets go. A description of our own also leaves the app's file
position where it was, whichever loop sends (asyncio's loop.sendfile()
seeks the file it is given), and is blocking, so the ring's reads wait
for the disk instead of failing with EAGAIN on an app's O_NONBLOCK file.
"""

from __future__ import annotations

import os
import stat
from typing import Any


def _fileno(file: Any) -> int:
    if isinstance(file, int):
        return file
    fileno = getattr(file, "fileno", None)
    if fileno is None:
        raise TypeError(f"ASGI: http.response.zerocopysend needs a file with fileno(), not {type(file).__name__}")
    return int(fileno())


class AppFile:
    """Our own open description of an app's regular file, until no send holds it."""

    __slots__ = ("fd", "size")

    def __init__(self, file: Any) -> None:
        """`file`: an object with fileno() (or the fd itself). Raises
        ValueError for anything but a regular file (what os.sendfile and the
        ring's reads take), OSError if it cannot be opened again."""
        src = _fileno(file)
        try:
            # before the reopen: opening a pipe's or a FIFO's /proc link waits
            # for a writer, and a device's open may have effects of its own
            src_mode = os.fstat(src).st_mode
        except OSError:
            raise OSError(f"ASGI: http.response.zerocopysend: fd {src} is not open") from None
        if not stat.S_ISREG(src_mode):
            raise ValueError(f"ASGI: http.response.zerocopysend needs a regular file (fd {src} is not one)")
        try:
            fd = os.open(f"/proc/self/fd/{src}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise OSError(f"ASGI: http.response.zerocopysend: fd {src} is not open") from None
        except OSError:
            # no /proc, or the file's mode refuses a new open: share the app's
            # description (its position may then move on the stdlib loop)
            fd = os.dup(src)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"ASGI: http.response.zerocopysend needs a regular file (fd {src} is not one)")
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = st.st_size

    def span(self, offset: int | None, count: int | None, src: Any) -> tuple[int, int]:
        """The (offset, count) a message asks for, as the spec reads them:
        no offset is the app's file position (`src`'s, which then moves past
        the range, as sendfile(2) without an offset moves it), no count is
        to the end; a count past the end stops there, as sendfile(2) does."""
        if offset is None:
            offset = os.lseek(_fileno(src), 0, os.SEEK_CUR)
            moves = True
        else:
            moves = False
        if offset < 0 or (count is not None and count < 0):
            raise ValueError(f"ASGI: http.response.zerocopysend: negative offset or count ({offset}, {count})")
        left = max(0, self.size - offset)
        n = left if count is None else min(count, left)
        if moves:
            os.lseek(_fileno(src), offset + n, os.SEEK_SET)
        return offset, n

    def slot_for(self, ring: Any) -> int:
        """-1: sent by its fd. A fixed-file slot costs two system calls and a
        place in a table the file cache fills; a file handed over once gains
        nothing from it."""
        return -1

    def __del__(self) -> None:
        try:
            fd = self.fd
        except AttributeError:  # __init__ failed before the file was open
            return
        os.close(fd)
