"""The servers the WebSocket tests talk to, one command for each kind.

`uring` and `asyncio`: `python -m uringserve run apps.http:app --loop ...`
(what `make test` judges). `uvicorn`: the same routes (tests/ws_ref_app.py)
served by uvicorn with the `websockets` library, a server nobody here wrote:
`WS_TEST_SERVERS=uvicorn pytest tests/test_ws_*.py` shows that a test's
expectation is right before it is held against uringserve. The option names
are uvicorn's in both (--ws-max-size, --ws-per-message-deflate, ...)."""

from __future__ import annotations

import json
import os
import re
import urllib.request

from procs import PY, Proc

KINDS = [k for k in os.environ.get("WS_TEST_SERVERS", "uring,asyncio").split(",") if k]
UVICORN_BANNER = re.compile(r"Uvicorn running on http://[\d.]+:(\d+)")


def _only_ws_options(options: tuple[str, ...]) -> list[str]:
    out, keep = [], False
    for o in options:
        if o.startswith("--"):
            keep = o.startswith("--ws")
        if keep:
            out.append(o)
    return out


class WSServer:
    """A server of `kind` serving the demo's routes; `app`: "native"
    (apps.http:app) or "asgi" (apps.http:asgi_app); `module_app` serves
    another ASGI app instead (uvicorn runs it too)."""

    def __init__(self, kind: str, *options: str, app: str = "native", module_app: str | None = None) -> None:
        self.kind = kind
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if kind == "uvicorn":
            # uvicorn has the --ws-* options under the same names, not uringserve's HTTP and ring ones
            options = tuple(_only_ws_options(options))
            target = module_app or "tests.ws_ref_app:app"
            args = [PY, "-m", "uvicorn", target, "--port", "0", "--ws", "websockets-sansio", *options]
            self.proc = Proc(args, env=env, banner=UVICORN_BANNER, timeout=60)
        else:
            target = module_app or ("apps.http:app" if app == "native" else "apps.http:asgi_app")
            args = [PY, "-m", "uringserve", "run", target, "--port", "0", "--loop", kind, *options]
            self.proc = Proc(args, env=env, timeout=60)
        self.port = self.proc.port
        self.pid = self.proc.p.pid

    @property
    def uringserve(self) -> bool:
        return self.kind != "uvicorn"

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def alive(self) -> bool:
        return self.proc.p.poll() is None

    def stats(self) -> dict:
        """apps/http.py's /stats: the ring's counters ({} from uvicorn, or off the uring loop)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=20) as r:
            return json.loads(r.read())

    def output(self) -> str:
        return self.proc.output()

    def stop(self) -> int:
        return self.proc.stop()
