"""RESP benchmark: redis-benchmark against apps/resp_server.py on
UringEventLoop and on uvloop, and against Debian's redis-server, interleaved.

    python bench/resp_bench.py [--rounds 5] [--clients 50] [--servers uring,uvloop,redis-server]
                               [--tests get,set] [--pipelines 1,16]

A server NAME@DIR runs NAME from another checkout DIR (its native core built
in place: `python setup.py build_ext --inplace` there), for before/after runs
of a change: --servers uring@/tmp/before,uring,redis-server

Each round runs every (test, pipeline, server) once in a fresh server
process pinned to CPU 0, with redis-benchmark pinned to CPU 1. The keys are
written once before a GET run (unmeasured), so GET finds its 3-byte value.
Reported per case: medians of requests/s (as redis-benchmark prints it) and
of the server's CPU microseconds per request (utime+stime from
/proc/PID/stat over the run, divided by the requests), with ratios to
uvloop and to redis-server, of the medians and paired within rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TICK, cpu_ticks, free_port, stop, summary, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SERVERS = {
    "uring": lambda port: [PY, "apps/resp_server.py", "--port", str(port), "--loop", "uring"],
    "uvloop": lambda port: [PY, "apps/resp_server.py", "--port", str(port), "--loop", "uvloop"],
    "asyncio": lambda port: [PY, "apps/resp_server.py", "--port", str(port), "--loop", "asyncio"],
    "redis-server": lambda port: [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ],
}
# requests per run: a few seconds for the slowest server measured
REQUESTS = {1: 300_000, 16: 1_600_000}


def bench(server: str, test: str, pipeline: int, clients: int) -> tuple[float, float]:
    port = free_port()
    base, _, where = server.partition("@")
    env = {**os.environ, "PYTHONPATH": where} if where else None
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *SERVERS[base](port)],
        cwd=where or ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, proc)
        base = ["taskset", "-c", "1", "redis-benchmark", "-p", str(port), "-c", str(clients), "-q"]
        if test == "get":  # the key GET reads, unmeasured
            subprocess.run([*base, "-t", "set", "-n", "1000"], check=True, capture_output=True, timeout=60)
        n = REQUESTS[pipeline]
        before = cpu_ticks(proc.pid)
        out = subprocess.run(
            [*base, "-t", test, "-n", str(n), "-P", str(pipeline)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
        used = cpu_ticks(proc.pid) - before
        found = re.findall(r"([\d.]+) requests per second", out)  # progress lines say rps=, not this
        if not found:
            raise RuntimeError(f"no result from redis-benchmark: {out!r}")
        return float(found[-1]), used / TICK * 1e6 / n
    finally:
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--servers", default="uring,uvloop,redis-server")
    ap.add_argument("--tests", default="get,set")
    ap.add_argument("--pipelines", default="1,16")
    args = ap.parse_args()
    for tool in ("redis-benchmark", "redis-server", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: make bench-resp installs it")
    names = args.servers.split(",")
    unknown = [n for n in names if n.partition("@")[0] not in SERVERS]
    if unknown:
        sys.exit(f"unknown server(s) {unknown}; choose from {', '.join(SERVERS)}")
    cases = [(t, int(p)) for t in args.tests.split(",") for p in args.pipelines.split(",")]
    results: dict[tuple[str, int], dict[str, list[tuple[float, float]]]] = {c: {n: [] for n in names} for c in cases}
    print(
        f"host: {os.uname().release}, {os.cpu_count()} CPUs; server on CPU 0, redis-benchmark on CPU 1, "
        f"{args.clients} clients, {args.rounds} rounds",
        flush=True,
    )
    for r in range(args.rounds):
        for case in cases:
            for name in names:
                rate, cpu = bench(name, case[0], case[1], args.clients)
                results[case][name].append((rate, cpu))
                line = f"round {r + 1} {case[0]} -P {case[1]:<2} {name:13} {rate:10.0f} req/s {cpu:7.2f} us/req"
                print(line, flush=True)
    peers = [p for p in ("uvloop", "redis-server") if p in names]
    for case in cases:
        print(f"\n{case[0].upper()} -P {case[1]} (medians of {args.rounds})")
        print(summary(results[case], names, peers, "req", "req/s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
