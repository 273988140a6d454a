"""uringserve.http's own cost per request, without a kernel or a network:
HTTPProtocol on a fake transport answering the demo's hello world.

    python bench/http_micro.py [--requests 100000] [--bytecodes] [--path /static/4096.bin]

bench/http_bench.py's `floor` is the loop's and the kernel's share; this is
the HTTP layer's. Native: the plain-function fast path, run inline. ASGI:
one task per request, driven by a loop callback as the ring drives it.

--bytecodes counts the Python bytecodes one request executes, by function
(sys.settrace with opcode events): exact and free of the machine's noise,
so a change to the hot path can be compared before and after in one run
of each. Time per bytecode is not constant, so quote the timed numbers too.

--path requests another of the demo's routes: /static/NAME serves files
under URINGSERVE_STATIC (default apps/static), so a static file's own cost
(path, open, validators) shows beside hello's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import uringserve  # noqa: E402
from apps.http import app, asgi_app  # noqa: E402
from uringserve.http import HTTPConfig  # noqa: E402
from uringserve.http.asgi import asgi_runner  # noqa: E402
from uringserve.http.native import native_runner  # noqa: E402
from uringserve.http.protocol import HTTPProtocol  # noqa: E402
from uringserve.http.static import FileCache  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"  # what wrk sends


class NullTransport:
    def write(self, data: bytes) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


async def measure(runner: Any, n: int, request: bytes = REQUEST, protocol: Any = None) -> float:
    """Microseconds per request through `protocol(runner)` (an HTTPProtocol by default)."""
    loop = asyncio.get_running_loop()
    proto = protocol(runner) if protocol is not None else HTTPProtocol(runner, HTTPConfig(keepalive_requests=1 << 62))
    proto.connection_made(NullTransport())
    done = loop.create_future()
    left = [n]

    def step() -> None:  # a loop callback, as the ring's dispatch is
        for _ in range(100):
            proto.data_received(request)
        left[0] -= 100
        if left[0] > 0:
            loop.call_soon(step)
        else:
            done.set_result(None)

    t0 = time.perf_counter()
    loop.call_soon(step)
    await done
    return (time.perf_counter() - t0) / n * 1e6


async def bytecodes(runner: Any, request: bytes = REQUEST) -> collections.Counter:
    """Bytecodes executed per function while one request is answered (after warm-up)."""
    loop = asyncio.get_running_loop()
    proto = HTTPProtocol(runner, HTTPConfig(keepalive_requests=1 << 62))
    proto.connection_made(NullTransport())
    counts: collections.Counter = collections.Counter()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        code = frame.f_code
        name = f"{code.co_name} ({Path(code.co_filename).name}:{code.co_firstlineno})"

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[name] += 1
            return local

        return local

    def one() -> None:
        sys.settrace(tracer)
        try:
            proto.data_received(request)
        finally:
            sys.settrace(None)

    for _ in range(50):
        loop.call_soon(proto.data_received, request)  # warm-up, as a loop callback (eager tasks)
    await asyncio.sleep(0.01)
    loop.call_soon(one)
    await asyncio.sleep(0.01)
    return counts


def request_for(path: str) -> bytes:
    return REQUEST.replace(b"GET / ", b"GET %s " % path.encode(), 1)


async def count_main(request: bytes) -> None:
    for name, runner in (("native", native_runner(app)), ("ASGI", asgi_runner(asgi_app, {}, FileCache()))):
        counts = await bytecodes(runner, request)
        print(f"{name}: {sum(counts.values())} bytecodes per request")
        for fn, n in counts.most_common():
            print(f"  {n:5}  {fn}")


async def main(n: int, request: bytes) -> None:
    native = await measure(native_runner(app), n, request)
    asgi = await measure(asgi_runner(asgi_app, {}, FileCache()), n // 4, request)
    print(
        f"HTTP layer per request, {n} requests: native {native:.2f} us, ASGI {asgi:.2f} us "
        "(median of 5 runs of this command is the number to quote)"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--bytecodes", action="store_true", help="count bytecodes per request instead of timing")
    p.add_argument("--path", default="/", help="the route requested (default /, hello world)")
    args = p.parse_args()
    req = request_for(args.path)
    uringserve.run(count_main(req) if args.bytecodes else main(args.requests, req))
