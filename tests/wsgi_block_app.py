"""A WSGI app whose /block never returns (tests/test_wsgi_apps.py: the
drain's timeout must still end the worker)."""

from __future__ import annotations

import sys
import threading

_never = threading.Event()


def app(environ, start_response):
    if environ["PATH_INFO"] == "/block":
        print("app: blocking", flush=True)
        sys.stdout.flush()
        _never.wait()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
