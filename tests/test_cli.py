"""The `uringserve` command: every option from the command line and from its
environment variable reaches what runs (the built server, ring, listeners,
supervisor and logging, and a running server for what only shows there),
the command line wins, bad values are refused naming the option and what is
accepted, the README's table is the one the code declares, the errors a
user can cause are one line (once, before any worker starts), --log-format
json prints nothing but JSON, and the subcommands serve."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, ROOT, Proc, TLSFiles, make_tls_files, uringserve
from http_client import talk

from uringserve import cli, flag_aliases, logs
from uringserve.http import HTTPConfig, HTTPServer
from uringserve.ring_settings import SETTINGS, RingConfig
from uringserve.server import TCP, Inherited, Server, Unix
from uringserve.tls import CoreTLS

# a value for each option, other than its default, as text
SAMPLE = {
    "host": "::1",
    "port": "9123",
    "uds": "/tmp/x.sock",
    "uds_mode": "640",
    "fd": "7",
    "bind": "[::1]:9124",
    "backlog": "17",
    "workers": "3",
    "max_requests": "100",
    "max_requests_jitter": "10",
    "loop": "asyncio",
    "graceful_timeout": "2.5",
    "ready_timeout": "7.5",
    "log_level": "debug",
    "log_format": "json",
    "interface": "native",
    "root_path": "/api",
    "lifespan": "on",
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
    "limit_concurrency": "4",
    "wsgi_threads": "3",
    "ring_files": "256",
    "ring_buf_count": "64",
    "ring_buf_size": "4096",
    "ring_arena_bytes": "131072",
    "ring_bulk_bytes": "524288",
    "tls_cert": "/c.pem",
    "tls_key": "/k.pem",
    "tls_ca": "/ca.pem",
    "tls_ciphers": "ECDHE+AESGCM",
    "tls_min_version": "1.3",
    "tls_ktls": "off",
    "metrics": "127.0.0.1:9464",
    "max_connections": "500",
    "reload_dir": "/tmp",
    "reload_include": "*.html",
    "reload_exclude": "tests/*",
    "forwarded_allow_ips": "10.0.0.0/8, ::1",
    "forwarded_style": "rfc7239",
    "proxy_protocol_timeout": "2.5",
    "ws": "none",
    "ws_max_size": "1000",
    "ws_max_queue": "4",
    "ws_ping_interval": "0",
    "ws_ping_timeout": "2.5",
    "ws_per_message_deflate": "false",
}
BAD = {
    "port": ("70000", "out of range"),
    "uds_mode": ("999", "octal"),
    "fd": ("-1", "out of range"),
    "bind": ("host:99999", "the port must be 0..65535"),
    "backlog": ("0", "out of range"),
    "workers": ("-1", "out of range"),
    "max_requests": ("many", "not an integer"),
    "loop": ("epoll", "uring, asyncio, uvloop"),
    "graceful_timeout": ("0", "positive"),
    "ready_timeout": ("-1", "positive"),
    "log_level": ("loud", "debug, info, warning, error"),
    "log_format": ("xml", "text, json"),
    "metrics": ("9464", "not HOST:PORT"),
    "interface": ("cgi", "auto, asgi, wsgi, native, protocol"),
    "max_header_bytes": ("x", "not an integer"),
    "keepalive_timeout": ("soon", "not a number of seconds"),
    "ring_buf_size": ("8", "out of range"),
    "reuse_port": ("maybe", "not a boolean"),
    "max_connections": ("-1", "out of range"),
    "limit_concurrency": ("-1", "out of range"),
    "wsgi_threads": ("0", "out of range"),
    "forwarded_allow_ips": ("10.0.0.300", "'10.0.0.300' is not an IP address"),
    "forwarded_style": ("modern", "x-forwarded, rfc7239"),
    "ws": ("wsproto", "auto, none"),
    "ws_max_queue": ("0", "out of range"),
    "ws_ping_interval": ("-1", "or 0 for none"),
    "ws_per_message_deflate": ("maybe", "not a boolean"),
}


def parse(argv: list[str], env: dict[str, str] | None = None):
    return cli.build_parser(env or {}).parse_args(argv)


def test_every_option_has_a_sample_and_a_variable() -> None:
    valued = {o.dest for o in cli.OPTIONS if not o.is_flag}
    assert valued == set(SAMPLE)
    assert len({o.env for o in cli.OPTIONS}) == len(cli.OPTIONS)
    assert all(o.env == "URINGSERVE_" + o.dest.upper() for o in cli.OPTIONS)


# -- every option reaches what is built from it -------------------------------------------
@pytest.fixture(scope="module")
def tls_paths(tmp_path_factory) -> dict[str, str]:
    """conftest's TLS files (one set for the module), by what each option takes."""
    files = make_tls_files(tmp_path_factory.mktemp("tls"))
    return {
        "cert_only": str(files.cert),
        "tls_key": str(files.key),
        "tls_ca": str(files.cacert),
        "tls_cert": str(files.cert_and_key),  # the key in the same file: --tls-key not needed
    }


def _outcome(build: Any) -> Any:
    """What build() returns, or the one-line refusal it raises."""
    try:
        return build()
    except SystemExit as exc:
        return str(exc)


def _tcp(args) -> TCP | None:
    return next((s for s in cli.listeners(args, environ={}) if isinstance(s, TCP)), None)


def _unix(args) -> Unix | None:
    return next((s for s in cli.listeners(args, environ={}) if isinstance(s, Unix)), None)


def _logging(args) -> tuple[int, str]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, sys.excepthook
    try:
        cli.configure_logging(args)
        return root.level, type(root.handlers[0].formatter).__name__
    finally:
        root.handlers[:], root.level, sys.excepthook = saved
        logs._format = "text"


# what each option sets, read back from the object the command builds and runs
BUILT: dict[str, Any] = {
    "host": lambda a: [s.host for s in cli.listeners(a, environ={}) if isinstance(s, TCP)],
    "port": lambda a: getattr(_tcp(a), "port", None),
    "uds": lambda a: getattr(_unix(a), "path", None),
    "uds_mode": lambda a: getattr(_unix(a), "mode", None),
    "fd": lambda a: [s.sock for s in cli.listeners(a, environ={}) if isinstance(s, Inherited)],
    "bind": lambda a: [(s.host, s.port) for s in cli.listeners(a, environ={}) if isinstance(s, TCP)],
    "no_server_header": lambda a: cli.build_server(a).config.server_header,
    "backlog": lambda a: {s.backlog for s in cli.listeners(a, environ={})},
    "reuse_port": lambda a: (getattr(_tcp(a), "reuse_port", None), cli.build_supervisor([], a).reuse_port),
    "workers": lambda a: (cli.worker_count(a), cli.build_supervisor([], a).target),
    "max_requests": lambda a: cli.request_limit(a, random.Random(1)),
    "max_requests_jitter": lambda a: {cli.request_limit(a, random.Random(i)) for i in range(200)},
    "loop": lambda a: (cli.ring_config(a), cli.build_server(a).max_connections),
    "max_connections": lambda a: cli.build_server(a).max_connections,
    "graceful_timeout": lambda a: (cli.build_server(a).shutdown_timeout, cli.build_supervisor([], a).graceful_timeout),
    "ready_timeout": lambda a: cli.build_supervisor([], a).ready_timeout,
    "log_level": lambda a: _logging(a)[0],
    "log_format": lambda a: _logging(a)[1],
    "access_log": lambda a: cli.build_server(a).config.access_log,
    "metrics": lambda a: cli.build_supervisor([], a).metrics_address,
    "tls_cert": lambda a: isinstance(cli.build_server(a).ssl, CoreTLS),
    "tls_key": lambda a: _outcome(lambda: isinstance(cli.build_server(a).ssl, CoreTLS)),
    "tls_ca": lambda a: cli.build_server(a).ssl.context.verify_mode,
    "tls_ciphers": lambda a: cli.build_server(a).ssl.ciphers,
    "tls_min_version": lambda a: cli.build_server(a).ssl.min_version,
    "tls_sni_strict": lambda a: cli.build_server(a).ssl.sni_strict,
    "tls_ktls": lambda a: cli.build_server(a).ssl.ktls,
    "factory": lambda a: _outcome(lambda: cli.build_server(a).app.__name__),
    "interface": lambda a: cli.build_server(a).interface,
    "protocol": lambda a: _outcome(lambda: type(cli.build_server(a))),
    "root_path": lambda a: cli.build_server(a)._root_path,
    "lifespan": lambda a: cli.build_server(a)._lifespan.mode,
    "reload": lambda a: (cli.build_supervisor([], a).watcher is not None, cli.build_supervisor([], a).start_failures),
    "reload_dir": lambda a: cli.build_watcher(a).filter.dirs,
    "reload_include": lambda a: cli.build_watcher(a).filter.includes,
    "reload_exclude": lambda a: cli.build_watcher(a).filter.excludes,
    "ring_files": lambda a: cli.ring_config(a).files,
    "ring_buf_count": lambda a: cli.ring_config(a).buf_count,
    "ring_buf_size": lambda a: cli.ring_config(a).buf_size,
    "ring_arena_bytes": lambda a: cli.ring_config(a).arena_bytes,
    "ring_bulk_bytes": lambda a: cli.ring_config(a).bulk_bytes,
    "proxy_headers": lambda a: getattr(getattr(cli.build_server(a).forwarding, "trusted", None), "spec", None),
    "forwarded_allow_ips": lambda a: (
        cli.build_server(a).forwarding.trusted.spec,
        cli.build_server(a).proxy_protocol.trusted.spec,
    ),
    "forwarded_style": lambda a: cli.build_server(a).forwarding.style,
    "proxy_protocol": lambda a: getattr(cli.build_server(a).proxy_protocol, "timeout", None),
    "proxy_protocol_timeout": lambda a: cli.build_server(a).proxy_protocol.timeout,
}
for _f in cli.HTTP_FIELDS:
    if _f != "access_log":
        BUILT[_f] = lambda a, f=_f: getattr(cli.build_server(a).config, f)
BUILT["ws"] = lambda a: cli.build_server(a).ws_upgrade is not None
for _f in cli.WS_FIELDS:
    BUILT["ws_" + _f] = lambda a, f=_f: getattr(cli.build_server(a).ws_config, f)

# what the sample makes of it (default: the option's parsed sample)
EXPECT: dict[str, Any] = {
    "ws": False,  # --ws none: no WebSocket hook
    "proxy_headers": "127.0.0.1",  # uvicorn's default list
    "forwarded_allow_ips": ("10.0.0.0/8,::1", "10.0.0.0/8,::1"),  # one list for both
    "proxy_protocol": 30.0,
    "host": ["::1"],
    "fd": [7],
    "bind": [("::1", 9124)],
    "backlog": {17},
    "reuse_port": (True, True),
    "workers": (3, 3),
    "max_requests": 100,
    "max_requests_jitter": set(range(100, 111)),  # --max-requests 100 plus every jitter 0..10
    "loop": (None, None),  # no ring and no connection limit off the uring loop
    "graceful_timeout": (2.5, 2.5),
    "log_level": logging.DEBUG,
    "log_format": "JSONFormatter",
    "access_log": True,
    "metrics": ("127.0.0.1", 9464),
    "tls_cert": True,
    "tls_key": True,  # a certificate file without its key loads only with --tls-key
    "tls_ca": ssl.CERT_REQUIRED,
    "tls_sni_strict": True,
    "factory": "info_app",
    "protocol": Server,
    "reload": (True, 1),  # one failure to start fails a reload: the next change tries again
    "reload_dir": (Path("/tmp").resolve(),),
    "reload_include": ("*.py", "*.html"),
    "reload_exclude": ("tests/*",),
}
# what else the option needs beside it to be built
WITH = {
    "uds_mode": ["--uds", "/tmp/x.sock"],
    "max_requests_jitter": ["--max-requests", "100"],
    "tls_key": ["--tls-cert", "{cert_only}"],
    "tls_ca": ["--tls-cert", "{cert_only}", "--tls-key", "{tls_key}"],
    "tls_ciphers": ["--tls-cert", "{tls_cert}"],
    "tls_min_version": ["--tls-cert", "{tls_cert}"],
    "tls_sni_strict": ["--tls-cert", "{tls_cert}"],
    "tls_ktls": ["--tls-cert", "{tls_cert}"],
    "reload_dir": ["--reload"],
    "reload_include": ["--reload"],
    "reload_exclude": ["--reload"],
    "forwarded_allow_ips": ["--proxy-headers", "--proxy-protocol"],
    "forwarded_style": ["--proxy-headers"],
    "proxy_protocol_timeout": ["--proxy-protocol"],
}
APP = {"factory": "tests.worker_app:make_info_app", "lifespan": "tests.worker_app:info_app"}
APP["protocol"] = "apps.echo:Echo"
APP["root_path"] = APP["interface"] = APP["lifespan"]  # ASGI: --interface native is not what it detects


@pytest.mark.parametrize("source", ["argv", "env"])
@pytest.mark.parametrize("opt", cli.OPTIONS, ids=lambda o: o.flag)
def test_each_option_reaches_what_is_built(opt: cli.Opt, source: str, tls_paths: dict[str, str]) -> None:
    assert set(BUILT) == {o.dest for o in cli.OPTIONS}
    base = ["run", APP.get(opt.dest, "tests.worker_app:app")]
    base += [w.format(**tls_paths) for w in WITH.get(opt.dest, [])]
    text = "1" if opt.is_flag else tls_paths.get(opt.dest, SAMPLE[opt.dest])
    default = BUILT[opt.dest](parse(base))
    if source == "argv":
        args = parse(base + ([opt.flag] if opt.is_flag else [opt.flag, text]))
    else:
        args = parse(base, {opt.env: text})
    expected = EXPECT.get(opt.dest, None if opt.is_flag else opt.type(text))  # type: ignore[misc]
    got = BUILT[opt.dest](args)
    assert got == expected, opt.flag
    assert got != default, f"{opt.flag}: the sample is what is built without it too"


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


def test_listeners_together() -> None:
    def kinds(argv: list[str]) -> list[tuple[str, Any]]:
        out = []
        for s in cli.listeners(parse(["run", "m:a", *argv]), environ={}):
            out.append(("tcp", (s.host, s.port)) if isinstance(s, TCP) else (type(s).__name__.lower(), None))
        return out

    assert kinds([]) == [("tcp", ("127.0.0.1", 8000))]
    assert kinds(["--uds", "@u"]) == [("unix", None)]  # a Unix socket alone: no TCP beside it unasked
    # --uds with --port or --host: both served, neither dropped
    assert kinds(["--uds", "@u", "--port", "9000"]) == [("unix", None), ("tcp", ("127.0.0.1", 9000))]
    assert kinds(["--uds", "@u", "--host", "::1"]) == [("unix", None), ("tcp", ("::1", 8000))]
    assert kinds(["--fd", "3", "--port", "0"]) == [("inherited", None), ("tcp", ("127.0.0.1", 0))]
    assert kinds(["--host", "127.0.0.1", "--host", "::1", "--port", "0"]) == [
        ("tcp", ("127.0.0.1", 0)),
        ("tcp", ("::1", 0)),
    ]
    server = cli.build_server(parse(["run", "apps.http:app"]))
    assert isinstance(server, HTTPServer) and server.interface == "native" and server.max_connections is None
    assert server.config == HTTPConfig()


def test_the_default_host_and_port_are_shown() -> None:
    help_text = cli.build_parser({}).subcommands["run"].format_help()  # type: ignore[attr-defined]
    assert "(default: 127.0.0.1)" in help_text and "(default: 8000)" in help_text
    assert "None" not in help_text
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in cli.options_table().splitlines()[2:]}
    assert rows["`--host`"] == "127.0.0.1" and rows["`--port`"] == "8000"


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
    with pytest.raises(SystemExit, match="--factory: apps.http:app cannot be called without arguments"):
        cli.build_server(parse(["run", "apps.http:app", "--factory"]))
    with pytest.raises(SystemExit, match="--factory: apps.http:HELLO is not callable"):
        cli.build_server(parse(["run", "apps.http:HELLO", "--factory"]))
    with pytest.raises(SystemExit, match="apps.http:app is not a protocol factory: it cannot be called without"):
        cli.build_server(parse(["run", "apps.http:app", "--protocol"]))
    assert type(cli.build_server(parse(["run", "apps.echo:Echo", "--protocol"]))) is Server


def test_the_ring_options_are_the_ring_settings_that_declare_one(capsys) -> None:
    """Each from its RingConfig setting (ring_settings.py): its help, its
    default, its rule's range (or a higher floor the command asks for)."""
    declared = {s.option: s for s in SETTINGS if s.option is not None}
    ring_opts = [o for o in cli.OPTIONS if o.dest.startswith("ring_")]
    assert [o.flag for o in ring_opts] == list(declared)
    for o in ring_opts:
        s = declared[o.flag]
        assert o.help == s.help and o.default == s.default and o.commands == cli.SERVE
    assert cli.OPTION_BY_DEST["ring_buf_count"].default == RingConfig().buf_count
    for argv, says in [
        (["--ring-files", "127"], "127 is out of range: 128..1048576"),  # the command's floor, above the ring's 2
        (["--ring-files", str((1 << 20) + 1)], "is out of range: 128..1048576"),
        (["--ring-buf-count", "65536"], "65536 is out of range: 1..32768"),
        (["--ring-arena-bytes", "65535"], "65535 is out of range: 65536.."),
    ]:
        with pytest.raises(SystemExit) as e:
            parse(["run", "m:a", *argv])
        assert e.value.code == 2 and says in capsys.readouterr().err, argv
    assert cli.ring_config(parse(["run", "m:a", "--ring-files", "128"])).files == 128


def test_ring_settings_are_refused_in_the_words_of_the_options_that_set_them() -> None:
    """The options' names in the message, the fields' names for settings the
    command has no option for (nothing rewritten after the fact)."""
    with pytest.raises(SystemExit) as e:
        cli.ring_config(parse(["run", "m:a", "--ring-arena-bytes", str(64 << 30), "--ring-buf-count", "3"]))
    assert str(e.value) == "uringserve: --ring-buf-count 3: must be a power of two from 1 to 32768"  # alone first
    with pytest.raises(SystemExit) as e:
        cli.ring_config(parse(["run", "m:a", "--ring-arena-bytes", str(64 << 30)]))
    assert str(e.value) == (
        f"uringserve: --ring-arena-bytes {64 << 30}: 2097152 chunks of 32768 bytes and ext_segments=4096 must be "
        "fewer than 1048576 in all: lower --ring-arena-bytes or ext_segments, or raise chunk_size"
    )
    assert cli.ring_config(parse(["run", "m:a", "--loop", "asyncio", "--ring-buf-count", "3"])) is None


@pytest.mark.parametrize(
    "marker, table",
    [("options", "uringserve.cli.options_table"), ("aliases", "uringserve.flag_aliases.aliases_table")],
)
def test_the_readme_tables_are_the_declared_ones(marker: str, table: str) -> None:
    """The options (cli.OPTIONS) and the other servers' flags (flag_aliases.ALIASES)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    begin = rf"<!-- {marker}: generated by {re.escape(table)}\(\) -->\n"
    m = re.search(begin + rf"(.*?)\n<!-- /{marker} -->", readme, re.S)
    assert m, f"README lost its {marker} table markers"
    make = {"options": cli.options_table, "aliases": flag_aliases.aliases_table}[marker]
    assert m.group(1) == make(), f"README's {marker} table differs: paste {table}()"


# -- other servers' flag names (flag_aliases) -----------------------------------------------
SAME = [a for a in flag_aliases.ALIASES if a.target is not None and not a.negates]
REFUSED = [a for a in flag_aliases.ALIASES if a.target is None]


@pytest.mark.parametrize("alias", SAME, ids=lambda a: a.flag)
def test_a_flag_that_means_the_same_is_the_same_option(alias: flag_aliases.Alias) -> None:
    opt = next(o for o in cli.OPTIONS if o.flag == alias.target)
    value = SAMPLE[opt.dest]
    ours = parse(["run", "m:a", opt.flag, value])
    theirs = parse(["run", "m:a", alias.flag, value])
    assert getattr(theirs, opt.dest) == getattr(ours, opt.dest) != getattr(parse(["run", "m:a"]), opt.dest)
    assert getattr(
        parse(
            ["run", "m:a", f"{alias.flag}={value}"]
            if alias.flag.startswith("--")
            else ["run", "m:a", alias.flag + value]
        ),
        opt.dest,
    ) == getattr(ours, opt.dest)


def test_uvicorns_negations_turn_the_option_off() -> None:
    assert parse(["run", "m:a", "--access-log", "--no-access-log"]).access_log is False
    assert parse(["run", "m:a", "--no-server-header", "--server-header"]).no_server_header is False
    assert parse(["run", "m:a", "--no-server-header"]).no_server_header is True


@pytest.mark.parametrize("cmd", ["run", "echo", "resp"])
@pytest.mark.parametrize("alias", REFUSED, ids=lambda a: a.flag)
def test_a_flag_that_means_something_else_is_refused_naming_ours(alias: flag_aliases.Alias, cmd: str, capsys) -> None:
    argv = [cmd, "m:a"] if cmd == "run" else [cmd]
    for given in ([alias.flag], [alias.flag, "x"]):
        with pytest.raises(SystemExit) as e:
            parse([*argv, *given])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"uringserve {cmd}: error: {alias.flag} is {alias.servers}'s; uringserve has no such option: " in err
        assert alias.why in err and "Traceback" not in err


def test_refused_flags_are_not_in_help_nor_typo_hints(capsys) -> None:
    help_text = cli.build_parser({}).subcommands["run"].format_help()  # type: ignore[attr-defined]
    assert "--ssl-ca-certs" not in help_text and "--worker-class" not in help_text
    assert "--timeout-keep-alive" in help_text  # a spelling of an option is listed with it
    out = command("run", "apps.http:app", "--timeout-keep-alve", "3")
    assert out.returncode == 2
    assert "unrecognized arguments: --timeout-keep-alve (did you mean --keepalive-timeout?)" in out.stderr
    with pytest.raises(SystemExit):
        parse(["run", "m:a", "--wroker-class", "x"])
    assert "did you mean --worker-class" not in capsys.readouterr().err  # a refused flag is no hint


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("0.0.0.0:9000", ("tcp", "0.0.0.0", 9000)),
        ("localhost", ("tcp", "localhost", 8000)),
        ("[::1]:81", ("tcp", "::1", 81)),
        ("[::]", ("tcp", "::", 8000)),
        ("::1", ("tcp", "::1", 8000)),
        (":9001", ("tcp", "", 9001)),
        ("unix:/run/a.sock", ("unix", "/run/a.sock", None)),
        ("fd://3", ("fd", 3, None)),
    ],
)
def test_bind_addresses(text: str, parsed: tuple) -> None:
    assert parse(["run", "m:a", "--bind", text]).bind == [parsed]


@pytest.mark.parametrize("text", ["unix:", "fd://x", "fd://", "h:p", "h:70000", "[::1", "[::1]x", "[::1]:"])
def test_bad_bind_addresses_are_refused(text: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        parse(["run", "m:a", "-b", text])
    assert e.value.code == 2
    assert f"argument --bind/-b: {text!r}" in capsys.readouterr().err


# -- the command, run ------------------------------------------------------------------------
command = uringserve  # `python -m uringserve ARGS`, run to its end


def serve(args: list[str], env: dict[str, str] | None = None) -> Proc:
    return Proc([PY, "-m", "uringserve", *args], env={**os.environ, **(env or {})})


def stop(p: Proc) -> str:
    code = p.stop()
    out = p.output()
    assert code == 0, out
    assert "Traceback" not in out, out
    return out


def http_get(port: int, path: str = "/") -> bytes:
    """GET `path` on a connection of its own: the raw response (the server closes after it)."""
    return talk(port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())


def test_version() -> None:
    from uringserve import __version__

    out = command("--version")
    assert out.returncode == 0 and out.stdout == f"uringserve {__version__}\n"


def test_an_option_typo_after_run_is_runs_error() -> None:
    out = command("run", "apps.http:app", "--wokers", "2")
    assert out.returncode == 2
    assert out.stderr.startswith("usage: uringserve run ")
    assert "uringserve run: error: unrecognized arguments: --wokers (did you mean --workers?)" in out.stderr


def test_run_serves_an_http_app_configured_from_the_environment() -> None:
    p = serve(["run", "apps.http:app"], {"URINGSERVE_PORT": "0", "URINGSERVE_MAX_TARGET_BYTES": "20"})
    try:
        assert http_get(p.port).endswith(b"Hello, world!\n")
        assert http_get(p.port, "/" + "x" * 30).startswith(b"HTTP/1.1 414 ")  # the limit from the environment
    finally:
        stop(p)


def test_ring_factory_root_path_and_loop_reach_the_running_server() -> None:
    ring = ["--ring-files", "256", "--ring-buf-count", "64", "--ring-buf-size", "4096", "--ring-arena-bytes", "131072"]
    p = serve(["run", "tests.worker_app:make_info_app", "--factory", "--root-path", "/api", "--port", "0", *ring])
    try:
        info = json.loads(http_get(p.port).partition(b"\r\n\r\n")[2])
    finally:
        stop(p)
    assert info["root_path"] == "/api" and info["loop"] == "UringEventLoop"
    r = info["ring"]
    assert (r["files"], r["buf_count"], r["buf_size"], r["arena_bytes"]) == (256, 64, 4096, 131072)
    p = serve(["run", "tests.worker_app:info_app", "--port", "0", "--loop", "asyncio"])
    try:
        info = json.loads(http_get(p.port).partition(b"\r\n\r\n")[2])
    finally:
        stop(p)
    assert info["loop"] != "UringEventLoop" and info["ring"] is None and info["root_path"] == ""


@pytest.mark.parametrize("how", [["--interface", "protocol"], ["--protocol"]])
@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_run_serves_a_protocol_factory_on_a_unix_socket(tmp_path, how: list[str], mode: int) -> None:
    path = str(tmp_path / "e.sock")
    args = ["run", "apps.echo:Echo", *how, "--uds", path, "--uds-mode", f"{mode:o}", "--log-level", "warning"]
    p = Proc([PY, "-m", "uringserve", *args], ready=f"uringserve on unix:{path} (uring loop")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
    finally:
        stop(p)
    assert not os.path.exists(path)  # removed at shutdown


def serve_unix_and_tcp(path: str, args: list[str]) -> bytes:
    """`uringserve run apps.http:app ARGS` listening on the Unix socket
    `path` and on TCP 127.0.0.1: both answer the demo's hello; the TCP
    response, whole."""
    p = Proc([PY, "-m", "uringserve", "run", "apps.http:app", *args], ready=f"uringserve on unix:{path}, 127.0.0.1:")
    try:
        m = re.search(r"127\.0\.0\.1:(\d+) \(uring loop", p.wait_line(lambda line: True))
        assert m, p.output()
        response = http_get(int(m.group(1)))
        assert response.endswith(b"Hello, world!\n")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert b"".join(iter(lambda: s.recv(65536), b"")).endswith(b"Hello, world!\n")
    finally:
        stop(p)
    return response


def test_uds_and_port_serve_both(tmp_path) -> None:
    path = str(tmp_path / "h.sock")
    serve_unix_and_tcp(path, ["--uds", path, "--port", "0", "--log-level", "warning"])


def test_bind_serves_tcp_and_unix_as_gunicorn_spells_them(tmp_path) -> None:
    path = str(tmp_path / "b.sock")
    args = ["-b", f"unix:{path}", "--bind", "127.0.0.1:0", "--no-server-header", "--log-level", "warning"]
    assert b"\r\nserver:" not in serve_unix_and_tcp(path, args).lower()


@pytest.mark.parametrize("cmd", ["echo", "resp"])
def test_the_demos_as_subcommands(cmd: str) -> None:
    p = serve([cmd, "--port", "0", "--loop", "asyncio"])
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(100) == (b"PING\r\n" if cmd == "echo" else b"+PONG\r\n")
    finally:
        stop(p)


def test_doctor_subcommand() -> None:
    out = command("doctor", "--json")
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
def test_tls_options(tls_files: TLSFiles, client_certs: bool) -> None:
    ca = tls_files.ca
    args = ["run", "tests.worker_app:scheme_app", "--port", "0", "--tls-cert", str(tls_files.cert)]
    args += ["--tls-key", str(tls_files.key)]
    if client_certs:
        args += ["--tls-ca", str(tls_files.cacert)]
    p = serve(args)
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        if client_certs:
            try:  # no client certificate: refused (with TLS 1.3 the alert comes at the first read)
                refused = _tls_get(p.port, ctx)
            except (ssl.SSLError, ConnectionError):
                refused = b""
            assert not refused.startswith(b"HTTP/"), refused
            ca.issue_cert("client@example").configure_cert(ctx)
        assert _tls_get(p.port, ctx).endswith(b"\r\n\r\nhttps")  # the ASGI scope says https
    finally:
        stop(p)


# -- errors a user can cause: one line, once, exit 1 -------------------------------------
def one_line(out: subprocess.CompletedProcess, says: str) -> None:
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0], out.stderr  # once: not once per worker


@pytest.fixture
def busy_port() -> Any:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_settings_that_cannot_work_are_one_line_before_any_worker(workers: str, tmp_path, tls_files: TLSFiles) -> None:
    missing = str(tmp_path / "nope.pem")
    key_less = str(tls_files.cert)  # the chain without its key
    cases = [
        (["--ring-buf-count", "100"], "uringserve: --ring-buf-count 100: must be a power of two from 1 to 32768"),
        (["--ring-buf-size", "200000", "--ring-buf-count", "32768"], "4 GiB: lower --ring-buf-size or --ring-files"),
        (["--tls-cert", missing], f"uringserve: --tls-cert {missing}: no such file"),
        (["--tls-cert", key_less], f"uringserve: --tls-cert {key_less}: cannot load a certificate chain and its"),
        (["--tls-cert", key_less], "give the key file with --tls-key"),
        (["--tls-key", missing], "uringserve: --tls-key and --tls-ca need --tls-cert"),
        (["--tls-ciphers", "ECDHE+AESGCM"], "uringserve: --tls-ciphers needs --tls-cert"),
        (
            ["--tls-cert", str(tls_files.cert_and_key), "--tls-ciphers", "NOPE"],
            "--tls-ciphers 'NOPE': OpenSSL knows no",
        ),
        (["--uds", "@abstract", "--uds-mode", "600"], "--uds-mode: the abstract socket @abstract has no file"),
        (["--uds-mode", "600"], "--uds-mode applies to a Unix socket: give --uds (or --bind unix:PATH) too"),
    ]
    for extra, says in cases:
        one_line(command("run", "apps.http:app", "--port", "0", "--workers", workers, *extra), says)
    one_line(command("run", "apps.http", "--workers", workers), "APP must be module:attribute")
    # a module that does not exist: looked up (not imported) before any worker starts
    for app, says in [
        ("nosuchmod:app", "uringserve: cannot import 'nosuchmod': No module named 'nosuchmod'"),
        ("apps.nothere:app", "uringserve: cannot import 'apps.nothere': No module named 'apps.nothere'"),
        ("nosuchpkg.mod:app", "uringserve: cannot import 'nosuchpkg.mod': No module named 'nosuchpkg'"),
        ("apps.http.x:app", "uringserve: cannot import 'apps.http.x': No module named 'apps.http.x'; 'apps.http' is"),
    ]:
        out = command("run", app, "--port", "0", "--workers", workers)
        one_line(out, says)
        assert "worker" not in out.stderr and out.stdout == ""


def test_the_app_module_is_found_without_running_it(tmp_path) -> None:
    """The supervisor looks the app's module up without importing it (nor
    its package): a reload must import it afresh in a worker, and its import
    may have side effects. A module that needs its package's own lookup (a
    submodule a module puts in sys.modules) is left to the import."""
    pkg = tmp_path / "sidefx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("print('sidefx imported', flush=True)\n")
    (pkg / "app.py").write_text("print('sidefx.app imported', flush=True)\n")
    code = "from uringserve import cli\nfor m in ('sidefx.app', 'os.path', 'sidefx.nope'):\n"
    code += "    print(cli._module_missing(m))"
    out = subprocess.run([PY, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # found, and nothing of it ran; os.path: os is a module, the import system is asked (os is imported anyway);
    # sidefx.nope is under no path of the package: only then is sidefx imported, to ask
    assert out.stdout == "None\nNone\nsidefx imported\nNo module named 'sidefx.nope'\n", out.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_is_one_line(workers: str, busy_port: int) -> None:
    out = command("run", "apps.http:app", "--port", str(busy_port), "--workers", workers)
    one_line(out, f"uringserve: [Errno 98] cannot listen on 127.0.0.1:{busy_port}: Address already in use")


def test_the_http_demo_on_a_busy_port_is_one_line(busy_port: int) -> None:
    """`make run` on a busy port."""
    out = subprocess.run(
        [PY, "apps/http.py", "--port", str(busy_port)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    one_line(out, f"cannot listen on 127.0.0.1:{busy_port}: Address already in use")


def test_the_http_demo_banner_names_the_bound_port() -> None:
    p = Proc([PY, "apps/http.py", "--port", "0"])
    try:
        banner = p.wait_line(lambda line: "uringserve.http (native) on " in line)
        assert banner.startswith(f"uringserve.http (native) on 127.0.0.1:{p.port} (uring loop, pid {p.p.pid})")
        assert p.port != 0 and http_get(p.port).endswith(b"Hello, world!\n")
    finally:
        stop(p)


# -- --log-format json: nothing but JSON ----------------------------------------------------
def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]  # raises on any line that is not JSON


@pytest.mark.parametrize("workers", ["1", "2"])
def test_json_log_format_prints_only_json(workers: str) -> None:
    args = [PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--log-format", "json"]
    p = Proc([*args, "--workers", workers, "--access-log"], ready="{")
    try:
        banner = json.loads(p.wait_line(lambda line: '"listeners"' in line))
        port = int(banner["listeners"][0].rsplit(":", 1)[1].split()[0])
        assert banner["message"].startswith(f"uringserve on 127.0.0.1:{port} (")
        assert banner["pid"] == p.p.pid and banner["level"] == "info"
        assert http_get(port).endswith(b"Hello, world!\n")
        p.wait_line(lambda line: '"status": 200' in line)  # the access log's record
    finally:
        code = p.stop()
    assert code == 0
    records = _records(p.output())
    assert any(r.get("status") == 200 and r["logger"] == "uringserve.access" for r in records)


def test_json_log_format_errors_are_json(busy_port: int) -> None:
    for workers in ("1", "2"):
        out = command("run", "apps.http:app", "--port", str(busy_port), "--log-format", "json", "--workers", workers)
        assert out.returncode == 1 and out.stdout == ""
        [record] = _records(out.stderr)
        assert record["level"] == "error" and "Address already in use" in record["message"]
    out = command("run", "apps.nothere:app", "--log-format", "json")
    [record] = _records(out.stderr)
    assert out.returncode == 1 and "cannot import 'apps.nothere'" in record["message"]
    # an app that raises as it is imported: its traceback is a field of one record per try
    out = command("run", "tests.broken_app:app", "--port", "0", "--workers", "2", "--log-format", "json")
    records = _records(out.stderr)
    assert out.returncode == 1 and out.stdout == ""
    crashes = [r for r in records if r["message"] == "uncaught RuntimeError: this app cannot start"]
    assert crashes and all("Traceback" in r["exception"] for r in crashes)
    stopping = "uringserve: a worker failed to start 3 times in a row (last: exit status 1); stopping"
    assert [r["level"] for r in records if r["message"] == stopping] == ["error"]


def test_json_log_format_covers_threads_warnings_and_unraisable_exceptions() -> None:
    """Beside the log, what Python itself would print as text: an exception
    in a thread (the metrics endpoint's), a warning, an exception it cannot
    raise (in __del__). Back to text, Python's own hooks are back."""
    code = """
import gc, sys, threading, warnings
from uringserve import logs
logs.configure("info", "json")
warnings.warn("a warning")
t = threading.Thread(target=lambda: 1 / 0, name="uringserve-metrics")
t.start()
t.join()
class Dies:
    def __del__(self):
        raise ValueError("in __del__")
Dies()
gc.collect()
logs.configure("info", "text")
print(sys.excepthook is sys.__excepthook__, threading.excepthook is threading.__excepthook__,
      sys.unraisablehook is sys.__unraisablehook__, warnings.showwarning is warnings._showwarning_orig)
"""
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    records = _records(out.stderr)  # every line JSON
    assert [(r["level"], r["logger"]) for r in records] == [
        ("warning", "py.warnings"),
        ("error", "uringserve"),
        ("error", "uringserve"),
    ], records
    assert "UserWarning: a warning" in records[0]["message"]
    assert records[1]["message"] == "uncaught ZeroDivisionError in thread uringserve-metrics: division by zero"
    assert "ZeroDivisionError" in records[1]["exception"]
    assert records[2]["message"].startswith("Exception ignored in: <function Dies.__del__")
    assert "ValueError: in __del__" in records[2]["exception"]
    assert out.stdout == "True True True True\n"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_without_prometheus_client_is_one_line(workers: str) -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None; from uringserve.cli import main; "
        f"sys.exit(main(['run', 'apps.http:app', '--port', '0', '--workers', '{workers}', '--metrics', '127.0.0.1:0']))"
    )
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    one_line(out, cli.METRICS_MISSING)


def test_the_check_does_not_import_prometheus_client() -> None:
    """The supervisor's own counters are multiprocess values only if
    prometheus_client is first imported after PROMETHEUS_MULTIPROC_DIR is
    set (it chooses as it is imported): the check before it only looks."""
    code = (
        "import sys; from uringserve import cli; "
        "cli.check(cli.build_parser({}).parse_args(['run', 'apps.http:app', '--metrics', '127.0.0.1:0'])); "
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "False\n"), out.stderr


def test_max_requests_costs_no_work_per_request() -> None:
    """The recycler reads the count the protocol keeps anyway: it installs
    no per-response observer (which would build every exchange through the
    observed path, a clock read and more layers each)."""
    args = parse(["run", "apps.http:app", "--max-requests", "100"])
    server = cli.build_server(args)
    recycler = cli.Recycler(server, cli.request_limit(args))
    assert server.observer is None and recycler.limit == 100 and not recycler.began


@pytest.mark.parametrize("has_cwd", ["", "abs", None])
def test_the_app_is_imported_from_the_current_directory_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, has_cwd: str | None
) -> None:
    """As uvicorn and gunicorn: the current directory is put first on
    sys.path unless it is there already, as '' or by its path."""
    (tmp_path / "cwd_app_for_test.py").write_text("app = 'from the cwd'\n")
    monkeypatch.chdir(tmp_path)
    rest = [p for p in sys.path if p not in ("", str(tmp_path))]
    first = {"": [""], "abs": [str(tmp_path)], None: []}[has_cwd]
    monkeypatch.setattr(sys, "path", [*rest, *first])  # after the rest: not moved ahead of it either
    monkeypatch.delitem(sys.modules, "cwd_app_for_test", raising=False)
    assert cli.load_app("cwd_app_for_test:app", False) == "from the cwd"
    assert sys.path == ([str(tmp_path), *rest] if has_cwd is None else [*rest, *first])
