"""ASGI apps on uringserve, uvicorn and granian, interleaved: the smallest
hello world (bench/hello_asgi.py) and a FastAPI JSON endpoint
(bench/fastapi_app.py: a pydantic model in and out), plus uringserve with
--proxy-headers on, fed an X-Forwarded-For and X-Forwarded-Proto on every
request, against the same server with it off (what the option costs).

    python bench/asgi_bench.py [--rounds 5] [--seconds 4] [--conns 100]

Every server runs pinned to CPU 0 with one process, the load generator
(`python -m loadtest`) to CPU 1. Reported: median req/s and server CPU
microseconds per request over the measured window, with ratios against
uvicorn (uvloop + httptools) and granian, of the medians and paired within
each round; and the proxy headers' cost in microseconds per request (the
median of the within-round differences).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, interleave, serve_and_load, summary  # noqa: E402
from fastapi_app import BODY  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent
APPS = {"hello": ("hello_asgi:app", "/"), "fastapi": ("fastapi_app:app", "/items")}
PROXIED = ("-H", "X-Forwarded-For: 203.0.113.7", "-H", "X-Forwarded-Proto: https")


def command(server: str, app: str, port: int) -> list[str]:
    if server.startswith("uringserve"):
        cmd = [PY, "-m", "uringserve", "run", app, "--port", str(port), "--log-level", "warning"]
        return cmd + (["--proxy-headers"] if server == "uringserve-proxy" else [])
    if server == "uvicorn":
        return [PY, "-m", "uvicorn", app, "--port", str(port), "--loop", "uvloop", "--http", "httptools"] + [
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    if server == "granian":
        return [str(BIN / "granian"), "--interface", "asgi", "--workers", "1", "--port", str(port)] + [
            "--log-level",
            "warning",
            "--no-ws",
            app,
        ]
    raise ValueError(server)


def run_one(server: str, which: str, conns: int, seconds: float) -> tuple[float, float]:
    app, path = APPS[which]
    port = free_port()
    base, _, where = server.partition("@")  # NAME@DIR: another checkout, built in place
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (where, str(ROOT / "bench")) if x)}
    extra: list[str] = []
    if which == "fastapi":
        extra += ["-m", "POST", "--body", BODY.decode(), "-H", "Content-Type: application/json"]
    if base.startswith("uringserve"):
        extra += list(PROXIED)  # both uringserve runs get them: only the option differs
    cwd = Path(where) if where else ROOT
    return serve_and_load(command(base, app, port), port, path, conns, seconds, extra, env, cwd)


def report(rounds: int, seconds: float, conns: int, names: list[str], apps: list[str]) -> str:
    """Run the rounds; the tables as text."""
    results = interleave({a: names for a in apps}, rounds, lambda n, a: run_one(n, a, conns, seconds))
    host = f"{os.uname().release}, {os.cpu_count()} CPUs"
    out = [
        f"ASGI: loadtest -c{conns} -d{seconds:g}s, medians over {rounds} rounds; {host}",
        "server on CPU 0 (one process), loadtest on CPU 1; 'paired' = median of within-round ratios",
    ]
    for a in apps:
        out += ["", f"{a} ({APPS[a][0]})"]
        out.append(summary(results[a], names, [x for x in ("uvicorn", "granian") if x in names], "req", "req/s"))
        if "uringserve" in names and "uringserve-proxy" in names:
            on, off = results[a]["uringserve-proxy"], results[a]["uringserve"]
            delta = statistics.median(x[1] - y[1] for x, y in zip(on, off, strict=True))
            out.append(f"--proxy-headers on vs off: {delta:+.2f} us/req (median of within-round differences)")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--servers", default="uringserve,uringserve-proxy,uvicorn,granian", help="also NAME@DIR")
    p.add_argument("--apps", default="hello,fastapi")
    args = p.parse_args()
    print("\n" + report(args.rounds, args.seconds, args.conns, args.servers.split(","), args.apps.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
