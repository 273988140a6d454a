"""Logging for the uringserve command: text, or one JSON object per line
(`--log-format json`, what log collectors read), with the access log's
fields (client, method, target, status, bytes, duration) as keys.

What the command itself says outside the log goes through here too, so
that with `--log-format json` a collector reading stdout and stderr gets
JSON records from uringserve: the start-up banner (`banner()`, on stdout:
what scripts and tests read the address from), one-line errors (`error()`,
on stderr), an uncaught exception in any thread (the metrics endpoint's
too) and one Python could only report (`sys.unraisablehook`: a record
with its traceback as a field), and warnings (`logging.captureWarnings`).
Not covered: what an app prints itself, and the interpreter's own fatal
errors (faulthandler, "Fatal Python error").
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any

# attributes every LogRecord has; anything else was passed as extra= and is a field
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

_format = "text"  # what configure() chose


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "info", fmt: str = "text") -> None:
    global _format
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_uncaught
        sys.unraisablehook = _log_unraisable
    elif fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        # Python's own, as before any JSON run in this process
        sys.excepthook = sys.__excepthook__
        threading.excepthook = threading.__excepthook__
        sys.unraisablehook = sys.__unraisablehook__
    else:
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    logging.captureWarnings(fmt == "json")  # py.warnings records; in text, Python's own lines
    _format = fmt
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # the access log is a record of traffic, not a diagnostic: on whenever it is asked for
    logging.getLogger("uringserve.access").setLevel(logging.INFO)


def _record(level: int, name: str, message: str, fields: dict[str, Any]) -> str:
    record = logging.LogRecord(name, level, "", 0, message, None, None)
    record.__dict__.update(fields)
    return JSONFormatter().format(record)


def banner(message: str, **fields: Any) -> None:
    """The start-up line on stdout ("NAME on WHERE (...)"): the text, or a
    JSON record with `fields` beside the same message. Whatever the level:
    it is the answer to "where does it listen"."""
    line = _record(logging.INFO, "uringserve", message, fields) if _format == "json" else message
    print(line, file=sys.stdout, flush=True)


def error(message: str, **fields: Any) -> None:
    """A one-line error for the user on stderr: the text, or a JSON record."""
    line = _record(logging.ERROR, "uringserve", message, fields) if _format == "json" else message
    # one write of the whole line: workers share the supervisor's stderr, and a
    # print's text and newline, written apart, splice with another worker's
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("uringserve").critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # as threading's own hook: a thread's exit, not an error
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    logging.getLogger("uringserve").error(
        "uncaught %s in thread %s: %s", args.exc_type.__name__, name, args.exc_value, exc_info=exc_info
    )


def _log_unraisable(u: Any) -> None:
    what = u.err_msg or "Exception ignored in"
    where = f": {u.object!r}" if u.object is not None else ""
    exc_info = (u.exc_type, u.exc_value, u.exc_traceback) if u.exc_value is not None else None
    logging.getLogger("uringserve").error("%s%s", what, where, exc_info=exc_info)


__all__ = ["JSONFormatter", "configure", "banner", "error"]
