"""Starlette and FastAPI apps with @websocket endpoints, as a user writes
them: `uringserve run tests.ws_starlette_app:app` (or `:fastapi_app`).
tests/test_ws_interop.py drives them with the `websockets` client."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi import WebSocket as FastAPIWebSocket
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def chat(ws: WebSocket) -> None:
    """Accepts with `chat.v2` when the client offers it; echoes text as
    `echo:...`, bytes reversed; `close-me` closes with 4003 "asked"."""
    offered = ws.scope.get("subprotocols", [])
    await ws.accept(subprotocol="chat.v2" if "chat.v2" in offered else None, headers=[(b"x-app", b"starlette")])
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                if msg["text"] == "close-me":
                    await ws.close(code=4003, reason="asked")
                    return
                await ws.send_text("echo:" + msg["text"])
            else:
                await ws.send_bytes(msg["bytes"][::-1])
    except WebSocketDisconnect:
        return


async def denied(ws: WebSocket) -> None:
    """Closed before accept: the server answers the handshake with 403."""
    await ws.close(code=1008)


async def denied_custom(ws: WebSocket) -> None:
    """The websocket.http.response extension: the app's own answer."""
    await ws.send_denial_response(PlainTextResponse("no entry", status_code=401, headers={"x-why": "token"}))


app = Starlette(
    routes=[
        WebSocketRoute("/chat", chat),
        WebSocketRoute("/denied", denied),
        WebSocketRoute("/denied-custom", denied_custom),
    ]
)

fastapi_app = FastAPI()


@fastapi_app.websocket("/items/{item_id}")
async def items(websocket: FastAPIWebSocket, item_id: int, q: str = "") -> None:
    await websocket.accept()
    while True:
        try:
            data = await websocket.receive_json()
        except WebSocketDisconnect:
            return
        await websocket.send_json({"item": item_id, "q": q, "got": data})
