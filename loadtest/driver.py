"""One load process: a ring, the native driver, and the measured window.

Runs the plan's share in time slices of SLICE seconds (between slices:
progress and per-slice rate samples, the only Python work while the load
runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from uringserve import sockaddr
from uringserve.ring import FaultPlan, Ring, RingConfig

from .engine import Load
from .plan import Plan
from .window import SLICE, Window


def ring_config(plan: Plan) -> RingConfig:
    stage = sum(len(b) for b, _ in plan.units)
    big = max(len(b) for b, _ in plan.units)
    # ws frames are masked per send and copied into the send arena (us_send):
    # room for every connection's frames in flight, chunk-rounded, and pongs
    chunks = plan.conns * plan.depth * ((big + 14) // 4096 + 2) if plan.target.mode == "ws" else 0
    options: dict[str, Any] = {
        "files": 2 * plan.conns + 8,  # a closing slot and its replacement may overlap
        "reserved_slots": 1,
        "buf_count": 4096 if big * plan.depth > 65536 else 1024,
        "buf_size": 16384,
        "chunk_size": 4096,
        "arena_bytes": 65536 + chunks * 4096,
        "stage_bytes": stage + 64,
        "ext_segments": min(plan.conns * plan.depth + 64, (1 << 19) - 1),
        "sq_entries": 4096,
        "cq_entries": 32768,
    }
    options.update(plan.ring)
    return RingConfig(**options)


def run_share(
    plan: Plan,
    start_at: int,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_window: Callable[[str], None] | None = None,
    faults: FaultPlan | None = None,
) -> dict[str, Any]:
    """Connect at `start_at` (time.monotonic_ns()), warm up, measure, stop.
    Returns counts, the two histograms' buckets, rate samples and this
    process's CPU over the measured window. `faults`: the ring's fault plan
    (tests only, uringserve.faults)."""
    if plan.target.scheme == "https":
        from . import tls  # the native driver does not speak TLS

        return tls.run_share(plan, start_at, progress, on_window, faults)
    if plan.target.scheme == "wss":
        from . import wss  # nor WebSocket over TLS

        return wss.run_share(plan, start_at, progress, on_window, faults)
    r = Ring(ring_config(plan), faults=faults)
    try:
        load = Load(
            r,
            mode=plan.target.mode,
            address=sockaddr.encode(plan.target.family, plan.target.address),
            conns=plan.conns,
            units=plan.units,
            sequences=plan.sequences,
            depth=plan.depth,
            keepalive=plan.keepalive,
            head_only=plan.head_only,
            rate=plan.rate,
            timeout=plan.timeout,
            ws=plan.ws or None,
        )
        delay = start_at - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        load.start()
        if plan.warmup > 0:
            load.run(start_at + round(plan.warmup * 1e9))
            load.reset()
        window = Window(plan.duration, on_window)
        while (now := time.monotonic_ns()) < window.end:
            load.run(min(window.end, now + round(SLICE * 1e9)))
            st = load.stats()
            window.sample(st["responses"])
            if progress:
                progress(st)
        measured = window.close()
        stats = load.stats()
        hist = {"uncorrected": load.histogram(False), "corrected": load.histogram(True)}
        left = load.stop(time.monotonic_ns() + 2_000_000_000)
        ring_stats = r.stats()
    finally:
        r.close()
    return {
        **measured,
        "stats": stats,
        "hist": hist,
        "left_open": left,
        "ring": {
            k: ring_stats[k]
            for k in (
                "staged_sends",
                "zc_sends",
                "zc_copied",
                "plain_sends",
                "recvs",
                "enobufs",
                "enters",
                "sends",
                "send_partial",
            )
        },
    }
