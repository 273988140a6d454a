"""What --proxy-headers adds to a request, without a kernel or a network.

    python bench/proxy_headers.py [--requests 100000] [--rounds 7]

Two measures. The frame a trusted connection adds per request
(ForwardedHTTPProtocol's wrapper around the runner, called on a request
whose handler does nothing), with and without X-Forwarded-For/-Proto in
its head: min of repeats, the steadiest number on a shared machine. And
bench/http_micro.py's whole HTTP layer per request (HTTPProtocol on a fake
transport answering the demo's hello world) with the option off, on for an
untrusted peer (nothing is wrapped: the target is 0) and on for a trusted
one: medians of interleaved rounds, so a busy machine moves all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_micro import NullTransport, measure  # noqa: E402

import uringserve  # noqa: E402
from apps.http import app, asgi_app  # noqa: E402
from uringserve.http import HTTPConfig  # noqa: E402
from uringserve.http.asgi import asgi_runner  # noqa: E402
from uringserve.http.forwarded import ForwardedHTTPProtocol, Forwarding  # noqa: E402
from uringserve.http.native import native_runner  # noqa: E402
from uringserve.http.parser import HeaderBlock  # noqa: E402
from uringserve.http.protocol import Exchange, HTTPProtocol  # noqa: E402
from uringserve.http.static import FileCache  # noqa: E402

HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
PROXIED = b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"  # what the README's nginx adds
CFG = HTTPConfig(keepalive_requests=1 << 62)
MAKERS = {
    "off": lambda r: HTTPProtocol(r, CFG),
    "on, untrusted peer": lambda r: ForwardedHTTPProtocol(r, CFG, Forwarding("10.0.0.1")),
    "on, trusted peer": lambda r: ForwardedHTTPProtocol(r, CFG, Forwarding("127.0.0.1")),
}


def frame_cost() -> None:
    def nothing(ex: Any) -> None:
        return None

    async def main() -> None:
        p = ForwardedHTTPProtocol(nothing, HTTPConfig(), Forwarding("127.0.0.1"))
        p.server_addr = ("127.0.0.1", 8000)
        p.connection_made(NullTransport())
        call = p._runner
        n = 200_000
        for name, extra in (("with X-Forwarded-For/-Proto", PROXIED), ("without proxy headers", b"")):
            block = HeaderBlock(HEAD.split(b"\r\n", 1)[1] + extra + b"Connection: keep-alive\r\n")
            ex = Exchange(b"GET", b"/", "1.1", block, True)
            bare = min(timeit.repeat(lambda: nothing(ex), number=n, repeat=9)) / n * 1e6  # noqa: B023
            wrapped = min(timeit.repeat(lambda: call(ex), number=n, repeat=9)) / n * 1e6  # noqa: B023
            print(f"trusted connection, {name}: +{wrapped - bare:.3f} us per request (the wrapper's frame)")

    asyncio.run(main())


async def layer(make: Any, runner: Any, n: int, request: bytes) -> float:
    return await measure(runner, n, request, protocol=make)


async def layers(n: int, rounds: int) -> None:
    for kind, runner, count in (
        ("native", lambda: native_runner(app), n),
        ("ASGI", lambda: asgi_runner(asgi_app, {}, FileCache()), n // 4),
    ):
        for name, extra in (("with X-Forwarded-For/-Proto", PROXIED), ("without proxy headers", b"")):
            request = HEAD + extra + b"\r\n"
            got: dict[str, list[float]] = {k: [] for k in MAKERS}
            for _ in range(rounds):
                for k, make in MAKERS.items():
                    got[k].append(await layer(make, runner(), count, request))
            base = statistics.median(got["off"])
            cells = ", ".join(f"{k} {statistics.median(v) - base:+.3f}" for k, v in got.items() if k != "off")
            print(f"{kind}, {name}: off {base:.3f} us; {cells} us")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    frame_cost()
    uringserve.run(layers(args.requests, args.rounds))
