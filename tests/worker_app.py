"""The app the worker tests serve: / answers with the worker's pid,
/sleep/MS after MS milliseconds, /stream/MS a first chunk at once and the
rest MS milliseconds later (a request the client knows is in flight)."""

from __future__ import annotations

import asyncio
import os

from uringserve.http import Request, Response, StreamingResponse


async def app(request: Request) -> Response | StreamingResponse:
    path = request.raw_path
    if path.startswith(b"/stream/"):
        return StreamingResponse(stream(int(path[8:])))
    if path.startswith(b"/sleep/"):
        await asyncio.sleep(int(path[7:]) / 1000)
    return Response(b"%d" % os.getpid())


def stream(ms: int):
    """A first chunk at once, the rest after `ms` milliseconds: the client knows it is in flight."""

    async def parts():
        yield b"start;"
        await asyncio.sleep(ms / 1000)
        yield b"end"

    return parts()


async def scheme_app(scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
    """ASGI: answers with the scope's scheme."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    length = b"%d" % len(scope["scheme"])
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
    await send({"type": "http.response.body", "body": scope["scheme"].encode()})
