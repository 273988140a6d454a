"""The ring: one io_uring with its fixed-file table, buffer ring and send
arena (core.h), and the events it reaps (EV_*). Its settings (RingConfig)
are declared in ring_settings.py and re-exported here.

Everything above this module sees ints, bytes and memoryviews. Kernel errors
come back from C as negative errnos and leave here as `OSError` naming the
operation that failed (`check`).
"""

from __future__ import annotations

import errno
import os
import resource
import struct
from typing import Any, Protocol

from . import ring_settings
from ._native import check, ffi, lib, oserror
from .host import unavailable_error
from .ring_settings import RECV_MODES as RECV_MODES
from .ring_settings import SEND_MODES as SEND_MODES
from .ring_settings import STAGE_SENDS as STAGE_SENDS
from .ring_settings import MiB as MiB
from .ring_settings import RingConfig as RingConfig


def _event_kinds() -> dict[str, int]:
    n = ffi.new("int *")
    table = lib.us_events(n)
    return {ffi.string(table[i].name).decode(): table[i].kind for i in range(n[0])}


# The kinds of event the core reports, by name, as core.h's US_EVENTS
# declares them (us_events()); the loop's dispatch table is made from this
EVENTS: dict[str, int] = _event_kinds()
EV_ACCEPT = EVENTS["ACCEPT"]
EV_RECV = EVENTS["RECV"]
EV_EOF = EVENTS["EOF"]
EV_RECV_ERR = EVENTS["RECV_ERR"]
EV_WRITABLE = EVENTS["WRITABLE"]
EV_SEND_ERR = EVENTS["SEND_ERR"]
EV_CLOSED = EVENTS["CLOSED"]
EV_SHUTDOWN = EVENTS["SHUTDOWN"]
EV_POLL = EVENTS["POLL"]
EV_ARENA = EVENTS["ARENA"]
EV_CONNECT = EVENTS["CONNECT"]
EV_BULK_WANT = EVENTS["BULK_WANT"]
EV_BULK = EVENTS["BULK"]
BULK_STALE = lib.US_BULK_STALE
BULK_MORE = lib.US_BULK_MORE
BULK_READ = lib.US_BULK_READ
RECV_BULK_WANT = lib.US_RECV_BULK_WANT
DECLINE_NOW, DECLINE_BACKOFF, DECLINE_NEVER = lib.US_DECLINE_NOW, lib.US_DECLINE_BACKOFF, lib.US_DECLINE_NEVER
ACCEPT_LATE = lib.US_ACCEPT_LATE

_STAGES = {
    1: "io_uring_setup",
    2: "mmap of the rings",
    3: "registering the fixed-file table",
    4: "fixed-file alloc range",
    5: "registering the provided buffer ring",
    6: "registering the send arena (REGISTER_BUFFERS)",
    7: "allocating core memory",
}

_GRAVEYARD: list = []  # buffers a closed ring might still have read

# the leading fields of struct us_event, read in bulk: kind, conn, res, off, gen, flags
# (EVENT_HEAD.size is the whole event's)
EVENT_HEAD = struct.Struct(f"IIiIII{ffi.sizeof('struct us_event') - 24}x")


class FaultPlan(Protocol):
    """What Ring needs of a fault plan (tests only; uringserve.faults.Plan)."""

    def before_setup(self) -> None: ...

    def apply(self, ring: Ring) -> None: ...


class Ring:
    """One io_uring with its fixed-file table, buffer ring and send arena.

    `faults`: a plan whose setup failures this ring's setup meets and whose
    rules its operations then meet (uringserve.faults; tests only)."""

    def __init__(self, config: RingConfig | None = None, *, faults: FaultPlan | None = None) -> None:
        cfg = (config or RingConfig()).validated()
        self.config = cfg
        c = ffi.new("struct us_config *")
        for name, value in ring_settings.c_values(cfg):
            setattr(c, name, value)
        err = ffi.new("int *")
        stage = ffi.new("int *")
        if faults is not None:
            faults.before_setup()
        ptr = lib.us_ring_new(c, err, stage)
        if ptr == ffi.NULL:
            raise self._setup_error(err[0], stage[0], cfg)
        self._ptr = ptr
        self.events = ffi.new("struct us_event[]", cfg.max_events)
        self.max_events = cfg.max_events
        # views for the hot path: event heads via EVENT_HEAD.iter_unpack, and
        # received bytes sliced straight out of the data region
        self.events_view = memoryview(ffi.buffer(self.events))
        size = ffi.new("size_t *")
        region = lib.us_data_region(ptr, size)
        # slicing a cffi buffer yields bytes in one step (cheaper than a memoryview slice + tobytes)
        self.data_bytes = ffi.buffer(region, size[0])
        self.data_view = memoryview(self.data_bytes)
        # the hot write path calls raw_send(handle, slot, gen, data, len) directly
        self.handle = ptr
        self.raw_send = lib.us_send
        # bytes sent in place, kept alive at their segment index until the
        # core lists the index as released
        self.raw_send_ref = lib.us_send_ref
        self.held: list[bytes | None] = [None] * cfg.ext_segments
        # memory bulk receives write into (us_recv_into), by slot, kept alive
        # until the slot's EV_BULK: the kernel may write until then
        self.bulk: dict[int, Any] = {}
        self.bulk_sweeping = False  # bulk.py's sweep is scheduled
        self._released = memoryview(ffi.buffer(lib.us_released(ptr), 4 * (cfg.ext_segments + 1))).cast("I")
        self._stats = ffi.new("struct us_stats *")
        self.fd = lib.us_ring_fd(ptr)
        if faults is not None:
            faults.apply(self)

    @staticmethod
    def _setup_error(err: int, stage: int, cfg: RingConfig) -> OSError:
        where = _STAGES.get(stage, "validating the configuration")
        if stage == 1:
            return unavailable_error(err)
        hint = ""
        if err in (errno.ENOMEM, errno.EPERM) and stage in (5, 6):
            budget = ring_settings.memlock_budget()
            hint = (
                f" — the send arena is {cfg.arena_bytes} bytes and RLIMIT_MEMLOCK allows "
                f"{'unlimited' if budget is None else budget} bytes: lower arena_bytes or raise "
                "the limit (ulimit -l, LimitMEMLOCK= in systemd)"
            )
        elif err == errno.EMFILE and stage == 3:
            hint = (
                f" — files={cfg.files} exceeds RLIMIT_NOFILE "
                f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}: lower files or raise ulimit -n"
            )
        return OSError(err, f"io_uring ring setup failed at {where}: {os.strerror(err)}{hint}")

    # -- lifetime ------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        if self._ptr is not None:
            if (any(x is not None for x in self.held) or self.bulk) and self.stats()["inflight"]:
                # the kernel may still read (or write) these: never let them be freed
                _GRAVEYARD.append(self.held)
                _GRAVEYARD.append(self.bulk)
            ptr, self._ptr = self._ptr, None
            self.handle = None
            self.events_view.release()
            self.data_view.release()
            self._released.release()
            lib.us_ring_free(ptr)
            self.held = []
            self.bulk = {}

    def cancel_all(self) -> int:
        return lib.us_cancel_all(self._ptr)

    # -- the batch call --------------------------------------------------------
    def wait(self, timeout: float | None) -> int:
        """Submit, wait up to `timeout` seconds (None: forever), reap into `events`."""
        ns = -1 if timeout is None else max(0, int(timeout * 1e9))
        n = lib.us_wait(self._ptr, self.events, self.max_events, 1, ns)
        if self._released[0]:
            self._drop_released()
        if n < 0:
            raise oserror(-n, "io_uring_enter")
        return n

    def _drop_released(self) -> None:
        """Let go of in-place objects whose sends completed. Must run after
        every call that can reap (wait, flush, sync ops) and before the next
        send: the core may hand a released segment index out again."""
        rel = self._released
        held = self.held
        for seg in rel[1 : 1 + rel[0]].tolist():
            held[seg] = None
        rel[0] = 0

    # -- listeners and connections ---------------------------------------------
    def listener_add(self, fd: int) -> int:
        return check(lib.us_listener_add(self._ptr, fd), "install listener in fixed-file table")

    def listener_start(self, lid: int) -> None:
        check(lib.us_listener_start(self._ptr, lid), "arm accept")

    def listener_stop(self, lid: int) -> None:
        check(lib.us_listener_stop(self._ptr, lid), "stop accepting")

    def accept_limit(self, limit: int) -> None:
        """Pause accepting while `limit` connections are open (0: the table's size)."""
        if not 0 <= limit <= self.stats()["slots_total"]:
            raise ValueError(
                f"connection limit {limit} is beyond the fixed-file table's {self.stats()['slots_total']} "
                "connection slots: raise RingConfig.files or lower the limit"
            )
        check(lib.us_accept_limit(self._ptr, limit), "set the connection limit")

    def flush(self) -> None:
        """Submit queued work and let the kernel run it now. Completions are
        accounted in the core at once (queued bytes, freed slots) and their
        events wait for the next wait()."""
        ret = lib.us_flush(self._ptr)
        self._drop_released()
        check(ret, "io_uring_enter")

    def adopt(self, fd: int) -> tuple[int, int]:
        gen = ffi.new("uint32_t *")
        ret = lib.us_conn_adopt(self._ptr, fd, gen)
        self._drop_released()  # a synchronous op reaps
        slot = check(ret, "install socket in fixed-file table")
        return slot, gen[0]

    def recv_start(self, slot: int, gen: int) -> int:
        """0, -errno, or RECV_BULK_WANT: answer as to EV_BULK_WANT (bulk.arm)."""
        return lib.us_recv_start(self._ptr, slot, gen)

    def recv_pause(self, slot: int, gen: int) -> int:
        return lib.us_recv_pause(self._ptr, slot, gen)

    def recv_into(self, slot: int, gen: int, memory: Any) -> int:
        """Answer EV_BULK_WANT (or EV_BULK with BULK_MORE): the next receive
        goes into `memory` (fresh bytes no one else holds, or a writable
        buffer), kept in `bulk` until the slot's EV_BULK. 0, or -errno when
        the core took the buffer ring instead (-ENOBUFS: bulk_bytes spent)."""
        buf = ffi.from_buffer(memory, require_writable=type(memory) is not bytes)
        ret = lib.us_recv_into(self._ptr, slot, gen, buf, len(buf))
        if ret == 0:
            self.bulk[slot] = memory
        return ret

    def bulk_sweep(self) -> int:
        """Cancel the bulk receives armed since the previous call that got
        nothing (us_bulk_sweep); returns how many."""
        return lib.us_bulk_sweep(self._ptr)

    def recv_decline(self, slot: int, gen: int, how: int = 0) -> int:
        """Answer EV_BULK_WANT without memory: the buffer ring again; `how`
        (DECLINE_*) says when the core may ask again."""
        return lib.us_recv_decline(self._ptr, slot, gen, how)

    def send(self, slot: int, gen: int, data: Any) -> int:
        """Copy as much of `data` as the arena takes; returns bytes taken or -errno."""
        if type(data) is bytes:
            return lib.us_send(self._ptr, slot, gen, data, len(data))
        buf = ffi.from_buffer(data)
        return lib.us_send(self._ptr, slot, gen, buf, len(buf))

    def send_file(self, slot: int, gen: int, file: int, fixed: bool, offset: int, count: int, owner: Any) -> int:
        """Queue `count` bytes of a file from `offset` (read by the ring into
        registered memory, then sent). `owner` (what keeps `file` open) is held
        until the core has read it all. Returns 0 or -errno; -ENOBUFS: no
        segment free, retry later."""
        seg = lib.us_send_file(self._ptr, slot, gen, file, int(fixed), offset, count)
        if seg < 0:
            return seg
        self.held[seg] = owner
        return 0

    def file_register(self, fd: int) -> int:
        """Put a file in the fixed-file table; returns its slot, or -errno
        (-EOPNOTSUPP without fixed files, -ENFILE when the table is full)."""
        ret = lib.us_file_register(self._ptr, fd)
        self._drop_released()  # a synchronous op reaps
        return ret

    def file_unregister(self, slot: int) -> None:
        """Give the slot up; it empties once no queued send names it."""
        check(lib.us_file_unregister(self._ptr, slot), "remove file from fixed-file table")

    def file_hold(self, slot: int, delta: int) -> int:
        """+1: keep a registered file's slot for a send queued later; -1: done."""
        return lib.us_file_hold(self._ptr, slot, delta)

    def sent(self, slot: int, gen: int) -> int:
        """Bytes of this connection the kernel has taken, or -errno."""
        return lib.us_sent(self._ptr, slot, gen)

    def queued(self, slot: int, gen: int) -> int:
        n = lib.us_queued(self._ptr, slot, gen)
        return n if n > 0 else 0

    def notify_below(self, slot: int, gen: int, level: int) -> int:
        return lib.us_notify_below(self._ptr, slot, gen, level)

    def shutdown(self, slot: int, gen: int) -> int:
        return lib.us_shutdown(self._ptr, slot, gen)

    def close_conn(self, slot: int, gen: int, graceful: bool) -> int:
        return lib.us_close(self._ptr, slot, gen, int(graceful))

    def fd_install(self, slot: int, gen: int) -> int:
        ret = lib.us_fd_install(self._ptr, slot, gen)
        self._drop_released()  # a synchronous op reaps
        return check(ret, "IORING_OP_FIXED_FD_INSTALL")

    # -- readiness for foreign fds ----------------------------------------------
    def poll_add(self, fd: int, mask: int, pid: int, gen: int, multishot: bool) -> None:
        check(lib.us_poll_add(self._ptr, fd, mask, pid, gen, int(multishot)), "POLL_ADD")

    def poll_remove(self, pid: int, gen: int) -> None:
        check(lib.us_poll_remove(self._ptr, pid, gen), "POLL_REMOVE")

    # -- introspection -------------------------------------------------------
    def probe(self, op: int) -> bool:
        return lib.us_probe_op(self._ptr, op) == 1

    def stats(self) -> dict[str, int]:
        lib.us_stats_get(self._ptr, self._stats)
        s = self._stats
        return {name: getattr(s, name) for name in dir(s)}


def data_of(ev: Any) -> bytes:
    """The bytes an EV_RECV event in `events` carries (for tests that reap themselves)."""
    return ffi.unpack(ev.data, ev.res)


def accept_of(ev: Any) -> tuple[int, bytes]:
    """An EV_ACCEPT event in `events`: the listener id it was accepted on
    and the peer's address as the kernel wrote it (a sockaddr)."""
    return ev.aux, bytes(ffi.buffer(ev.addr, ev.addrlen))
