"""ASGI apps for tests/test_tls_core.py: what the scope says of TLS."""

from __future__ import annotations

import json
from typing import Any


async def scope_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the scope's scheme and its `tls` extension as JSON; POST echoes the body."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":  # the same answer, as the one message of a WebSocket
        await receive()
        await send({"type": "websocket.accept"})
        info = {"scheme": scope["scheme"], "tls": scope["extensions"].get("tls")}
        await send({"type": "websocket.send", "text": json.dumps(info)})
        await send({"type": "websocket.close"})
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if scope["method"] != "POST":
        body = json.dumps({"scheme": scope["scheme"], "tls": scope["extensions"].get("tls")}).encode()
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
