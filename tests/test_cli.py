"""The `uringserve` command: every option from the command line and from its
environment variable reaches what runs, the command line wins, bad values
are refused naming the option and what is accepted, the README's table is
the one the code declares, and the subcommands serve."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys

import pytest
import trustme

from uringserve import cli
from uringserve.http import HTTPConfig, HTTPServer
from uringserve.server import TCP, Inherited, Unix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a value for each option, other than its default, as text
SAMPLE = {
    "host": "::1",
    "port": "9123",
    "uds": "/tmp/x.sock",
    "uds_mode": "640",
    "fd": "7",
    "backlog": "17",
    "workers": "3",
    "max_requests": "100",
    "max_requests_jitter": "10",
    "loop": "asyncio",
    "graceful_timeout": "2.5",
    "log_level": "debug",
    "log_format": "json",
    "interface": "native",
    "root_path": "/api",
    "max_header_bytes": "1000",
    "max_headers": "7",
    "max_target_bytes": "99",
    "max_body_bytes": "5",
    "max_pipelined": "3",
    "body_buffer_bytes": "77",
    "header_timeout": "1.5",
    "body_timeout": "2.5",
    "send_timeout": "3.5",
    "keepalive_timeout": "4.5",
    "keepalive_requests": "9",
    "ring_files": "256",
    "ring_buf_count": "64",
    "ring_buf_size": "4096",
    "ring_arena_bytes": "131072",
    "tls_cert": "/c.pem",
    "tls_key": "/k.pem",
    "tls_ca": "/ca.pem",
    "metrics": "127.0.0.1:9464",
    "max_connections": "500",
}
BAD = {
    "port": ("70000", "out of range"),
    "uds_mode": ("999", "octal"),
    "fd": ("-1", "out of range"),
    "backlog": ("0", "out of range"),
    "workers": ("-1", "out of range"),
    "max_requests": ("many", "not an integer"),
    "loop": ("epoll", "uring, asyncio, uvloop"),
    "graceful_timeout": ("0", "positive"),
    "log_level": ("loud", "debug, info, warning, error"),
    "log_format": ("xml", "text, json"),
    "metrics": ("9464", "not HOST:PORT"),
    "interface": ("wsgi", "auto, asgi, native, protocol"),
    "max_header_bytes": ("x", "not an integer"),
    "keepalive_timeout": ("soon", "not a number of seconds"),
    "ring_buf_size": ("8", "out of range"),
    "reuse_port": ("maybe", "not a boolean"),
    "max_connections": ("-1", "out of range"),
}


def parse(argv: list[str], env: dict[str, str] | None = None):
    return cli.build_parser(env or {}).parse_args(argv)


def test_every_option_has_a_sample_and_a_variable() -> None:
    valued = {o.dest for o in cli.OPTIONS if not o.is_flag}
    assert valued == set(SAMPLE)
    assert len({o.env for o in cli.OPTIONS}) == len(cli.OPTIONS)
    assert all(o.env == "URINGSERVE_" + o.dest.upper() for o in cli.OPTIONS)


@pytest.mark.parametrize("source", ["argv", "env"])
def test_each_option_reaches_the_arguments(source: str) -> None:
    for opt in cli.OPTIONS:
        if opt.is_flag:
            args = parse(["run", "m:a", opt.flag]) if source == "argv" else parse(["run", "m:a"], {opt.env: "1"})
            assert getattr(args, opt.dest) is True
            continue
        text = SAMPLE[opt.dest]
        argv = ["run", "m:a", opt.flag, text] if source == "argv" else ["run", "m:a"]
        args = parse(argv, {} if source == "argv" else {opt.env: text})
        expected = opt.type(text)  # type: ignore[misc]
        assert getattr(args, opt.dest) == ([expected] if opt.repeat else expected), opt.flag


def test_the_command_line_wins_over_the_environment_and_lists_split_on_commas() -> None:
    args = parse(["run", "m:a", "--port", "1"], {"URINGSERVE_PORT": "2", "URINGSERVE_HOST": "127.0.0.1, ::1"})
    assert args.port == 1 and args.host == ["127.0.0.1", "::1"]
    assert parse(["run", "m:a"], {"URINGSERVE_REUSE_PORT": "no"}).reuse_port is False


@pytest.mark.parametrize("dest", sorted(BAD))
def test_bad_values_are_refused_naming_the_option(dest: str, capsys) -> None:
    opt = cli.OPTION_BY_DEST[dest]
    value, says = BAD[dest]
    if not opt.is_flag:
        with pytest.raises(SystemExit) as e:
            parse(["run", "m:a", opt.flag, value])
        assert e.value.code == 2
        err = capsys.readouterr().err
        # argparse words a bad choice itself ('a', 'b'): every accepted value is named
        named = all(f"'{c}'" in err for c in opt.choices) if opt.choices else says in err
        assert opt.flag in err and named
    with pytest.raises(SystemExit) as e:
        parse(["run", "m:a"], {opt.env: value})
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{opt.env}={value!r} (for {opt.flag})" in err and says in err


def test_options_reach_the_server_ring_and_listeners() -> None:
    argv = ["run", "apps.http:app", "--host", "127.0.0.1", "--host", "::1", "--port", "0", "--uds", "@x"]
    argv += ["--fd", "9", "--backlog", "33", "--reuse-port", "--graceful-timeout", "4"]
    argv += [f"--{name.replace('_', '-')}" for name in ("max-pipelined",)] + ["5", "--ring-buf-count", "128"]
    args = parse(argv + ["--max-connections", "7"])
    server = cli.build_server(args)
    assert isinstance(server, HTTPServer) and server.interface == "native"
    assert server.max_connections == 7
    assert cli.build_server(parse(["run", "apps.http:app"])).max_connections is None

    assert server.config == HTTPConfig(max_pipelined=5, shutdown_timeout=4)
    specs = cli.listeners(args)
    assert [type(s) for s in specs] == [Inherited, Unix, TCP, TCP]
    assert [s.backlog for s in specs] == [33] * 4
    assert (specs[2].host, specs[3].host, specs[2].reuse_port) == ("127.0.0.1", "::1", True)
    ring = cli.ring_config(args)
    assert ring is not None and ring.buf_count == 128
    assert cli.ring_config(parse(["run", "m:a", "--loop", "asyncio"])) is None


def test_a_connection_limit_on_a_loop_that_cannot_pause_accepting_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "apps.http:app", "--loop", "asyncio", "--max-connections", "5"], {})
    assert e.value.code == 2
    assert "--max-connections needs --loop uring" in capsys.readouterr().err


def test_app_errors_are_one_line() -> None:
    for spec, says in [
        ("apps.http", "APP must be module:attribute"),
        ("apps.nothere:app", "cannot import 'apps.nothere'"),
        ("apps.http:nothere", "has no attribute 'nothere'"),
        ("apps.http:STATIC", "cannot tell whether"),
    ]:
        with pytest.raises(SystemExit, match=says):
            cli.build_server(parse(["run", spec]))


def test_the_readme_table_is_the_declared_options() -> None:
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    begin = r"<!-- options: generated by uringserve\.cli\.options_table\(\) -->\n"
    m = re.search(begin + r"(.*?)\n<!-- /options -->", readme, re.S)
    assert m, "README lost its options table markers"
    assert m.group(1) == cli.options_table(), "README's table differs: paste uringserve.cli.options_table()"


def serve(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "uringserve", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    if " on " not in line:
        p.kill()
        raise AssertionError(f"did not start: {line!r} {p.communicate()[1]}")
    return p, line


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "Traceback" not in err, err


def http_get(port: int, path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_run_serves_an_http_app_configured_from_the_environment() -> None:
    p, line = serve(["run", "apps.http:app"], {"URINGSERVE_PORT": "0", "URINGSERVE_MAX_TARGET_BYTES": "20"})
    port = int(re.search(r":(\d+) ", line).group(1))  # type: ignore[union-attr]
    try:
        assert http_get(port).endswith(b"Hello, world!\n")
        assert http_get(port, "/" + "x" * 30).startswith(b"HTTP/1.1 414 ")  # the limit from the environment
    finally:
        stop(p)


@pytest.mark.parametrize("how", [["--interface", "protocol"], ["--protocol"]])
def test_run_serves_a_protocol_factory_on_a_unix_socket(tmp_path, how: list[str]) -> None:
    path = str(tmp_path / "e.sock")
    p, line = serve(["run", "apps.echo:Echo", *how, "--uds", path, "--uds-mode", "600"])
    try:
        assert line.startswith(f"uringserve on unix:{path} (uring loop")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
    finally:
        stop(p)


@pytest.mark.parametrize("cmd", ["echo", "resp"])
def test_the_demos_as_subcommands(cmd: str) -> None:
    p, line = serve([cmd, "--port", "0", "--loop", "asyncio"])
    port = int(re.search(r":(\d+) ", line).group(1))  # type: ignore[union-attr]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(100) == (b"PING\r\n" if cmd == "echo" else b"+PONG\r\n")
    finally:
        stop(p)


def test_doctor_subcommand() -> None:
    out = subprocess.run([sys.executable, "-m", "uringserve", "doctor", "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and '"usable": true' in out.stdout


def _tls_get(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data


@pytest.mark.parametrize("client_certs", [False, True], ids=["server-only", "client-certs"])
def test_tls_options(tmp_path, client_certs: bool) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    args = ["run", "tests.worker_app:scheme_app", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    if client_certs:
        args += ["--tls-ca", str(ca_file)]
    p, line = serve(args)
    port = int(re.search(r":(\d+) ", line).group(1))  # type: ignore[union-attr]
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        if client_certs:
            try:  # no client certificate: refused (with TLS 1.3 the alert comes at the first read)
                refused = _tls_get(port, ctx)
            except (ssl.SSLError, ConnectionError):
                refused = b""
            assert not refused.startswith(b"HTTP/"), refused
            ca.issue_cert("client@example").configure_cert(ctx)
        assert _tls_get(port, ctx).endswith(b"\r\n\r\nhttps")  # the ASGI scope says https
    finally:
        stop(p)


def test_tls_files_that_cannot_load_are_named(tmp_path) -> None:
    missing = str(tmp_path / "nope.pem")
    out = subprocess.run(
        [sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--tls-cert", missing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and f"--tls-cert {missing}" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "uringserve", "run", "apps.http:app", "--tls-key", missing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and "--tls-key and --tls-ca need --tls-cert" in out.stderr
