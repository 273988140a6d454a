"""Run a Plan: worker processes (or this one), the measured window, merging.

Workers start on a shared CLOCK_MONOTONIC instant, so the server's CPU is
sampled by this process at the same window edges the workers measure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from uringserve import faults

from . import cpu, driver
from .engine import HIST_HIGHEST
from .plan import Plan

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

HDRH_MISSING = "the hdrhistogram package is missing: pip install 'uringserve[loadtest]'"
START_DELAY = 0.3  # s: time for worker processes to start before the shared start


class LoadWorkerFailed(RuntimeError):
    """A load worker process (`-t` > 1) exited without its result: what it
    said is on stderr already, so uringload adds one line, no traceback."""


def need_hdrh() -> None:
    """Raise ImportError with what to install when hdrhistogram (the
    loadtest extra) is missing: imported here, not at the top, so that
    `uringload` can say so in one line."""
    try:
        import hdrh.histogram  # noqa: F401
    except ImportError:
        raise ImportError(HDRH_MISSING) from None


def new_histogram() -> HdrHistogram:
    need_hdrh()
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, HIST_HIGHEST, 3)


def histogram_from(buckets: list[tuple[int, int]], into: HdrHistogram | None = None) -> HdrHistogram:
    """The native driver's counts (HdrHistogram's own layout) as an HdrHistogram."""
    h = into or new_histogram()
    for index, count in buckets:
        h.record_value(h.get_value_from_index(index), count)
    return h


@dataclass
class Result:
    plan: Plan
    elapsed: float  # s, the measured window (the longest worker's)
    stats: dict[str, Any]
    latency: HdrHistogram  # ns from the actual send
    corrected: HdrHistogram  # ns from the intended send (meaningful with a rate)
    samples: list[list[float]]  # per worker: requests/s per slice
    client_cpu_ns: int
    server_cpu_ns: int | None
    server_pids: list[int]
    ring: dict[str, int] = field(default_factory=dict)
    left_open: int = 0

    @property
    def requests(self) -> int:
        return int(self.stats["responses"])

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def per_request_us(self, ns: int | None) -> float | None:
        return ns / 1e3 / self.requests if ns is not None and self.requests else None


def _merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        for k, v in p.items():
            if k == "errors":
                e = out.setdefault("errors", dict.fromkeys(v, 0))
                for name, n in v.items():
                    e[name] += n
            elif isinstance(v, list):  # by_class, ws_closes: counts by index
                b = out.setdefault(k, [0] * len(v))
                for i, n in enumerate(v):
                    b[i] += n
            elif k.startswith("last_") or isinstance(v, str):  # one example: any process's
                out[k] = out.get(k) or v
            else:
                out[k] = out.get(k, 0) + v
    return out


def _spawn(share: Plan, start_at: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin
    proc.stdin.write(json.dumps({"plan": share.to_json(), "start_at": start_at}))
    proc.stdin.close()
    return proc


def run(
    plan: Plan,
    server_pids: list[int] | None = None,
    progress: Callable[[float, dict[str, Any]], None] | None = None,
) -> Result:
    """Run `plan`; `progress(elapsed_s, merged_stats)` is called a few times a second."""
    pids = list(server_pids or [])
    cpu.check_pids(pids)
    start_at = time.monotonic_ns() + (round(START_DELAY * 1e9) if plan.threads > 1 else 0)
    window = start_at + round(plan.warmup * 1e9)
    sampled: dict[str, dict[int, int]] = {}
    if plan.threads == 1:
        outs = [_run_here(plan, start_at, window, pids, sampled, progress)]
    else:
        outs = _run_workers(plan, start_at, window, pids, sampled, progress)
    server = cpu.window_ns(sampled["before"], sampled["after"]) if pids else None
    hl, hc = new_histogram(), new_histogram()
    for o in outs:
        histogram_from(o["hist"]["uncorrected"], hl)
        histogram_from(o["hist"]["corrected"], hc)
    ring_stats: dict[str, int] = {}
    for o in outs:
        for k, v in o["ring"].items():
            ring_stats[k] = ring_stats.get(k, 0) + v
    return Result(
        plan=plan,
        elapsed=max(o["elapsed_ns"] for o in outs) / 1e9,
        stats=_merge_stats([o["stats"] for o in outs]),
        latency=hl,
        corrected=hc,
        samples=[o["samples"] for o in outs],
        client_cpu_ns=sum(o["cpu_ns"] for o in outs),
        server_cpu_ns=server,
        server_pids=pids,
        ring=ring_stats,
        left_open=sum(o["left_open"] for o in outs),
    )


def _run_here(
    plan: Plan,
    start_at: int,
    window_at: int,
    pids: list[int],
    sampled: dict[str, dict[int, int]],
    progress: Callable[[float, dict[str, Any]], None] | None,
) -> dict[str, Any]:
    def window(edge: str) -> None:
        if pids:
            sampled[edge] = cpu.tree_ns(pids)

    def tick(st: dict[str, Any]) -> None:
        if progress:
            progress((time.monotonic_ns() - window_at) / 1e9, st)

    return driver.run_share(plan, start_at, tick, window)


def _run_workers(
    plan: Plan,
    start_at: int,
    window: int,
    pids: list[int],
    sampled: dict[str, dict[int, int]],
    progress: Callable[[float, dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:
    procs = [_spawn(plan.share(k), start_at) for k in range(plan.threads)]
    latest: list[dict[str, Any]] = [{} for _ in procs]
    results: list[dict[str, Any] | None] = [None] * len(procs)

    def reader(k: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout
        for line in proc.stdout:
            kind, _, payload = line.partition(" ")
            if kind == "P":
                latest[k] = json.loads(payload)
            elif kind == "R":
                results[k] = json.loads(payload)

    threads = [threading.Thread(target=reader, args=(k, p), daemon=True) for k, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        _sleep_until(window)
        if pids:
            sampled["before"] = cpu.tree_ns(pids)
        end = window + round(plan.duration * 1e9)
        while time.monotonic_ns() < end:
            _sleep_until(min(end, time.monotonic_ns() + 250_000_000))
            if progress and all(latest):
                progress((time.monotonic_ns() - window) / 1e9, _merge_stats(latest))
        if pids:
            sampled["after"] = cpu.tree_ns(pids)
        for p in procs:
            p.wait(timeout=plan.duration + plan.warmup + 30)
        for t in threads:
            t.join(timeout=5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
    failed = [(k, p.returncode) for k, p in enumerate(procs) if p.returncode or results[k] is None]
    if failed:
        raise LoadWorkerFailed(f"load worker(s) failed: {failed} (their stderr is above)")
    return [r for r in results if r is not None]


def _sleep_until(t: int) -> None:
    delay = t - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / 1e9)


def worker_main() -> int:
    """`python -m loadtest.worker`: one share of a plan, JSON on stdin, lines on stdout."""
    msg = json.load(sys.stdin)
    plan = Plan.from_json(msg["plan"])
    last = [0.0]

    def tick(st: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.2:
            last[0] = now
            print("P " + json.dumps(st), flush=True)

    try:
        # tests only: a load worker process takes a fault plan from its
        # environment (URINGSERVE_FAULTS), as a server process does
        out = driver.run_share(plan, int(msg["start_at"]), tick, faults=faults.from_env())
    except (ValueError, OSError) as exc:  # what -t 1 says in one line (a ring it may not set up): so does a worker
        # one write of the whole line: workers share the stderr pipe, and a
        # print's text and newline, written apart, interleave with another's
        sys.stderr.write(f"uringload: {exc}\n")
        sys.stderr.flush()
        return 1
    print("R " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    os._exit(worker_main())
