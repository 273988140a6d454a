"""WSGI apps on uringserve, gunicorn (sync and gthread workers) and
granian's WSGI interface, interleaved: the smallest hello world
(bench/hello_wsgi.py), a Flask JSON endpoint (bench/flask_app.py) and a
1 MiB file sent through wsgi.file_wrapper (uringserve vs gunicorn).

    python bench/wsgi_bench.py [--rounds 5] [--seconds 4] [--conns 100]

Every server runs pinned to CPU 0 with one worker process (uringserve and
gunicorn gthread with 10 threads: gunicorn's usual sizing), the load
generator (`python -m loadtest`) on CPU 1. Reported: median req/s and
server CPU microseconds per request (the server's whole process tree, a
gunicorn master included) over the measured window, with ratios against
gunicorn gthread (the issue's target: <= 0.7x its CPU per request) and
granian, of the medians and paired within each round. gunicorn's sync
worker serves one connection at a time and closes each after its
response, so it is measured with as many connections as the others but
each request pays a connect.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, interleave, serve_and_load, summary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent
BODY = b'{"name": "widget", "price": 12.5, "tags": ["a", "b"]}'  # bench/flask_app.py's
APPS = {"hello": ("hello_wsgi:app", "/"), "flask": ("flask_app:app", "/items"), "file": ("hello_wsgi:app", "/file")}
THREADS = "10"
FILE_SIZE = 1024 * 1024


def command(server: str, app: str, port: int) -> list[str]:
    if server == "uringserve":
        return [PY, "-m", "uringserve", "run", app, "--port", str(port), "--log-level", "warning"] + [
            "--interface",
            "wsgi",
            "--wsgi-threads",
            THREADS,
        ]
    if server.startswith("gunicorn-"):
        kind = server.partition("-")[2]
        cmd = [str(BIN / "gunicorn"), "-w", "1", "-k", kind, "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
        return cmd + (["--threads", THREADS] if kind == "gthread" else []) + [app]
    if server == "granian":
        return [str(BIN / "granian"), "--interface", "wsgi", "--workers", "1", "--port", str(port)] + [
            "--log-level",
            "warning",
            app,
        ]
    raise ValueError(server)


def bench_file() -> Path:
    path = ROOT / "bench" / "build" / "wsgi_1mib.bin"
    if not path.exists() or path.stat().st_size != FILE_SIZE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(FILE_SIZE))
    return path


def run_one(server: str, which: str, conns: int, seconds: float) -> tuple[float, float]:
    app, path = APPS[which]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench"), "BENCH_WSGI_FILE": str(bench_file())}
    extra: list[str] = []
    if which == "flask":
        extra += ["-m", "POST", "--body", BODY.decode(), "-H", "Content-Type: application/json"]
    return serve_and_load(command(server, app, port), port, path, conns, seconds, extra, env)


def report(rounds: int, seconds: float, conns: int, names: list[str], apps: list[str]) -> str:
    """Run the rounds; the tables as text."""
    plan = {a: [n for n in names if a != "file" or n != "granian"] for a in apps}  # granian: no file case
    results = interleave(plan, rounds, lambda n, a: run_one(n, a, conns, seconds))
    host = f"{os.uname().release}, {os.cpu_count()} CPUs"
    out = [
        f"WSGI: loadtest -c{conns} -d{seconds:g}s, medians over {rounds} rounds; {host}",
        "server on CPU 0 (one worker), loadtest on CPU 1; 'paired' = median of within-round ratios",
    ]
    for a in apps:
        out += ["", f"{a} ({APPS[a][0]} {APPS[a][1]})"]
        ran = list(results[a])
        out.append(summary(results[a], ran, [x for x in ("gunicorn-gthread", "granian") if x in ran], "req", "req/s"))
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--servers", default="uringserve,gunicorn-gthread,gunicorn-sync,granian")
    p.add_argument("--apps", default="hello,flask,file")
    args = p.parse_args()
    print("\n" + report(args.rounds, args.seconds, args.conns, args.servers.split(","), args.apps.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
