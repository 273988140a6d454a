"""The `uringserve` command: run an app (ASGI, a native HTTP handler, or an
asyncio protocol factory), the demos, and the doctor.

Every option has an environment variable (URINGSERVE_<NAME>); the command
line wins over the environment, the environment over the default. The
options are declared once, in OPTIONS (the ring's with the ring's settings,
in ring_settings.py): the parser, the environment and the README's table
(`options_table()`, checked by a test) all come from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import random
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import flag_aliases
from .http.config import HTTPConfig
from .ring_settings import SETTINGS, RingConfig, RingConfigError, Setting, validate
from .server.lifecycle import LOOPS
from .ws.config import WSConfig

if TYPE_CHECKING:
    from .tls import CoreTLS

ENV_PREFIX = "URINGSERVE_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


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


def _seconds_or_off(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{v} must be a number of seconds, or 0 for none")
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


def _trusted(text: str) -> str:
    from .server.trust import TrustedPeers

    try:
        return TrustedPeers(text).spec
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bind(text: str) -> tuple[str, Any, Any]:
    """gunicorn's and hypercorn's --bind: HOST[:PORT] (PORT 8000), [IPv6]:PORT,
    unix:PATH, fd://N; as ("tcp", host, port), ("unix", path, None) or ("fd", n, None)."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise argparse.ArgumentTypeError(f"{text!r}: unix: needs a socket path, as unix:/run/app.sock")
        return ("unix", path, None)
    if text.startswith("fd://"):
        fd = text[5:]
        if not fd.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: fd:// needs a file descriptor number, as fd://3")
        return ("fd", int(fd), None)
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):  # [IPv6] or [IPv6]:PORT
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not text[end + 1 :].startswith(":")):
            raise argparse.ArgumentTypeError(f"{text!r} is not [IPV6]:PORT")
        host, port = text[1:end], text[end + 2 :] if end + 1 < len(text) else port
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:  # a bare IPv6 address: gunicorn takes it without a port
        host = text
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 0..65535 (HOST:PORT, unix:PATH or fd://N)")
    return ("tcp", host, int(port))


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
    # the default as --help and the README say it, when the parser's default
    # is None to tell "not given" (e.g. --port 8000 only when no --uds/--fd)
    shown: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def is_flag(self) -> bool:
        return self.type is None

    @property
    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.is_flag:
            return "off"
        return "" if self.default is None else str(self.default)


SERVE = ("run", "echo", "resp")


def _ring_option(s: Setting) -> Opt:
    """The option of a ring setting that has one, from its declaration
    (ring_settings): its help, its default, and the range its rule allows,
    from option_lo where the command asks for more. The options so far take
    integers."""
    floors = [x for x in (s.lo, s.option_lo) if x is not None]
    assert s.option is not None and s.kind is int and floors, f"{s.option}: not an integer with a least value"
    return Opt(s.option, s.help, _int_in(max(floors), s.hi), s.default, commands=SERVE, metavar="N")


# the ring settings the command sets (their option, by RingConfig field)
RING_OPTIONS = {s.name: _ring_option(s) for s in SETTINGS if s.option is not None}

OPTIONS: list[Opt] = [
    # where to listen
    Opt(
        "--host",
        "address to listen on (repeatable; '' or '::' for every interface)",
        repeat=True,
        commands=SERVE,
        shown=DEFAULT_HOST,
    ),
    Opt("--port", "TCP port", _int_in(0, 65535), None, commands=SERVE, shown=str(DEFAULT_PORT)),
    Opt(
        "--uds",
        "listen on this Unix socket path ('@name': abstract); TCP too only if --host or --port is given",
        commands=SERVE,
    ),
    Opt("--uds-mode", "file mode of the --uds socket, octal", _octal, None, commands=SERVE, metavar="MODE"),
    Opt("--fd", "serve an inherited listening socket on this fd (repeatable)", _int_in(0), repeat=True, commands=SERVE),
    Opt(
        "--bind",
        "listen on HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N, as gunicorn spells it (repeatable; with --host, "
        "--port, --uds or --fd, all are served)",
        _bind,
        repeat=True,
        commands=SERVE,
        metavar="ADDRESS",
    ),
    Opt("--backlog", "listen backlog", _int_in(1), 1024, commands=SERVE),
    Opt("--reuse-port", "SO_REUSEPORT: with workers, one TCP socket per worker", None, False, commands=SERVE),
    Opt(
        "--workers",
        "worker processes (0: one per CPU this process may run on); 1 serves in this process",
        _int_in(0),
        1,
        commands=SERVE,
    ),
    Opt(
        "--max-requests",
        "a worker is replaced after this many requests (0: never); with --workers 1, a supervisor replaces it",
        _int_in(0),
        0,
        commands=SERVE,
    ),
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
    Opt(
        "--ready-timeout",
        "seconds a new worker may take to import the app and listen; later, it failed to start",
        _seconds,
        60.0,
        commands=SERVE,
    ),
    Opt("--log-level", "logging level", str, "info", choices=("debug", "info", "warning", "error"), commands=SERVE),
    Opt("--log-format", "log lines as text or JSON objects", str, "text", choices=("text", "json"), commands=SERVE),
    Opt("--access-log", "one line per HTTP response (costs: off by default)", None, False),
    Opt("--metrics", "serve /metrics, /ready and /live on HOST:PORT", _address, None, commands=SERVE),
    # development
    Opt(
        "--reload",
        "restart the worker when a source file changes (development; needs watchfiles; one worker)",
        None,
        False,
    ),
    Opt(
        "--reload-dir",
        "--reload: directory to watch (repeatable)",
        repeat=True,
        metavar="DIR",
        shown="the working directory",
    ),
    Opt(
        "--reload-include",
        "--reload: glob of files that reload, besides *.py (repeatable)",
        repeat=True,
        metavar="GLOB",
        shown="*.py",
    ),
    Opt(
        "--reload-exclude",
        "--reload: glob of files or directories that do not (repeatable; .venv, __pycache__, hidden dirs: always)",
        repeat=True,
        metavar="GLOB",
    ),
    Opt(
        "--tls-cert",
        "TLS: certificate chain file (PEM); serves TLS on every listener (repeatable: chosen by the client's SNI "
        "name, the first for an unknown name)",
        repeat=True,
        commands=SERVE,
    ),
    Opt(
        "--tls-key",
        "TLS: private key file (PEM) of the --tls-cert in the same place, if not in that file (repeatable)",
        repeat=True,
        commands=SERVE,
    ),
    Opt("--tls-ca", "TLS: CA file; clients must present a certificate it signed", commands=SERVE),
    Opt("--tls-ciphers", "TLS: OpenSSL cipher list for TLS 1.2 (TLS 1.3's suites are OpenSSL's)", commands=SERVE),
    Opt(
        "--tls-min-version",
        "TLS: the oldest version served",
        default="1.2",
        choices=("1.2", "1.3"),
        commands=SERVE,
    ),
    Opt(
        "--tls-ktls",
        "TLS: kernel TLS for sending: auto hands the write keys to the kernel after the handshake where it has "
        "kTLS (uringserve doctor says), off keeps every record in OpenSSL",
        default="auto",
        choices=("auto", "off"),
        commands=SERVE,
    ),
    Opt(
        "--tls-sni-strict",
        "TLS: refuse a handshake whose SNI name no --tls-cert holds, or that sends none (a client connecting by "
        "address), with the unrecognized_name alert, instead of serving the first certificate",
        None,
        False,
        commands=SERVE,
    ),
    # behind a proxy
    Opt(
        "--proxy-headers",
        "take the client, scheme and host from X-Forwarded-For/-Proto/-Host/-Port or Forwarded "
        "(--forwarded-style) sent by --forwarded-allow-ips peers",
        None,
        False,
    ),
    Opt(
        "--forwarded-allow-ips",
        "peers trusted to name the client (--proxy-headers, --proxy-protocol): comma-separated IP addresses, "
        "networks (10.0.0.0/8), '*', Unix socket paths or 'unix'",
        _trusted,
        "127.0.0.1",
        commands=SERVE,
        metavar="LIST",
    ),
    Opt(
        "--forwarded-style",
        "--proxy-headers: the one header family the proxy sets, the other is ignored: X-Forwarded-For/-Proto/"
        "-Host/-Port (x-forwarded) or RFC 7239 Forwarded (rfc7239)",
        str,
        "x-forwarded",
        choices=("x-forwarded", "rfc7239"),
    ),
    Opt(
        "--proxy-protocol",
        "every connection begins with a PROXY protocol v1/v2 header (haproxy send-proxy, nginx proxy_protocol) "
        "from a --forwarded-allow-ips peer; others are closed",
        None,
        False,
        commands=SERVE,
    ),
    Opt(
        "--proxy-protocol-timeout",
        "seconds a connection has to send its PROXY header",
        _seconds,
        30.0,
        commands=SERVE,
    ),
    # the app
    Opt("--factory", "APP is a callable that returns the app", None, False),
    Opt("--interface", "what APP is", str, "auto", choices=("auto", "asgi", "wsgi", "native", "protocol")),
    Opt("--protocol", "APP is an asyncio.Protocol factory (--interface protocol)", None, False),
    Opt("--root-path", "ASGI root_path, WSGI SCRIPT_NAME", str, ""),
    Opt(
        "--wsgi-threads",
        "threads a WSGI app runs on per worker (each a thread stack of memory); more requests wait their turn",
        _int_in(1),
        HTTPConfig.wsgi_threads,
        metavar="N",
    ),
    Opt(
        "--lifespan",
        "ASGI lifespan, uvicorn's rule: auto serves an app that returns or raises in it; on refuses one that raises; "
        "off never calls it",
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
    Opt(
        "--limit-concurrency",
        "requests in flight per worker beyond which a request is answered 503 with Retry-After at once (0: no limit)",
        _int_in(0),
        HTTPConfig.limit_concurrency,
        metavar="N",
    ),
    Opt("--no-server-header", "leave the Server header out of responses", None, False),
    # WebSockets (ws/config.py's WSConfig): uvicorn's names and defaults
    Opt("--ws", "WebSockets; none: an upgrade request is plain HTTP to the app", str, "auto", choices=("auto", "none")),
    Opt("--ws-max-size", "WebSocket message, bytes (close 1009 beyond)", _int_in(1), WSConfig.max_size, metavar="N"),
    Opt(
        "--ws-max-queue",
        "WebSocket messages an ASGI app has not received; reading pauses beyond",
        _int_in(1),
        WSConfig.max_queue,
        metavar="N",
    ),
    Opt(
        "--ws-ping-interval",
        "seconds between WebSocket keep-alive pings (0: none)",
        _seconds_or_off,
        WSConfig.ping_interval,
    ),
    Opt(
        "--ws-ping-timeout",
        "seconds a ping waits for its pong (close 1011 after; 0: no wait)",
        _seconds_or_off,
        WSConfig.ping_timeout,
    ),
    Opt(
        "--ws-per-message-deflate",
        "accept a client's permessage-deflate offer (RFC 7692)",
        _flag,
        WSConfig.per_message_deflate,
        metavar="BOOL",
    ),
    # the ring (RingConfig): declared with its settings in ring_settings.py
    *RING_OPTIONS.values(),
]
OPTION_BY_DEST = {o.dest: o for o in OPTIONS}
HTTP_FIELDS = [f.name for f in dataclasses.fields(HTTPConfig) if f.name in OPTION_BY_DEST]
# WSConfig's fields set by options (--ws-NAME)
WS_FIELDS = [f.name for f in dataclasses.fields(WSConfig) if "ws_" + f.name in OPTION_BY_DEST]


class _Parser(argparse.ArgumentParser):
    """An option after a subcommand that the subcommand does not know is
    that subcommand's error (with its usage), and names the option meant."""

    def parse_known_args(  # type: ignore[override]  # one signature for its overloads
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        subs = getattr(self, "subcommands", None)
        if extra and subs and getattr(parsed, "cmd", None) in subs:
            sub = subs[parsed.cmd]
            # every spelling (uvicorn's too) is matched; the hint names uringserve's own
            known = {
                f: action.option_strings[0]
                for action in sub._actions
                if not isinstance(action, flag_aliases.Refused)
                for f in action.option_strings
            }
            hints = []
            for word in extra:
                close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1) if word.startswith("-") else []
                hints.append(f"{word} (did you mean {known[close[0]]}?)" if close else word)
            sub.error("unrecognized arguments: " + " ".join(hints))
        return parsed, extra


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    from . import __version__

    env = os.environ if environ is None else environ
    parser = _Parser(prog="uringserve", description="Serve TCP from Python on io_uring.")
    parser.add_argument("--version", action="version", version=f"uringserve {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=argparse.ArgumentParser)
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
        flag_aliases.add_refused(p)  # other servers' flags that mean something else: an error naming ours
    if bad:  # refused before anything starts, each naming its variable, option and accepted values
        parser.exit(2, "".join(f"uringserve: {msg}\n" for msg in bad.values()))
    parser.subcommands = {**subs, "doctor": doctor}  # type: ignore[attr-defined]
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
    names = [opt.flag, *flag_aliases.spellings(opt.flag)]  # uvicorn's or gunicorn's name for the same thing
    if opt.is_flag:
        p.add_argument(*names, dest=opt.dest, action="store_true", default=default, help=f"{opt.help} [{opt.env}]")
        for negation in flag_aliases.negations(opt.flag):
            p.add_argument(negation, dest=opt.dest, action="store_false", help=argparse.SUPPRESS)
    else:
        assert opt.type is not None  # only flags have none
        p.add_argument(
            *names,
            dest=opt.dest,
            type=opt.type,
            default=default,
            choices=opt.choices,
            action="append" if opt.repeat else "store",
            metavar=opt.metavar,
            help=f"{opt.help} (default: {opt.shown_default or 'none'}) [{opt.env}]".replace("%", "%%"),
        )


def options_table() -> str:
    """The README's table of options, environment variables and defaults."""
    lines = ["| option | environment | default | commands | what it sets |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        default = o.shown_default
        if o.choices:
            default += " (" + " \\| ".join(o.choices) + ")"
        lines.append(f"| `{o.flag}` | `{o.env}` | {default} | {', '.join(o.commands)} | {o.help} |")
    return "\n".join(lines)


# -- building what runs --------------------------------------------------------------
def split_app(spec: str) -> tuple[str, str]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"uringserve: APP must be module:attribute (e.g. apps.http:app), not {spec!r}")
    return module_name, attr


def load_app(spec: str, factory: bool) -> Any:
    module_name, attr = split_app(spec)
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
        if not callable(obj):
            raise SystemExit(f"uringserve: --factory: {spec} is not callable (it should return the app)")
        try:
            inspect.signature(obj).bind()
        except TypeError as exc:
            raise SystemExit(f"uringserve: --factory: {spec} cannot be called without arguments ({exc})") from None
        except ValueError:
            pass  # no signature to read (a builtin): call it and see
        obj = obj()
    return obj


def listeners(args: argparse.Namespace, environ: Any = None) -> list[Any]:
    """Socket activation (LISTEN_FDS), --fd, --bind, --uds, then TCP on
    each --host (127.0.0.1) and --port (8000). Where --uds, --fd, --bind or
    activation give a listener, TCP is added only when --host or --port is
    given too: all are served, none is dropped."""
    from .server import TCP, Inherited, Unix, activated

    out: list[Any] = list(activated(environ))
    for fd in args.fd or ():
        out.append(Inherited(fd, backlog=args.backlog))
    for kind, where, port in args.bind or ():
        if kind == "tcp":
            out.append(TCP(where or None, port, backlog=args.backlog, reuse_port=args.reuse_port))
        elif kind == "unix":
            out.append(Unix(where, mode=args.uds_mode, backlog=args.backlog))
        else:
            out.append(Inherited(where, backlog=args.backlog))
    if args.uds:
        if args.uds.startswith("@") and args.uds_mode is not None:
            raise SystemExit(f"uringserve: --uds-mode: the abstract socket {args.uds} has no file to give a mode")
        out.append(Unix(args.uds, mode=args.uds_mode, backlog=args.backlog))
    elif args.uds_mode is not None and not any(kind == "unix" for kind, _, _ in args.bind or ()):
        raise SystemExit("uringserve: --uds-mode applies to a Unix socket: give --uds (or --bind unix:PATH) too")
    if out and not args.host and args.port is None:
        return out
    port = DEFAULT_PORT if args.port is None else args.port
    for host in args.host or [DEFAULT_HOST]:
        out.append(TCP(host or None, port, backlog=args.backlog, reuse_port=args.reuse_port))
    return out


def ring_config(args: argparse.Namespace) -> RingConfig | None:
    """The ring the options set (None off the uring loop); what is not given
    is left to RingConfig, and sized when the loop makes its ring."""
    if args.loop != "uring":
        return None
    given = {name: getattr(args, opt.dest) for name, opt in RING_OPTIONS.items()}
    config = RingConfig(**{name: value for name, value in given.items() if value is not None})
    try:  # refused here, once, in the options' words
        validate(config, names={name: opt.flag for name, opt in RING_OPTIONS.items()})
    except RingConfigError as exc:
        raise SystemExit("uringserve: " + "; ".join(exc.problems)) from None
    return config


def tls_context(args: argparse.Namespace) -> CoreTLS | None:
    """The TLS the command serves: the core's (tls.CoreTLS) on the uring loop,
    its stdlib context through asyncio's SSLProtocol on the others."""
    if args.tls_cert is None:
        if args.tls_key or args.tls_ca:
            raise SystemExit("uringserve: --tls-key and --tls-ca need --tls-cert")
        if args.tls_ciphers:
            raise SystemExit("uringserve: --tls-ciphers needs --tls-cert")
        if args.tls_sni_strict:
            raise SystemExit("uringserve: --tls-sni-strict needs --tls-cert")
        return None
    keys = list(args.tls_key or ())
    if len(keys) > len(args.tls_cert):
        raise SystemExit("uringserve: more --tls-key than --tls-cert: each key belongs to the certificate in its place")
    pairs = [(cert, keys[i] if i < len(keys) else None) for i, cert in enumerate(args.tls_cert)]
    for cert, key in pairs:
        ctx = _load_pair(cert, key)
    if args.tls_ca:
        try:
            ctx.load_verify_locations(args.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(f"uringserve: --tls-ca {args.tls_ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    if args.tls_ciphers:
        try:
            ctx.set_ciphers(args.tls_ciphers)
        except ssl.SSLError:
            raise SystemExit(
                f"uringserve: --tls-ciphers {args.tls_ciphers!r}: OpenSSL knows no cipher in it "
                "(an OpenSSL cipher list, e.g. ECDHE+AESGCM)"
            ) from None
    from .tls import CoreTLS
    from .workers import ticket_secret

    try:  # the files are known good (above): what fails here is the core's own setup
        return CoreTLS(
            *pairs[0],
            more=pairs[1:],
            ticket_secret=ticket_secret(),  # a worker's: the supervisor's, shared by all
            ca=args.tls_ca,
            ciphers=args.tls_ciphers,
            min_version=args.tls_min_version,
            sni_strict=args.tls_sni_strict,
            ktls=args.tls_ktls,
        )
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"uringserve: --tls-cert {pairs[0][0]}: {exc}") from None


def _load_pair(cert: str, key: str | None) -> ssl.SSLContext:
    """A context with one certificate and its key, or the one-line error saying what is wrong with them."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for opt, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"uringserve: {opt} {path}: no such file")
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        if key is None:  # the one file must hold the key too
            raise SystemExit(
                f"uringserve: --tls-cert {cert}: cannot load a certificate chain and its private key "
                f"from it ({exc}); give the key file with --tls-key"
            ) from None
        raise SystemExit(
            f"uringserve: --tls-cert {cert} with --tls-key {key}: cannot load them ({exc}); "
            "the certificate and key must be PEM and belong together"
        ) from None
    return ctx


def build_server(args: argparse.Namespace) -> Any:
    """The Server the command runs, from its arguments."""
    server = _protocol_server(args)
    server.max_connections = args.max_connections or None
    if args.proxy_protocol:
        from .server.proxy_protocol import ProxyProtocol

        server.proxy_protocol = ProxyProtocol(args.forwarded_allow_ips, timeout=args.proxy_protocol_timeout)
    return server


def _protocol_server(args: argparse.Namespace) -> Any:
    tls = tls_context(args)
    if args.cmd == "echo":
        from .echo import Echo
        from .server import Server

        return Server(Echo, shutdown_timeout=args.graceful_timeout, ssl=tls)
    if args.cmd == "resp":
        from .resp.server import RESPServer

        server = RESPServer(shutdown_timeout=args.graceful_timeout)
        server.ssl = tls
        return server
    app = load_app(args.app, args.factory)
    if args.protocol or args.interface == "protocol":
        from .server import Server

        if not callable(app):
            raise SystemExit(f"uringserve: {args.app} is not a protocol factory (a callable)")
        try:  # called once per connection, with nothing: an HTTP app here would fail each connection
            inspect.signature(app).bind()
        except TypeError:
            raise SystemExit(
                f"uringserve: {args.app} is not a protocol factory: it cannot be called without arguments "
                "(an HTTP handler or ASGI app is served without --protocol)"
            ) from None
        except ValueError:
            pass  # no signature to read
        return Server(app, shutdown_timeout=args.graceful_timeout, ssl=tls)
    from .http import HTTPServer

    config = HTTPConfig(
        shutdown_timeout=args.graceful_timeout,
        server_header=None if args.no_server_header else HTTPConfig.server_header,
        **{name: getattr(args, name) for name in HTTP_FIELDS},
    )
    forwarding = None
    if args.proxy_headers:
        from .http.forwarded import Forwarding

        forwarding = Forwarding(args.forwarded_allow_ips, args.forwarded_style)
    try:
        return HTTPServer(
            app,
            interface=args.interface,
            config=config,
            lifespan=args.lifespan,
            root_path=args.root_path,
            ssl=tls,
            forwarding=forwarding,
            multiprocess=hasattr(args, "workers") and worker_count(args) > 1,
            ws="none" if args.ws == "none" else WSConfig(**{f: getattr(args, "ws_" + f) for f in WS_FIELDS}),
        )
    except TypeError as exc:  # what detect_interface() could not tell
        raise SystemExit(f"uringserve: {exc}; or --interface protocol for an asyncio protocol factory") from None


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if getattr(args, "max_connections", 0) and args.loop != "uring":
        parser.error(f"--max-connections needs --loop uring: the {args.loop} loop cannot pause accepting")
    if getattr(args, "reload", False) and worker_count(args) > 1:
        # uvicorn ignores --workers with --reload (a warning); a worker count asked for and not given is refused here
        parser.exit(
            2,
            f"uringserve: --reload runs one worker (it is for development: each change restarts it), "
            f"not --workers {args.workers}{f' ({worker_count(args)} here)' if not args.workers else ''}: "
            "drop --workers, or --reload to serve with workers\n",
        )
    if args.cmd == "doctor":
        import json

        from .diagnose import format_report, report

        rep = report()
        print(json.dumps(rep, indent=2) if args.json else format_report(rep))
        return 0 if rep["usable"] else 1
    from . import logs

    configure_logging(args)
    try:
        return _serve(argv, args)
    except SystemExit as exc:  # a one-line refusal: as the log format says it
        if isinstance(exc.code, str):
            logs.error(exc.code)
            return 1
        raise


def configure_logging(args: argparse.Namespace) -> None:
    """--log-level and --log-format, for this process (a worker does it too)."""
    from . import logs

    logs.configure(args.log_level, args.log_format)


def _serve(argv: list[str], args: argparse.Namespace) -> int:
    from . import workers
    from .server import Inherited, run_command

    name = "uringserve" if args.cmd == "run" else args.cmd
    spec = workers.worker_spec()
    if spec is not None:  # a worker of a supervisor: its listeners are the fds it was given
        workers.die_with_supervisor(spec)
        server = build_server(args)
        metrics = _metrics(args, server)
        limit = request_limit(args)
        recycler = Recycler(server, limit, spec.get("pause_fd")) if limit else None

        def ready(s: Any) -> None:
            workers.report_ready(spec)
            if metrics is not None:
                metrics.start_sampling(s)
            if recycler is not None:
                recycler.start()

        specs = [Inherited(fd, backlog=args.backlog) for fd in spec["fds"]]
        code = run_command(
            server, name, loop=args.loop, ring_config=ring_config(args), listeners=specs, on_ready=ready, quiet=True
        )
        if code and recycler is not None and recycler.began and server.signalled is None:
            # a recycle whose drain hit --graceful-timeout: planned all the same (the
            # abort is logged); a crash would make the supervisor back off and count it
            return 0
        return code
    check(args)
    if worker_count(args) > 1 or args.max_requests or getattr(args, "reload", False):
        return build_supervisor(argv, args).run()
    server = build_server(args)
    metrics = _metrics(args, server)
    endpoint = None
    on_ready = metrics.start_sampling if metrics is not None else None
    tls = getattr(server, "ssl", None)
    if tls is not None:  # SIGHUP: the certificate files again (a supervisor would start new workers)
        on_ready = _with_tls_reload(tls, on_ready)
    if metrics is not None:
        from . import logs
        from . import metrics as metrics_module

        host, port = args.metrics
        collect = metrics_module.collect(metrics_module.default_registry())
        try:
            endpoint = metrics_module.Endpoint(host, port, collect, lambda: server.serving)
        except OSError as exc:
            logs.error(f"{name}: {exc}")
            return 1
    try:
        return run_command(
            server,
            name,
            loop=args.loop,
            ring_config=ring_config(args),
            listeners=listeners(args),
            on_ready=on_ready,
            note="" if endpoint is None else f"metrics on {endpoint.url}",
        )
    finally:
        if endpoint is not None:
            endpoint.close()


def _with_tls_reload(tls: Any, then: Callable[[Any], None] | None) -> Callable[[Any], None]:
    """An on_ready that makes SIGHUP reload `tls` (tls_reload.py), then calls `then`."""

    def ready(server: Any) -> None:
        from . import tls_reload

        tls_reload.install(tls)
        if then is not None:
            then(server)

    return ready


def check(args: argparse.Namespace) -> None:
    """What can be refused before any process starts, refused once, as one
    line (SystemExit): a supervisor checks it before forking, so a bad
    setting is not N workers' N tracebacks. The app itself is imported by
    the workers only (a reload must import it afresh): here its module is
    only looked up, so a module that does not exist is said once. Nor is
    prometheus_client imported here: it must first be imported after the
    supervisor set its multiprocess directory (metrics.worker_restarts())."""
    if args.cmd == "run":
        module_name, _ = split_app(args.app)
        missing = _module_missing(module_name)
        if missing is not None:
            raise SystemExit(f"uringserve: cannot import {module_name!r}: {missing}")
    if args.cmd == "resp":
        # the demo's keyspace is in its process's memory: several processes
        # would be several databases, a replaced one an empty database
        if worker_count(args) > 1:
            raise SystemExit(
                f"uringserve resp: {worker_count(args)} workers would be {worker_count(args)} separate keyspaces "
                "(each process keeps its own in memory: a key SET through one connection is missing through "
                "another); serve RESP from one process (--workers 1)"
            )
        if args.max_requests:
            raise SystemExit("uringserve resp: --max-requests would replace the process and lose every key")
    if tls_context(args) is not None and args.proxy_protocol:
        raise SystemExit(
            "uringserve: --proxy-protocol with --tls-cert is not supported (the PROXY header comes before the "
            "TLS handshake): terminate TLS at the proxy"
        )
    if getattr(args, "proxy_headers", False) and (args.protocol or args.interface == "protocol"):
        raise SystemExit("uringserve: --proxy-headers applies to HTTP apps, not to --protocol factories")
    ring_config(args)
    listeners(args, environ={})  # the combinations of --uds, --uds-mode, --host and --port
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise SystemExit("uringserve: --loop uvloop needs the uvloop package: pip install uvloop") from None
    if args.metrics is not None and importlib.util.find_spec("prometheus_client") is None:
        raise SystemExit(METRICS_MISSING)
    if args.cmd == "run":
        check_reload(args)


def check_reload(args: argparse.Namespace) -> None:
    """--reload's package and directories; its options without it are said once (as uvicorn does)."""
    from . import reload

    if not args.reload:
        if args.reload_dir or args.reload_include or args.reload_exclude:
            logging.getLogger("uringserve").warning(
                "--reload-dir, --reload-include and --reload-exclude do nothing without --reload"
            )
        return
    if not reload.available():
        raise SystemExit(reload.MISSING)
    for d in args.reload_dir or []:
        if not os.path.isdir(d):
            raise SystemExit(f"uringserve: --reload-dir {d}: no such directory")


def _module_missing(name: str) -> str | None:
    """Why module `name` cannot be imported (ModuleNotFoundError's message),
    or None when it can, or when only importing it can tell. Looked up as
    load_app() imports it (the working directory first), without running
    its code or its packages' where the path finder can tell."""
    cwd = os.getcwd()
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        parts = name.split(".")
        try:
            spec = importlib.util.find_spec(parts[0])  # a top-level name: no package is imported
        except ValueError:  # in sys.modules without a spec: only importing it tells
            return None
        if spec is None:
            return f"No module named {parts[0]!r}"
        depth = 1
        while spec is not None and depth < len(parts) and spec.submodule_search_locations is not None:
            depth += 1
            spec = importlib.machinery.PathFinder.find_spec(
                ".".join(parts[:depth]), list(spec.submodule_search_locations)
            )
        if spec is not None and depth == len(parts):
            return None
        parent = ".".join(parts[:depth])
        not_a_package = spec is not None  # the walk stopped at a module
        # What the path finder cannot settle (a package whose __init__ extends
        # its __path__, a module that is not a package but puts submodules in
        # sys.modules): the import system's answer, which imports the
        # packages above it, here only.
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError as exc:  # worded as the import's own error
            return f"No module named {name!r}; {parent!r} is not a package" if not_a_package else str(exc)
        except Exception:  # a package above it that fails as it is imported: the workers say how
            return None
        return None if found is not None else f"No module named {name!r}"
    finally:
        if added:
            sys.path.remove(cwd)


def worker_count(args: argparse.Namespace) -> int:
    """--workers, 0 meaning one per CPU this process may run on (its
    affinity, which a container's cpuset limits, not the machine's count)."""
    if args.workers:
        return int(args.workers)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def build_supervisor(argv: list[str], args: argparse.Namespace) -> Any:
    """The Supervisor for --workers N (or for --max-requests with one worker:
    a process must be there to start the replacement, as gunicorn's master is;
    or for --reload: its one worker is replaced when a file changes)."""
    from . import workers

    return workers.Supervisor(
        argv,
        listeners(args),
        worker_count(args),
        reuse_port=args.reuse_port,
        graceful_timeout=args.graceful_timeout,
        name="uringserve" if args.cmd == "run" else args.cmd,
        metrics=args.metrics,
        ready_timeout=args.ready_timeout,
        recycling=bool(args.max_requests),
        watcher=build_watcher(args),
    )


def build_watcher(args: argparse.Namespace) -> Any:
    """--reload's file watcher (reload.Watcher), None without it."""
    if not getattr(args, "reload", False):
        return None
    from .reload import ReloadFilter, Watcher

    return Watcher(ReloadFilter.from_options(args.reload_dir, args.reload_include, args.reload_exclude))


def request_limit(args: argparse.Namespace, rng: random.Random | None = None) -> int:
    """The requests a worker serves before it is recycled: --max-requests
    plus 0..--max-requests-jitter (each worker its own), 0 for never."""
    if not args.max_requests:
        return 0
    return int(args.max_requests + (rng or random).randint(0, args.max_requests_jitter))


METRICS_MISSING = "uringserve: --metrics needs prometheus_client: pip install 'uringserve[metrics]'"


def _metrics(args: argparse.Namespace, server: Any) -> Any:
    """This process's Metrics when --metrics is on (a worker's write to the supervisor's directory)."""
    if args.metrics is None:
        return None
    try:
        from .metrics import Metrics
    except ImportError:
        raise SystemExit(METRICS_MISSING) from None
    metrics = Metrics()
    if hasattr(server, "observer"):
        server.observer = metrics.observe
    return metrics


RECYCLE_POLL = 0.1  # seconds between looks at the request count (uvicorn's --limit-max-requests: the same tick)


class Recycler:
    """--max-requests in a worker: drain and exit (status 0: the supervisor
    starts a fresh worker) once `limit` requests are answered. The count
    (server.requests_served(), kept by the protocol anyway) is read every
    RECYCLE_POLL seconds, so a request costs nothing more with the option
    on; the worker serves its limit plus what arrives before the next look.
    `pause_fd`: the supervisor's byte, "1" while the last reload failed
    (a recycled worker would be replaced by the code that cannot start)."""

    def __init__(self, server: Any, limit: int, pause_fd: int | None = None) -> None:
        self.server = server
        self.limit = limit
        self.pause_fd = pause_fd
        self.began = False  # the drain is this recycle's
        self._paused_said = False
        self._task: Any = None  # the shutdown task, kept from the garbage collector
        self._log = logging.getLogger("uringserve.workers")

    def paused(self) -> bool:
        return self.pause_fd is not None and os.pread(self.pause_fd, 1, 0) == b"1"

    def start(self) -> None:
        """Once serving, on its loop."""
        import asyncio

        loop = asyncio.get_running_loop()

        def look() -> None:
            if not self.server.serving:
                return
            n = self.server.requests_served()
            if n >= self.limit:
                if not self.paused():
                    self._log.info("recycling after %d requests (limit %d)", n, self.limit)
                    self.began = True
                    self._task = loop.create_task(self.server.shutdown())
                    return
                if not self._paused_said:
                    self._paused_said = True
                    self._log.warning(
                        "%d requests served (limit %d): not recycling while the last reload failed", n, self.limit
                    )
            loop.call_later(RECYCLE_POLL, look)

        loop.call_later(RECYCLE_POLL, look)


__all__ = ["main", "build_parser", "options_table", "OPTIONS"]
