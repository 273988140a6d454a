"""The demo's WebSocket routes as a plain ASGI app, for a server nobody here
wrote (uvicorn): `/ws` echo, `/ws/chat` broadcast, `/static/...` from
apps/static, `/stats` ({}). The WebSocket tests run against it when
WS_TEST_SERVERS names `uvicorn`, which shows a test is right before it
judges uringserve's own answer (apps/http.py serves the same wire behaviour)."""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parent.parent / "apps" / "static"
_chat: set[Any] = set()  # the send callables of the open /ws/chat connections


async def _http(scope: dict, send: Any) -> None:
    path = scope["path"]
    status, ctype, body = 404, "text/plain", b"404 Not Found\n"
    if path == "/stats":
        status, ctype, body = 200, "application/json", b"{}\n"
    elif path.startswith("/static/"):
        f = (STATIC / path[len("/static/") :]).resolve()
        if f.is_file() and STATIC in f.parents:
            status, body = 200, f.read_bytes()
            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
    headers = [(b"content-type", ctype.encode()), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _broadcast(msg: dict) -> None:
    out = {"type": "websocket.send", "text": msg.get("text"), "bytes": msg.get("bytes")}
    for peer in list(_chat):
        try:
            await peer(out)
        except Exception:  # a peer that went away: the others still get it
            _chat.discard(peer)


async def app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        return await _http(scope, send)
    if scope["path"] not in ("/ws", "/ws/chat"):
        await send({"type": "websocket.close", "code": 1008})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    chat = scope["path"] == "/ws/chat"
    if chat:
        _chat.add(send)
    try:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if chat:
                await _broadcast(msg)
            else:
                await send({"type": "websocket.send", "text": msg.get("text"), "bytes": msg.get("bytes")})
    except (asyncio.CancelledError, OSError):
        raise
    finally:
        _chat.discard(send)
