"""Real proxies in front of `uringserve run`, configured with the README's
own blocks ("Behind a proxy": only the ports, the certificate and the
paths are changed here, and each change must find its text, so the README
cannot drift from what is run): nginx terminating TLS with X-Forwarded-For
/-Proto/-Host/-Port (--proxy-headers), and with the README's RFC 7239
`Forwarded` line in their place (--forwarded-style rfc7239), a client's
own proxy headers of either family never reaching the app; haproxy with send-proxy and send-proxy-v2 and
nginx's stream module with proxy_protocol on (--proxy-protocol), on both
loops. The client connects from 127.0.0.2, so the address the app sees is
the client's and not the proxy's (127.0.0.1). Each proxy runs in the
foreground with its own config in a tmp dir, on a port picked free (they
cannot take port 0 and say which they got; a port taken meanwhile is
retried), and is stopped by the test; skipped only when its binary or
module is missing (`make deps` installs them)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Proc

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
CLIENT_ADDR = "127.0.0.2"  # loopback too, but not the proxies' address

APP = """
import json


def payload(client, scheme, server):
    return json.dumps({"client": client, "scheme": scheme, "server": server}).encode()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = payload(scope["client"], scope["scheme"], scope["server"])
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def handler(request):
    from uringserve.http import Response

    return Response(payload(request.client, request.scheme, request.server))
"""


def readme_block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^<!-- behind-proxy: {name} -->\n```\w+\n(.*?)^```$", text, re.S | re.M)
    assert m, f"README.md has no block marked behind-proxy: {name}"
    return m.group(1)


def substitute(text: str, changes: dict[str, str]) -> str:
    for old, new in changes.items():
        assert text.count(old) == 1, f"the README's block no longer has {old!r} once:\n{text}"
        text = text.replace(old, new)
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def proxy(command: Callable[[int], list[str]], name: str) -> Iterator[int]:
    """Start the proxy `command(port)` makes on a free port (retried when
    the port was taken in between) until it accepts; its port. Stopped (its
    own pid, SIGTERM, then SIGKILL) when the block ends."""
    p: subprocess.Popen[str] | None = None
    port = 0
    try:
        for _ in range(5):
            port = free_port()
            # pdeathsig: a test process that dies does not leave the proxy running
            p = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--", *command(port)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            deadline = time.monotonic() + 30
            while p.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                out = p.communicate(timeout=10)[0] if p.poll() is not None else ""
                if "in use" in out:
                    continue  # someone took the port meanwhile
                raise RuntimeError(f"{name} did not start: {out}")
            break
        assert p is not None
        yield port
    finally:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p is not None and p.stdout:
            p.stdout.close()


def nginx(tmp: Path, body: str, stream: bool = False) -> Callable[[int], list[str]]:
    if NGINX is None:
        pytest.skip("nginx is not installed (make deps: nginx-light)")
    if stream and not os.path.exists(STREAM_MODULE):
        pytest.skip(f"nginx's stream module is not installed ({STREAM_MODULE}; make deps: libnginx-mod-stream)")
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)

    def command(port: int) -> list[str]:
        conf = tmp / "nginx.conf"
        inner = body.replace("{PORT}", str(port))
        temp = "\n".join(
            f"    {kind}_temp_path {tmp / d};"
            for kind, d in (
                ("client_body", "body"),
                ("proxy", "proxy"),
                ("fastcgi", "fastcgi"),
                ("uwsgi", "uwsgi"),
                ("scgi", "scgi"),
            )
        )
        conf.write_text(
            (f"load_module {STREAM_MODULE};\n" if stream else "")
            + f"daemon off;\nmaster_process off;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} warn;\n"
            + "events { worker_connections 64; }\n"
            + (inner if stream else f"http {{\n    access_log off;\n{temp}\n{inner}\n}}\n")
        )
        return [NGINX, "-e", str(tmp / "error.log"), "-p", str(tmp), "-c", str(conf)]

    return command


def haproxy(tmp: Path, body: str) -> Callable[[int], list[str]]:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (make deps: haproxy)")

    def command(port: int) -> list[str]:
        conf = tmp / "haproxy.cfg"
        conf.write_text("global\n    maxconn 64\n" + body.replace("{PORT}", str(port)))
        return [HAPROXY, "-db", "-f", str(conf)]

    return command


def ask(port: int, head: bytes = b"", context: ssl.SSLContext | None = None) -> tuple[Any, int]:
    """GET / from CLIENT_ADDR: the app's JSON and the client's own port."""
    with socket.socket() as raw:
        raw.settimeout(20)
        raw.bind((CLIENT_ADDR, 0))
        raw.connect(("127.0.0.1", port))
        own_port = raw.getsockname()[1]
        with context.wrap_socket(raw, server_hostname="127.0.0.1") if context is not None else raw as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\n" + head + b"Connection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    status, _, rest = data.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 200"), data
    return json.loads(rest.partition(b"\r\n\r\n")[2]), own_port


def closed_unanswered(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True


def uringserve(tmp: Path, app: str, loop: str, *flags: str) -> Proc:
    (tmp / "seen_app.py").write_text(APP)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp), env.get("PYTHONPATH", "")) if p)
    args = [sys.executable, "-m", "uringserve", "run", f"seen_app:{app}", "--port", "0", "--loop", loop]
    return Proc([*args, "--access-log", *flags], env=env, cwd=tmp)


def access_line(srv: Proc, client: str) -> str:
    return srv.wait_line(lambda line: f"uringserve.access: {client} - - [" in line, 20)


LOOPS = ["uring", "asyncio"]
# a client naming itself in every proxy header of both families (X-Forwarded-Ssl, which nginx
# passes on too, after its Forwarded: a head's proxy lines around it)
SPOOF = (
    b"X-Forwarded-For: 203.0.113.66\r\nX-Forwarded-Proto: http\r\n"
    b"X-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 1\r\n"
    b"Forwarded: for=203.0.113.66;proto=http;host=evil.example\r\nX-Forwarded-Ssl: off\r\n"
)


def nginx_http_block(upstream_port: int, tls_files: Any, more: dict[str, str]) -> str:
    """The README's nginx block with only its ports and certificate paths
    (and `more`) replaced, each replacement required to find its text."""
    changes = {
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};",
        "listen 443 ssl;": "listen 127.0.0.1:{PORT} ssl;",
        "/etc/ssl/certs/example.pem": str(tls_files.cert),
        "/etc/ssl/private/example.key": str(tls_files.key),
    }
    return substitute(readme_block("nginx-http"), {**changes, **more})


@pytest.mark.parametrize("loop", LOOPS)
def test_nginx_with_tls_and_proxy_headers(tmp_path: Path, tls_files: Any, loop: str) -> None:
    srv = uringserve(tmp_path, "app", loop, "--proxy-headers")
    try:
        body = nginx_http_block(srv.port, tls_files, {})
        context = ssl.create_default_context()
        tls_files.ca.configure_trust(context)
        with proxy(nginx(tmp_path, body), "nginx") as port:
            seen, _ = ask(port, context=context)
            assert seen["client"] == [CLIENT_ADDR, 0] and seen["scheme"] == "https"
            assert seen["server"] == ["example.com", port]  # nginx's $host and $server_port
            line = access_line(srv, CLIENT_ADDR)
            assert '"GET / HTTP/1.1" 200' in line
            # what the client claims is kept left of what nginx saw: the right-most untrusted hop wins
            seen, _ = ask(port, b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: http\r\n", context=context)
            assert seen["client"] == [CLIENT_ADDR, 0] and seen["scheme"] == "https"
            # headers nginx does not set pass through as the client sent them: a Forwarded of
            # its own is ignored (--forwarded-style x-forwarded), X-Forwarded-Host/-Port nginx overwrites
            seen, _ = ask(port, SPOOF, context=context)
            assert seen == {"client": [CLIENT_ADDR, 0], "scheme": "https", "server": ["example.com", port]}
        # the same claim straight to the server, from a peer it does not trust: ignored
        seen, own_port = ask(srv.port, b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n")
        assert seen["client"] == [CLIENT_ADDR, own_port] and seen["scheme"] == "http"
    finally:
        srv.stop()


@pytest.mark.parametrize("loop", LOOPS)
def test_nginx_with_forwarded_and_the_rfc7239_style(tmp_path: Path, tls_files: Any, loop: str) -> None:
    """The README's nginx block with its `Forwarded` line (the prose's) in
    place of the four X-Forwarded ones: the client's own X-Forwarded-*,
    which nginx now passes through, are ignored, and so is its Forwarded,
    which nginx overwrites."""
    m = re.search(r"`(proxy_set_header Forwarded [^`]+)`", (ROOT / "README.md").read_text())
    assert m, "README.md no longer says which Forwarded line nginx sets for --forwarded-style rfc7239"
    srv = uringserve(tmp_path, "app", loop, "--proxy-headers", "--forwarded-style", "rfc7239")
    try:
        x_forwarded = [
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_set_header X-Forwarded-Proto $scheme;",
            "proxy_set_header X-Forwarded-Host $host;",
            "proxy_set_header X-Forwarded-Port $server_port;",
        ]
        body = nginx_http_block(srv.port, tls_files, {x_forwarded[0]: m.group(1), **{x: "" for x in x_forwarded[1:]}})
        context = ssl.create_default_context()
        tls_files.ca.configure_trust(context)
        with proxy(nginx(tmp_path, body), "nginx") as port:
            for head in (b"", SPOOF):
                seen, _ = ask(port, head, context=context)
                assert seen == {"client": [CLIENT_ADDR, 0], "scheme": "https", "server": ["example.com", 443]}
            assert '"GET / HTTP/1.1" 200' in access_line(srv, CLIENT_ADDR)
    finally:
        srv.stop()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_haproxy_with_the_proxy_protocol(tmp_path: Path, loop: str, send: str) -> None:
    command = haproxy(tmp_path, "")  # skips first when haproxy is missing
    srv = uringserve(tmp_path, "handler", loop, "--proxy-protocol")
    try:
        changes = {"bind :80": "bind 127.0.0.1:{PORT}", "127.0.0.1:8000": f"127.0.0.1:{srv.port}"}
        if send == "send-proxy":
            changes["send-proxy-v2"] = "send-proxy"
        command = haproxy(tmp_path, substitute(readme_block("haproxy"), changes))
        with proxy(command, "haproxy") as port:
            seen, own_port = ask(port)
            assert seen["client"] == [CLIENT_ADDR, own_port] and seen["scheme"] == "http"
            assert seen["server"] == ["127.0.0.1", srv.port]
            assert '"GET / HTTP/1.1" 200' in access_line(srv, CLIENT_ADDR)
        assert closed_unanswered(srv.port)  # no header: never parsed as HTTP
    finally:
        srv.stop()


@pytest.mark.parametrize("loop", LOOPS)
def test_nginx_stream_with_proxy_protocol_on(tmp_path: Path, loop: str) -> None:
    nginx(tmp_path, "", stream=True)  # skips first when nginx or its stream module is missing
    srv = uringserve(tmp_path, "app", loop, "--proxy-protocol")
    try:
        body = substitute(
            readme_block("nginx-stream"),
            {"listen 80;": "listen 127.0.0.1:{PORT};", "127.0.0.1:8000": f"127.0.0.1:{srv.port}"},
        )
        with proxy(nginx(tmp_path, body, stream=True), "nginx") as port:
            seen, own_port = ask(port)
            assert seen["client"] == [CLIENT_ADDR, own_port] and seen["scheme"] == "http"
            assert '"GET / HTTP/1.1" 200' in access_line(srv, CLIENT_ADDR)
    finally:
        srv.stop()
