"""HTTP servers, interleaved: uringserve.http (native handler and ASGI
adapter), uvicorn (uvloop + httptools), granian (ASGI, 1 worker) and nginx.

    python bench/http_bench.py [--rounds 5] [--seconds 5] [--conns 100] [--static-conns 16]

Every server runs pinned to CPU 0 and the load generator to CPU 1: the
project's own (`python -m loadtest`), or wrk with --client wrk. The
Python servers serve the same app, apps/http.py (`app` natively, `asgi_app`
through each ASGI server); nginx answers `return 200` with the same body.
Part two sends a 1 MiB file (uringserve's static route: read into
registered memory by the ring and sent from there; nginx: sendfile on).
`floor` (not in the default set) is a protocol that answers every segment
without parsing: the loop's and the kernel's share of a request.
Reported: median req/s and server CPU microseconds per request (the
server's process tree over the measured window: loadtest --server-pid, or
/proc ticks around wrk's run), with ratios against peers, of the medians and
paired within each round.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TICK, free_port, loadtest, stop, summary, tree_ticks, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent

NGINX_CONF = """
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = / {{ default_type "text/plain; charset=utf-8"; return 200 "Hello, world!\\n"; }}
        location /static/ {{ alias {static}/; sendfile on; tcp_nopush on; }}
    }}
}}
"""


def commands(port: int, tmp: str, static: str) -> dict[str, list[str]]:
    asgi = "apps.http:asgi_app"
    return {
        "uringserve": [PY, "apps/http.py", "--port", str(port)],
        "uringserve-asgi": [PY, "apps/http.py", "--interface", "asgi", "--port", str(port)],
        "uvicorn": [
            PY,
            "-m",
            "uvicorn",
            asgi,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        "granian": [
            str(BIN / "granian"),
            "--interface",
            "asgi",
            "--workers",
            "1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            asgi,
        ],
        "floor": [PY, "bench/http_floor.py", "--port", str(port)],
        "floor-parse": [PY, "bench/http_floor.py", "--kind", "parse", "--port", str(port)],
        "floor-asgi": [PY, "bench/http_floor.py", "--kind", "asgi", "--port", str(port)],
        "nginx": ["nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf", "-g", "daemon off; master_process off;"],
    }


def run_one(
    name: str, path: str, conns: int, seconds: float, static: str, client: str = "loadtest"
) -> tuple[float, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        if name == "nginx":
            Path(tmp, "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=port, static=static))
        base, _, where = name.partition("@")  # uringserve@DIR: another checkout, built in place
        cmd = commands(port, tmp, static)[base]
        env = {**os.environ, "URINGSERVE_STATIC": static}
        if where:
            env["PYTHONPATH"] = where
        proc = subprocess.Popen(
            ["taskset", "-c", "0", *cmd], cwd=where or ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_listening(port, proc)
            # one warm-up request: files opened, code paths imported
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}{path}"], timeout=10)
            if client == "loadtest":
                res = loadtest(f"http://127.0.0.1:{port}{path}", proc.pid, conns, seconds)
                return res["rps"], res["server_cpu_us_per_request"]
            t0 = tree_ticks(proc.pid)
            out = subprocess.run(
                ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", f"http://127.0.0.1:{port}{path}"],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
            )
            t1 = tree_ticks(proc.pid)
        finally:
            stop(proc)
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)s", out.stdout, re.M)
    if not m or "Non-2xx" in out.stdout or "Socket errors" in out.stdout:
        raise RuntimeError(f"{name}: wrk: {out.stdout} {out.stderr}")
    reqs, secs = int(m.group(1)), float(m.group(2))
    return reqs / secs, (t1 - t0) / TICK * 1e6 / max(reqs, 1)


def interleaved(
    names: list[str],
    static_names: list[str],
    sizes: list[int],
    rounds: int,
    seconds: float,
    conns: int,
    static_conns: int,
    client: str = "loadtest",
) -> tuple[dict[str, list], dict[int, dict[str, list]]]:
    """Hello on every server, then each static file size on `static_names`,
    once per round: (req/s, server CPU us/req) per round."""
    hello: dict[str, list] = {n: [] for n in names}
    files: dict[int, dict[str, list]] = {size: {n: [] for n in static_names} for size in sizes}
    with tempfile.TemporaryDirectory() as static:
        os.chmod(static, 0o755)
        for size in sizes:
            Path(static, f"{size}.bin").write_bytes(os.urandom(size))
            Path(static, f"{size}.bin").chmod(0o644)
        for rnd in range(rounds):
            for n in names:
                r = run_one(n, "/", conns, seconds, static, client)
                hello[n].append(r)
                print(f"round {rnd + 1} hello {n:16} {r[0]:9.0f} req/s {r[1]:7.2f} us/req", file=sys.stderr, flush=True)
            for size in sizes:
                for n in static_names:
                    r = run_one(n, f"/static/{size}.bin", static_conns, seconds, static, client)
                    files[size][n].append(r)
                    print(
                        f"round {rnd + 1} {size:7} B {n:16} {r[0]:9.0f} req/s {r[1]:7.2f} us/req",
                        file=sys.stderr,
                        flush=True,
                    )
    return hello, files


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--static-conns", type=int, default=16)
    p.add_argument(
        "--servers",
        default="uringserve,uringserve-asgi,uvicorn,granian,nginx",
        help="also floor, floor-parse, floor-asgi (bench/http_floor.py), "
        "and NAME@DIR for another checkout (before/after a change)",
    )
    p.add_argument("--no-static", action="store_true")
    p.add_argument("--file-sizes", default="1048576", help="static file sizes in bytes, comma-separated (1048576)")
    p.add_argument("--client", choices=["loadtest", "wrk"], default="loadtest", help="the load generator (loadtest)")
    args = p.parse_args()
    for tool in ("wrk", "nginx", "curl", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: `make bench-http` installs what this benchmark needs")
    names = args.servers.split(",")
    static_names = [n for n in names if n.partition("@")[0] in ("uringserve", "nginx")]
    sizes = [] if args.no_static else [int(x) for x in args.file_sizes.split(",")]
    hello, files = interleaved(
        names, static_names, sizes, args.rounds, args.seconds, args.conns, args.static_conns, args.client
    )
    print(
        f"\nhello world: {args.client} -c{args.conns} -d{args.seconds}s, medians over {args.rounds} rounds; "
        f"server on CPU 0, {args.client} on CPU 1"
    )
    print("ratios: server CPU per request against the peer; 'paired' = median of within-round ratios\n")
    print(summary(hello, names, [x for x in ("nginx", "uvicorn", "granian") if x in names], "req", "req/s"))
    if static_names:
        for size in sizes:
            print(f"\n{size} B static file: {args.client} -c{args.static_conns} -d{args.seconds}s")
            print(summary(files[size], static_names, ["nginx"] if "nginx" in static_names else [], "req", "req/s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
