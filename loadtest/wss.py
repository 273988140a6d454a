"""wss:// targets: the WebSocket echo load over TLS, in Python.

The native driver speaks neither TLS nor, therefore, WebSocket over it.
Here each connection is a `websockets` client (its sans-I/O protocol over
asyncio's TLS transport on UringEventLoop): the same closed loop or
constant rate, the same byte-exact echo check against the plan's messages
and the same counters and histogram layout as the native ws:// mode, so the
report is the same. The per-message work is Python's: this path saturates
far below the native one (for TLS servers, whose own cost is higher too).
With --deflate the library compresses each message itself (its own
negotiation, context takeover as the server agrees).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

from uringserve.loop import UringEventLoop
from uringserve.ring import FaultPlan

from .engine import WS_CLOSE_KEYS
from .plan import Plan
from .tls import _Load as _TLSLoad
from .tls import context
from .window import SLICE, Window


def _close_index(code: int) -> int:
    if 1000 <= code <= 1015:
        return code - 1000
    return len(WS_CLOSE_KEYS) - 2 if 3000 <= code <= 4999 else len(WS_CLOSE_KEYS) - 1


class _Load(_TLSLoad):
    def __init__(self, plan: Plan, ctx: ssl.SSLContext) -> None:
        super().__init__(plan, ctx)
        self.stats.update(ws_closes=[0] * len(WS_CLOSE_KEYS), hs_invalid=0, last_close_code=0, last_hs_status=0)
        n = 4
        expect = plan.ws["expect"]
        self.messages: list[str | bytes] = [
            plan.units[k + expect][0].decode() if plan.ws["text"] else plan.units[k + expect][0] for k in range(n)
        ]

    def reset(self) -> None:
        super().reset()
        self.stats["ws_closes"] = [0] * len(WS_CLOSE_KEYS)

    async def connection(self, i: int) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        p, st = self.plan, self.stats
        seq, pos, k = p.sequences[i], 0, 0
        uri = p.target.url()
        while self.running:
            st["connecting"] += 1
            try:
                ws = await connect(
                    uri,
                    ssl=self.ctx,
                    compression="deflate" if p.ws["deflate"] else None,
                    max_size=None,
                    open_timeout=p.timeout or None,
                    proxy=None,
                )
            except ssl.SSLCertVerificationError as exc:
                st["connecting"] -= 1
                st["cert_errors"] += 1  # the report then says what to do (--cacert, --insecure)
                st["cert_error"] = exc.verify_message or str(exc.reason)
                self._error("connect")
                await asyncio.sleep(0.01)
                continue
            except InvalidStatus as exc:
                st["connecting"] -= 1
                status = exc.response.status_code
                st["by_class"][status // 100 if 100 <= status < 600 else 0] += 1
                st["last_hs_status"] = status
                self._error("handshake")
                await asyncio.sleep(0.01)
                continue
            except InvalidHandshake:
                st["connecting"] -= 1
                st["hs_invalid"] += 1
                self._error("handshake")
                await asyncio.sleep(0.01)
                continue
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                st["connecting"] -= 1
                self._error("connect", 0 if isinstance(exc, ssl.SSLError) else getattr(exc, "errno", 0) or 0)
                await asyncio.sleep(0.01)  # retried, not in a spin
                continue
            st["connecting"] -= 1
            st["connects"] += 1
            st["open"] += 1
            st["by_class"][1] += 1
            self.writers.add(ws)
            try:
                while self.running:
                    msg = self.messages[seq[pos]]
                    pos = (pos + 1) % len(seq)
                    due = 0
                    if p.rate:
                        due = self.start + round((k * p.conns + i) * 1e9 / p.rate)
                        k += 1
                        wait = due - time.monotonic_ns()
                        if wait > 0:
                            await asyncio.sleep(wait / 1e9)
                    sent_at = time.monotonic_ns()
                    await ws.send(msg)
                    st["sent"] += 1
                    st["units_sent"] += 1
                    echo = await asyncio.wait_for(ws.recv(), p.timeout or None)
                    now = time.monotonic_ns()
                    if echo != msg:
                        self._error("mismatch")
                        break
                    st["bytes_in"] += len(echo)
                    self._record(1, now, sent_at, due or sent_at)
            except TimeoutError:
                self._error("timeout")
            except ConnectionClosed as exc:
                if exc.rcvd is not None:
                    st["ws_closes"][_close_index(exc.rcvd.code)] += 1
                    st["last_close_code"] = exc.rcvd.code
                    self._error("closed")
                else:
                    self._error("read")
            except ssl.SSLError as exc:
                self._error("protocol", getattr(exc, "errno", 0) or 0)
            except OSError as exc:
                self._error("read", exc.errno or 0)
            finally:
                st["open"] -= 1
                self.writers.discard(ws)
                ws.transport.abort()


async def _main(
    load: _Load,
    start_at: int,
    progress: Callable[[dict[str, Any]], None] | None,
    on_window: Callable[[str], None] | None,
) -> dict[str, Any]:
    p = load.plan
    delay = start_at - time.monotonic_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
    load.start = time.monotonic_ns()
    tasks = [asyncio.ensure_future(load.connection(i)) for i in range(p.conns)]
    if p.warmup > 0:
        await asyncio.sleep(p.warmup)
        load.reset()
    window = Window(p.duration, on_window)
    while (now := time.monotonic_ns()) < window.end:
        await asyncio.sleep(min(SLICE, (window.end - now) / 1e9))
        window.sample(load.stats["responses"])
        if progress:
            progress(load.stats)
    measured = window.close()
    st = load.stats
    stats = {**st, "errors": dict(st["errors"]), "by_class": list(st["by_class"]), "ws_closes": list(st["ws_closes"])}
    hist = {"uncorrected": sorted(load.hist[0].items()), "corrected": sorted(load.hist[1].items())}
    load.running = False
    for ws in list(load.writers):
        ws.transport.abort()  # no closing handshake: the run is over
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    loop = asyncio.get_running_loop()
    for t in list(getattr(loop, "_conns", {}).values()):
        t.abort()
    await asyncio.sleep(0)
    rs = loop.ring_stats()  # type: ignore[attr-defined]
    return {
        **measured,
        "stats": stats,
        "hist": hist,
        "left_open": 0,
        "ring": {k: rs.get(k, 0) for k in ("staged_sends", "zc_sends", "zc_copied", "plain_sends", "recvs")},
    }


def run_share(
    plan: Plan,
    start_at: int,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_window: Callable[[str], None] | None = None,
    faults: FaultPlan | None = None,
) -> dict[str, Any]:
    loop = UringEventLoop(faults=faults)
    try:
        return loop.run_until_complete(
            _main(_Load(plan, context(plan.insecure, plan.cafile)), start_at, progress, on_window)
        )
    finally:
        loop.close()
