"""picows' server on uvloop, echoing each frame as it comes (the fastest
Python WebSocket server we know: the benchmark's near-limit reference).
picows has no permessage-deflate: it runs only in the deflate-off cases.

    python bench/ws_picows_server.py PORT [CERT KEY]   (CERT KEY: over TLS)
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import server_context  # noqa: E402


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)


def listener(request: WSUpgradeRequest) -> Echo:
    return Echo()


async def main(port: int, tls: ssl.SSLContext | None) -> None:
    server = await ws_create_server(listener, "127.0.0.1", port, max_frame_size=1 << 24, ssl=tls)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), server_context(sys.argv[2:])))
