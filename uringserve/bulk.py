"""Bulk receive, the loop's side: the core's BULK_WANT and BULK events.

A connection whose reads fill the provided buffers (conn.c: BULK_AFTER full
reads in a row) is switched by the core to receiving into memory the loop
hands it, so the protocol gets what the kernel wrote without a copy out of
the buffer ring:

- Protocol: a fresh 256 KiB `bytes` (bulk_bytes.fresh), shrunk to what
  arrived and passed to data_received, as asyncio's loops read;
- BufferedProtocol: the protocol's own get_buffer() memory, then
  buffer_updated(n).

BULK_WANT asks for the memory (`arm`): the transport gives it
(Reading.bulk_memory) or says why not, and the ring keeps it alive
(Ring.bulk) until the slot's BULK event, which comes for every receive
armed, however it ended (-ECANCELED after a pause or a close included;
flagged stale when the connection is closing or gone). `completed` lets the
memory go and hands what arrived to the transport, then answers BULK_MORE
as BULK_WANT. The core arms at most one such receive per slot and counts
the bytes armed against the ring's bulk_bytes.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Protocol

from .bulk_bytes import take
from .ring import BULK_MORE, BULK_STALE, DECLINE_BACKOFF, DECLINE_NOW

if TYPE_CHECKING:
    from .ring import Ring


# An armed bulk receive that got nothing for between one and two of these is
# cancelled (us_bulk_sweep): its connection went quiet, and the memory it
# parks would hold the budget from connections that stream. A stream (reads
# of >= 16 KiB back to back) or a request/response peer that answers within
# a second never waits that long; a cancel costs one SQE, and a connection
# that streams again is switched back after BULK_AFTER full reads. The sweep
# runs only while something is armed, and scans the slot table in C.
SWEEP_PERIOD = 1.0


class Receiver(Protocol):
    """What this needs of a transport (transport_reading.Reading's)."""

    _loop: Any

    def bulk_memory(self) -> Any: ...

    def receive_bulk(self, data: Any, n: int) -> None: ...

    def on_eof(self, res: int, gen: int) -> None: ...

    def on_recv_error(self, res: int, gen: int) -> None: ...


_NO_DATA = (-errno.ECANCELED, -errno.EINTR, -errno.EAGAIN)  # nothing arrived, nothing went wrong


def arm(ring: Ring, t: Receiver | None, slot: int, gen: int) -> None:
    """BULK_WANT: memory for `slot`'s next receive, or the buffer ring again."""
    try:
        memory = DECLINE_NOW if t is None else t.bulk_memory()
    except MemoryError:
        memory = DECLINE_BACKOFF  # no 256 KiB to spare now: the ring's buffers, asked again later
    if type(memory) is int:
        ring.recv_decline(slot, gen, memory)
        return
    try:
        armed = ring.recv_into(slot, gen, memory) == 0
    except (TypeError, ValueError, BufferError):
        # memory cffi cannot hand the kernel (bulk_memory checks what it can):
        # the ring's path, which copies into it
        ring.recv_decline(slot, gen, DECLINE_BACKOFF)
        return
    if armed and not ring.bulk_sweeping:
        ring.bulk_sweeping = True
        t._loop.call_later(SWEEP_PERIOD, _sweep, ring, t._loop)  # type: ignore[union-attr]


def _sweep(ring: Ring, loop: Any) -> None:
    """Every SWEEP_PERIOD while bulk receives are armed: reclaim idle ones."""
    if ring.closed or not ring.bulk:
        ring.bulk_sweeping = False
        return
    ring.bulk_sweep()
    loop.call_later(SWEEP_PERIOD, _sweep, ring, loop)


def completed(ring: Ring, t: Receiver | None, slot: int, res: int, gen: int, flags: int) -> None:
    """BULK: the receive into `slot`'s memory completed with `res`."""
    parked = ring.bulk
    if flags & BULK_STALE or t is None:
        parked.pop(slot, None)  # the kernel is done with it: only now may it go
        if flags & BULK_MORE:
            ring.recv_decline(slot, gen, DECLINE_NOW)
        return
    if res > 0:
        # bound to no name before take(): it resizes only what nothing else refers to
        data: Any = take(parked, slot, res) if type(parked.get(slot)) is bytes else parked.pop(slot)
        t.receive_bulk(data, res)
        # a BufferedProtocol's view is an export of its buffer: gone before
        # arm() asks get_buffer() again, which may resize that buffer
        del data
    else:
        parked.pop(slot, None)
        if res == 0:
            t.on_eof(res, gen)
        elif res not in _NO_DATA:
            t.on_recv_error(res, gen)
    if flags & BULK_MORE:
        arm(ring, t, slot, gen)
