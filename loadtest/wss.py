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

from uringserve.ring import FaultPlan

from . import tls
from .engine import WS_CLOSE_KEYS
from .plan import Plan
from .tls import _Load as _TLSLoad


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

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "ws_closes": list(self.stats["ws_closes"])}

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
                    due = await self._turn(i, k)
                    k += 1
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


def run_share(
    plan: Plan,
    start_at: int,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_window: Callable[[str], None] | None = None,
    faults: FaultPlan | None = None,
) -> dict[str, Any]:
    return tls.run_share(plan, start_at, progress, on_window, faults, load_class=_Load)
