"""The `uringserve` command: run an app (ASGI, a native HTTP handler, or an
asyncio protocol factory), the demos, and the doctor.

Every option has an environment variable (URINGSERVE_<NAME>); the command
line wins over the environment, the environment over the default. The
options are declared once, in OPTIONS: the parser, the environment and the
README's table (`options_table()`, checked by a test) all come from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import random
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .http.config import HTTPConfig
from .ring import RingConfig
from .server.lifecycle import LOOPS

ENV_PREFIX = "URINGSERVE_"


def _int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if n < lo or (hi is not None and n > hi):
            raise argparse.ArgumentTypeError(f"{n} is out of range: {lo}..{hi if hi is not None else ''}")
        return n

    parse.__name__ = f"integer {lo}..{hi if hi is not None else ''}"
    return parse


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{v} must be a positive number of seconds")
    return v


def _octal(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal file mode like 660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text} is not a file mode (000..777)")
    return mode


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _flag(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (1/0, true/false, yes/no, on/off)")


@dataclass(frozen=True)
class Opt:
    """One option: its flag, what it does, its type, default and environment variable."""

    flag: str
    help: str
    type: Callable[[str], Any] | None = str
    default: Any = None
    choices: Sequence[str] | None = None
    repeat: bool = False  # may be given several times (the environment: comma-separated)
    commands: tuple[str, ...] = ("run",)
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def is_flag(self) -> bool:
        return self.type is None


SERVE = ("run", "echo", "resp")

OPTIONS: list[Opt] = [
    # where to listen
    Opt("--host", "address to listen on (repeatable; '' or '::' for every interface)", repeat=True, commands=SERVE),
    Opt("--port", "TCP port", _int_in(0, 65535), 8000, commands=SERVE),
    Opt("--uds", "listen on this Unix socket path instead of TCP ('@name': abstract)", commands=SERVE),
    Opt("--uds-mode", "file mode of the --uds socket, octal", _octal, None, commands=SERVE, metavar="MODE"),
    Opt("--fd", "serve an inherited listening socket on this fd (repeatable)", _int_in(0), repeat=True, commands=SERVE),
    Opt("--backlog", "listen backlog", _int_in(1), 1024, commands=SERVE),
    Opt("--reuse-port", "SO_REUSEPORT: with workers, one TCP socket per worker", None, False, commands=SERVE),
    Opt("--workers", "worker processes (0: one per CPU); 1 serves in this process", _int_in(0), 1, commands=SERVE),
    Opt("--max-requests", "a worker is replaced after this many requests (0: never)", _int_in(0), 0, commands=SERVE),
    Opt("--max-requests-jitter", "plus a random 0..N, so workers recycle apart", _int_in(0), 0, commands=SERVE),
    Opt("--loop", "event loop", str, "uring", choices=LOOPS, commands=SERVE),
    Opt(
        "--max-connections",
        "open connections per worker at which accepting pauses; the rest wait in the backlog (0: no limit)",
        _int_in(0),
        0,
        commands=SERVE,
    ),
    Opt("--graceful-timeout", "seconds a drain (SIGTERM) waits for work in flight", _seconds, 30.0, commands=SERVE),
    Opt("--log-level", "logging level", str, "info", choices=("debug", "info", "warning", "error"), commands=SERVE),
    Opt("--log-format", "log lines as text or JSON objects", str, "text", choices=("text", "json"), commands=SERVE),
    Opt("--access-log", "one line per HTTP response (costs: off by default)", None, False),
    Opt("--metrics", "serve /metrics, /ready and /live on HOST:PORT", _address, None, commands=SERVE),
    Opt("--tls-cert", "TLS: certificate chain file (PEM); serves TLS on every listener", commands=SERVE),
    Opt("--tls-key", "TLS: private key file (PEM), if not in --tls-cert", commands=SERVE),
    Opt("--tls-ca", "TLS: CA file; clients must present a certificate it signed", commands=SERVE),
    # the app
    Opt("--factory", "APP is a callable that returns the app", None, False),
    Opt("--interface", "what APP is", str, "auto", choices=("auto", "asgi", "native", "protocol")),
    Opt("--protocol", "APP is an asyncio.Protocol factory (--interface protocol)", None, False),
    Opt("--root-path", "ASGI root_path", str, ""),
    Opt(
        "--lifespan",
        "ASGI lifespan: auto serves an app that does not speak it; on requires it; off never calls it",
        str,
        "auto",
        choices=("auto", "on", "off"),
    ),
    # HTTP limits and timeouts (HTTPConfig)
    Opt("--max-header-bytes", "request line + headers, bytes (431 beyond)", _int_in(1), HTTPConfig.max_header_bytes),
    Opt("--max-headers", "header fields per request (431 beyond)", _int_in(1), HTTPConfig.max_headers),
    Opt("--max-target-bytes", "request-target length (414 beyond)", _int_in(1), HTTPConfig.max_target_bytes),
    Opt("--max-body-bytes", "request body, bytes (413 beyond)", _int_in(0), HTTPConfig.max_body_bytes),
    Opt("--max-pipelined", "requests parsed ahead of the one answered", _int_in(1), HTTPConfig.max_pipelined),
    Opt("--body-buffer-bytes", "request body buffered ahead of the handler", _int_in(1), HTTPConfig.body_buffer_bytes),
    Opt("--header-timeout", "seconds to receive a request head (408)", _seconds, HTTPConfig.header_timeout),
    Opt("--body-timeout", "seconds between reads of a request body (408)", _seconds, HTTPConfig.body_timeout),
    Opt("--send-timeout", "seconds a client may leave responses unread", _seconds, HTTPConfig.send_timeout),
    Opt("--keepalive-timeout", "seconds an idle keep-alive connection stays", _seconds, HTTPConfig.keepalive_timeout),
    Opt("--keepalive-requests", "requests per connection", _int_in(1), HTTPConfig.keepalive_requests),
    # the ring (RingConfig)
    Opt("--ring-files", "fixed-file table slots", _int_in(128), None, commands=SERVE, metavar="N"),
    Opt("--ring-buf-count", "provided receive buffers (power of 2)", _int_in(1), RingConfig.buf_count, commands=SERVE),
    Opt("--ring-buf-size", "bytes per provided buffer", _int_in(64), RingConfig.buf_size, commands=SERVE),
    Opt("--ring-arena-bytes", "send arena bytes (default: from RLIMIT_MEMLOCK)", _int_in(65536), None, commands=SERVE),
]
OPTION_BY_DEST = {o.dest: o for o in OPTIONS}
HTTP_FIELDS = [f.name for f in dataclasses.fields(HTTPConfig) if f.name in OPTION_BY_DEST]


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="uringserve", description="Serve TCP from Python on io_uring.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    subs = {
        "run": sub.add_parser("run", help="serve APP (module:attribute)"),
        "echo": sub.add_parser("echo", help="the echo demo"),
        "resp": sub.add_parser("resp", help="the RESP (Redis protocol) demo"),
    }
    subs["run"].add_argument("app", metavar="APP", help="module:attribute, e.g. apps.http:app")
    doctor = sub.add_parser("doctor", help="report io_uring support and the features uringserve uses")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    bad: dict[str, str] = {}
    for name, p in subs.items():
        for opt in OPTIONS:
            if name in opt.commands:
                _add(p, opt, env, bad)
    if bad:  # refused before anything starts, each naming its variable, option and accepted values
        parser.exit(2, "".join(f"uringserve: {msg}\n" for msg in bad.values()))
    return parser


def _add(p: argparse.ArgumentParser, opt: Opt, env: Any, bad: dict[str, str]) -> None:
    default = opt.default
    raw = env.get(opt.env)
    if raw is not None:  # the environment's value, parsed as the command line's would be
        try:
            if opt.is_flag:
                default = _flag(raw)
            elif opt.repeat:
                default = [opt.type(v.strip()) for v in raw.split(",") if v.strip()]  # type: ignore[misc]
            else:
                default = opt.type(raw)  # type: ignore[misc]
            if opt.choices is not None and default not in opt.choices:
                raise argparse.ArgumentTypeError(f"{raw!r} is not one of {', '.join(opt.choices)}")
        except argparse.ArgumentTypeError as exc:
            bad[opt.env] = f"{opt.env}={raw!r} (for {opt.flag}): {exc}"
            default = opt.default
    if opt.is_flag:
        p.add_argument(opt.flag, action="store_true", default=default, help=f"{opt.help} [{opt.env}]")
    else:
        assert opt.type is not None  # only flags have none
        p.add_argument(
            opt.flag,
            type=opt.type,
            default=default,
            choices=opt.choices,
            action="append" if opt.repeat else "store",
            metavar=opt.metavar,
            help=f"{opt.help} (default: {opt.default}) [{opt.env}]",
        )


def options_table() -> str:
    """The README's table of options, environment variables and defaults."""
    lines = ["| option | environment | default | commands | what it sets |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        default = "off" if o.is_flag else ("" if o.default is None else str(o.default))
        if o.choices:
            default += " (" + " \\| ".join(o.choices) + ")"
        lines.append(f"| `{o.flag}` | `{o.env}` | {default} | {', '.join(o.commands)} | {o.help} |")
    return "\n".join(lines)


# -- building what runs --------------------------------------------------------------
def load_app(spec: str, factory: bool) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"uringserve: APP must be module:attribute (e.g. apps.http:app), not {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn and gunicorn do: the app's package from here
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"uringserve: cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"uringserve: {module_name!r} has no attribute {attr!r}") from None
    if factory:
        obj = obj()
    return obj


def listeners(args: argparse.Namespace, environ: Any = None) -> list[Any]:
    """--fd, socket activation (LISTEN_FDS), --uds, then TCP: --host, or
    127.0.0.1 when nothing else says where."""
    from .server import TCP, Inherited, Unix, activated

    out: list[Any] = list(activated(environ))
    for fd in args.fd or ():
        out.append(Inherited(fd, backlog=args.backlog))
    if args.uds:
        out.append(Unix(args.uds, mode=args.uds_mode, backlog=args.backlog))
    elif args.uds_mode is not None:
        raise SystemExit("uringserve: --uds-mode applies to a Unix socket: give --uds too")
    hosts = args.host or ([] if out else ["127.0.0.1"])
    for host in hosts:
        out.append(TCP(host or None, args.port, backlog=args.backlog, reuse_port=args.reuse_port))
    return out


def ring_config(args: argparse.Namespace) -> RingConfig | None:
    if args.loop != "uring":
        return None
    kw: dict[str, Any] = {"buf_count": args.ring_buf_count, "buf_size": args.ring_buf_size}
    if args.ring_files is not None:
        kw["files"] = args.ring_files
    if args.ring_arena_bytes is not None:
        kw["arena_bytes"] = args.ring_arena_bytes
    try:
        return RingConfig(**kw)
    except ValueError as exc:
        raise SystemExit(f"uringserve: {exc}") from None


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None:
        if args.tls_key or args.tls_ca:
            raise SystemExit("uringserve: --tls-key and --tls-ca need --tls-cert")
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"uringserve: --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {exc}") from None
    if args.tls_ca:
        try:
            ctx.load_verify_locations(args.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(f"uringserve: --tls-ca {args.tls_ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def build_server(args: argparse.Namespace) -> Any:
    """The Server the command runs, from its arguments."""
    server = _protocol_server(args)
    server.max_connections = args.max_connections or None
    return server


def _protocol_server(args: argparse.Namespace) -> Any:
    tls = tls_context(args)
    if args.cmd in ("echo", "resp"):
        # the demos live in the repository's apps/, not in the installed package
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            if args.cmd == "echo":
                from apps.echo import Echo

                from .server import Server

                return Server(Echo, shutdown_timeout=args.graceful_timeout, ssl=tls)
            from apps.resp_server import RESPServer

            server = RESPServer(shutdown_timeout=args.graceful_timeout)
            server.ssl = tls
            return server
        except ImportError as exc:
            where = "the demos are in a uringserve checkout's apps/: run there"
            raise SystemExit(f"uringserve {args.cmd}: {where} ({exc})") from None
    app = load_app(args.app, args.factory)
    if args.protocol or args.interface == "protocol":
        from .server import Server

        if not callable(app):
            raise SystemExit(f"uringserve: {args.app} is not a protocol factory (a callable)")
        return Server(app, shutdown_timeout=args.graceful_timeout, ssl=tls)
    from .http import HTTPServer

    config = HTTPConfig(shutdown_timeout=args.graceful_timeout, **{name: getattr(args, name) for name in HTTP_FIELDS})
    try:
        return HTTPServer(
            app, interface=args.interface, config=config, lifespan=args.lifespan, root_path=args.root_path, ssl=tls
        )
    except TypeError as exc:  # what detect_interface() could not tell
        raise SystemExit(f"uringserve: {exc}; or --interface protocol for an asyncio protocol factory") from None


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if getattr(args, "max_connections", 0) and args.loop != "uring":
        parser.error(f"--max-connections needs --loop uring: the {args.loop} loop cannot pause accepting")
    if args.cmd == "doctor":
        import json

        from .diagnose import format_report, report

        rep = report()
        print(json.dumps(rep, indent=2) if args.json else format_report(rep))
        return 0 if rep["usable"] else 1
    from . import logs, workers

    logs.configure(args.log_level, args.log_format)
    from .server import Inherited, run_command

    name = "uringserve" if args.cmd == "run" else args.cmd
    spec = workers.worker_spec()
    if spec is not None:  # a worker of a supervisor: its listeners are the fds it was given
        workers.die_with_supervisor(spec)
        server = build_server(args)
        metrics = _metrics(args, server)

        def ready(s: Any) -> None:
            workers.report_ready(spec)
            if metrics is not None:
                metrics.start_sampling(s)
            if args.max_requests:
                _recycle_after(s, args.max_requests + random.randint(0, args.max_requests_jitter))

        specs = [Inherited(fd, backlog=args.backlog) for fd in spec["fds"]]
        return run_command(
            server, name, loop=args.loop, ring_config=ring_config(args), listeners=specs, on_ready=ready, quiet=True
        )
    count = args.workers or os.cpu_count() or 1
    if count > 1:
        return workers.Supervisor(
            argv,
            listeners(args),
            count,
            reuse_port=args.reuse_port,
            graceful_timeout=args.graceful_timeout,
            name=name,
            metrics=args.metrics,
        ).run()
    server = build_server(args)
    metrics = _metrics(args, server)
    endpoint = None
    if metrics is not None:
        from . import metrics as metrics_module

        host, port = args.metrics
        collect = metrics_module.collect(metrics_module.default_registry())
        try:
            endpoint = metrics_module.Endpoint(host, port, collect, lambda: server.serving)
        except OSError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
    try:
        return run_command(
            server,
            name,
            loop=args.loop,
            ring_config=ring_config(args),
            listeners=listeners(args),
            on_ready=metrics.start_sampling if metrics is not None else None,
        )
    finally:
        if endpoint is not None:
            endpoint.close()


def _metrics(args: argparse.Namespace, server: Any) -> Any:
    """This process's Metrics when --metrics is on (a worker's write to the supervisor's directory)."""
    if args.metrics is None:
        return None
    try:
        from .metrics import Metrics
    except ImportError:
        raise SystemExit("uringserve: --metrics needs prometheus_client: pip install 'uringserve[metrics]'") from None
    metrics = Metrics()
    if hasattr(server, "observer"):
        server.observer = metrics.observe
    return metrics


def _recycle_after(server: Any, limit: int) -> None:
    """Drain and exit (status 0: the supervisor starts a fresh worker) after `limit` requests."""
    import asyncio

    loop = asyncio.get_running_loop()

    def check() -> None:
        if server.requests_served() >= limit:
            logging.getLogger("uringserve.workers").info("recycling after %d requests", server.requests_served())
            loop.create_task(server.shutdown())
        elif server.serving:
            loop.call_later(0.1, check)

    loop.call_later(0.1, check)


__all__ = ["main", "build_parser", "options_table", "OPTIONS"]
