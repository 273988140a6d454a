"""WSGI (PEP 3333) over HTTPProtocol: the app runs on a bounded pool of
threads, never on the loop.

Each request is a task on the loop (so --limit-concurrency, the drain and
abort() treat it as any handler) that hands the call to a pool thread and
waits for its outcome. What the thread needs from the connection goes
through the loop (a *hop*: call_soon_threadsafe, the thread waiting on a
concurrent Future): the next body chunk for `wsgi.input`, and each body
chunk out, which resolves only once the transport is below its high-water
mark -- so the thread (and the app's iterator) waits while the client is
not reading, and neither direction is ever buffered whole. A response the
app returns as one piece (a list of at most one bytes, the common case) is
answered by the task as one write (framing.whole_head + respond_whole), as
ASGI does for a whole body; `wsgi.file_wrapper` of a regular file goes
through the connection's file path (the ring's reads, http/appfile.py).

The pool's threads are daemons: a drain waits for requests up to its
timeout, then the server reports the threads still running (by name, with
their request) and the worker exits without them. No library does this
hand-off onto our loop with our flow control (a WSGI container such as
a2wsgi buffers through its own queues), so it is written here."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from . import framing
from .appfile import AppFile
from .body import ClientDisconnected
from .limit import ConcurrencyLimit
from .protocol import Exchange, Runner
from .state import CLOSED

logger = logging.getLogger("uringserve.http")


class WSGIPool:
    """At most `size` daemon threads, started as work needs them."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"the WSGI thread count must be at least 1, got {size}")
        self.size = size
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self.busy: dict[str, str] = {}  # thread name -> what it runs (for the drain's report)

    def submit(self, fn: Callable[[], None], what: str) -> None:
        self._jobs.put((fn, what))
        with self._lock:
            if self._idle:
                self._idle -= 1  # this one is taken
                return
            if len(self._threads) < self.size:
                t = threading.Thread(target=self._work, name=f"uringserve-wsgi-{len(self._threads) + 1}", daemon=True)
                self._threads.append(t)
                t.start()

    def _work(self) -> None:
        name = threading.current_thread().name
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, what = job
            self.busy[name] = what
            try:
                fn()
            except BaseException:  # the job settles its own outcome; nothing may end the thread
                logger.exception("WSGI: a pool job failed")
            finally:
                del self.busy[name]
                with self._lock:
                    self._idle += 1

    def running(self) -> list[tuple[str, str]]:
        return sorted(self.busy.items())

    def close(self) -> None:
        """Idle threads end; busy ones end when their request does (they are
        daemons: nothing waits for them)."""
        for _ in self._threads:
            self._jobs.put(None)


class FileWrapper:
    """`wsgi.file_wrapper`: sent through the connection's file path when
    `filelike` is a regular file with a fileno, else iterated in blocks."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data


class WSGIInput:
    """`wsgi.input`: the request body, fetched from the loop chunk by chunk
    as the app reads (only what it asked for, plus the rest of one chunk,
    is held here)."""

    def __init__(self, call: _Call, has_body: bool) -> None:
        self._call = call
        self._buf = bytearray()
        self._eof = not has_body

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._call.hop(self._call.op_read)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buf))
        while len(self._buf) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = sys.maxsize if size is None or size < 0 else size
        start = 0
        while True:
            i = self._buf.find(b"\n", start, limit)
            if i >= 0:
                return self._take(i + 1)
            if len(self._buf) >= limit:
                return self._take(limit)
            start = len(self._buf)
            if not self._fill():
                return self._take(len(self._buf))

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class _Call:
    """One request's call of the app: start_response and write() for the
    app, the hops to the loop for the thread, the loop-side operations."""

    def __init__(self, app: Callable[..., Any], ex: Exchange, environ: dict[str, Any], done: asyncio.Future) -> None:
        self.app = app
        self.ex = ex
        self.loop = ex.conn.loop
        self.environ = environ
        self.done = done
        self.cancelled = False  # the task was cut (abort): every hop now fails
        self.status = 0
        self.block: bytes | None = None
        self.length: int | None = None
        self.close_conn = False
        self.head_sent = False  # a body byte (or the head) went out: start_response can no longer change it
        self.streaming = False
        environ["wsgi.input"] = WSGIInput(self, ex.has_body)

    # -- the app's side (the thread) -------------------------------------------
    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.block is not None:
            raise RuntimeError("WSGI: start_response called twice without exc_info")
        if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit() or status[3:4] not in ("", " "):
            raise ValueError(f"WSGI: start_response needs a status such as '200 OK', not {status!r}")
        code = int(status[:3])
        framing.status_line(code)
        pairs = []
        for name, value in headers:
            if type(name) is not str or type(value) is not str:
                raise TypeError(f"WSGI: header names and values are str, not {name!r}: {value!r}")
            pairs.append((name.encode("latin-1"), value.encode("latin-1")))
        framing_headers: list[tuple[bytes, bytes]] = []
        block = framing.encode_headers(pairs, framing_headers)
        length = None
        close = False
        for lname, fvalue in framing_headers:
            if lname == b"content-length":
                length = int(fvalue)
            elif lname == b"connection" and framing.close_option(fvalue):
                close = True
            # Transfer-Encoding is hop-by-hop (PEP 3333 forbids it): the server frames the body
        self.status, self.block, self.length, self.close_conn = code, block, length, close
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy write() callable: the bytes go out before anything the
        app returns."""
        if self.block is None:
            raise RuntimeError("WSGI: write() before start_response")
        self.streaming = True
        self._out(data)

    def _out(self, data: Any) -> None:
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"WSGI: the response body is bytes, not {type(data).__name__}")
            data = bytes(data)
        if data:
            if self.block is None:
                raise RuntimeError("WSGI: the app sent a body before start_response")
            self.head_sent = True
            self.hop(self.op_send, data)

    def hop(self, op: Callable[..., Any], *args: Any) -> Any:
        """Run `op(*args)` on the loop, and its coroutine if it returns one;
        wait here for the outcome."""
        cf: concurrent.futures.Future = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self._on_loop, cf, op, args)
        return cf.result()

    def _on_loop(self, cf: concurrent.futures.Future, op: Callable[..., Any], args: tuple) -> None:
        try:
            if self.cancelled or self.ex.conn.state is CLOSED:
                raise ClientDisconnected("the client closed the connection")
            result = op(*args)
        except BaseException as exc:
            cf.set_exception(exc)
            return
        if result is None or not asyncio.iscoroutine(result) and not isinstance(result, asyncio.Future):
            cf.set_result(result)
            return
        fut = asyncio.ensure_future(result)

        def settle(f: asyncio.Future) -> None:
            if f.cancelled():
                cf.set_exception(ClientDisconnected("the request was cancelled"))
            elif f.exception() is not None:
                cf.set_exception(f.exception())
            else:
                cf.set_result(f.result())

        fut.add_done_callback(settle)

    def run(self) -> None:
        """In a pool thread: the app's call, its response, close()."""
        try:
            result = self.app(self.environ, self.start_response)
            try:
                outcome = self._respond(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:
            self._report(None, exc)
            return
        self._report(outcome, None)

    def _report(self, outcome: Any, exc: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self._settle, outcome, exc)
        except RuntimeError:  # the loop is closed: the server stopped without this request
            logger.debug("WSGI: %s ended after its loop closed", self.environ.get("PATH_INFO"))

    def _respond(self, result: Any) -> Any:
        if not self.streaming:
            if type(result) is list and len(result) <= 1:
                if self.block is None:
                    raise RuntimeError("WSGI: the app returned without calling start_response")
                body = result[0] if result else b""
                if type(body) is not bytes:
                    if not isinstance(body, (bytearray, memoryview)):
                        raise TypeError(f"WSGI: the response body is bytes, not {type(body).__name__}")
                    body = bytes(body)
                return body  # the task answers it as a whole response
            if isinstance(result, FileWrapper) and self.block is not None:
                f = _regular(result.filelike)
                if f is not None:
                    offset = os.lseek(result.filelike.fileno(), 0, os.SEEK_CUR)
                    count = max(0, f.size - offset)
                    if self.length is not None:
                        count = min(count, self.length)  # PEP 3333: never past the Content-Length
                    self.head_sent = True
                    self.hop(self.op_file, f, offset, count)
                    return None
        it = iter(result)
        if not self.streaming and self.length is not None:
            # a framework's one-piece body behind an iterator (werkzeug's
            # ClosingIterator, Django's HttpResponse): a first chunk that
            # fills the promised Content-Length is the whole body when the
            # iterator ends there -- one write, no hop per chunk. Anything
            # else (a stream without a length) is sent as it comes: waiting
            # for a second chunk would delay the first.
            for first in it:
                if type(first) is bytes and len(first) == self.length:
                    for more in it:
                        self._out(first)
                        self._out(more)
                        break
                    else:
                        return first
                else:
                    self._out(first)
                break
        for data in it:
            self._out(data)
        if self.block is None:
            raise RuntimeError("WSGI: the app returned without calling start_response")
        self.head_sent = True
        self.hop(self.op_end)
        return None

    # -- the loop's side -------------------------------------------------------------
    def _head(self) -> None:
        ex = self.ex
        if self.close_conn:
            ex.keep_alive = False
        assert self.block is not None
        ex.start(self.status, self.block, self.length)

    def op_read(self) -> Any:
        return self.ex.body_in.next_chunk()

    def op_send(self, data: bytes) -> Any:
        ex = self.ex
        if not ex.started:
            self._head()
        ex.send(data)
        conn = ex.conn
        if conn.write_paused:
            return conn.drain()  # the thread waits until the client reads
        return None

    def op_end(self) -> None:
        if not self.ex.started:
            self._head()
        self.ex.end()

    def op_file(self, f: AppFile, offset: int, count: int) -> Any:
        ex = self.ex
        if self.close_conn:
            ex.keep_alive = False
        assert self.block is not None
        ex.start(self.status, self.block, count if self.length is None else self.length)
        pending = ex.send_file(f, offset, count)
        if pending is not None:
            return self._end_after(pending)
        ex.end()
        return None

    async def _end_after(self, pending: Any) -> None:
        await pending
        self.ex.end()

    def _settle(self, outcome: Any, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is not None:
                self.done.set_exception(exc)
            else:
                self.done.set_result(outcome)


def _regular(filelike: Any) -> AppFile | None:
    """Our own description of a regular file with a fileno, else None (iterated)."""
    try:  # io.UnsupportedOperation (no fileno) is an OSError
        return AppFile(filelike)
    except (AttributeError, TypeError, ValueError, OSError):
        return None


def wsgi_runner(
    app: Callable[..., Any],
    pool: WSGIPool,
    root_path: str = "",
    multiprocess: bool = False,
    limit: ConcurrencyLimit | None = None,
) -> Runner:
    """The runner of a WSGI app on `pool`; with `limit`, beyond its count of
    requests in flight a request is answered 503 before the app sees it."""
    base = {
        "SCRIPT_NAME": root_path,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.errors": sys.stderr,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.input_terminated": True,
    }
    root = root_path.encode("latin-1")

    def run(ex: Exchange) -> None:
        ex.task = ex.conn.spawn(_serve(app, pool, ex, environ_of(ex, base, root)))

    # with the limit on, a runner of its own: nothing of it on the way when it is off
    return run if limit is None else limit.wrap(run)


def environ_of(ex: Exchange, base: dict[str, Any], root: bytes) -> dict[str, Any]:
    """PEP 3333's environ of `ex` (on the loop: it reads the connection)."""
    conn = ex.conn
    raw_path = ex.raw_path
    path = unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path
    if root and (path == root or path.startswith(root + b"/")):
        path = path[len(root) :]
    env = dict(base)
    env["REQUEST_METHOD"] = ex.method
    env["PATH_INFO"] = path.decode("latin-1")
    env["QUERY_STRING"] = ex.query_string.decode("latin-1")
    env["SERVER_PROTOCOL"] = "HTTP/" + ex.version
    server = conn.server_addr
    env["SERVER_NAME"] = str(server[0]) if server else ""
    env["SERVER_PORT"] = str(server[1]) if server and server[1] is not None else ""
    client = conn.client
    if isinstance(client, (tuple, list)) and client:
        env["REMOTE_ADDR"] = str(client[0])
        env["REMOTE_PORT"] = str(client[1]) if len(client) > 1 else ""
    else:
        env["REMOTE_ADDR"] = ""
    env["wsgi.url_scheme"] = conn.scheme
    for name, value in ex.raw_headers:
        if name == b"content-type":
            env["CONTENT_TYPE"] = value.decode("latin-1")
            continue
        if name == b"content-length":
            env["CONTENT_LENGTH"] = value.decode("latin-1")
            continue
        if b"_" in name:
            # dropped, as nginx and gunicorn do: X_Forwarded_For would land on
            # the same key as the X-Forwarded-For a proxy vouches for
            continue
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        v = value.decode("latin-1")
        if key in env:
            env[key] += ("; " if key == "HTTP_COOKIE" else ",") + v
        else:
            env[key] = v
    return env


async def _serve(app: Callable[..., Any], pool: WSGIPool, ex: Exchange, environ: dict[str, Any]) -> None:
    conn = ex.conn
    done = conn.loop.create_future()
    call = _Call(app, ex, environ, done)
    pool.submit(call.run, f"{ex.method} {ex.target.decode('latin-1')}")
    try:
        body = await done
    except asyncio.CancelledError:
        call.cancelled = True  # the thread's next hop fails; the drain reports it if it does not end
        raise
    except BaseException as exc:
        if isinstance(exc, ClientDisconnected) and conn.state is CLOSED:
            return
        ex.fail(exc)
        return
    if body is None:  # streamed, sent by the thread
        return
    if conn.state is CLOSED:
        return
    length = call.length
    if call.close_conn:
        ex.keep_alive = False
    block = call.block
    assert block is not None
    if length is None or length == len(body):
        head, body = framing.whole_head(call.status, block, body)
        conn.respond_whole(ex, call.status, head, body)
        return
    # a Content-Length that is not the body's: sent as promised, the connection ends
    try:
        ex.start(call.status, block, length)
        ex.send(body)
        ex.end()
    except Exception as exc:
        ex.fail(exc)


__all__ = ["wsgi_runner", "WSGIPool", "FileWrapper", "WSGIInput"]
