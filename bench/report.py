"""`make bench`: the project's benchmarks on its own load generator, as one Markdown report.

    python bench/report.py [--rounds 3] [--seconds 3] [--out bench/build/report.md] [--only echo,http,ws,...]

Sections: echo (64 B, 4 KiB, 64 KiB) on the stdlib loop, uvloop,
UringEventLoop and the C reference; HTTP hello (native and ASGI) against
nginx, uvicorn and granian, and a 1 MiB static file against nginx; the
WebSocket echo against uvicorn, granian, hypercorn, websockets and picows
(bench/ws_bench.py); the io_uring feature ablation over 1,000 connections; the load generator
against wrk and the C echo client. Every figure is a median over rounds
interleaved in time; the server is pinned to CPU 0, the load to CPU 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import asgi_bench  # noqa: E402
import echo_bench  # noqa: E402
import http_bench  # noqa: E402
import idle_bench  # noqa: E402
import loadgen_bench  # noqa: E402
import ws_bench  # noqa: E402
import wsgi_bench  # noqa: E402
from _common import ROOT, free_port, loadtest, summary, wait_listening  # noqa: E402

from loadtest.report import fmt_time  # noqa: E402

PY = sys.executable

# the table the design started from (fixed files / fixed buffers), for sockets
ABLATION = {
    "plain ops": ["--regular-fds", "--recv-mode", "plain", "--send-mode", "plain"],
    "fixed files only": ["--recv-mode", "plain", "--send-mode", "plain"],
    "provided-buffer recv only": ["--regular-fds", "--send-mode", "plain"],
    "registered buffers + send_zc only": ["--regular-fds", "--recv-mode", "plain", "--send-mode", "zc_fixed"],
    "everything on": ["--send-mode", "zc_fixed"],
    "default (send_zc from 32 KiB)": [],
}
DEFAULT = "default (send_zc from 32 KiB)"
LOOPBACK = (
    "Loopback caveat: on loopback (and veth) the kernel copies zero-copy sends (the `zc copied` column "
    "counts the notifications that said so), so send_zc can only cost CPU here; its gain needs a real NIC. "
    "What this machine can show is CPU per message and which path each run took."
)


def echo_ablation_one(flags: list[str], size: int, conns: int, seconds: float) -> tuple[float, float, dict, dict]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp, "stats.json")
        proc = subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                PY,
                "apps/echo.py",
                "--port",
                str(port),
                "--backlog",
                "4096",
                "--stats-file",
                str(stats_file),
                *flags,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_listening(port, proc)
            # a 30 s timeout: a configuration that stalls some connections shows it
            # in its latency columns instead of failing the run
            res = loadtest(f"tcp://127.0.0.1:{port}", proc.pid, conns, seconds, "--size", str(size), "--timeout", "30s")
        finally:
            proc.terminate()
            proc.wait(30)
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    return res["rps"], res["server_cpu_us_per_request"], stats, res["latency_ns"]


def ablation(rounds: int, seconds: float, conns: int, sizes: list[int]) -> str:
    runs: dict[tuple[str, int], list[tuple[float, float, dict, dict]]] = {}
    for rnd in range(rounds):
        for size in sizes:
            for name, flags in ABLATION.items():
                r = echo_ablation_one(flags, size, conns, seconds)
                runs.setdefault((name, size), []).append(r)
                print(
                    f"round {rnd + 1} ablation {name:34} {size:5} B {r[0]:9.0f} msg/s {r[1]:6.2f} us/msg",
                    file=sys.stderr,
                    flush=True,
                )
    lines = [
        "| configuration | size | msgs/s | server CPU us/msg | vs default | p99 | max latency "
        "| zc sends | zc copied | recvs/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        base = statistics.median(r[1] for r in runs[(DEFAULT, size)])
        for name in ABLATION:
            rs = runs[(name, size)]
            rate = statistics.median(r[0] for r in rs)
            us = statistics.median(r[1] for r in rs)
            last = rs[-1][2]
            msgs = max(1, int(rate * seconds))
            recvs = last.get("recvs", 0) / msgs if last else 0
            p99 = statistics.median(r[3]["percentiles"]["99"] for r in rs)
            worst = max(r[3]["max"] for r in rs)
            lines.append(
                f"| {name} | {size} B | {rate:,.0f} | {us:.2f} | {us / base:.2f}x | {fmt_time(p99)} "
                f"| {fmt_time(worst)} | {last.get('zc_sends', 0):,} | {last.get('zc_copied', 0):,} | {recvs:.2f} |"
            )
    return (
        "\n".join(lines)
        + "\n\n"
        + LOOPBACK
        + " zc counts are of the last round's server; p99 is the median over rounds, max the worst."
    )


def echo_section(rounds: int, seconds: float, conns: int, sizes: list[int]) -> str:
    echo_bench.build()
    servers = dict(echo_bench.SERVERS)
    results = echo_bench.interleaved(servers, sizes, conns, seconds, rounds)
    out = []
    for size in sizes:
        per = {n: results[(n, size)] for n in servers}
        out.append(
            f"**{size} B messages**\n\n```\n{summary(per, list(servers), ['uvloop', 'c-ref'], 'msg', 'msgs/s')}\n```"
        )
    out.append(f"```{echo_bench.paths_table(results, list(servers), sizes)}\n```")
    return "\n\n".join(out)


def http_section(rounds: int, seconds: float, conns: int) -> str:
    names = ["uringserve", "uringserve-asgi", "uvicorn", "granian", "nginx"]
    static_names = ["uringserve", "nginx"]
    hello, files = http_bench.interleaved(names, static_names, [1 << 20], rounds, seconds, conns, 16)
    return (
        f"**hello world**, {conns} connections\n\n```\n"
        + summary(hello, names, ["nginx", "uvicorn", "granian"], "req", "req/s")
        + "\n```\n\n**1 MiB static file**, 16 connections\n\n```\n"
        + summary(files[1 << 20], static_names, ["nginx"], "req", "req/s")
        + "\n```"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "build" / "report.md"))
    p.add_argument("--only", default="echo,http,asgi,wsgi,ws,ablation,loadgen,idle")
    args = p.parse_args()
    only = set(args.only.split(","))
    started = time.time()
    host = f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    parts = [
        "# uringserve benchmarks",
        f"Host: {host}. Medians over {args.rounds} interleaved rounds of {args.seconds:g} s; server pinned to "
        "CPU 0, load (`python -m loadtest`) to CPU 1. Ratios: server CPU per message/request against the peer; "
        "'paired' = median of the within-round ratios. Reproduce: `make bench`.",
    ]
    if "echo" in only:
        parts += ["## Echo, 100 connections", echo_section(args.rounds, args.seconds, 100, [64, 4096, 65536])]
    if "http" in only:
        parts += ["## HTTP", http_section(args.rounds, args.seconds, 100)]
    if "asgi" in only:
        names = ["uringserve", "uringserve-proxy", "uvicorn", "granian"]
        parts += [
            "## ASGI: hello world and a FastAPI JSON endpoint; --proxy-headers' cost",
            "```\n" + asgi_bench.report(args.rounds, args.seconds, 100, names, ["hello", "fastapi"]) + "\n```",
        ]
    if "wsgi" in only:
        names = ["uringserve", "gunicorn-gthread", "gunicorn-sync", "granian"]
        parts += [
            "## WSGI: hello world, a Flask JSON endpoint and a 1 MiB file_wrapper download",
            "```\n" + wsgi_bench.report(args.rounds, args.seconds, 100, names, ["hello", "flask", "file"]) + "\n```",
        ]
    if "ws" in only:
        parts += [
            "## WebSockets: echo at 64 B and 16 KiB, permessage-deflate off and on",
            "```\n" + ws_bench.report(args.rounds, args.seconds, 100, ws_bench.SERVERS, list(ws_bench.CASES)) + "\n```",
        ]
    if "ablation" in only:
        parts += [
            "## io_uring features, echo over 1,000 connections",
            ablation(args.rounds, args.seconds, 1000, [64, 4096]),
        ]
    if "idle" in only:
        parts += [
            "## Memory per idle connection",
            "```\n" + idle_bench.report(10000, ["asyncio", "uvloop", "uring"]) + "\n```",
        ]
    if "loadgen" in only:
        loadgen_bench.build()
        parts += [
            "## The load generator against its peers",
            "```\n" + loadgen_bench.report(args.rounds, args.seconds, 100, [64, 4096]) + "\n```",
        ]
    parts.append(f"_{(time.time() - started) / 60:.1f} minutes._")
    text = "\n\n".join(parts) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
