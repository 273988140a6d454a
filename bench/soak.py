"""The soak: mixed load for a long time, the server's resources sampled
every second, and a verdict.

    python bench/soak.py [--seconds N] [--out DIR]     (make soak; SOAK_SECONDS, default 600)

One server process (bench/soak_server.py) serves the HTTP demo and the echo
demo on one UringEventLoop. Against it, at once:
  - loadtest, HTTP keep-alive at a constant rate (every response checked);
  - loadtest, echo of 4 KiB messages at a constant rate (byte for byte);
  - churn: short connections, each one of: a whole request with
    `Connection: close` (its exact response checked), a request reset
    halfway (SO_LINGER 0), a 64 KiB echo checked byte for byte, a connect
    and an immediate close;
  - slow peers: connections that send a request head a byte at a time, cut
    by the server's header timeout (408), and come back.
The server samples RSS, fds, fixed slots, arena and send segments in use,
provided buffers out, connections and tasks (samples.csv). It fails on: a
lost or corrupted byte, an error the load did not inject, or an upward
trend after warm-up (the last fifth of the run against the first fifth
after warm-up: RSS up by more than max(4 MiB, 5 %), or fds, slots, arena,
buffers or tasks above their earlier maximum by more than the load's own
spread), or RSS still climbing in the last half (its least-squares line over
the last half of the samples under load rising more than max(2 MiB, 2 %)
across that half: a slow leak that the first-against-last check would let
through on a long run, where a rise that converges flattens out). The RSS
rise is split into where it lives (anonymous or file-backed pages, glibc
malloc's bytes in use and free, pymalloc's blocks and arenas), each with its
slope over the last half. soak.png plots it all; summary.txt says what was
found.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
HELLO = b"Hello, world!\n"
IDLE_SAMPLES = 4  # taken after the load stopped (the driver waits for them)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.problems: list[str] = []

    def add(self, what: str, problem: str | None = None) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1
            if problem and len(self.problems) < 50:
                self.problems.append(f"{what}: {problem}")


def read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def churn(http_port: int, echo_port: int, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        kind = rng.choice(("request", "reset", "echo", "bare"))
        try:
            if kind == "request":
                with socket.create_connection(("127.0.0.1", http_port), timeout=10) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
                    data = read_all(s)
                ok = data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n" + HELLO)
                tally.add(kind, None if ok else f"response {data[:80]!r}")
            elif kind == "reset":
                s = socket.create_connection(("127.0.0.1", http_port), timeout=10)
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n" + b"r" * 3000)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
                tally.add(kind)
            elif kind == "echo":
                msg = rng.randbytes(65536)
                with socket.create_connection(("127.0.0.1", echo_port), timeout=10) as s:
                    sender = threading.Thread(target=s.sendall, args=(msg,))
                    sender.start()
                    got = b""
                    while len(got) < len(msg):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        got += chunk
                    sender.join()
                tally.add(kind, None if got == msg else f"echo of {len(msg)} bytes came back as {len(got)} differing")
            else:
                socket.create_connection(("127.0.0.1", rng.choice((http_port, echo_port))), timeout=10).close()
                tally.add(kind)
        except OSError as exc:
            tally.add(kind, f"{type(exc).__name__}: {exc}")
        time.sleep(0.002)


def slow_peer(http_port: int, stop: threading.Event, tally: Tally) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", http_port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\n")
                data = b""
                s.settimeout(0.5)
                while not stop.is_set():
                    try:
                        chunk = s.recv(4096)
                    except TimeoutError:
                        s.sendall(b"X")  # a byte now and then does not extend the head's deadline
                        continue
                    if not chunk:
                        break
                    data += chunk
            if stop.is_set():
                return
            tally.add("slow", None if data.startswith(b"HTTP/1.1 408 ") else f"slow peer got {data[:60]!r}")
        except OSError as exc:
            if not stop.is_set():
                tally.add("slow", f"{type(exc).__name__}: {exc}")


def trend(samples: list[dict], key: str, warmup: float) -> tuple[float, float, float]:
    """(median of the first fifth after warm-up, median of the last fifth, max
    of the first fifth), over the samples taken under load (the last few are
    taken after it, for what is left behind)."""
    rows = loaded(samples, warmup)
    n = max(1, len(rows) // 5)
    first, last = [r[key] for r in rows[:n]], [r[key] for r in rows[-n:]]
    return median(first), median(last), max(first)


def loaded(samples: list[dict], warmup: float) -> list[dict]:
    """The samples taken under load after the warm-up."""
    return [r for r in samples[:-IDLE_SAMPLES] if r["t"] >= warmup]


def slope(rows: list[dict], key: str) -> float:
    """Least squares: the gauge's change per second over these rows."""
    ts = [r["t"] for r in rows]
    ys = [r[key] for r in rows]
    tm, ym = sum(ts) / len(ts), sum(ys) / len(ys)
    den = sum((t - tm) ** 2 for t in ts)
    return sum((t - tm) * (y - ym) for t, y in zip(ts, ys, strict=True)) / den if den else 0.0


# where RSS lives, as soak_server.py samples it (a gauge absent from old samples is skipped)
MEMORY_PARTS = (
    ("rss_anon", "anonymous RSS"),
    ("rss_file", "file-backed RSS"),
    ("malloc_in_use", "glibc malloc in use"),
    ("malloc_free", "glibc malloc free in its arenas"),
    ("malloc_heap", "glibc malloc heap from the OS"),
    ("py_blocks", "pymalloc blocks"),
    ("pymalloc_arenas", "pymalloc arenas"),
)


def memory_lines(samples: list[dict], warmup: float) -> list[str]:
    """Each part of memory: its change after warm-up and its slope over the
    last half, in units per hour (bytes as MiB)."""
    rows = loaded(samples, warmup)
    half = rows[len(rows) // 2 :]
    out = []
    for key, name in MEMORY_PARTS:
        if len(half) < 2 or key not in half[0]:
            continue
        scale, unit = (2**20, " MiB") if key.startswith(("rss", "malloc")) else (1, "")
        change = (rows[-1][key] - rows[0][key]) / scale
        per_hour = slope(half, key) * 3600 / scale
        out.append(f"  {name}: {change:+.2f}{unit} after warm-up, last half {per_hour:+.2f}{unit}/hour")
    return ["where memory went (first and last sample under load; slope of the last half):", *out] if out else []


def judge(samples: list[dict], warmup: float) -> tuple[list[str], list[str]]:
    """The trends (what the load holds steady must not climb) and what is
    left once the load is gone: (report lines, failures)."""
    lines: list[str] = []
    failures: list[str] = []
    rss0, rss1, _ = trend(samples, "rss", warmup)
    allowed = max(4 * 2**20, 0.05 * rss0)
    mib = 2**20
    lines.append(f"RSS: {rss0 / mib:.1f} MiB after warm-up, {rss1 / mib:.1f} MiB at the end")
    lines[-1] += f" (allowed +{allowed / mib:.1f})"
    if rss1 - rss0 > allowed:
        failures.append(f"RSS grew {(rss1 - rss0) / 2**20:.1f} MiB after warm-up")
    half = loaded(samples, warmup)
    half = half[len(half) // 2 :]
    if len(half) >= 2:
        span = half[-1]["t"] - half[0]["t"]
        rise = slope(half, "rss") * span
        limit = max(2 * 2**20, 0.02 * rss0)
        lines.append(
            f"RSS over the last half ({span:.0f} s): {rise / mib:+.2f} MiB along its fitted line "
            f"({slope(half, 'rss') * 3600 / mib:+.2f} MiB/hour; allowed +{limit / mib:.1f} MiB)"
        )
        if rise > limit:
            failures.append(f"RSS still climbing in the last half: {rise / mib:+.1f} MiB along its fitted line")
    lines += memory_lines(samples, warmup)
    gauges = (("fds", 8), ("slots_used", 8), ("arena_in_use", 8), ("ext_in_use", 8), ("bufs_out", 8), ("tasks", 4))
    for key, slack in gauges:
        first, last, first_max = trend(samples, key, warmup)
        lines.append(f"{key}: median {first:g} then {last:g} (first window's max {first_max:g})")
        if last > first_max + slack:
            failures.append(f"{key} climbed: median {last:g} at the end against at most {first_max:g} earlier")
    end = samples[-1]
    lines.append(
        f"after the load: {end['connections']} connections, {end['slots_used']} slots, {end['arena_in_use']} arena "
        f"chunks, {end['bufs_out']} buffers out, {end['fds']} fds, {end['tasks']} tasks"
    )
    if end["connections"] or end["slots_used"] or end["arena_in_use"] or end["ext_in_use"]:
        failures.append("resources still held after the load ended (see the last line above)")
    return lines, failures


def plot(samples: list[dict], path: Path, warmup: float) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib; make soak installs it)"
    t = [r["t"] for r in samples]
    fig, axes = plt.subplots(5, 1, figsize=(10, 12), sharex=True)
    axes[0].plot(t, [r["rss"] / 2**20 for r in samples])
    axes[0].set_ylabel("RSS MiB")
    for key, name in MEMORY_PARTS:
        if key in samples[0] and key.startswith(("rss_", "malloc")):
            axes[4].plot(t, [r[key] / 2**20 for r in samples], label=name)
    axes[4].set_ylabel("MiB")
    axes[4].legend(loc="upper left", fontsize="small")
    axes[1].plot(t, [r["fds"] for r in samples], label="fds")
    axes[1].plot(t, [r["slots_used"] for r in samples], label="fixed slots in use")
    axes[1].plot(t, [r["connections"] for r in samples], label="connections")
    axes[1].legend(loc="upper left")
    axes[2].plot(t, [r["arena_in_use"] for r in samples], label="arena chunks in use")
    axes[2].plot(t, [r["ext_in_use"] for r in samples], label="send segments in use")
    axes[2].plot(t, [r["bufs_out"] for r in samples], label="provided buffers out")
    axes[2].legend(loc="upper left")
    axes[3].plot(t, [r["tasks"] for r in samples])
    axes[3].set_ylabel("asyncio tasks")
    axes[4].set_xlabel("seconds")
    for ax in axes:
        ax.axvline(warmup, color="grey", linestyle=":")
    fig.suptitle("uringserve soak: HTTP + echo load, churn, resets, slow peers")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return f"plot: {path}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "build" / "soak")
    p.add_argument("--rate", type=int, default=2000, help="requests/s of each loadtest stream")
    args = p.parse_args()
    if args.seconds < 10:
        p.error("--seconds must be at least 10 (a warm-up and two windows to compare)")
    args.out.mkdir(parents=True, exist_ok=True)
    warmup = min(60.0, args.seconds / 5)
    http_port, echo_port = free_port(), free_port()
    samples_path = args.out / "samples.jsonl"
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "soak_server.py"), str(http_port), str(echo_port), str(samples_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(args.out / "server.log", "w"),
        text=True,
    )
    assert server.stdout is not None
    if "ready" not in server.stdout.readline():
        server.kill()
        print("the soak server did not start: see", args.out / "server.log", file=sys.stderr)
        return 1
    load_seconds = f"{args.seconds:g}s"
    loads = {
        name: subprocess.Popen(
            [sys.executable, "-m", "loadtest", "-c", "8", "-d", load_seconds, "-R", str(args.rate), "--timeout", "5s"]
            + ["--json", *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, extra in (
            ("http", [f"http://127.0.0.1:{http_port}/"]),
            ("echo", ["--size", "4096", f"tcp://127.0.0.1:{echo_port}"]),
        )
    }
    stop = threading.Event()
    tally = Tally()
    threads = [
        threading.Thread(target=churn, args=(http_port, echo_port, stop, tally, seed), daemon=True) for seed in range(2)
    ]
    threads += [threading.Thread(target=slow_peer, args=(http_port, stop, tally), daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    results = {}
    for name, proc in loads.items():
        out, err = proc.communicate(timeout=args.seconds + 120)
        try:
            results[name] = json.loads(out)
        except json.JSONDecodeError:
            results[name] = {"failed": f"exit {proc.returncode}: {err[-500:]}"}
    stop.set()
    for t in threads:
        t.join(15)
    time.sleep(IDLE_SAMPLES)  # the last samples, with the load gone
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
    samples = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    with open(args.out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0]))
        w.writeheader()
        w.writerows(samples)

    failures: list[str] = []
    lines = [f"soak: {args.seconds:g} s, warm-up {warmup:g} s, {len(samples)} samples, out {args.out}"]
    for name, res in results.items():
        if "failed" in res:
            failures.append(f"loadtest {name}: {res['failed']}")
            continue
        errors = {k: v for k, v in res["errors"].items() if v}
        lines.append(
            f"loadtest {name}: {res['requests']} responses, {res['rps']:.0f}/s, errors {errors or 'none'}, "
            f"p99 {res['latency_ns']['percentiles']['99'] / 1e6:.2f} ms"
        )
        if errors:
            failures.append(f"loadtest {name} saw errors it did not cause: {errors}")
        if name == "http" and res["status"]["2xx"] != res["requests"]:
            failures.append(f"loadtest http: {res['requests'] - res['status']['2xx']} responses were not 2xx")
    lines.append("churn and slow peers: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())))
    failures += tally.problems
    trend_lines, trend_failures = judge(samples, warmup)
    lines += trend_lines
    failures += trend_failures
    lines.append(plot(samples, args.out / "soak.png", warmup))
    verdict = "PASSED: no loss, no unexpected error, no upward trend"
    lines.append("FAILED:\n  " + "\n  ".join(failures) if failures else verdict)
    text = "\n".join(lines)
    (args.out / "summary.txt").write_text(text + "\n")
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
