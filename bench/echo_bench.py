"""Echo benchmark: the same asyncio.Protocol on four servers, interleaved.

    python bench/echo_bench.py [--rounds 5] [--seconds 3] [--conns 100] [--sizes 64,4096]
                               [--servers asyncio,uvloop,uring,c-ref] [--ablations] [--warmup S]

A server named NAME@DIR is NAME run from the checkout DIR (a before/after
pair in one run); --warmup runs the load S seconds before the measured
window (loadtest's --warmup), so large messages are measured with the
socket buffers at their steady size.

Each round runs every (server, size) pair once, in a fresh process, with the
server pinned to CPU 0 and the load generator to CPU 1: the project's own
(`python -m loadtest tcp://... --size N`, every echoed byte checked), or
with --client c the small C client bench/echo_load.c. Medians over rounds
are reported: msgs/s, and server CPU microseconds per message over the
measured window (loadtest: ns schedstat; C client: /proc/PID/stat ticks). On a
2-core box a fast server saturates the client, so CPU per message is the
figure that separates servers; msgs/s is shown for completeness.

Servers: apps/echo.py on the stdlib loop, on uvloop and on UringEventLoop,
and bench/c_echo.c (the native core without Python) as the near-limit
reference. --ablations adds the uring loop with each io_uring feature
switched off in turn (plain send, send_zc without fixed buffers, send_zc
everywhere, plain recv instead of the buffer ring, regular fds).

Every ring server also reports which path it took: its counters (apps/echo.py
--stats-file) per echoed message -- RECV completions, sends, zero-copy sends
and how many of those the kernel copied anyway (all of them on loopback),
ENOBUFS, and io_uring_enter calls (1/batch size).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TICK, cpu_ticks, free_port, loadtest, stop, summary, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"
PY = sys.executable

SERVERS = {
    "asyncio": [PY, "apps/echo.py", "--loop", "asyncio"],
    "uvloop": [PY, "apps/echo.py", "--loop", "uvloop"],
    "uring": [PY, "apps/echo.py", "--loop", "uring"],
    "c-ref": [str(BUILD / "c_echo")],
}
ABLATIONS = {
    "uring:send=plain": [PY, "apps/echo.py", "--send-mode", "plain"],
    "uring:send=zc": [PY, "apps/echo.py", "--send-mode", "zc"],
    "uring:send=zc_fixed": [PY, "apps/echo.py", "--send-mode", "zc_fixed"],
    "uring:recv=plain": [PY, "apps/echo.py", "--recv-mode", "plain"],
    "uring:regular-fds": [PY, "apps/echo.py", "--regular-fds"],
}
EXTRA = {  # --servers may name these too
    "uring:bufs=64x16k": [PY, "apps/echo.py", "--buf-count", "64", "--buf-size", "16384"],
    "uring:bufs=256x4k": [PY, "apps/echo.py", "--buf-count", "256", "--buf-size", "4096"],
    "uring:bufs=128x8k": [PY, "apps/echo.py", "--buf-count", "128", "--buf-size", "8192"],
    "uring:bundle": [PY, "apps/echo.py", "--bundle"],
    "uring:copy-all": [PY, "apps/echo.py", "--inplace-min", str(1 << 30)],
    "uring:inplace-2k": [PY, "apps/echo.py", "--inplace-min", "2048"],
    "uring:inplace-16k": [PY, "apps/echo.py", "--inplace-min", "16384"],
    # bulk receives off (every read through the provided-buffer ring), for the ablation
    "uring:bulk0": [PY, "apps/echo.py", "--bulk-bytes", "0"],
    # bulk receives for every one of the 100 connections (the default 4 MiB holds sixteen)
    "uring:bulk32m": [PY, "apps/echo.py", "--bulk-bytes", str(32 << 20)],
    "uring:buffered-bulk32m": [PY, "apps/echo.py", "--loop", "uring", "--buffered", "--bulk-bytes", str(32 << 20)],
    # the echo as a BufferedProtocol: the loop reads into the protocol's buffer
    "uvloop:buffered": [PY, "apps/echo.py", "--loop", "uvloop", "--buffered"],
    "uring:buffered": [PY, "apps/echo.py", "--loop", "uring", "--buffered"],
}


def build() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    native = ROOT / "uringserve" / "_native"
    # the ring's parts; send.c's file path calls tls.c (TLS files), which calls ktls.c: OpenSSL linked
    core = [str(native / f"{m}.c") for m in ("ring", "conn", "send", "client", "faults", "tls", "ktls")]
    for out, srcs, libs in (
        ("echo_load", ["bench/echo_load.c"], []),
        ("c_echo", ["bench/c_echo.c", *core], ["-lssl", "-lcrypto"]),
    ):
        cmd = ["cc", "-O2", "-Wall", f"-I{native}", "-o", str(BUILD / out), *srcs, *libs]
        subprocess.run(cmd, cwd=ROOT, check=True)


# the ring's counters per message: which path a run took
PATHS = (
    ("recvs", "RECVs"),
    ("sends", "sends"),
    ("zc_sends", "zc sends"),
    ("zc_copied", "zc copied"),
    ("enobufs", "ENOBUFS"),
    ("enters", "enters"),
    # which receive path the bytes took: the provided-buffer ring or bulk (straight into the protocol's memory)
    ("pbuf_recvs", "pbuf recvs"),
    ("bulk_recvs", "bulk recvs"),
    ("bulk_recv_bytes", "bulk bytes"),
    ("bulk_switches", "switches"),
)


def is_uring(cmd: list[str]) -> bool:
    return "apps/echo.py" in cmd and "asyncio" not in cmd and "uvloop" not in cmd


def run_one(
    cmd: list[str], size: int, conns: int, seconds: float, client: str = "loadtest", warmup: float = 0.0
) -> tuple[float, float, dict[str, float] | None]:
    """(msgs/s, server CPU us/msg, the ring's counters per message or None)."""
    port = free_port()
    argv = cmd + ([str(port)] if cmd[0].endswith("c_echo") else ["--port", str(port)])
    stats_file = None
    if is_uring(cmd):
        fd, stats_file = tempfile.mkstemp(prefix="echo-stats-", suffix=".json")
        os.close(fd)
        argv += ["--stats-file", stats_file]
    try:
        return _run(cmd, argv, port, size, conns, seconds, client, stats_file, warmup)
    finally:
        if stats_file:
            os.unlink(stats_file)


def _per_message(stats_file: str | None, msgs: int) -> dict[str, float] | None:
    """The counters the server wrote at shutdown, per message (over the server's life)."""
    if stats_file is None:
        return None
    try:
        with open(stats_file) as f:
            stats = json.load(f)
    except (OSError, ValueError):
        return None
    return {k: stats.get(k, 0) / max(msgs, 1) for k, _ in PATHS}


def _run(
    cmd: list[str],
    argv: list[str],
    port: int,
    size: int,
    conns: int,
    seconds: float,
    client: str,
    stats_file: str | None,
    warmup: float = 0.0,
) -> tuple[float, float, dict[str, float] | None]:
    cwd, env = ROOT, None
    if len(cmd) > 1 and cmd[1].startswith("@"):  # uring@DIR: another checkout (before/after a change)
        cwd = Path(cmd[1][1:])
        env = {**os.environ, "PYTHONPATH": str(cwd)}
        argv = [argv[0], *argv[2:]]
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(port, proc)
        if client == "loadtest":
            extra = ["--warmup", f"{warmup}s"] if warmup else []
            res = loadtest(f"tcp://127.0.0.1:{port}", proc.pid, conns, seconds, "--size", str(size), *extra)
            stop(proc)  # the server writes its counters as it stops
            return res["rps"], res["server_cpu_us_per_request"], _per_message(stats_file, res["requests"])
        t0 = cpu_ticks(proc.pid)
        out = subprocess.run(
            [
                "taskset",
                "-c",
                "1",
                str(BUILD / "echo_load"),
                "127.0.0.1",
                str(port),
                str(conns),
                str(size),
                str(seconds),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        t1 = cpu_ticks(proc.pid)
        m = re.search(r"msgs=(\d+) seconds=([\d.]+) errors=(\d+)", out.stdout)
        if not m or out.returncode:
            raise RuntimeError(f"load client failed: {out.stdout} {out.stderr}")
        msgs, secs = int(m.group(1)), float(m.group(2))
        stop(proc)
        # the window includes connection setup, which is identical for every server
        return msgs / secs, (t1 - t0) / TICK * 1e6 / max(msgs, 1), _per_message(stats_file, msgs)
    finally:
        stop(proc)


def interleaved(
    servers: dict[str, list[str]],
    sizes: list[int],
    conns: int,
    seconds: float,
    rounds: int,
    client: str = "loadtest",
    warmup: float = 0.0,
) -> dict[tuple[str, int], list[tuple[float, float, dict[str, float] | None]]]:
    """Every (server, size) once per round, in turn: (msgs/s, server CPU us/msg,
    counters per message) per round."""
    results: dict[tuple[str, int], list[tuple[float, float, dict[str, float] | None]]] = {}
    for rnd in range(rounds):
        for size in sizes:
            for name, cmd in servers.items():
                r = run_one(cmd, size, conns, seconds, client, warmup)
                results.setdefault((name, size), []).append(r)
                print(
                    f"round {rnd + 1} {name:22} {size:5} B  {r[0]:10.0f} msg/s  {r[1]:6.2f} us/msg",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def main() -> int:
    p = argparse.ArgumentParser(description="interleaved echo benchmark")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--sizes", default="64,4096")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--ablations", action="store_true")
    p.add_argument("--client", choices=["loadtest", "c"], default="loadtest", help="the load generator (loadtest)")
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="seconds of load before the measured window (loadtest's --warmup): socket buffers at their steady size",
    )
    args = p.parse_args()
    build()
    known = {**SERVERS, **ABLATIONS, **EXTRA}
    # uring@DIR runs DIR's apps/echo.py and uringserve (build it there with
    # `python setup.py build_ext --inplace`): a before/after pair in one run
    servers = {}
    for k in args.servers.split(","):
        base, _, checkout = k.partition("@")
        cmd = known[base]
        servers[k] = [cmd[0], "@" + checkout, *cmd[1:]] if checkout else cmd
    if args.ablations:
        servers.update(ABLATIONS)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = interleaved(servers, sizes, args.conns, args.seconds, args.rounds, args.client, args.warmup)
    print(
        f"\nmedians over {args.rounds} rounds, {args.conns} connections, ping-pong, "
        f"{args.seconds:g}s each; server on CPU 0, load on CPU 1"
    )
    print(
        "ratios are CPU per message against the peer; 'paired' is the median of the ratios taken\n"
        "within each round (runs seconds apart), which resists this machine's drift between rounds"
    )
    for size in sizes:
        print(f"\n{size} B messages")
        per = {n: results[(n, size)] for n in servers}
        print(summary(per, list(servers), [p for p in ("uvloop", "c-ref") if p in servers], "msg", "msgs/s"))
    print(paths_table(results, list(servers), sizes))
    return 0


def paths_table(results: dict, names: list[str], sizes: list[int]) -> str:
    """Which path each ring server took: its counters per message, medians over rounds."""
    lines = [
        "\npaths taken (the ring's counters per echoed message, medians over rounds):",
        f"{'server':24} {'size':>8} " + " ".join(f"{label:>10}" for _, label in PATHS),
    ]
    for name in names:
        for size in sizes:
            runs = [r[2] for r in results[(name, size)] if r[2] is not None]
            if not runs:
                continue
            cells = " ".join(f"{statistics.median(r[k] for r in runs):10.3f}" for k, _ in PATHS)
            lines.append(f"{name:24} {size:8} {cells}")
    lines.append(
        "on loopback (and veth) the kernel copies every zero-copy send ('zc copied'): only CPU\n"
        "and the copies counted here can show what zero-copy saves; a NIC is needed for the rest"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
