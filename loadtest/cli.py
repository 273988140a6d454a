"""`python -m loadtest URL` / `uringload URL`: wrk's options, and more.

uringload -c 100 -d 10s -t 2 --latency http://127.0.0.1:8000/
uringload -R 2000 -c 50 -d 30s --hgrm out.hgrm http://127.0.0.1:8000/
uringload tcp://127.0.0.1:7000 --size 4096 -c 100
uringload redis://127.0.0.1:6379 --command "GET key" --pipeline 16
uringload ws://127.0.0.1:8000/ws -c 100 --size 16384 --deflate
uringload --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from . import report
from .plan import PlanError, build_plan
from .run import LoadWorkerFailed, need_hdrh, run

_UNITS = {"": 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """10, 10s, 500ms, 1m, 2h"""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (examples: 10s, 500ms, 1m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def count(text: str) -> int:
    """100, 10k, 1M"""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (examples: 100, 10k)")
    return round(float(m.group(1)) * {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}[m.group(2)])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uringload",
        description="A wrk-style load generator on the uringserve io_uring core.",
        epilog="Latency is measured from each request's send; with -R also from its intended send time "
        "(coordinated omission corrected, as wrk2 does). Errors are counted, never retried. "
        "Exit status: 0 when at least one request succeeded (HTTP 2xx/3xx, a RESP reply that is not an error, "
        "an echo returned intact), even beside errors, which the report counts; 1 when none did (the reason "
        "on stderr); 2 when the run could not start (a bad option, a missing package).",
    )
    p.add_argument(
        "url", nargs="?", help="http://host:port/path, tcp://host:port (echo), redis://host:port or ws://host:port/path"
    )
    p.add_argument("-c", "--connections", type=count, default=10, help="connections to keep open (10)")
    p.add_argument("-d", "--duration", type=duration, default=10.0, help="measured time: 10s, 1m (10s)")
    p.add_argument("-t", "--threads", type=int, default=1, help="worker processes, each with its own ring (1)")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("-m", "--method", default="GET", help="HTTP method (GET)")
    p.add_argument("--body", default=None, help="request body")
    p.add_argument("--body-file", default=None, help="request body from a file")
    p.add_argument("--timeout", type=duration, default=2.0, help="a response later than this is a timeout (2s)")
    p.add_argument("--latency", action="store_true", help="print the latency percentiles")
    p.add_argument("--pipeline", type=int, default=1, help="requests sent together per connection (1)")
    p.add_argument("--no-keepalive", action="store_true", help="a new connection for every request")
    p.add_argument("-R", "--rate", type=count, default=0, help="constant rate, requests/s over all connections")
    p.add_argument("--warmup", type=duration, default=0.0, help="run this long before measuring (0)")
    p.add_argument("-s", "--scenario", default=None, help="a Python file whose requests(conn) yields requests")
    p.add_argument("--size", type=int, default=64, help="tcp:// and ws:// echo message size in bytes (64)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--text", dest="text", action="store_true", default=True, help="ws: text messages (default)")
    kind.add_argument("--binary", dest="text", action="store_false", help="ws: binary messages")
    p.add_argument("--deflate", action="store_true", help="ws: offer permessage-deflate, send compressed messages")
    p.add_argument("--command", default="PING", help="redis:// command to send (PING)")
    p.add_argument("-k", "--insecure", action="store_true", help="https: do not verify the certificate")
    p.add_argument("--cacert", default=None, help="https: also trust the CA certificates in this file")
    p.add_argument("--server-pid", type=int, action="append", default=[], help="report this server's CPU per request")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    p.add_argument("--hgrm", default=None, help="write the percentile distribution (HdrHistogram format)")
    p.add_argument("--plot", default=None, help="draw the percentile curve to a PNG (needs matplotlib)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="two saved --json runs side by side")
    return p


def _progress(elapsed: float, st: dict[str, Any], state: dict[str, Any]) -> None:
    last_t, last_n = state.get("t", 0.0), state.get("n", 0)
    n = st["responses"]
    rate = (n - last_n) / (elapsed - last_t) if elapsed > last_t else 0.0
    state.update(t=elapsed, n=n)
    errors = sum(st["errors"].values())
    sys.stderr.write(f"\r  {max(elapsed, 0):6.1f}s  {rate:>12,.0f} req/s  {n:>12,} done  errors {errors}   ")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        need_hdrh()
        if args.plot:
            report.pyplot()  # before the run, not after it
    except (ImportError, RuntimeError) as exc:
        print(f"uringload: {exc}", file=sys.stderr)
        return 2
    if args.compare:
        try:
            report.compare(args.compare, sys.stdout)
        except ValueError as exc:
            print(f"uringload: {exc}", file=sys.stderr)
            return 2
        return 0
    if not args.url:
        parser().print_usage(sys.stderr)
        print("uringload: a URL is required (or --compare A.json B.json)", file=sys.stderr)
        return 2
    body = args.body.encode() if args.body is not None else b""
    if args.body_file:
        try:
            body = Path(args.body_file).read_bytes()
        except OSError as exc:
            print(f"uringload: --body-file: {exc.strerror}: {args.body_file}", file=sys.stderr)
            return 2
    try:
        plan = build_plan(
            args.url,
            conns=args.connections,
            threads=args.threads,
            duration=args.duration,
            method=args.method,
            headers=args.header,
            body=body,
            pipeline=args.pipeline,
            keepalive=not args.no_keepalive,
            rate=args.rate,
            timeout=args.timeout,
            warmup=args.warmup,
            scenario=args.scenario,
            size=args.size,
            command=args.command,
            insecure=args.insecure,
            cafile=args.cacert,
            text=args.text,
            deflate=args.deflate,
        )
    except PlanError as exc:
        print(f"uringload: {exc}", file=sys.stderr)
        return 2
    state: dict[str, Any] = {}
    live = sys.stderr.isatty() and not args.json
    try:
        res = run(plan, args.server_pid, (lambda e, st: _progress(e, st, state)) if live else None)
    except (ValueError, OSError, LoadWorkerFailed) as exc:  # anything else is a bug: its traceback
        print(f"uringload: {exc}", file=sys.stderr)
        return 1
    if live:
        sys.stderr.write("\r" + " " * 72 + "\r")
    if args.json:
        print(json.dumps(report.to_json(res), indent=1))
    else:
        print(report.text(res, args.latency))
    if args.hgrm:
        report.write_hgrm(res, args.hgrm)
    if args.plot:
        report.plot(res, args.plot)
    reason = report.failure(res)
    if reason is not None:
        print(f"uringload: {reason}", file=sys.stderr)
        return 1
    return 0
