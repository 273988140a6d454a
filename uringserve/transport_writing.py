"""The send side of UringTransport: writes, file ranges, what waits for the
send arena, and write flow control.

write() copies into the send arena at once (the caller's buffer is free when
write() returns; large bytes objects are sent in place) and the core sends,
resumes partial sends and recycles chunks without Python. When the arena is
full the remainder waits here in `_pending` (in order, nothing is sent past
it) until the core says chunks were freed. States, as proactor's write()
names them:

    IDLE      queued == 0 and no _pending
    WRITING   queued > 0, _pending empty (the core owns everything)
    BACKED UP _pending non-empty (arena full): in the loop's ArenaWaits until EV_ARENA

Buffer size for flow control = bytes queued in the core + len(_pending).
When it passes the high-water mark the protocol is paused and the core is
asked for EV_WRITABLE at the low-water mark.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import io
import logging
import os
import stat
from typing import Any

from .transport_base import EMPTY, TransportBase, conn_error

logger = logging.getLogger("uringserve")
_LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5
_FILE_SEGMENT_MAX = 1 << 30  # the core's segments hold < 2 GiB


class Writing(TransportBase):
    """UringTransport's send side (its state is TransportBase's)."""

    __slots__ = ()

    def write(self, data: Any) -> None:
        if type(data) is bytes and self._write_fast:
            # hot path: one call into the core, which copies small writes into
            # the arena and sends large ones in place (bytes are immutable)
            if len(data) >= self._inplace_min:
                seg = self._raw_send_ref(self._handle, self._slot, self._gen, data, len(data))
                if seg >= 0:
                    self._inplace[seg] = data  # alive until the kernel is done with it
                    n = len(data)
                elif seg == -errno.ENOBUFS:  # every segment in flight: copy instead
                    n = self._raw_send(self._handle, self._slot, self._gen, data, len(data))
                else:
                    n = seg
            else:
                n = self._raw_send(self._handle, self._slot, self._gen, data, len(data))
            if n == len(data):
                self._qbound += n
                if self._qbound > self._high_water:
                    self._maybe_pause_protocol()
                return
            if n >= 0:  # the arena took only part of it: the rest waits here
                self._qbound += n
                self._pend(data, n)
                self._maybe_pause_protocol()
                return
        self._write_slow(data)

    def _write_slow(self, data: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._sendfile_active:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if type(data) is not bytes and self._write_fast:
            mv = memoryview(data)
            if mv.nbytes >= self._inplace_min:
                # the caller may change a bytearray or memoryview once write()
                # returns, so it is copied -- into one bytes object, sent in
                # place as one segment, not into the arena 32 KiB at a time
                self.write(mv.tobytes())
                return
        if self._conn_lost:
            if self._conn_lost >= _LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if self._pending:
            self._pend(data, 0)
        else:
            n = self._send_copy(data)
            if n < 0:
                self._fatal_error(conn_error(-n), "Fatal write error on socket transport")
                return
            self._qbound += n
            if n < len(data):
                self._pend(data, n)
        self._maybe_pause_protocol()

    def _send_copy(self, data: Any) -> int:
        """Queue as much of `data` as the arena takes (the TLS transport encrypts it first); bytes taken or -errno."""
        return self._ring.send(self._slot, self._gen, data)

    def _pend(self, data: Any, offset: int) -> None:
        self._write_fast = False
        chunk = bytes(memoryview(data)[offset:])
        self._queue_pending(chunk)
        self._pending_size += len(chunk)
        self._loop.arena_waits.add(self._slot, self._flush_pending)

    def _queue_pending(self, chunk: Any) -> None:
        if self._pending is EMPTY:
            self._pending = collections.deque()
        self._pending.append(chunk)

    def _flush_pending(self) -> None:
        """The core freed arena chunks: move what waits here into it, in order."""
        ring = self._ring
        while self._pending:
            chunk = self._pending[0]
            if type(chunk) is _FileRange:
                ret = ring.send_file(
                    self._slot, self._gen, chunk.fd, chunk.fixed, chunk.offset, chunk.count, chunk.owner
                )
                if ret == -errno.ENOBUFS:  # every segment in flight: US_EV_ARENA says when one frees
                    self._loop.arena_waits.add(self._slot, self._flush_pending)
                    break
                if ret < 0:  # the range is still in _pending: _drop_pending() gives its hold back
                    self._fatal_error(conn_error(-ret), "Fatal write error on socket transport")
                    return
                if chunk.fixed:
                    ring.file_hold(chunk.fd, -1)
                self._pending_size -= chunk.count
                self._pending.popleft()
                continue
            n = self._send_copy(chunk)
            if n < 0:
                self._fatal_error(conn_error(-n), "Fatal write error on socket transport")
                return
            self._pending_size -= n
            if n < len(chunk):
                self._pending[0] = chunk[n:]
                self._loop.arena_waits.add(self._slot, self._flush_pending)
                break
            self._pending.popleft()
        if not self._pending:
            self._refresh_write_fast()
            if self._eof_written:
                self._shutdown_write()
            if self._closing and not self._closed_called:
                self._last_words()
                ring.close_conn(self._slot, self._gen, True)
        self._maybe_resume_protocol()

    def _last_words(self) -> None:
        """A close() that waited for _pending: what goes after it (TLS: close_notify)."""

    def write_file(self, fd: int, offset: int, count: int, *, fixed: bool = False, owner: Any = None) -> int:
        """Queue up to `count` bytes of the file `fd` from `offset`, after what
        was written before and before what is written next, like write(). The
        ring reads the file into registered memory and sends it from there; no
        byte passes through Python. `fixed`: `fd` is a fixed-file slot
        (Ring.file_register). `owner` (what keeps the file open) is held until
        the core has read the range. Returns the bytes queued: at most 1 GiB
        per call, 0 when the core has no segment free (then write the bytes
        instead). Flow control counts these bytes like written ones."""
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if count <= 0:
            return 0
        if self._closing or self._conn_lost:
            self._conn_lost += 1  # as write(): dropped once the connection is going
            return count
        n = min(count, _FILE_SEGMENT_MAX)
        owner = owner if owner is not None else fd
        if self._pending:  # behind writes that wait for the arena
            return self._pend_file(fd, fixed, offset, n, owner)
        ret = self._ring.send_file(self._slot, self._gen, fd, fixed, offset, n, owner)
        if ret == -errno.ENOBUFS or ret == -errno.EOPNOTSUPP:  # EOPNOTSUPP: the core cannot (TLS, tiny arena)
            return 0
        if ret == -errno.EBADF and fixed:
            raise ValueError(f"fixed-file slot {fd} holds no registered file")
        if ret < 0:
            self._fatal_error(conn_error(-ret), "Fatal write error on socket transport")
            return count
        self._qbound += n
        self._maybe_pause_protocol()
        return n

    def _pend_file(self, fd: int, fixed: bool, offset: int, n: int, owner: Any) -> int:
        """write_file()'s range waits in _pending, in order, for what is ahead of it."""
        if fixed and self._ring.file_hold(fd, 1) < 0:
            raise ValueError(f"fixed-file slot {fd} holds no registered file")
        self._queue_pending(_FileRange(fd, fixed, offset, n, owner))
        self._pending_size += n
        self._write_fast = False
        self._maybe_pause_protocol()
        return n

    async def sendfile(self, file: Any, offset: int, count: int | None) -> int:
        """loop.sendfile() on this transport: the file goes through the ring
        (read into registered memory, sent from there). As asyncio's native
        path: reading pauses, earlier writes drain first, write() raises while
        it runs, and the file position ends after the last byte sent. Raises
        asyncio.SendfileNotAvailableError for anything but a regular file."""
        fileno, left = _file_range(file, offset, count)
        if not left:
            return 0
        resume_reading = self.is_reading()
        self.pause_reading()
        await self._wait_empty()
        sent = 0
        base = self._bytes_sent()
        self._set_sendfile_active(True)  # write() refuses until done
        try:
            while sent < left:
                if self.is_closing():
                    raise ConnectionError("the transport closed during sendfile()")
                self.write_file(fileno, offset + sent, left - sent, owner=file)
                await self._wait_empty()  # none free (0 queued): queued sends finish first
                sent = self._bytes_sent() - base
        finally:
            sent = min(left, self._bytes_sent() - base)
            self._set_sendfile_active(False)
            if resume_reading:
                self.resume_reading()
            file.seek(offset + sent)
        return sent

    async def _wait_empty(self) -> None:
        """Until everything queued has been sent (loop.sendfile()'s contract)."""
        if self._closed_called:
            raise ConnectionError("Connection is closed by peer")
        if self._drained():
            return
        if self._empty_waiter is None:
            self._empty_waiter = self._loop.create_future()
        self._ring.notify_below(self._slot, self._gen, 0)
        try:
            await self._empty_waiter
        finally:
            self._empty_waiter = None

    def _bytes_sent(self) -> int:
        if self._sent_final >= 0:
            return self._sent_final
        n = self._ring.sent(self._slot, self._gen)
        return n if n >= 0 else 0

    def _drained(self) -> bool:
        return not self._pending and not self._ring.queued(self._slot, self._gen)

    def _refresh_write_fast(self) -> None:
        self._write_fast = not (self._pending or self._eof_written or self._conn_lost or self._sendfile_active)

    def _set_sendfile_active(self, active: bool) -> None:
        self._sendfile_active = active
        self._refresh_write_fast()

    def _wake_empty(self, exc: BaseException | None) -> None:
        w = self._empty_waiter
        if w is None or w.done():
            return
        if exc is not None:
            w.set_exception(exc)
        elif self._drained():
            w.set_result(None)
        else:
            self._ring.notify_below(self._slot, self._gen, 0)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        self._write_fast = False
        if not self._pending:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        """The FIN, once everything written before write_eof() is queued."""
        self._ring.shutdown(self._slot, self._gen)

    def get_write_buffer_size(self) -> int:
        queued = self._ring.queued(self._slot, self._gen)
        self._qbound = queued
        return queued + self._pending_size

    def _maybe_pause_protocol(self) -> None:
        size = self.get_write_buffer_size()
        if size <= self._high_water or self._protocol_paused:
            return
        # Sends go to the kernel at the next enter, so this counts data the
        # stdlib loop would already have written into the socket. Let the
        # kernel take what it can now, and pause only for what it cannot.
        if self._loop.in_owner_thread():
            self._ring.flush()
            size = self.get_write_buffer_size()
            if size <= self._high_water:
                return
        self._protocol_paused = True
        self._ring.notify_below(self._slot, self._gen, self._low_water)
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report("protocol.pause_writing() failed", exc)

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused:
            return
        if self.get_write_buffer_size() > self._low_water:
            self._ring.notify_below(self._slot, self._gen, max(0, self._low_water - self._pending_size))
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report("protocol.resume_writing() failed", exc)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        super().set_write_buffer_limits(high, low)
        if self._protocol_paused:
            self._maybe_resume_protocol()
        else:
            self._maybe_pause_protocol()

    def _drop_pending(self) -> None:
        for chunk in self._pending:
            if type(chunk) is _FileRange and chunk.fixed and not self._ring.closed:
                self._ring.file_hold(chunk.fd, -1)
        self._pending = EMPTY
        self._pending_size = 0

    # -- the core's events for this connection (see Reading's)
    def on_writable(self, res: int, gen: int) -> None:
        """EV_WRITABLE: what is queued in the core fell to the level asked of
        notify_below() (res bytes are still queued)."""
        if self._empty_waiter is not None:
            self._wake_empty(None)
        self._maybe_resume_protocol()
        if self._closing and not self._closed_called and not self._pending:
            # the core held a flushed close for this wakeup (see us_close)
            self._ring.close_conn(self._slot, self._gen, True)

    def on_send_error(self, res: int, gen: int) -> None:
        """EV_SEND_ERR: a send failed with the error -res; the core dropped what was queued."""
        self._drop_pending()
        self._write_fast = False
        self._fatal_error(conn_error(-res), "Fatal write error on socket transport")


class _FileRange:
    """A write_file() that waits in _pending behind writes the arena could not take."""

    __slots__ = ("fd", "fixed", "offset", "count", "owner")

    def __init__(self, fd: int, fixed: bool, offset: int, count: int, owner: Any) -> None:
        self.fd, self.fixed, self.offset, self.count, self.owner = fd, fixed, offset, count, owner


def _file_range(file: Any, offset: int, count: int | None) -> tuple[int, int]:
    """loop.sendfile()'s file as (fd, bytes to send from offset); asyncio's
    SendfileNotAvailableError for anything but a regular file."""
    try:
        fileno = file.fileno()
        st = os.fstat(fileno)
    except (AttributeError, io.UnsupportedOperation, OSError) as exc:
        raise asyncio.SendfileNotAvailableError("not a regular file") from exc
    if not stat.S_ISREG(st.st_mode):
        raise asyncio.SendfileNotAvailableError("not a regular file")
    left = max(0, st.st_size - offset)
    return fileno, min(left, count) if count else left
