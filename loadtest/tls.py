"""https:// targets: the load over asyncio's TLS on UringEventLoop, in Python.

The native driver does not speak TLS. Here each connection is a coroutine
over the loop's TLS transport (the path any uringserve TLS client takes):
responses are framed by the same C framer through its Python face and
timed into the same histogram layout, so the report is the same; the
per-response work is Python's, so this path saturates far below the
native driver (it is for TLS servers, whose own cost is higher too).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

from uringserve.loop import UringEventLoop
from uringserve.ring import FaultPlan

from .engine import LOAD_ERRORS, ResponseFramer, hist_index
from .plan import Plan
from .window import SLICE, Window


class _Drop(Exception):
    """End this connection (the counted reason was recorded) and make a new one."""


def context(insecure: bool, cafile: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if cafile:
        ctx.load_verify_locations(cafile)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Load:
    def __init__(self, plan: Plan, ctx: ssl.SSLContext) -> None:
        self.plan = plan
        self.ctx = ctx
        self.stats: dict[str, Any] = {
            "responses": 0, "sent": 0, "units_sent": 0, "bytes_in": 0, "connects": 0, "closes_by_peer": 0,
            "ring_errors": 0, "open": 0, "connecting": 0, "last_errno": 0, "cert_errors": 0, "cert_error": "",
            "errors": dict.fromkeys(LOAD_ERRORS, 0), "by_class": [0] * 6,
        }  # fmt: skip
        self.hist: list[dict[int, int]] = [{}, {}]
        self.running = True
        self.start = 0
        self.writers: set[Any] = set()

    def reset(self) -> None:
        keep = {k: self.stats[k] for k in ("open", "connecting")}
        for k, v in self.stats.items():
            if isinstance(v, int):
                self.stats[k] = 0
        self.stats.update(keep)
        self.stats["errors"] = dict.fromkeys(LOAD_ERRORS, 0)
        self.stats["by_class"] = [0] * 6
        self.hist = [{}, {}]

    async def _turn(self, i: int, k: int) -> int:
        """Under -R, connection i's k-th send is due at a fixed time (the
        corrected histogram counts from it): wait for it and return it; 0 in
        a closed loop. wss.py's load paces with it too."""
        p = self.plan
        if not p.rate:
            return 0
        due = self.start + round((k * p.conns + i) * 1e9 / p.rate)
        wait = due - time.monotonic_ns()
        if wait > 0:
            await asyncio.sleep(wait / 1e9)
        return due

    def snapshot(self) -> dict[str, Any]:
        """The counters at the window's end, apart from the live ones."""
        st = self.stats
        return {**st, "errors": dict(st["errors"]), "by_class": list(st["by_class"])}

    def _record(self, n: int, now: int, sent_at: int, due: int) -> None:
        for which, since in ((0, sent_at), (1, due)):
            idx = hist_index(max(1, now - since))
            self.hist[which][idx] = self.hist[which].get(idx, 0) + n
        self.stats["responses"] += n

    def _error(self, cls: str, err: int = 0) -> None:
        self.stats["errors"][cls] += 1
        if err:
            self.stats["last_errno"] = err

    async def connection(self, i: int) -> None:
        p, st = self.plan, self.stats
        seq, pos, k = p.sequences[i], 0, 0
        host = p.target.host
        while self.running:
            st["connecting"] += 1
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(*p.target.address[:2], ssl=self.ctx, server_hostname=host),
                    p.timeout or None,
                )
            except ssl.SSLCertVerificationError as exc:
                st["connecting"] -= 1
                # counted apart, with OpenSSL's reason, so the report can say
                # what to do (--cacert, --insecure); its errno is no OS errno
                st["cert_errors"] += 1
                st["cert_error"] = exc.verify_message or str(exc.reason)
                self._error("connect")
                await asyncio.sleep(0.01)
                continue
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                st["connecting"] -= 1
                self._error("connect", 0 if isinstance(exc, ssl.SSLError) else exc.errno or 0)
                await asyncio.sleep(0.01)  # retried, not in a spin
                continue
            st["connecting"] -= 1
            st["connects"] += 1
            st["open"] += 1
            self.writers.add(writer)
            framer = ResponseFramer(p.head_only)
            try:
                while self.running:
                    data, count = p.units[seq[pos]]
                    pos = (pos + 1) % len(seq)
                    due = await self._turn(i, k)
                    k += 1
                    writer.write(data)
                    sent_at = time.monotonic_ns()
                    due = due or sent_at
                    st["sent"] += count
                    st["units_sent"] += 1
                    await self._responses(reader, framer, count, sent_at, due)
                    if not p.keepalive:
                        break
            except _Drop:
                pass
            except TimeoutError:
                self._error("timeout")
            except ssl.SSLError as exc:
                self._error("protocol", getattr(exc, "errno", 0) or 0)
            except OSError as exc:
                self._error("read", exc.errno or 0)
            finally:
                st["open"] -= 1
                self.writers.discard(writer)
                writer.close()

    async def _responses(self, reader: Any, framer: Any, count: int, sent_at: int, due: int) -> None:
        st, got = self.stats, 0
        deadline = sent_at + round(self.plan.timeout * 1e9) if self.plan.timeout else 0
        while got < count:
            left = (deadline - time.monotonic_ns()) / 1e9 if deadline else None
            if left is not None and left <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(reader.read(65536), left)
            now = time.monotonic_ns()
            if not data:
                st["closes_by_peer"] += 1
                r, cut = framer.eof()
                self._count(r, now, sent_at, due)
                self._error("short" if cut else "read")
                raise _Drop
            st["bytes_in"] += len(data)
            r = framer.feed(data)
            if r["error"] or r["responses"] + got > count:
                self._error("protocol")
                raise _Drop
            got += r["responses"]
            self._count(r, now, sent_at, due)
            if r["close"] and r["responses"]:
                st["closes_by_peer"] += 1
                if got < count:
                    self._error("read")
                raise _Drop

    def _count(self, r: dict[str, Any], now: int, sent_at: int, due: int) -> None:
        if r["responses"]:
            for c, n in enumerate(r["by_class"]):
                self.stats["by_class"][c] += n
            self._record(r["responses"], now, sent_at, due)


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
    stats = load.snapshot()
    hist = {"uncorrected": sorted(load.hist[0].items()), "corrected": sorted(load.hist[1].items())}
    load.running = False
    for w in list(load.writers):
        w.transport.abort()  # no TLS close_notify (nor WebSocket close): the run is over
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # a connection cancelled inside its TLS handshake is closed by asyncio with
    # a TLS shutdown that would outlive the loop: its socket goes now too
    loop = asyncio.get_running_loop()
    for t in list(getattr(loop, "_conns", {}).values()):
        t.abort()
    await asyncio.sleep(0)  # connection_lost of the aborted transports
    rs = asyncio.get_running_loop().ring_stats()  # type: ignore[attr-defined]
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
    load_class: type[_Load] | None = None,
) -> dict[str, Any]:
    """This process's share of the connections, on its own loop (wss.py's
    load passes its `load_class`: the run around the connections is this one)."""
    loop = UringEventLoop(faults=faults)
    try:
        load = (load_class or _Load)(plan, context(plan.insecure, plan.cafile))
        return loop.run_until_complete(_main(load, start_at, progress, on_window))
    finally:
        loop.close()
