"""A small Starlette app for the uvicorn drop-in test, and hand-written ASGI
apps whose lifespans behave as apps in the wild do."""

import asyncio
import contextlib
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

state = {"started": False}


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def loop_name(request: Request) -> PlainTextResponse:
    return PlainTextResponse(type(asyncio.get_running_loop()).__name__)


async def echo(request: Request) -> PlainTextResponse:
    body = await request.body()
    return PlainTextResponse(body, media_type="application/octet-stream")


async def stream(request: Request) -> StreamingResponse:
    n = int(request.query_params.get("n", "10"))
    delay = float(request.query_params.get("delay", "0"))

    async def chunks():
        for i in range(n):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(delay)

    return StreamingResponse(chunks(), media_type="text/plain")


async def lifespan_state(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(state["started"]))


@contextlib.asynccontextmanager
async def lifespan(app):
    state["started"] = True
    yield
    print("lifespan shutdown ran", flush=True)


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/loop", loop_name),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        Route("/lifespan", lifespan_state),
    ],
    lifespan=lifespan,
)


# -- lifespan, as apps in the wild speak it (tests/test_http_lifespan.py) ----------------
# Each answers GET with what its lifespan left in the request's scope["state"].


async def _answer(scope, send) -> None:  # noqa: ANN001 (ASGI)
    body = repr(sorted(scope.get("state", {}).items())).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def tutorial(scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
    """The smallest app of most tutorials: every scope but "http" returns at once."""
    if scope["type"] != "http":
        return
    await _answer(scope, send)


async def asserts_http(scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
    """Raises in any scope but "http" (the other shape tutorials have)."""
    assert scope["type"] == "http", "only http"
    await _answer(scope, send)


async def raises_after_startup(scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
    """Completes the startup, then its lifespan task raises while the server serves."""
    if scope["type"] == "lifespan":
        await receive()
        scope["state"]["db"] = "up"
        await send({"type": "lifespan.startup.complete"})
        raise RuntimeError("lifespan task broke after startup")
    await _answer(scope, send)


async def startup_fails(scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
    """Refuses the startup with a message (and waits, as apps do, to be told to stop)."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable at db:5432"})
        await receive()
        return
    await _answer(scope, send)


async def with_state(scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
    """A proper lifespan: state set at startup reaches every request; shutdown prints a line."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                scope["state"]["db"] = "up"
                await send({"type": "lifespan.startup.complete"})
            else:
                print("with_state: lifespan shutdown ran", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    await _answer(scope, send)


async def startup_hangs(scope, receive, send) -> None:  # noqa: ANN001 (ASGI)
    """A lifespan startup that never ends (a database that never answers);
    says so on stdout once it is waiting, and when it is cancelled."""
    if scope["type"] == "lifespan":
        await receive()
        # one write each: workers share the pipe
        os.write(1, b"startup_hangs: waiting in startup (pid %d)\n" % os.getpid())
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            os.write(1, b"startup_hangs: startup cancelled (pid %d)\n" % os.getpid())
            raise
    await _answer(scope, send)
