"""The load generator against its peers: loadtest vs wrk on nginx, loadtest vs the C echo client.

    python bench/loadgen_bench.py [--rounds 5] [--seconds 3] [--conns 100] [--sizes 64,4096]
                                  [--before DIR]

--before DIR adds `loadtest@before`: the load generator of another checkout
DIR (its native core built in place: `python setup.py build_ext --inplace`
there), measured in the same rounds, for before/after runs of a change.

The server is pinned to CPU 0, the load tool to CPU 1; in each round every
tool runs once against the same server process, in turn. Reported per tool
(medians over rounds): requests/s, the tool's own CPU per request (the whole
process from wait4's rusage: start-up and connection setup included, for
every tool alike) and the server's CPU per request over the same run. The
paired ratio is the median of the within-round ratios to the peer.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import LOADTEST, ROOT, free_port, run_child, stop, wait_listening  # noqa: E402
from echo_bench import BUILD, build  # noqa: E402
from http_bench import NGINX_CONF  # noqa: E402

from loadtest import cpu  # noqa: E402

PY = sys.executable
NGINX_FOREGROUND = "daemon off; master_process off;"


BEFORE: str | None = None  # --before DIR


def measure(argv: list[str], server_pid: int, seconds: float, parse) -> tuple[float, float, float]:
    """(requests/s, client CPU us/request, server CPU us/request) of one run;
    argv ["@DIR", ...] runs in checkout DIR."""
    where = None
    if argv[0].startswith("@"):
        where, argv = argv[0][1:], argv[1:]
    before = cpu.tree_ns([server_pid])
    text, client_s = run_child(["taskset", "-c", "1", *argv], timeout=seconds + 60, cwd=where)
    server_ns = cpu.window_ns(before, cpu.tree_ns([server_pid]))
    n, secs = parse(text)
    return n / secs, client_s * 1e6 / n, server_ns / 1e3 / n


def parse_wrk(text: str) -> tuple[int, float]:
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)s", text, re.M)
    if not m or "Socket errors" in text or "Non-2xx" in text:
        raise RuntimeError(f"wrk: {text}")
    return int(m.group(1)), float(m.group(2))


def parse_loadtest(text: str) -> tuple[int, float]:
    res = json.loads(text)
    if sum(res["errors"].values()) or res["non_2xx_3xx"]:
        raise RuntimeError(f"loadtest: errors {res['errors']}")
    return res["requests"], res["duration_s"]


def parse_echo_load(text: str) -> tuple[int, float]:
    m = re.search(r"msgs=(\d+) seconds=([\d.]+) errors=(\d+)", text)
    if not m or int(m.group(3)):
        raise RuntimeError(f"echo_load: {text}")
    return int(m.group(1)), float(m.group(2))


def table(title: str, results: dict[str, list[tuple[float, float, float]]], peer: str) -> str:
    lines = [
        f"\n{title}",
        f"{'tool':12} {'req/s':>10} {'vs ' + peer:>9} {'paired':>7} {'client us/req':>14} "
        f"{'vs ' + peer:>9} {'paired':>7} {'server us/req':>14}",
    ]
    for name, runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        client = statistics.median(r[1] for r in runs)
        server = statistics.median(r[2] for r in runs)
        base = results[peer]
        pr = statistics.median(a[0] / b[0] for a, b in zip(runs, base, strict=True))
        pc = statistics.median(a[1] / b[1] for a, b in zip(runs, base, strict=True))
        lines.append(
            f"{name:12} {rate:10.0f} {rate / statistics.median(r[0] for r in base):8.2f}x {pr:6.2f}x "
            f"{client:14.2f} {client / statistics.median(r[1] for r in base):8.2f}x {pc:6.2f}x {server:14.2f}"
        )
    return "\n".join(lines)


Result = dict[str, list[tuple[float, float, float]]]


def interleave(
    rounds: int, seconds: float, server_pid: int, tools: dict[str, tuple[list[str], Callable]], label: str, unit: str
) -> Result:
    """Each tool once per round, in turn, against the same server process."""
    out: Result = {name: [] for name in tools}
    for rnd in range(rounds):
        for name, (argv, parse) in tools.items():
            r = measure(argv, server_pid, seconds, parse)
            out[name].append(r)
            print(
                f"round {rnd + 1} {label} {name:9} {r[0]:9.0f} {unit}/s client {r[1]:5.2f} us/{unit} "
                f"server {r[2]:5.2f} us/{unit}",
                file=sys.stderr,
                flush=True,
            )
    return out


def nginx_rounds(rounds: int, seconds: float, conns: int) -> Result:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=port, static=tmp))
        proc = subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                "nginx",
                "-p",
                tmp,
                "-c",
                f"{tmp}/nginx.conf",
                "-g",
                NGINX_FOREGROUND,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_listening(port, proc)
            tools = {
                "wrk": (["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", url], parse_wrk),
                "loadtest": ([*LOADTEST, url, "-c", str(conns), "-d", f"{seconds:g}s", "--json"], parse_loadtest),
            }
            if BEFORE:
                tools["loadtest@before"] = (["@" + BEFORE, *tools["loadtest"][0]], parse_loadtest)
            return interleave(rounds, seconds, proc.pid, tools, "nginx", "req")
        finally:
            stop(proc)


def echo_rounds(rounds: int, seconds: float, conns: int, size: int) -> Result:
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", "0", PY, "apps/echo.py", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, proc)
        url = f"tcp://127.0.0.1:{port}"
        tools = {
            "c-client": (
                [str(BUILD / "echo_load"), "127.0.0.1", str(port), str(conns), str(size), str(seconds)],
                parse_echo_load,
            ),
            "loadtest": (
                [*LOADTEST, url, "--size", str(size), "-c", str(conns), "-d", f"{seconds:g}s", "--json"],
                parse_loadtest,
            ),
        }
        if BEFORE:
            tools["loadtest@before"] = (["@" + BEFORE, *tools["loadtest"][0]], parse_loadtest)
        return interleave(rounds, seconds, proc.pid, tools, f"echo {size}B", "msg")
    finally:
        stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--sizes", default="64,4096")
    p.add_argument("--before", metavar="DIR", help="also measure the load generator of checkout DIR")
    args = p.parse_args()
    global BEFORE
    BEFORE = args.before
    build()
    print(report(args.rounds, args.seconds, args.conns, [int(s) for s in args.sizes.split(",")]))
    return 0


def report(rounds: int, seconds: float, conns: int, sizes: list[int]) -> str:
    parts = [
        f"medians over {rounds} rounds of {seconds:g}s, {conns} connections; server on CPU 0, load tool on CPU 1",
        table(f"nginx `return 200`: loadtest vs wrk -t1 -c{conns}", nginx_rounds(rounds, seconds, conns), "wrk"),
    ]
    for size in sizes:
        parts.append(
            table(
                f"apps/echo.py (UringEventLoop), {size} B ping-pong: loadtest vs bench/echo_load.c",
                echo_rounds(rounds, seconds, conns, size),
                "c-client",
            )
        )
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
