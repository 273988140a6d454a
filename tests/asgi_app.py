"""A small Starlette app for the uvicorn drop-in test."""

import asyncio
import contextlib

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
