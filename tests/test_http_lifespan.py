"""ASGI lifespan with uvicorn's `--lifespan auto|on|off` rule
(uvicorn/lifespan/on.py), for the shapes apps in the wild have
(tests/asgi_app.py): the tutorial app that returns for any scope but
"http", one that raises there, one whose lifespan task raises after
startup complete, one that refuses its startup, and a proper lifespan with
state. In process (both loops) and through `uringserve run` with one and
two workers. A startup that never ends is in test_workers_lifecycle.py."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import asgi_app
import pytest
from conftest import Proc, uringserve
from http_client import exchange

from uringserve.http import HTTPServer
from uringserve.http.asgi import Lifespan, LifespanError

GET = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
NO_STATE = b"[]"
STATE = b"[('db', 'up')]"
UNSUPPORTED = "ASGI app does not support lifespan (it {how} before startup complete); serving without it"
AFTER_STARTUP = "ASGI lifespan task raised after startup complete; serving on, without the app's shutdown"
FAILED = "ASGI lifespan startup failed: database unreachable at db:5432"
ON_RAISED = "ASGI lifespan startup did not complete: the app raised AssertionError('only http') (--lifespan on)"
SHUTDOWN_LINE = "with_state: lifespan shutdown ran"


@pytest.fixture
def http_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="uringserve.http")
    return caplog


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "uringserve.http" and r.levelno == level]


def serve_once(h: Any, app: Any, mode: str) -> tuple[bytes, HTTPServer]:
    """Start the app with lifespan `mode`, GET / once, shut down: the body."""

    async def main() -> tuple[bytes, HTTPServer]:
        srv = HTTPServer(app, interface="asgi", lifespan=mode)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            r = await asyncio.to_thread(exchange, port, GET)
        finally:
            await srv.shutdown(timeout=5)
        (resp,) = r.responses
        assert resp.status == 200 and resp.header("content-length") == str(len(resp.body)), resp
        return resp.body, srv

    return h.run(main())


@pytest.mark.parametrize(
    "app,how",
    [(asgi_app.tutorial, "returned"), (asgi_app.asserts_http, "raised AssertionError('only http')")],
    ids=["returns", "raises"],
)
def test_auto_serves_an_app_without_lifespan_and_says_so_once(h, http_log, app, how: str) -> None:
    body, _ = serve_once(h, app, "auto")
    assert body == NO_STATE
    assert messages(http_log, logging.INFO) == [UNSUPPORTED.format(how=how)]
    assert messages(http_log, logging.ERROR) == []


def test_on_refuses_an_app_that_raises_in_the_lifespan_scope(h, http_log) -> None:
    async def main() -> None:
        srv = HTTPServer(asgi_app.asserts_http, interface="asgi", lifespan="on")
        with pytest.raises(LifespanError) as info:
            await srv.start("127.0.0.1", 0)
        assert str(info.value) == ON_RAISED
        assert srv.sockets == () and not srv.serving

    h.run(main())
    # what the app raised is logged with its traceback (the app's bug, for its author)
    errors = [r for r in http_log.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["ASGI lifespan startup raised"]
    assert isinstance(errors[0].exc_info[1], AssertionError)  # type: ignore[index]


def test_on_serves_an_app_that_returns_from_the_lifespan_scope(h, http_log) -> None:
    """uvicorn's "on" refuses an exception only: an app that returns is a
    startup without complaint there, and served here too (said once)."""
    body, srv = serve_once(h, asgi_app.tutorial, "on")
    assert body == NO_STATE
    assert messages(http_log, logging.INFO) == [UNSUPPORTED.format(how="returned")]
    assert messages(http_log, logging.ERROR) == []
    assert srv._lifespan is not None and not srv._lifespan.supported


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_startup_failed_is_an_error_naming_the_message(h, mode: str) -> None:
    async def main() -> None:
        srv = HTTPServer(asgi_app.startup_fails, interface="asgi", lifespan=mode)
        with pytest.raises(LifespanError) as info:
            await srv.start("127.0.0.1", 0)
        assert str(info.value) == FAILED
        assert srv.sockets == ()
        lifespan = srv._lifespan
        assert lifespan is not None and lifespan._task is not None
        assert lifespan._task.done()  # the app waited for more: cancelled, not left behind

    h.run(main())


def test_a_lifespan_task_that_raises_after_startup_is_logged_and_serving_goes_on(h, http_log) -> None:
    body, _ = serve_once(h, asgi_app.raises_after_startup, "auto")
    assert body == STATE  # the startup's state reached the request
    errors = [r for r in http_log.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [AFTER_STARTUP]
    assert str(errors[0].exc_info[1]) == "lifespan task broke after startup"  # type: ignore[index]


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_proper_lifespan_shares_its_state_and_shuts_down(h, http_log, capsys, mode: str) -> None:
    body, srv = serve_once(h, asgi_app.with_state, mode)
    assert body == STATE
    assert capsys.readouterr().out == SHUTDOWN_LINE + "\n"  # once, at shutdown
    assert srv._lifespan is not None and srv._lifespan.supported
    assert messages(http_log, logging.INFO) == [] and messages(http_log, logging.ERROR) == []


def test_off_never_calls_the_lifespan_scope(h, capsys) -> None:
    body, _ = serve_once(h, asgi_app.with_state, "off")
    assert body == NO_STATE
    assert capsys.readouterr().out == ""


def test_a_mode_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="'auto', 'on' or 'off', not 'maybe'"):
        Lifespan(asgi_app.tutorial, "maybe")


# ---- through `uringserve run`, one process and two workers ------------------------


def command(app: str, workers: int, *extra: str) -> list[str]:
    return ["run", f"tests.asgi_app:{app}", "--port", "0", "--workers", str(workers), *extra]


def served_body(srv: Proc) -> bytes:
    r = exchange(srv.port, GET)
    (resp,) = r.responses
    assert (resp.status, resp.header("content-type")) == (200, "text/plain"), resp
    return resp.body


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "app,body,logged",
    [
        ("tutorial", NO_STATE, UNSUPPORTED.format(how="returned")),
        ("asserts_http", NO_STATE, UNSUPPORTED.format(how="raised AssertionError('only http')")),
        ("raises_after_startup", STATE, AFTER_STARTUP),
        ("with_state", STATE, None),
    ],
)
def test_the_command_serves_each_kind_of_lifespan(app: str, body: bytes, logged: str | None, workers: int) -> None:
    srv = Proc([sys.executable, "-m", "uringserve", *command(app, workers)])
    try:
        for _ in range(2 * workers):  # on a shared socket either worker may answer
            assert served_body(srv) == body
    finally:
        code = srv.stop()
    out = srv.output()
    assert code == 0, out
    if logged is not None:
        assert out.count(logged) == workers, out  # once per process that serves
    if app == "with_state":
        assert out.count(SHUTDOWN_LINE) == workers, out
    assert "startup did not complete" not in out


STOPPING = "uringserve: a worker failed to start 3 times in a row (last: exit status 1); stopping"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "app,mode,line",
    [("startup_fails", "auto", FAILED), ("asserts_http", "on", ON_RAISED)],
    ids=["startup-failed", "on-raises"],
)
def test_the_command_refuses_a_failed_startup_one_line_per_try(app: str, mode: str, line: str, workers: int) -> None:
    """One process: its one line. Workers: the module is found, so only a
    worker's startup can fail: each try says it in one line (three tries a
    slot at most), then the supervisor's line."""
    out = uringserve(*command(app, workers, "--lifespan", mode, "--log-level", "error"))
    assert out.returncode == 1, out
    said = [x for x in out.stderr.splitlines() if x.startswith("uringserve: ")]
    if workers == 1:
        assert said == [f"uringserve: {line}"], out.stderr
    else:
        assert 3 <= said.count(f"uringserve: {line}") <= 3 * workers and said[-1] == STOPPING, out.stderr
        assert len(said) == said.count(f"uringserve: {line}") + 1, out.stderr
    if mode == "on":  # the app's own exception, for its author
        assert out.stderr.count("AssertionError: only http\n") == len(said) - (workers > 1), out.stderr
    else:
        assert "Traceback" not in out.stderr
    assert "uringserve on " not in out.stdout  # never served


def test_the_command_with_lifespan_off_never_calls_it() -> None:
    srv = Proc([sys.executable, "-m", "uringserve", *command("with_state", 1, "--lifespan", "off")])
    try:
        assert served_body(srv) == NO_STATE
    finally:
        code = srv.stop()
    assert code == 0 and SHUTDOWN_LINE not in srv.output()
