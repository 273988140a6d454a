"""ArenaWaits: the connections of one ring whose writes wait for its send arena.

A write the core could take only part of (its arena's chunks all queued), or
a file range it had no segment for, waits in its transport; the transport
adds itself here, keyed by its slot, with what resumes it. The loop makes
one per ring and wakes it when the core reports chunks or segments freed
(EV_ARENA): each waiting transport then moves what waits into the arena, in
the order they began to wait, and adds itself again if it still cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


class ArenaWaits:
    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[int, Callable[[], None]] = {}

    def add(self, slot: int, resume: Callable[[], None]) -> None:
        self._waiting[slot] = resume

    def discard(self, slot: int) -> None:
        self._waiting.pop(slot, None)

    def wake(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for resume in waiting.values():
            resume()

    def clear(self) -> None:
        self._waiting.clear()

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[int]:
        """The slots waiting."""
        return iter(list(self._waiting))
