"""The native handler API: `handler(request) -> Response`, as a plain
function (run at once, with the whole body read) or a coroutine function
(run as a task, reading the body as it streams in)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .limit import ConcurrencyLimit
from .messages import FileResponse, Request, Response, StreamingResponse
from .protocol import Exchange, Runner


def is_async_handler(handler: Any) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))  # noqa: B004 (its method, not callable())


def native_runner(handler: Callable[[Request], Any], limit: ConcurrencyLimit | None = None) -> Runner:
    """The runner for HTTPProtocol; the parser makes each request a Request
    (the runner's exchange_class). With `limit`, a request whose handler
    would run as a task is answered 503 beyond its count of requests in
    flight; one a plain function answers at once is not (limit.py)."""
    is_async = is_async_handler(handler)

    def run(ex: Request) -> None:
        if is_async or not ex.body_in.done:
            ex.task = ex.conn.spawn(_serve(ex, handler, False))
            return
        # the fast path: no task, the response is written before this returns
        finish(ex, handler(ex))

    def finish(ex: Request, result: Any) -> None:
        try:
            pending = answer(ex, result)
        except Exception as exc:
            # a result answer() refuses (or a WebSocket accept that fails): 500.
            # HTTPProtocol._answer_common calls this outside any try, so
            # uncaught it would be the transport's fatal error, dropping the
            # connection unanswered
            ex.fail(exc)
            return
        if pending is not None:  # a streamed body, or a file the transport cannot queue
            ex.task = ex.conn.loop.create_task(_serve(ex, handler, True, pending))
            if limit is not None:
                limit.count(ex.task)

    if limit is not None:  # a runner of its own: nothing of the limit on the way when it is off
        unlimited = run
        limited = limit.wrap(unlimited)

        def run(ex: Request) -> None:
            # only a request whose handler becomes a task is counted (limit.py)
            (limited if is_async or not ex.body_in.done else unlimited)(ex)

    run.exchange_class = Request  # type: ignore[attr-defined]
    if not is_async:  # HTTPProtocol answers the common request itself (_answer_common)
        run.plain_handler = handler  # type: ignore[attr-defined]
        run.response_class = Response  # type: ignore[attr-defined]
        run.finish = finish  # type: ignore[attr-defined]
    return run


async def _serve(ex: Request, handler: Any, answered: bool, pending: Any = None) -> None:
    """A response that needs awaiting: an async handler, a plain one waiting
    for its body, or what answer() left to await (`pending`)."""
    try:
        if not answered:
            if not is_async_handler(handler):
                await ex.body_in.wait_done()  # a plain function gets the whole body
            result = handler(ex)
            if inspect.isawaitable(result):
                result = await result
            pending = answer(ex, result)
        if pending is not None:
            await pending
    except BaseException as exc:
        ex.fail(exc)
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise


def answer(ex: Exchange, result: Any) -> Any:
    """Send a handler's result. Returns None when done, or a coroutine to
    await for responses that stream."""
    if isinstance(result, Response):
        if result._close:
            ex.keep_alive = False
        ex.conn.respond_whole(ex, result._status, result._head, result._wire)
        return None
    if isinstance(result, (bytes, str)):
        return answer(ex, Response(result))
    if isinstance(result, (FileResponse, StreamingResponse)) and result.close:
        ex.keep_alive = False
    if isinstance(result, FileResponse):
        ex.start(result.status, result.block, result.count)
        pending = ex.send_file(result.file, result.offset, result.count)
        if pending is None:
            ex.end()
            return None
        return _finish_after(pending, ex)
    if isinstance(result, StreamingResponse):
        return _stream(ex, result)
    take_over = getattr(result, "take_over", None)  # uringserve.ws.accept(): the connection becomes a WebSocket
    if take_over is not None:
        take_over(ex)
        return None
    raise TypeError(
        f"a handler must return a Response, StreamingResponse, FileResponse, bytes or str, not {type(result).__name__}"
    )


async def _finish_after(pending: Any, ex: Exchange) -> None:
    await pending
    ex.end()


async def _stream(ex: Exchange, resp: StreamingResponse) -> None:
    conn = ex.conn
    ex.start(resp.status, resp.block, resp.content_length)
    content = resp.content
    if hasattr(content, "__aiter__"):
        async for data in content:
            ex.send(data)
            await conn.drain()
    else:
        for data in content:
            ex.send(data)
            await conn.drain()
    ex.end()


__all__ = ["native_runner", "answer"]
