"""The receive side of UringTransport: what the loop delivers, pausing and
resuming, and what is held while paused.

A multishot recv is armed by the core when the connection is accepted (an
adopted socket: start_adopted()) and stays armed. The loop hands each RECV's
bytes to the transport's `receive`, which this part points where the state
wants them (_update_receiver): the protocol's data_received itself while
nothing is special. pause_reading() asks the core to cancel the recv; what
the kernel had already taken still arrives and is held here, in order, and
handed to the protocol on resume_reading(). EOF or an error that arrives
while paused is held behind that data.

Bulk receive (bulk.py): when the core switches a connection that moves bulk
to receiving into memory the loop gives it, `bulk_memory` says what memory
(or why none) and `receive_bulk` takes what arrived, under the same rules:
held while paused or behind held data, dropped once closing.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from . import bulk
from .bulk_bytes import fresh
from .ring import BULK_READ, DECLINE_BACKOFF, DECLINE_NOW, RECV_BULK_WANT
from .transport_base import EMPTY, TransportBase, conn_error


class Reading(TransportBase):
    """UringTransport's receive side (its state is TransportBase's)."""

    __slots__ = ()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if protocol is not getattr(self, "_protocol", protocol):  # unset: __init__'s call
            parked = self._ring.bulk.get(self._slot)
            if type(parked) is memoryview:
                # a bulk receive armed into the old protocol's get_buffer():
                # what lands there is the new protocol's data, not a
                # buffer_updated() for a buffer it never gave (the ring keeps
                # the view alive inside the marker)
                self._ring.bulk[self._slot] = _Replaced(parked)
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._update_receiver()

    def _update_receiver(self) -> None:
        """Point the loop's deliveries where this state wants them. For each
        RECV the loop calls `receive(receive_from[a:b])` and looks at nothing
        else, so the state is read here, when it changes, not per delivery.
        While nothing is special (reading, not closing, nothing held, not a
        BufferedProtocol) that is the protocol's own data_received: bytes
        reach it with no frame of the transport's in between."""
        if self._closing:
            # dropped, uncopied, by a function that holds nothing of this
            # transport: a receiver bound to it is a reference cycle, and one
            # left past the end would keep a closed transport (and what its
            # protocol holds, a TLS context) alive until the cyclic GC ran
            self.receive, self.receive_from = discard, self._ring.data_view
        elif self._buffered:
            # a view of the ring's buffer, copied once, into get_buffer()
            self.receive, self.receive_from = self._on_view, self._ring.data_view
        elif self._paused or self._held:
            self.receive, self.receive_from = self._on_data, self._ring.data_bytes
        else:
            self.receive = self._protocol.data_received  # type: ignore[attr-defined]
            self.receive_from = self._ring.data_bytes

    def receive_failed(self, exc: BaseException) -> None:
        """`receive` raised: the protocol's data_received, called by the loop."""
        self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._update_receiver()
        self._ring.recv_pause(self._slot, self._gen)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held and not self._held_scheduled:
            self._held_scheduled = True
            self._loop.call_soon(self._deliver_held)
        self._update_receiver()
        self._recv_start()

    def _begin_reading(self) -> None:
        if not self._closing and not self._paused and not self._ring.closed:
            self._recv_start()

    def _recv_start(self) -> None:
        if self._ring.recv_start(self._slot, self._gen) == RECV_BULK_WANT:
            bulk.arm(self._ring, self, self._slot, self._gen)

    def _deliver_held(self) -> None:
        self._held_scheduled = False
        while self._held and not self._paused and not self._closing:
            kind, item = self._held.popleft()
            if kind == 0:
                self._feed(item)
            elif kind == 1:
                self._eof()
            else:
                self._recv_error(item)
        self._update_receiver()

    def _on_data(self, data: bytes) -> None:
        """`receive` while reading is paused or data is held."""
        if self._paused or self._held:
            self._hold((0, data))
            return
        self._feed(data)

    def _on_view(self, view: memoryview) -> None:
        """A BufferedProtocol's `receive`: `view` is the ring's buffer, valid until
        the loop next waits, so it is copied into the protocol's buffer now,
        or into bytes if it has to wait (paused, or behind held data)."""
        if self._paused or self._held:
            self._hold((0, bytes(view)))
            return
        self._feed(view)

    def _hold(self, item: tuple[int, Any]) -> None:
        if self._held is EMPTY:
            self._held = collections.deque()
        self._held.append(item)

    def _feed(self, data: Any) -> None:
        try:
            if self._buffered:
                self._feed_buffered(data)
            else:
                self._protocol.data_received(data)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            name = "buffer_updated" if self._buffered else "data_received"
            self._fatal_error(exc, f"Fatal error: protocol.{name}() call failed.")

    def _feed_buffered(self, data: Any) -> None:
        mv = memoryview(data)
        while mv:
            try:
                buf = memoryview(self._protocol.get_buffer(len(mv)))  # type: ignore[attr-defined]
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                # named apart from buffer_updated(), as asyncio's transports report it
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            self._protocol.buffer_updated(n)  # type: ignore[attr-defined]
            # not held across the next get_buffer(), which may resize the buffer
            buf.release()
            mv = mv[n:]
            if self._closing:
                return

    # -- bulk receive (bulk.py): memory the kernel writes into, then what arrived
    def bulk_memory(self) -> Any:
        """Memory for the next bulk receive: fresh bytes for a Protocol, the
        protocol's get_buffer() for a BufferedProtocol; or a DECLINE_* int:
        the buffer ring again (paused or closing: no memory is parked for a
        connection that is not reading)."""
        if self._closing or self._paused:
            return DECLINE_NOW
        if not self._buffered:
            return fresh(BULK_READ)  # what arrives is held behind held data, in order
        if self._held:
            # held data is fed through get_buffer() calls of its own, and
            # buffer_updated() must follow the latest one
            return DECLINE_NOW
        try:
            mv = memoryview(self._protocol.get_buffer(-1))  # type: ignore[attr-defined]
            if mv.readonly:
                raise TypeError("get_buffer() returned a read-only buffer")
            if not mv.nbytes:
                raise RuntimeError("get_buffer() returned an empty buffer")
            mv = mv.cast("B")
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
            return DECLINE_NOW
        if len(mv) < self._ring.config.buf_size:
            # smaller than one provided buffer: a receive per small buffer would
            # cost more than the copy it saves; the ring's path fills it (and
            # more get_buffer() calls) from each provided buffer
            return DECLINE_BACKOFF
        return mv[:BULK_READ]

    def receive_bulk(self, data: Any, n: int) -> None:
        """EV_BULK: `n` bytes arrived in bulk_memory()'s memory: `data` (bytes of
        exactly those) for a Protocol; for a BufferedProtocol its own buffer."""
        if self._closing:
            return
        if type(data) is bytes:
            # fresh bytes, armed for a Protocol; to a BufferedProtocol set since
            # (set_protocol) through get_buffer(), as the ring's path feeds it
            self._on_data(data)
            return
        if type(data) is _Replaced:
            # armed into the get_buffer() of a protocol replaced since
            self._on_data(bytes(data.view[:n]))
            return
        if self._paused or self._held:
            # no buffer_updated() while paused: held as bytes, and fed through
            # get_buffer() again on resume, as the ring's path holds its data
            self._hold((0, bytes(data[:n])))
            return
        try:
            self._protocol.buffer_updated(n)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")

    # -- the core's events for this connection (the loop's dispatch table calls
    # these as handler(transport, res, gen); RECV goes to `receive`)
    def on_eof(self, res: int, gen: int) -> None:
        """EV_EOF: the peer sent FIN."""
        if self._closing:
            return
        if self._paused or self._held:
            self._hold((1, None))
            return
        self._eof()

    def _eof(self) -> None:
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    def on_recv_error(self, res: int, gen: int) -> None:
        """EV_RECV_ERR: receiving stopped with the error -res."""
        if self._closing:
            return
        if self._paused or self._held:
            self._hold((2, res))
            return
        self._recv_error(res)

    def _recv_error(self, err: int) -> None:
        self._fatal_error(conn_error(-err), "Fatal read error on socket transport")


class _Replaced:
    """A bulk receive's memory from a protocol's get_buffer() whose protocol
    was replaced (set_protocol) while the receive was armed."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view


def discard(data: Any) -> None:
    """`receive` once the transport is closing: what still arrives is dropped."""
