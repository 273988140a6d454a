"""The app the worker tests serve: / answers with the worker's pid,
/sleep/MS after MS milliseconds, /stream/MS a first chunk at once and the
rest MS milliseconds later (a request the client knows is in flight),
/block/MS blocks the worker's loop for MS milliseconds and
/stream-block/MS does after its first chunk (a worker that cannot take a
signal). `info_app` (ASGI; `make_info_app` is its factory)
answers with what the process runs: pid, root_path, loop, ring config."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time

from uringserve.http import Request, Response, StreamingResponse


async def app(request: Request) -> Response | StreamingResponse:
    path = request.raw_path
    if path.startswith(b"/stream/"):
        return StreamingResponse(stream(int(path[8:])))
    if path.startswith(b"/stream-block/"):
        return StreamingResponse(stream(int(path[14:]), block=True))
    if path.startswith(b"/sleep/"):
        await asyncio.sleep(int(path[7:]) / 1000)
    if path.startswith(b"/block/"):
        time.sleep(int(path[7:]) / 1000)  # the loop too: signals wait
    return Response(b"%d" % os.getpid())


def stream(ms: int, block: bool = False):
    """A first chunk at once, the rest after `ms` milliseconds: the client
    knows it is in flight. `block`: the wait blocks the loop (once the first
    chunk has gone out), so the worker cannot take a signal until it ends."""

    async def parts():
        yield b"start;"
        if block:
            await asyncio.sleep(0.2)  # loop turns: the first chunk is sent
            time.sleep(ms / 1000)
        else:
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


async def info_app(scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
    """ASGI: what this process runs, as JSON."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    loop = asyncio.get_running_loop()
    ring = getattr(loop, "_ring", None)
    info = {
        "pid": os.getpid(),
        "root_path": scope.get("root_path"),
        "loop": type(loop).__name__,
        "ring": dataclasses.asdict(ring.config) if ring is not None else None,
    }
    body = json.dumps(info).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def make_info_app():  # noqa: ANN201 (an ASGI app)
    """The --factory form of info_app."""
    return info_app
