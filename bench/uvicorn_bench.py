"""uvicorn hello world on uvloop and on uringserve, interleaved.

    python bench/uvicorn_bench.py [--rounds 5] [--seconds 5] [--conns 100]

uvicorn (httptools, one process, access log off) serves bench/hello_asgi.py,
pinned to CPU 0; wrk (Debian's package) loads it from CPU 1. Reports median
req/s and server CPU microseconds per request (utime+stime from
/proc/PID/stat over wrk's run), with ratios against uvloop.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TICK, cpu_ticks, free_port, stop, summary, wait_listening  # noqa: E402

BENCH = Path(__file__).resolve().parent
LOOPS = {"uvloop": "uvloop", "uringserve": "uringserve.uvicorn:loop_factory"}


def run_one(loop: str, conns: int, seconds: int) -> tuple[float, float]:
    port = free_port()
    env = None
    if "@" in loop:  # uringserve@DIR: another checkout's uringserve (before/after a change)
        loop, where = loop.split("@", 1)
        env = {**os.environ, "PYTHONPATH": where}
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "uvicorn",
            "hello_asgi:app",
            "--port",
            str(port),
            "--http",
            "httptools",
            "--loop",
            loop,
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=BENCH,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, proc)
        t0 = cpu_ticks(proc.pid)
        out = subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        t1 = cpu_ticks(proc.pid)
        m = re.search(r"^\s*(\d+) requests in ([\d.]+)s", out.stdout, re.M)
        if not m or "Non-2xx" in out.stdout or "Socket errors" in out.stdout:
            raise RuntimeError(f"wrk: {out.stdout} {out.stderr}")
        reqs, secs = int(m.group(1)), float(m.group(2))
        return reqs / secs, (t1 - t0) / TICK * 1e6 / max(reqs, 1)
    finally:
        stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument(
        "--loops",
        default=",".join(LOOPS),
        help="uvloop, uringserve, or uringserve@DIR (DIR's checkout, built in place)",
    )
    args = p.parse_args()
    loops = {n: LOOPS.get(n) or LOOPS["uringserve"] + "@" + n.split("@", 1)[1] for n in args.loops.split(",")}
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in loops}
    for rnd in range(args.rounds):
        for name, loop in loops.items():
            r = run_one(loop, args.conns, args.seconds)
            results[name].append(r)
            print(f"round {rnd + 1} {name:12} {r[0]:10.0f} req/s {r[1]:7.2f} us/req", file=sys.stderr, flush=True)
    print(
        f"\nuvicorn + httptools, hello world, {args.conns} connections, wrk -t1, {args.seconds:g}s, "
        f"medians over {args.rounds} rounds; server on CPU 0, wrk on CPU 1"
    )
    print(summary(results, list(loops), ["uvloop"] if "uvloop" in loops else [], "req", "req/s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
