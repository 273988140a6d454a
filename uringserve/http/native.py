"""The native handler API: `handler(request) -> Response`, as a plain
function (run at once, with the whole body read) or a coroutine function
(run as a task, reading the body as it streams in)."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from .messages import FileResponse, Request, Response, StreamingResponse
from .protocol import Exchange


def is_async_handler(handler: Any) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))


def native_runner(handler: Callable[[Request], Any]) -> Callable[[Exchange], None]:
    is_async = is_async_handler(handler)

    def run(ex: Exchange) -> None:
        conn = ex.conn
        request = Request(ex.head, ex.body, conn.client, ex)
        if is_async or not ex.body.done:
            ex.task = conn._spawn(_serve(ex, handler, request))
        else:
            # the fast path: no task, the response is written before this returns
            pending = answer(ex, handler(request))
            if pending is not None:  # a streamed body, or a file the transport cannot queue
                ex.task = conn._loop.create_task(_serve(ex, handler, None, pending))
    return run


async def _serve(ex: Exchange, handler: Any, request: Request | None, pending: Any = None) -> None:
    """A response that needs awaiting: an async handler, a plain one waiting
    for its body, or what answer() left to await (`pending`)."""
    try:
        if pending is None:
            if not is_async_handler(handler):
                await ex.body.wait_done()  # a plain function gets the whole body
            result = handler(request)
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
    if type(result) is Response:
        ex.respond(result.status, result.block, result.body)
        return None
    if isinstance(result, (bytes, str)):
        return answer(ex, Response(result))
    if isinstance(result, FileResponse):
        ex.start(result.status, result.block, result.count)
        pending = ex.send_file(result.file, result.offset, result.count)
        if pending is None:
            ex.end()
            return None
        return _finish_after(pending, ex)
    if isinstance(result, StreamingResponse):
        return _stream(ex, result)
    if isinstance(result, Response):
        ex.respond(result.status, result.block, result.body)
        return None
    raise TypeError(f"a handler must return a Response, StreamingResponse, FileResponse, bytes or str, "
                    f"not {type(result).__name__}")


async def _finish_after(pending: Any, ex: Exchange) -> None:
    await pending
    ex.end()


async def _stream(ex: Exchange, resp: StreamingResponse) -> None:
    conn = ex.conn
    ex.start(resp.status, resp.block, resp.content_length)
    content = resp.content
    if hasattr(content, "__aiter__"):
        async for data in content:  # type: ignore[union-attr]
            ex.send(data)
            await conn.drain()
    else:
        for data in content:  # type: ignore[union-attr]
            ex.send(data)
            await conn.drain()
    ex.end()


__all__ = ["native_runner", "answer"]
