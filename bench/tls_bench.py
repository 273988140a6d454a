"""HTTPS servers, interleaved: uringserve (native handler and ASGI, TLS in
the core), uvicorn --ssl-* (uvloop + httptools), granian (ASGI, its
--ssl-* options) and nginx `ssl`.

    python bench/tls_bench.py [--rounds 5] [--seconds 5] [--conns 50] [--static-conns 16]
                              [--servers uringserve,uringserve@DIR,...]

Every server runs pinned to CPU 0 and wrk to CPU 1, over TLS (wrk's
OpenSSL negotiates TLS 1.3). Three parts: the hello world with keep-alive
(`--conns` connections), handshakes (`Connection: close`: one request
per connection, so each request pays a handshake), and a static 1 MiB file
with keep-alive (`--static-conns`): uringserve's /static/ route (read into
registered memory by the ring and encrypted there by the core), the ASGI
app's http.response.pathsend (the same path), Starlette's StaticFiles under
uvicorn (bench/static_asgi.py), nginx `alias` (without kTLS its sendfile
reads and encrypts in user space too). Reported: median rate and
server CPU microseconds per request (the server's process tree over wrk's
run, from /proc), with ratios against nginx, uvicorn and granian, of the medians and
paired within each round. The certificate is a throwaway CA's (trustme),
ECDSA P-256 as trustme makes it.
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

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TICK, free_port, stop, summary, tree_ticks, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

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
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = / {{ default_type "text/plain; charset=utf-8"; return 200 "Hello, world!\\n"; }}
        location /static/ {{ alias {static}/; sendfile on; tcp_nopush on; }}
    }}
}}
"""


def commands(port: int, tmp: str, cert: str, key: str, static: bool = False) -> dict[str, list[str]]:
    tls = ["--tls-cert", cert, "--tls-key", key]
    # the static part's ASGI peer: Starlette's StaticFiles (apps.http:asgi_app's pathsend is uringserve's extension)
    uvicorn_app = ["--app-dir", "bench", "static_asgi:app"] if static else ["apps.http:asgi_app"]
    return {
        "uringserve": [
            PY, "-m", "uringserve", "run", "apps.http:app", "--port", str(port), "--log-level", "warning", *tls,
        ],
        "uringserve-asgi": [
            PY, "-m", "uringserve", "run", "apps.http:asgi_app", "--port", str(port), "--log-level", "warning", *tls,
        ],
        "uvicorn": [
            PY, "-m", "uvicorn", *uvicorn_app, "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning", "--ssl-certfile", cert, "--ssl-keyfile", key,
        ],
        "granian": [
            str(Path(PY).parent / "granian"), "--interface", "asgi", "--workers", "1", "--port", str(port),
            "--log-level", "warning", "--ssl-certificate", cert, "--ssl-keyfile", key,
            *(["--working-dir", "bench", "static_asgi:app"] if static else ["apps.http:asgi_app"]),
        ],
        "nginx": ["nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf", "-g", "daemon off; master_process off;"],
    }  # fmt: skip


def run_one(
    name: str, conns: int, seconds: float, cert: str, key: str, close: bool, static: str, path: str = "/"
) -> tuple[float, float]:
    """(requests/s, server CPU us per request) of one wrk run for `path` against a fresh server."""
    port = free_port()
    # NAME@DIR: the same server from another checkout (a before/after pair in one run)
    base, _, checkout = name.partition("@")
    cwd = Path(checkout) if checkout else ROOT
    env = {**os.environ, "URINGSERVE_STATIC": static, **({"PYTHONPATH": checkout} if checkout else {})}
    with tempfile.TemporaryDirectory() as tmp:
        if name == "nginx":
            conf = NGINX_CONF.format(tmp=tmp, port=port, cert=cert, key=key, static=static)
            Path(tmp, "nginx.conf").write_text(conf)
        proc = subprocess.Popen(
            ["taskset", "-c", "0", *commands(port, tmp, cert, key, path != "/")[base]],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            wait_listening(port, proc)
            url = f"https://127.0.0.1:{port}{path}"
            subprocess.run(["curl", "-sk", "-o", "/dev/null", url], timeout=10)  # warm-up: code paths imported
            extra = ["-H", "Connection: close"] if close else []
            t0 = tree_ticks(proc.pid)
            out = subprocess.run(
                ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", *extra, url],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
            )
            t1 = tree_ticks(proc.pid)
        finally:
            stop(proc)
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(m?s)", out.stdout, re.M)
    if not m or "Non-2xx" in out.stdout:
        raise RuntimeError(f"{name}: wrk: {out.stdout} {out.stderr}")
    # with Connection: close wrk counts the server's closes as read errors: expected, not failures
    if not close and "Socket errors" in out.stdout:
        raise RuntimeError(f"{name}: wrk: {out.stdout}")
    reqs, secs = int(m.group(1)), float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    return reqs / secs, (t1 - t0) / TICK * 1e6 / max(reqs, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=5, help="per run (whole seconds: wrk's -d)")
    p.add_argument("--conns", type=int, default=50, help="keep-alive connections (50)")
    p.add_argument("--handshake-conns", type=int, default=16, help="connections of the handshake part (16)")
    p.add_argument(
        "--servers",
        default="uringserve,uringserve-asgi,uvicorn,granian,nginx",
        help="of uringserve, uringserve-asgi, uvicorn, granian, nginx; NAME@DIR runs NAME from the checkout DIR",
    )
    p.add_argument("--no-handshakes", action="store_true")
    p.add_argument("--static-conns", type=int, default=16, help="keep-alive connections of the static part (16)")
    p.add_argument("--file-size", type=int, default=1 << 20, help="the static file's size in bytes (1 MiB)")
    p.add_argument("--no-static", action="store_true")
    args = p.parse_args()
    for tool in ("wrk", "nginx", "curl", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: `make bench-tls` installs what this benchmark needs")
    names = args.servers.split(",")
    file_path = f"/static/{args.file_size}.bin"
    parts = {"keep-alive": (args.conns, False, "/")}
    if not args.no_handshakes:
        parts["handshakes"] = (args.handshake_conns, True, "/")
    if not args.no_static:
        parts["static"] = (args.static_conns, False, file_path)
    results: dict[str, dict[str, list]] = {part: {n: [] for n in names} for part in parts}
    with tempfile.TemporaryDirectory() as certs, tempfile.TemporaryDirectory() as static:
        os.chmod(static, 0o755)
        Path(static, f"{args.file_size}.bin").write_bytes(os.urandom(args.file_size))
        Path(static, f"{args.file_size}.bin").chmod(0o644)
        issued = trustme.CA().issue_cert("127.0.0.1")
        cert, key = os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem")
        issued.cert_chain_pems[0].write_to_path(cert)
        issued.private_key_pem.write_to_path(key)
        os.chmod(certs, 0o755)  # nginx's workers may run as another user
        for path in (cert, key):
            os.chmod(path, 0o644)
        for rnd in range(args.rounds):
            for part, (conns, close, path) in parts.items():
                for n in names:
                    r = run_one(n, conns, args.seconds, cert, key, close, static, path)
                    results[part][n].append(r)
                    print(f"round {rnd + 1} {part:10} {n:16} {r[0]:9.0f} req/s {r[1]:7.2f} us/req", file=sys.stderr)
    peers = [x for x in ("nginx", "uvicorn", "granian") if x in names]
    for part, (conns, close, path) in parts.items():
        what = "one request per connection (a handshake each)" if close else "keep-alive"
        subject = f"HTTPS static {args.file_size} bytes" if path != "/" else "HTTPS hello"
        print(f"\n{subject}, {what}: wrk -t1 -c{conns} -d{args.seconds:g}s, medians over {args.rounds} rounds")
        print(summary(results[part], names, peers, "req", "req/s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
