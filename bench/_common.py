"""Helpers shared by the benchmarks: ports, process CPU time, readiness, summaries."""

from __future__ import annotations

import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tree_ticks(pid: int) -> int:
    """cpu_ticks of a process and all its descendants (servers that fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_ticks(p)
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary(results: dict, names: list[str], peers: list[str], unit: str, rate_name: str) -> str:
    """Median rate and CPU per unit per name, with ratios to each peer: of
    the medians, and 'paired' (the median of ratios taken within a round)."""
    med = {n: (statistics.median(x[0] for x in results[n]), statistics.median(x[1] for x in results[n])) for n in names}
    head = f"{'server':24} {rate_name:>10} {'CPU us/' + unit:>13}"
    for p in peers:
        head += f" {'vs ' + p:>11} {'paired':>7}"
    lines = [head]
    for n, (rate, cpu) in med.items():
        line = f"{n:24} {rate:10.0f} {cpu:13.2f}"
        for p in peers:
            if p in med:
                paired = statistics.median(a[1] / b[1] for a, b in zip(results[n], results[p], strict=True))
                line += f" {cpu / med[p][1]:10.2f}x {paired:6.2f}x"
            else:
                line += f" {'-':>11} {'-':>7}"
        lines.append(line)
    return "\n".join(lines)


LOADTEST = [sys.executable, "-m", "loadtest"]


def loadtest(url: str, server_pid: int, conns: int, seconds: float, *extra: str, cpu: str = "1") -> dict:
    """Run the project's load generator pinned to `cpu`; its --json result.
    The server's CPU per request comes from loadtest's --server-pid (ns
    schedstat over the measured window); a benchmark fails on any error."""
    out = subprocess.run(
        [
            "taskset",
            "-c",
            cpu,
            *LOADTEST,
            url,
            "-c",
            str(conns),
            "-d",
            f"{seconds}s",
            "--json",
            "--server-pid",
            str(server_pid),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        cwd=ROOT,
    )
    if out.returncode:
        raise RuntimeError(f"loadtest failed: {out.stdout} {out.stderr}")
    res = json.loads(out.stdout)
    errors = sum(res["errors"].values())
    if errors or res["non_2xx_3xx"]:
        raise RuntimeError(f"loadtest: {errors} errors, {res['non_2xx_3xx']} bad statuses against {url}")
    return res


def run_child(argv: list[str], timeout: float, cwd: str | None = None) -> tuple[str, float]:
    """Run a command to the end: its output and the CPU seconds it used
    (its own rusage from wait4, exact, whatever it forked included). With
    cwd, the command runs in that checkout and imports its packages."""
    env = {**os.environ, "PYTHONPATH": cwd} if cwd else None
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {text}")
    return text, ru.ru_utime + ru.ru_stime


def serve_and_load(
    cmd: list[str], port: int, path: str, conns: int, seconds: float, extra: list[str], env: dict, cwd: Path = ROOT
) -> tuple[float, float]:
    """Start a server (`cmd`, listening on `port`) pinned to CPU 0, load it
    with loadtest from CPU 1 after a 0.5 s warm-up, stop it: (req/s, server
    CPU us/req)."""
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *cmd], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(port, proc)
        res = loadtest(f"http://127.0.0.1:{port}{path}", proc.pid, conns, seconds, *extra, "--warmup", "0.5s")
    finally:
        stop(proc)
    return res["rps"], res["server_cpu_us_per_request"]


def interleave(
    plan: dict[str, list[str]], rounds: int, run: Callable[[str, str], tuple[float, float]]
) -> dict[str, dict[str, list]]:
    """Each round, every server of every case once (`plan`: case -> servers;
    `run(server, case)` -> (req/s, CPU us/req)), printed as it goes: the
    results by case and server, a list of rounds each."""
    results: dict[str, dict[str, list]] = {case: {n: [] for n in names} for case, names in plan.items()}
    for rnd in range(rounds):
        for case, names in plan.items():
            for n in names:
                r = run(n, case)
                results[case][n].append(r)
                line = f"round {rnd + 1} {case:8} {n:18} {r[0]:9.0f} req/s {r[1]:8.2f} us/req"
                print(line, file=sys.stderr, flush=True)
    return results


def server_context(files: list[str]) -> ssl.SSLContext | None:
    """A server context from [CERT, KEY], or None (plain)."""
    if not files:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*files)
    return ctx
