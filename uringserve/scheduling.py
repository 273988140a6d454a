"""Handles for the loop's non-debug call_soon / call_at.

asyncio's Handle.__init__ asks loop.get_debug() on every construction, and
under an ASGI server a request makes several handles (task steps, future
callbacks, keep-alive timers) where uvloop works in C. Outside debug mode
the loop already knows the answer, so these subclasses skip the question;
in debug mode the loop uses asyncio's own code. They are asyncio's Handle
and TimerHandle, so everything downstream (_run_once, cancel, repr) is
unchanged.
"""

from __future__ import annotations

import contextvars
from asyncio import events
from collections.abc import Callable
from typing import Any

_copy_context = contextvars.copy_context


class Handle(events.Handle):
    __slots__ = ()

    def __init__(self, callback: Callable[..., Any], args: tuple, loop: Any, context: Any = None) -> None:
        # events.Handle.__init__ minus the get_debug() call: only made when the loop is not in debug mode
        self._context = _copy_context() if context is None else context
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        self._source_traceback = None


class TimerHandle(events.TimerHandle):
    __slots__ = ()

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple, loop: Any, context: Any = None) -> None:
        Handle.__init__(self, callback, args, loop, context)  # type: ignore[arg-type]  # same slots
        self._when = when
        self._scheduled = False
