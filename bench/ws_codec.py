"""The WebSocket codec's own cost per message, without a kernel or a network:
parse + unmask + UTF-8 (+ inflate) of one masked client text message, for

- uringserve.ws.frames.FrameReader (this repository's codec),
- the websockets library's sans-I/O ServerProtocol (receive_data +
  events_received: what uvicorn runs by default),
- wsproto's Connection (receive_data + events: what hypercorn runs).

    python bench/ws_codec.py [--rounds 7] [--messages 20000]

Each case is one client frame (64 B or 16 KiB of text, deflate off or on)
fed over and over to one open connection. Rounds are interleaved (every
implementation once per round, in turn) and the table shows medians of the
rounds in microseconds per message, and each library's median over ours.
With deflate the frame was compressed without context takeover (so the
same bytes are a valid message every time) and each implementation inflates
it. A quiet machine gives the numbers to quote; on a busy one only the run
itself is checked.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.extensions.permessage_deflate import PerMessageDeflate as WsDeflate  # noqa: E402
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402
from websockets.protocol import State  # noqa: E402
from websockets.server import ServerProtocol  # noqa: E402
from wsproto.connection import Connection, ConnectionType  # noqa: E402
from wsproto.events import TextMessage  # noqa: E402
from wsproto.extensions import PerMessageDeflate as WsprotoDeflate  # noqa: E402

from uringserve.ws.deflate import Deflate  # noqa: E402
from uringserve.ws.frames import FrameReader  # noqa: E402

MAX_SIZE = 16 << 20
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
)


def text(size: int) -> str:
    """Chat-like text of `size` UTF-8 bytes, a few non-ASCII characters in it."""
    line = '{"user": "zoë", "msg": "the quick brown fox jumps over the lazy dog", "n": 12345}\n'
    cut = (line * (size // len(line) + 1)).encode()[:size].decode("utf-8", "ignore")
    return cut + "x" * (size - len(cut.encode()))


def client_frame(message: str, deflate: bool) -> bytes:
    extensions = [WsDeflate(False, True, 15, 15)] if deflate else []  # client without context takeover
    return Frame(Opcode.TEXT, message.encode()).serialize(mask=True, extensions=extensions)


def ours(frame: bytes, deflate: bool, expect: str) -> Callable[[int], None]:
    reader = FrameReader(MAX_SIZE, Deflate() if deflate else None)
    assert reader.feed(frame) == [(1, expect)]

    def run(n: int) -> None:
        feed = reader.feed
        for _ in range(n):
            feed(frame)

    return run


def websockets_lib(frame: bytes, deflate: bool, expect: str) -> Callable[[int], None]:
    factories = [ServerPerMessageDeflateFactory()] if deflate else None
    proto = ServerProtocol(max_size=MAX_SIZE, extensions=factories)
    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n" if deflate else b""
    proto.receive_data(HANDSHAKE % offer)
    [request] = proto.events_received()
    proto.send_response(proto.accept(request))
    assert proto.state is State.OPEN and bool(proto.extensions) == deflate
    proto.data_to_send()
    proto.receive_data(frame)
    [event] = proto.events_received()
    assert event.data.decode() == expect

    def run(n: int) -> None:
        receive, events = proto.receive_data, proto.events_received
        for _ in range(n):
            receive(frame)
            events()

    return run


def wsproto_lib(frame: bytes, deflate: bool, expect: str) -> Callable[[int], None]:
    extensions = []
    if deflate:
        ext = WsprotoDeflate()
        ext.accept("permessage-deflate; client_no_context_takeover")
        extensions.append(ext)
    conn = Connection(ConnectionType.SERVER, extensions=extensions)
    conn.receive_data(frame)
    [event] = list(conn.events())
    assert isinstance(event, TextMessage) and event.data == expect and event.message_finished

    def run(n: int) -> None:
        receive, events = conn.receive_data, conn.events
        for _ in range(n):
            receive(frame)
            for _ in events():
                pass

    return run


IMPLS = {"uringserve.ws": ours, "websockets": websockets_lib, "wsproto": wsproto_lib}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--messages", type=int, default=20000, help="per implementation per round (64 B; / 16 at 16 KiB)")
    args = p.parse_args()
    print(f"per message, median of {args.rounds} interleaved rounds (us); ratio = library / uringserve.ws")
    print(f"{'case':<22}" + "".join(f"{name:>16}" for name in IMPLS) + f"{'websockets/ours':>17}{'wsproto/ours':>14}")
    for size in (64, 16384):
        for deflate in (False, True):
            message = text(size)
            frame = client_frame(message, deflate)
            runs = {name: make(frame, deflate, message) for name, make in IMPLS.items()}
            n = max(1, args.messages // (16 if size > 1024 else 1))
            times: dict[str, list[float]] = {name: [] for name in IMPLS}
            for _ in range(args.rounds):
                for name, run in runs.items():
                    t0 = time.perf_counter()
                    run(n)
                    times[name].append((time.perf_counter() - t0) / n * 1e6)
            med = {name: statistics.median(t) for name, t in times.items()}
            case = f"{size} B text{', deflate' if deflate else ''}"
            row = f"{case:<22}" + "".join(f"{med[name]:>16.3f}" for name in IMPLS)
            row += f"{med['websockets'] / med['uringserve.ws']:>17.2f}{med['wsproto'] / med['uringserve.ws']:>14.2f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
