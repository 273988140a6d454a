"""A `selectors.BaseSelector` whose select() is one trip through the ring.

select(timeout) = refill buffers and submit everything queued, wait for a
completion or the timeout, reap. Ring completions for our own transports
are handed to the loop's dispatcher right here (no Handle per event);
readiness of foreign fds (the loop's self-pipe, anything registered with
add_reader/add_writer) comes from POLL_ADD and is returned as select()
results, so asyncio's own machinery handles it unchanged.

Readiness semantics: asyncio expects level-triggered readiness (epoll's
default). A multishot poll reports wakeups, not levels: a reader that left
data unread would never hear of it again. So foreign fds use single-shot
polls, re-armed at the start of the next select() — after the callbacks ran,
exactly when epoll would re-check the level. Only the self-pipe, which
asyncio always drains to EAGAIN, uses a multishot poll.
"""

from __future__ import annotations

import errno
import selectors
import time
from collections.abc import Callable
from typing import Any

from .ring import Ring

POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x001, 0x002, 0x004, 0x008, 0x010, 0x020


class _Entry:
    __slots__ = ("key", "gen", "armed", "multishot")
    # one counter for all entries: an fd closed and reused at once must not
    # get the (fd, gen) of a poll whose cancel is still on its way
    _next_gen = 0

    def __init__(self, key: selectors.SelectorKey) -> None:
        self.key = key
        self.gen = 0
        self.armed = False
        self.multishot = False


def _mask(events: int) -> int:
    mask = 0
    if events & selectors.EVENT_READ:
        mask |= POLLIN | POLLPRI
    if events & selectors.EVENT_WRITE:
        mask |= POLLOUT
    return mask


class UringSelector(selectors.BaseSelector):
    def __init__(self, ring: Ring, dispatch: Callable[[int], Any]) -> None:
        self._ring = ring
        self._dispatch = dispatch
        self._fd_to_entry: dict[int, _Entry] = {}
        self._rearm: list[int] = []

    # -- registration ---------------------------------------------------------
    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = selectors._fileobj_to_fd(fileobj)  # type: ignore[attr-defined]
        if fd in self._fd_to_entry:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        if fd >= (1 << 20):
            raise ValueError(f"fd {fd} is beyond the 20-bit poll id space")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        entry = _Entry(key)
        self._fd_to_entry[fd] = entry
        self._arm(entry)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._fd_lookup(fileobj)
        entry = self._fd_to_entry.pop(fd)
        self._disarm(entry)
        return entry.key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = self._fd_lookup(fileobj)
        entry = self._fd_to_entry[fd]
        if events != entry.key.events:
            self._disarm(entry)
            entry.key = entry.key._replace(events=events, data=data)
            self._arm(entry)
        elif data is not entry.key.data:
            entry.key = entry.key._replace(data=data)
        return entry.key

    def set_multishot(self, fd: int) -> None:
        """For fds whose reader always drains to EAGAIN (the loop's self-pipe)."""
        entry = self._fd_to_entry[fd]
        self._disarm(entry)
        entry.multishot = True
        self._arm(entry)

    def _fd_lookup(self, fileobj: Any) -> int:
        try:
            fd = selectors._fileobj_to_fd(fileobj)  # type: ignore[attr-defined]
        except ValueError:
            for fd, entry in self._fd_to_entry.items():
                if entry.key.fileobj is fileobj:
                    return fd
            raise KeyError(f"{fileobj!r} is not registered") from None
        if fd not in self._fd_to_entry:
            raise KeyError(f"{fileobj!r} is not registered")
        return fd

    def _arm(self, entry: _Entry) -> None:
        _Entry._next_gen = entry.gen = (_Entry._next_gen + 1) & 0xFFFF
        self._ring.poll_add(entry.key.fd, _mask(entry.key.events), entry.key.fd, entry.gen, entry.multishot)
        entry.armed = True

    def _disarm(self, entry: _Entry) -> None:
        if entry.armed and not self._ring.closed:
            self._ring.poll_remove(entry.key.fd, entry.gen)
        entry.armed = False

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._fd_to_entry[self._fd_lookup(fileobj)].key

    def get_map(self) -> Any:
        return _Map(self._fd_to_entry)

    # -- the loop's wait -------------------------------------------------------
    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self._rearm:
            entries = self._fd_to_entry
            for fd in self._rearm:
                entry = entries.get(fd)
                if entry is not None and not entry.armed:
                    self._arm(entry)
            self._rearm.clear()
        n = self._ring.wait(timeout)
        if not n:
            return []
        ready = self._dispatch(n)
        if not ready:
            return []
        out = []
        entries = self._fd_to_entry
        for fd, gen, res, more in ready:
            entry = entries.get(fd)
            if entry is None or entry.gen != gen:
                continue  # a poll that was removed or replaced
            if res < 0 or res & POLLNVAL:
                # The poll ended in error: never re-arm (it would fail again at
                # once, forever). An fd closed while registered (EBADF: the
                # POLL_ADD reached the kernel after close(); POLLNVAL) is
                # dropped silently, as epoll drops a closed file.
                entry.armed = False
                if res in (-errno.ECANCELED, -errno.EBADF) or res >= 0:
                    continue
                revents = POLLERR
            else:
                if not more:
                    entry.armed = False
                    self._rearm.append(fd)
                revents = res
            events = 0
            if revents & ~POLLOUT:
                events |= selectors.EVENT_READ
            if revents & ~(POLLIN | POLLPRI):
                events |= selectors.EVENT_WRITE
            events &= entry.key.events
            if events:
                out.append((entry.key, events))
        return out

    def close(self) -> None:
        for entry in self._fd_to_entry.values():
            self._disarm(entry)
        self._fd_to_entry.clear()
        self._rearm.clear()


class _Map:
    """Read-only fd -> SelectorKey view, as selectors' own _SelectorMapping."""

    def __init__(self, entries: dict[int, _Entry]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        fd = selectors._fileobj_to_fd(fileobj)  # type: ignore[attr-defined]
        try:
            return self._entries[fd].key
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get(self, fileobj: Any, default: Any = None) -> Any:
        try:
            return self[fileobj]
        except (KeyError, ValueError):
            return default

    def __iter__(self) -> Any:
        return iter(self._entries)

    def __contains__(self, fileobj: Any) -> bool:
        return self.get(fileobj) is not None

    def keys(self) -> Any:
        return self._entries.keys()

    def values(self) -> Any:
        return [e.key for e in self._entries.values()]

    def items(self) -> Any:
        return [(fd, e.key) for fd, e in self._entries.items()]


def drain(ring: Ring, dispatch: Callable[[int], Any], deadline_s: float) -> int:
    """Reap until nothing is in flight or the deadline passes; returns what is
    left, negated when this thread may not reap (not the ring's submitter)."""
    end = time.monotonic() + deadline_s
    left = ring.stats()["inflight"]
    while left and time.monotonic() < end:
        try:
            n = ring.wait(0.05)
        except OSError:
            # EEXIST: not the ring's submitting thread (a loop closed by a
            # thread other than the one that ran it); closing the ring cancels
            # what is left, and Ring.close keeps in-place buffers alive
            return -left
        if n:
            dispatch(n)
        left = ring.stats()["inflight"]
    return left


__all__ = ["UringSelector", "drain"]
