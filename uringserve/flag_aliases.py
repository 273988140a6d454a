"""The flag names users already type: uvicorn's, gunicorn's and hypercorn's.

A flag whose meaning is uringserve's own is accepted as another spelling of
that option (argparse gets both option strings). One whose meaning differs,
or that has no counterpart, is refused with a line that says what to use
instead: a silently different meaning (a CA file that verifies nothing
there and requires client certificates here, a worker timeout that kills
there and drains here) is worse than an error. The README's table of them
comes from ALIASES (aliases_table(), checked by a test).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn


@dataclass(frozen=True)
class Alias:
    flag: str  # as the other server spells it
    servers: str  # whose spelling it is
    target: str | None  # uringserve's option, when the meaning is the same
    why: str = ""  # when target is None: what to do instead
    negates: bool = False  # turns target (an on/off flag) off: uvicorn's --no-X


ALIASES: list[Alias] = [
    # the same meaning: another spelling of uringserve's option
    Alias("-w", "gunicorn, hypercorn", "--workers"),
    Alias("-b", "gunicorn, hypercorn", "--bind"),
    Alias("--timeout-keep-alive", "uvicorn", "--keepalive-timeout"),
    Alias("--keep-alive", "gunicorn, hypercorn", "--keepalive-timeout"),
    Alias("--limit-max-requests", "uvicorn", "--max-requests"),
    Alias("--limit-max-requests-jitter", "uvicorn", "--max-requests-jitter"),
    Alias("--timeout-graceful-shutdown", "uvicorn", "--graceful-timeout"),
    Alias("--ssl-certfile", "uvicorn", "--tls-cert"),
    Alias("--certfile", "gunicorn, hypercorn", "--tls-cert"),
    Alias("--ssl-keyfile", "uvicorn", "--tls-key"),
    Alias("--keyfile", "gunicorn, hypercorn", "--tls-key"),
    Alias("--worker-connections", "gunicorn", "--max-connections"),
    Alias("--limit-request-fields", "gunicorn", "--max-headers"),
    Alias("--no-access-log", "uvicorn", "--access-log", negates=True),  # off is the default here
    Alias("--server-header", "uvicorn", "--no-server-header", negates=True),  # on is the default here
    # --proxy-headers, --forwarded-allow-ips and --proxy-protocol are spelt as uvicorn and gunicorn spell them
    Alias("--no-proxy-headers", "uvicorn", "--proxy-headers", negates=True),  # off is the default here
    Alias("--proxy-allow-from", "gunicorn", "--forwarded-allow-ips"),  # one list for headers and PROXY here
    # a different meaning, or none here: refused, naming what to use
    Alias(
        "--ssl-ca-certs",
        "uvicorn",
        None,
        "uringserve's --tls-ca requires client certificates signed by the CA (uvicorn verifies them only with "
        "--ssl-cert-reqs 2): give --tls-ca for mutual TLS, or drop it",
    ),
    Alias(
        "--ca-certs",
        "gunicorn, hypercorn",
        None,
        "uringserve's --tls-ca requires client certificates signed by the CA (gunicorn only with --cert-reqs 2): "
        "give --tls-ca for mutual TLS, or drop it",
    ),
    Alias("--ssl-cert-reqs", "uvicorn", None, "--tls-ca requires client certificates; without it none are asked"),
    Alias("--cert-reqs", "gunicorn", None, "--tls-ca requires client certificates; without it none are asked"),
    Alias(
        "--ssl-keyfile-password", "uvicorn", None, "give --tls-key an unencrypted key file (readable by this user only)"
    ),
    Alias("--ssl-version", "uvicorn, gunicorn", None, "give the oldest version served: --tls-min-version 1.2 or 1.3"),
    Alias("--ssl-ciphers", "uvicorn", "--tls-ciphers"),
    Alias("--ciphers", "gunicorn, hypercorn", "--tls-ciphers"),
    Alias(
        "--timeout",
        "gunicorn",
        None,
        "no worker heartbeat here (a request never blocks a worker's loop); --graceful-timeout bounds a drain, "
        "--ready-timeout a worker's start",
    ),
    Alias("-t", "gunicorn", None, "see --timeout: --graceful-timeout bounds a drain, --ready-timeout a start"),
    Alias(
        "--timeout-worker-healthcheck",
        "uvicorn",
        None,
        "workers say they are ready on a pipe; --ready-timeout bounds how long that may take",
    ),
    Alias("--worker-class", "gunicorn", None, "uringserve runs its own workers: drop it and give --workers N"),
    Alias("-k", "gunicorn", None, "uringserve runs its own workers: drop it and give --workers N"),
    Alias("--threads", "gunicorn", "--wsgi-threads"),
    Alias(
        "--preload",
        "gunicorn",
        None,
        "each worker imports the app itself (a ring does not survive fork()): drop it",
    ),
    Alias(
        "--config",
        "gunicorn, hypercorn",
        None,
        "no config file: every option has an environment variable URINGSERVE_<NAME> (see --help)",
    ),
    Alias("-c", "gunicorn, hypercorn", None, "no config file: every option has an environment variable (see --help)"),
    Alias("--daemon", "gunicorn", None, "no daemon mode: run it under systemd or a supervisor (deploy/)"),
    Alias("-D", "gunicorn", None, "no daemon mode: run it under systemd or a supervisor (deploy/)"),
    Alias("--pid", "gunicorn, hypercorn", None, "no pid file: the service manager tracks the process (deploy/)"),
    Alias("--user", "gunicorn, hypercorn", None, "run it as that user from the service manager (deploy/: User=)"),
    Alias("--group", "gunicorn, hypercorn", None, "run it as that group from the service manager (deploy/: Group=)"),
    Alias("--chdir", "gunicorn", None, "start it in the app's directory (deploy/: WorkingDirectory=)"),
    Alias("--app-dir", "uvicorn", None, "start it in the app's directory (it is on the import path) or set PYTHONPATH"),
    Alias("--env-file", "uvicorn", None, "export the variables first (deploy/: EnvironmentFile=)"),
    Alias("--log-config", "uvicorn, gunicorn", None, "logging is set by --log-level and --log-format (text, json)"),
    Alias("--use-colors", "uvicorn", None, "log lines are plain text or JSON (--log-format)"),
    Alias("--no-use-colors", "uvicorn", None, "log lines are plain text or JSON (--log-format): drop it"),
    Alias(
        "--access-logfile",
        "gunicorn, hypercorn",
        None,
        "--access-log writes one line per response to stderr, with the other logs",
    ),
    Alias("--error-logfile", "gunicorn, hypercorn", None, "logs go to stderr, for the service manager's journal"),
    Alias("--log-file", "gunicorn", None, "logs go to stderr, for the service manager's journal"),
    Alias("--http", "uvicorn", None, "HTTP/1.1 is always parsed with httptools: drop it"),
    Alias(
        "--date-header",
        "uvicorn",
        None,
        "the Date header is always sent (RFC 9110: an origin server with a clock sends it): drop it",
    ),
    Alias(
        "--no-date-header",
        "uvicorn",
        None,
        "the Date header is always sent (RFC 9110: an origin server with a clock sends it)",
    ),
    Alias("--header", "uvicorn", None, "add default response headers in the app (a middleware)"),
    Alias(
        "--h11-max-incomplete-event-size",
        "uvicorn",
        None,
        "--max-header-bytes bounds a request's head (431 beyond)",
    ),
    Alias(
        "--limit-request-line",
        "gunicorn",
        None,
        "--max-target-bytes bounds the request-target (414 beyond), --max-header-bytes the whole head (431)",
    ),
    Alias(
        "--limit-request-field_size",
        "gunicorn",
        None,
        "--max-header-bytes bounds the whole head (431 beyond), not each field",
    ),
]


def spellings(flag: str) -> list[str]:
    """The other servers' spellings of uringserve's option `flag`."""
    return [a.flag for a in ALIASES if a.target == flag and not a.negates]


def negations(flag: str) -> list[str]:
    """The other servers' flags that turn uringserve's on/off option `flag` off."""
    return [a.flag for a in ALIASES if a.target == flag and a.negates]


class Refused(argparse.Action):
    """A flag of another server whose meaning is not one of ours: an error
    naming what to use, before anything starts."""

    def __init__(self, option_strings: Sequence[str], dest: str, alias: Alias, **kwargs: Any) -> None:
        self.alias = alias
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> NoReturn:
        a = self.alias
        parser.error(f"{a.flag} is {a.servers}'s; uringserve has no such option: {a.why}")


def add_refused(parser: argparse.ArgumentParser) -> None:
    """Every refused flag on `parser`, hidden from --help."""
    for a in ALIASES:
        if a.target is None:
            parser.add_argument(a.flag, action=Refused, alias=a, dest=argparse.SUPPRESS, default=argparse.SUPPRESS)


def aliases_table() -> str:
    """The README's table of the other servers' flags."""
    lines = ["| flag | whose | here |", "|---|---|---|"]
    for a in ALIASES:
        if a.target is None:
            here = f"refused: {a.why}"
        elif a.negates:
            here = f"`{a.target}` off (the default)"
        else:
            here = f"`{a.target}` (the same option)"
        lines.append(f"| `{a.flag}` | {a.servers} | {here} |")
    return "\n".join(lines)
