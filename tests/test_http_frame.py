"""The native response framer (http_frame.c) against llhttp's response
parser: generated streams of responses (Content-Length, chunked with
extensions and trailers, bodiless statuses, informational 1xx, HTTP/1.0),
fed whole and in random pieces, must give the same responses and statuses;
malformed streams stop it with an error; a body delimited by the close ends
at EOF."""

from __future__ import annotations

import errno

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.engine import ResponseFramer

REASONS = {100: "Continue", 200: "OK", 204: "No Content", 301: "Moved", 304: "Not Modified", 404: "Not Found"}


@st.composite
def response(draw: st.DrawFn, last: bool = False) -> bytes:
    status = draw(st.sampled_from([100, 103, 200, 201, 204, 301, 304, 404, 500, 503]))
    version = "1.1" if status < 200 else draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    head = f"HTTP/{version} {status} {REASONS.get(status, 'Reason Phrase')}\r\n"
    fields = ["Server: x", "X-A:  b ", "content-type: text/plain", "Date: now"]
    extra = draw(st.lists(st.sampled_from(fields), max_size=3))
    body = draw(st.binary(max_size=300))
    if status < 200 or status in (204, 304):
        lines = extra
        if version == "1.0" and status >= 200:
            lines = [*lines, "Connection: keep-alive"]
        return (head + "".join(h + "\r\n" for h in lines) + "\r\n").encode()
    keep = ["Connection: keep-alive"] if version == "1.0" else []
    if draw(st.booleans()):
        name = draw(st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH"]))
        lines = [*extra, f"{name}: {len(body)}", *keep]
        return (head + "".join(h + "\r\n" for h in lines) + "\r\n").encode() + body
    if version == "1.0":  # chunked is 1.1's
        lines = [*extra, f"Content-Length: {len(body)}", *keep]
        return (head + "".join(h + "\r\n" for h in lines) + "\r\n").encode() + body
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
    out = (head + "".join(h + "\r\n" for h in [*extra, "Transfer-Encoding: chunked"]) + "\r\n").encode()
    for p in pieces:
        ext = draw(st.sampled_from(["", ";a=b", ";x"]))  # llhttp refuses the BWS RFC 9112 allows before ";"
        out += f"{len(p):x}{ext}\r\n".encode() + p + b"\r\n"
    trailer = draw(st.sampled_from(["", "X-Trailer: 1\r\n"]))
    return out + b"0\r\n" + trailer.encode() + b"\r\n"


def reference(stream: bytes) -> list[int]:
    """The final statuses llhttp reads, in order."""
    statuses: list[int] = []

    class Sink:
        def on_message_complete(self) -> None:
            code = parser.get_status_code()
            if code >= 200:
                statuses.append(code)

    parser = httptools.HttpResponseParser(Sink())
    parser.feed_data(stream)
    return statuses


def frame(stream: bytes, pieces: list[int] | None = None, head_only: bool = False) -> tuple[list[int], dict]:
    f = ResponseFramer(head_only)
    total = {"responses": 0, "by_class": [0] * 6, "last_status": 0, "error": 0, "used": 0}
    chunks = [stream] if pieces is None else _split(stream, pieces)
    for c in chunks:
        r = f.feed(c)
        total["responses"] += r["responses"]
        total["by_class"] = [a + b for a, b in zip(total["by_class"], r["by_class"], strict=True)]
        total["last_status"] = r["last_status"] or total["last_status"]
        total["used"] += r["used"]
        if r["error"]:
            total["error"] = r["error"]
            break
    return total["by_class"], total


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for s in sizes:
        out.append(data[pos : pos + s])
        pos += s
    out.append(data[pos:])
    return [c for c in out if c]


def classes(statuses: list[int]) -> list[int]:
    out = [0] * 6
    for s in statuses:
        out[s // 100] += 1
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(response(), min_size=1, max_size=8), st.lists(st.integers(1, 40), max_size=60))
def test_a_stream_frames_as_llhttp_reads_it_however_it_arrives(responses: list[bytes], pieces: list[int]) -> None:
    stream = b"".join(responses)
    want = reference(stream)
    for p in (None, pieces, [1] * len(stream)):
        by_class, total = frame(stream, p)
        assert total["error"] == 0
        assert total["responses"] == len(want) and by_class == classes(want)
        assert total["used"] == len(stream)
        if want:
            assert total["last_status"] == want[-1]


def test_head_responses_have_no_body() -> None:
    stream = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" * 3
    _, total = frame(stream, head_only=True)
    assert total["responses"] == 3 and total["error"] == 0
    _, total = frame(stream)  # as a GET's: one head, then 1000 bytes that never came
    assert total["responses"] == 0


def test_connection_close_and_http10_are_reported() -> None:
    f = ResponseFramer()
    assert not f.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")["close"]
    assert f.feed(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n")["close"]
    assert f.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")["close"]
    assert not f.feed(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")["close"]


def test_a_body_delimited_by_the_close_ends_at_eof() -> None:
    f = ResponseFramer()
    r = f.feed(b"HTTP/1.1 200 OK\r\n\r\nall of this is body " * 3)
    assert r["responses"] == 0 and r["error"] == 0
    done, cut = f.eof()
    assert done["responses"] == 1 and done["last_status"] == 200 and done["close"] and not cut


def test_a_response_cut_by_the_close_is_reported() -> None:
    partials = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    )
    for partial in partials:
        f = ResponseFramer()
        f.feed(partial)
        _, cut = f.eof()
        assert cut, partial
    f = ResponseFramer()
    f.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    nothing = {"responses": 0, "by_class": [0] * 6, "last_status": 0, "close": False, "error": 0, "used": 0}
    assert f.eof() == (nothing, False)  # between responses: nothing cut


def test_malformed_streams_stop_with_an_error() -> None:
    bad = [
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"garbage\r\n\r\n",
    ]
    for stream in bad:
        for p in (None, [1] * len(stream)):
            _, total = frame(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + stream, p)
            assert total["responses"] == 1 and total["error"] == -errno.EPROTO, stream


def test_a_head_over_the_hold_is_refused() -> None:
    stream = b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n"
    for p in (None, [100] * 100):
        _, total = frame(stream, p)
        assert total["error"] == -errno.E2BIG
    _, total = frame(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 8000 + b"\r\nContent-Length: 0\r\n\r\n", [4000, 4000])
    assert total["error"] == 0 and total["responses"] == 1  # 8 KiB and a bit: within the hold
