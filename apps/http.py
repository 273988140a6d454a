"""The HTTP demo: uringserve.http with the native handler API.

    python apps/http.py --host 127.0.0.1 --port 8000 [--static DIR] [--interface native|asgi]
    (importable: apps.http:app is the native handler, apps.http:asgi_app the same routes in ASGI)

Routes: /  hello world;  /echo  the request body back;  /static/...  files
under --static (default apps/static), zero-copy through the ring;  /stats
the ring's counters as JSON;  /ws  a WebSocket echo (text back as text,
binary as binary);  /ws/chat  a WebSocket broadcast: each message goes to
every open /ws/chat connection of this process, the sender's included, in
the order received (the page: /static/chat.html).
"""

from __future__ import annotations

import os
import sys

# run as a script, this folder would shadow the standard library's `http`
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
from typing import Any  # noqa: E402

from uringserve.http import HTTPConfig, HTTPServer, Request, Response, StaticFiles  # noqa: E402
from uringserve.server import run_command  # noqa: E402
from uringserve.ws import WebSocketHandler, accept  # noqa: E402

STATIC = StaticFiles(os.environ.get("URINGSERVE_STATIC", os.path.join(_here, "static")))
HELLO = Response(b"Hello, world!\n")


def stats() -> bytes:
    loop = asyncio.get_running_loop()
    counters: Any = loop.ring_stats() if hasattr(loop, "ring_stats") else {"loop": type(loop).__name__}
    return json.dumps(counters, indent=1, sort_keys=True).encode() + b"\n"


class Echo(WebSocketHandler):
    def on_message(self, ws: Any, data: str | bytes) -> None:
        ws.send(data)


class Chat(WebSocketHandler):
    """One instance for every /ws/chat connection: `members` are the open ones."""

    def __init__(self) -> None:
        self.members: set[Any] = set()

    def on_connect(self, ws: Any) -> None:
        self.members.add(ws)

    def on_message(self, ws: Any, data: str | bytes) -> None:
        for member in list(self.members):
            if not member.closed:
                member.send(data)

    def on_close(self, ws: Any, code: int, reason: str) -> None:
        self.members.discard(ws)


ECHO = accept(Echo)
CHAT = accept(Chat())


def app(request: Request) -> Any:
    """The native handler: a plain function, so it runs without a task."""
    path = request.raw_path
    if path == b"/":
        return HELLO
    if path == b"/ws":
        return ECHO
    if path == b"/ws/chat":
        return CHAT
    if path == b"/echo":
        return Response(request.content, content_type="application/octet-stream")
    if path.startswith(b"/static/"):
        return STATIC.response(request.method, path[len(b"/static") :], request.headers)
    if path == b"/stats":
        return Response(stats(), content_type="application/json")
    return Response(b"404 Not Found\n", status=404)


CHAT_MEMBERS: set[Any] = set()  # the ASGI /ws/chat connections' send


async def asgi_websocket(scope: dict, receive: Any, send: Any) -> None:
    path = scope["path"]
    if path not in ("/ws", "/ws/chat"):
        await send({"type": "websocket.close", "code": 1008})  # before the accept: 403
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    chat = path == "/ws/chat"
    if chat:
        CHAT_MEMBERS.add(send)
    try:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            out = {"type": "websocket.send", "text": msg.get("text"), "bytes": msg.get("bytes")}
            if not chat:
                await send(out)
                continue
            for member in list(CHAT_MEMBERS):
                try:
                    await member(out)
                except (ConnectionError, RuntimeError):  # it closed meanwhile: its own loop ends
                    CHAT_MEMBERS.discard(member)
    finally:
        CHAT_MEMBERS.discard(send)


async def asgi_app(scope: dict, receive: Any, send: Any) -> None:
    """The same routes as an ASGI 3 app (static files via http.response.pathsend)."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await asgi_websocket(scope, receive, send)
        return
    path = scope["path"]
    status, ctype, body = 200, b"text/plain; charset=utf-8", b""
    if path == "/":
        body = b"Hello, world!\n"
    elif path == "/echo":
        parts = []
        while True:
            msg = await receive()
            parts.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body, ctype = b"".join(parts), b"application/octet-stream"
    elif path == "/stats":
        body, ctype = stats(), b"application/json"
    elif path.startswith("/static/"):
        real = STATIC.resolve(scope["raw_path"][len(b"/static") :])
        if real is not None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", STATIC.files.open(real).content_type)],
                }
            )
            await send({"type": "http.response.pathsend", "path": real})
            return
        status, body = 404, b"404 Not Found\n"
    else:
        status, body = 404, b"404 Not Found\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: one the kernel picks (the banner says which)")
    p.add_argument("--interface", choices=["native", "asgi"], default="native")
    p.add_argument("--loop", choices=["uring", "asyncio"], default="uring")
    p.add_argument("--static", help="folder served under /static/ (default apps/static)")
    args = p.parse_args(argv)
    global STATIC
    if args.static:
        try:
            STATIC = StaticFiles(args.static)
        except (OSError, ValueError) as exc:
            print(f"uringserve.http: --static: {exc}", file=sys.stderr)
            return 1
    server = HTTPServer(app if args.interface == "native" else asgi_app, interface=args.interface, config=HTTPConfig())
    try:
        # run_command: the banner names the address bound (the kernel's port
        # for --port 0), and a listener that cannot open is one line, exit 1
        return run_command(server, f"uringserve.http ({args.interface})", args.host, args.port, loop=args.loop)
    finally:
        STATIC.close()


if __name__ == "__main__":
    sys.exit(main())
