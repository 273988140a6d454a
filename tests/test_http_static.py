"""Static files through uringserve.http on both loops: byte-exact bodies
(through the ring's registered memory on UringEventLoop), types, lengths,
validators and 304 (If-None-Match's forms and precedence, If-Modified-Since's
date forms), single ranges, If-Range and 416, HEAD, index files, and every
way out of the root refused. Each conditional answer names the RFC 9110
section it follows."""

from __future__ import annotations

import email.utils
import errno
import hashlib
import os
import time
from email.utils import formatdate
from typing import Any

import pytest
from http_client import exchange
from test_http_server import H, run

from uringserve import fs
from uringserve.http import Request, Response, StaticFiles
from uringserve.http.messages import FileResponse, Headers


@pytest.fixture(params=["openat2", "realpath"])
def site(request, tmp_path, monkeypatch):
    """The same site served with openat2(RESOLVE_BENEATH), and as a kernel
    (or seccomp profile) without openat2 leaves it: realpath() and checks."""
    if request.param == "realpath":

        def no_openat2(*args: Any) -> int:
            raise OSError(errno.ENOSYS, "openat2 refused by this test")

        monkeypatch.setattr(fs, "open_beneath", no_openat2)
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    big = os.urandom(3 * 1024 * 1024 + 777)
    (root / "big.bin").write_bytes(big)
    (root / "hello.txt").write_bytes(b"hello static\n")
    (root / "page.html").write_bytes(b"<p>hi</p>")
    (root / "sub" / "index.html").write_bytes(b"<h1>index</h1>")
    (root / "empty.css").write_bytes(b"")
    (tmp_path / "secret.txt").write_bytes(b"outside the root")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    os.symlink(root / "hello.txt", root / "inside-link.txt")
    (root / "trap").mkdir()
    os.symlink(tmp_path / "secret.txt", root / "trap" / "index.html")  # an index that leads out
    os.symlink("hello.txt", root / "rel-link.txt")
    os.symlink("../secret.txt", root / "rel-escape.txt")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "secret.txt").write_bytes(b"outside the root")
    os.symlink(tmp_path / "outdir", root / "outdir")
    os.symlink("sub/../../outdir", root / "sneaky")
    os.symlink("loop", root / "loop")
    os.mkfifo(root / "pipe")  # opening it for reading would block a loop that waited
    static = StaticFiles(str(root))
    assert (static._root_fd >= 0) == (request.param == "openat2")
    yield static, big
    static.close()


def handler_for(static: StaticFiles):
    def handler(req: Request) -> Any:
        if req.raw_path.startswith(b"/static/"):
            return static.response(req.method, req.raw_path[len(b"/static") :], req.headers)
        return Response(b"", status=404)

    return handler


def get(h, static, path: bytes, extra: bytes = b"", method: bytes = b"GET", responses: int = 1):
    req = method + b" " + path + b" HTTP/1.1\r\n" + H + extra + b"\r\n"
    return run(
        h,
        handler_for(static),
        lambda port: exchange(port, req * responses, responses=responses, head_for={0} if method == b"HEAD" else None),
    )


def test_big_file_byte_exact_and_through_the_ring(h, site) -> None:
    static, big = site
    r = get(h, static, b"/static/big.bin", responses=2)  # twice: the second is served from the open file
    for resp in r.responses:
        assert resp.status == 200 and resp.header("content-length") == str(len(big))
        assert hashlib.sha256(resp.body).digest() == hashlib.sha256(big).digest()
        assert resp.header("content-type") == "application/octet-stream"
        assert resp.header("accept-ranges") == "bytes"
    assert not r.closed
    if h.uring:
        st = h.loop.ring_stats()
        assert st["file_bytes"] >= 2 * len(big)  # read by the ring, not by Python
        assert st["file_sends"] >= 2


def test_types_and_small_files(h, site) -> None:
    static, _ = site
    r = get(h, static, b"/static/hello.txt")
    assert r.responses[0].body == b"hello static\n"
    assert r.responses[0].header("content-type") == "text/plain; charset=utf-8"
    r = get(h, static, b"/static/page.html")
    assert r.responses[0].header("content-type") == "text/html; charset=utf-8"
    r = get(h, static, b"/static/empty.css")
    assert r.responses[0].status == 200 and r.responses[0].body == b""
    assert r.responses[0].header("content-length") == "0"
    r = get(h, static, b"/static/sub/")
    assert r.responses[0].body == b"<h1>index</h1>"
    for link in (b"inside-link.txt", b"rel-link.txt"):  # absolute and relative links that stay inside
        r = get(h, static, b"/static/" + link)
        assert r.responses[0].body == b"hello static\n"
        assert r.responses[0].header("content-type") == "text/plain; charset=utf-8"


def test_open_files_are_bounded_and_shared(h, tmp_path) -> None:
    """At most max_open files stay open; a file reached by two paths (a
    link) is one open file; every fd closes with the StaticFiles."""
    from conftest import open_fds

    root = tmp_path / "many"
    root.mkdir()
    for i in range(6):
        (root / f"f{i}.txt").write_bytes(b"file %d\n" % i)
    os.symlink("f0.txt", root / "alias.txt")
    before = open_fds()
    static = StaticFiles(str(root), max_open=2)
    reqs = b"".join(
        b"GET /static/%s HTTP/1.1\r\n%s\r\n" % (name, H)
        for name in [b"f%d.txt" % i for i in range(6)] + [b"alias.txt", b"f0.txt"]
    )
    r = run(h, handler_for(static), lambda port: exchange(port, reqs, responses=8))
    assert [x.body for x in r.responses] == [b"file %d\n" % i for i in range(6)] + [b"file 0\n"] * 2
    assert len(static.files._files) == 2
    assert static.open(b"/alias.txt") is static.open(b"/f0.txt")
    assert len(open_fds() - before) <= 3  # the root (openat2) and two files
    static.close()
    assert open_fds() - before == set()


def test_validators_and_304(h, site) -> None:
    static, _ = site
    first = get(h, static, b"/static/hello.txt").responses[0]
    etag, lm = first.header("etag"), first.header("last-modified")
    assert etag and lm
    r = get(h, static, b"/static/hello.txt", b"If-None-Match: " + etag.encode() + b"\r\n").responses[0]
    assert r.status == 304 and r.body == b"" and r.header("etag") == etag
    assert r.header("content-length") is None
    r = get(h, static, b"/static/hello.txt", b'If-None-Match: "other"\r\n').responses[0]
    assert r.status == 200
    r = get(h, static, b"/static/hello.txt", b"If-Modified-Since: " + lm.encode() + b"\r\n").responses[0]
    assert r.status == 304
    old = formatdate(0, usegmt=True).encode()
    r = get(h, static, b"/static/hello.txt", b"If-Modified-Since: " + old + b"\r\n").responses[0]
    assert r.status == 200


def test_a_changed_file_is_reopened(h, site, tmp_path) -> None:
    static, _ = site
    assert get(h, static, b"/static/hello.txt").responses[0].body == b"hello static\n"
    p = tmp_path / "site" / "hello.txt"
    p.write_bytes(b"changed, and longer\n")
    os.utime(p, ns=(1, 1))
    assert get(h, static, b"/static/hello.txt").responses[0].body == b"changed, and longer\n"


@pytest.mark.parametrize(
    "rng,status,want",
    [
        (b"bytes=0-99", 206, (0, 99)),
        (b"bytes=1000-", 206, (1000, None)),
        (b"bytes=-500", 206, (-500, None)),
        (b"bytes=100-999999999", 206, (100, None)),
        (b"bytes=999999999-", 416, None),
        (b"bytes=5-1", 200, None),  # invalid: the whole file
        (b"bytes=0-1,5-6", 200, None),  # several ranges: the whole file
        (b"items=0-1", 200, None),
    ],
)
def test_single_ranges(h, site, rng: bytes, status: int, want) -> None:
    static, big = site
    r = get(h, static, b"/static/big.bin", b"Range: " + rng + b"\r\n").responses[0]
    assert r.status == status
    if status == 206:
        a, b = want
        expect = big[a:] if b is None and a < 0 else big[a:] if b is None else big[a : b + 1]
        assert r.body == expect
        start = len(big) + a if a < 0 else a
        assert r.header("content-range") == f"bytes {start}-{start + len(expect) - 1}/{len(big)}"
        assert r.header("content-length") == str(len(expect))
    elif status == 416:
        assert r.header("content-range") == f"bytes */{len(big)}" and r.body == b""
    else:
        assert r.body == big


def test_if_range_mismatch_sends_everything(h, site) -> None:
    static, big = site
    r = get(h, static, b"/static/big.bin", b'Range: bytes=0-9\r\nIf-Range: "stale"\r\n').responses[0]
    assert r.status == 200 and len(r.body) == len(big)


def test_head(h, site) -> None:
    static, big = site
    r = get(h, static, b"/static/big.bin", method=b"HEAD")
    assert r.responses[0].status == 200 and r.responses[0].body == b""
    assert r.responses[0].header("content-length") == str(len(big))
    assert len(r.raw) < 1000 and not r.closed


@pytest.mark.parametrize(
    "path,status",
    [
        (b"/static/../secret.txt", 400),
        (b"/static/sub/../../secret.txt", 400),
        (b"/static/%2e%2e/secret.txt", 400),
        (b"/static/%2E%2E%2Fsecret.txt", 400),
        (b"/static/sub%2f..%2f..%2fsecret.txt", 400),
        (b"/static/hello.txt%00.png", 400),
        (b"/static/escape.txt", 404),  # a symlink out of the root
        (b"/static/trap/", 404),  # a directory whose index links out of the root
        (b"/static/rel-escape.txt", 404),  # a relative symlink out
        (b"/static/outdir/secret.txt", 404),  # through a directory symlink out
        (b"/static/sneaky/secret.txt", 404),  # a symlink whose own `..` leads out
        (b"/static/loop", 404),
        (b"/static/pipe", 404),  # not a regular file, and the open does not block
        (b"/static/" + b"n" * 300, 404),  # a name longer than the file system's (ENAMETOOLONG)
        (b"/static/" + b"d/" * 2100 + b"f", 404),  # a path longer than PATH_MAX
        (b"/static/missing.txt", 404),
        (b"/static/sub", 200),  # a directory: its index
        (b"/static//hello.txt", 200),
        (b"/static/./hello.txt", 200),
    ],
)
def test_nothing_outside_the_root_is_served(h, site, path: bytes, status: int) -> None:
    static, _ = site
    r = get(h, static, path)
    assert r.responses[0].status == status
    assert b"outside the root" not in r.raw


def test_methods_other_than_get_and_head(h, site) -> None:
    static, _ = site
    r = get(h, static, b"/static/hello.txt", method=b"DELETE").responses[0]
    assert r.status == 405 and r.header("allow") == "GET, HEAD"


def test_static_root_must_exist(tmp_path) -> None:
    with pytest.raises(NotADirectoryError, match="not a directory"):
        StaticFiles(str(tmp_path / "nope"))


def test_small_files_are_answered_from_memory_and_follow_changes(tmp_path) -> None:
    """A file up to SMALL_FILE is read once per version and answered as one
    prepared Response; written again (new size or mtime), the new bytes are
    served; a larger file still goes through the ring's file path."""
    from uringserve.http import static as static_mod

    root = tmp_path / "root"
    root.mkdir()
    small = root / "small.txt"
    small.write_bytes(b"first version\n")
    big = root / "big.bin"
    big.write_bytes(os.urandom(static_mod.SMALL_FILE + 1))
    files = static_mod.StaticFiles(str(root))
    try:
        headers = Headers([])
        r1 = files.response("GET", b"/small.txt", headers)
        assert isinstance(r1, Response) and r1.body == b"first version\n"
        assert files.response("GET", b"/small.txt", headers) is r1  # the same prepared response
        assert (b"ETag", files.open(b"/small.txt").etag) in r1.headers
        small.write_bytes(b"second, longer version\n")
        r2 = files.response("GET", b"/small.txt", headers)
        assert r2.body == b"second, longer version\n"
        assert isinstance(files.response("GET", b"/big.bin", headers), FileResponse)
        # a conditional request still gets its 304 (not the cached 200)
        etag = files.open(b"/small.txt").etag.decode()
        assert files.response("GET", b"/small.txt", Headers([(b"if-none-match", etag.encode())])).status == 304
    finally:
        files.close()


@pytest.mark.parametrize("mode", ["openat2", "realpath"])
def test_a_path_served_before_costs_one_stat_and_follows_every_change(tmp_path, monkeypatch, mode: str) -> None:
    """A request path that was opened before is checked with one stat() by
    path (no parse, no open): the same file, unchanged, is served without
    opening anything. Anything that makes the path lead elsewhere or the file
    differ goes through the full open again: new bytes (same size and mtime,
    renamed over), a symlink retargeted, a mode changed (ctime), a path
    component swapped for a symlink out of the root, the file deleted."""
    from uringserve.http import static as static_mod

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    page = root / "page.txt"
    page.write_bytes(b"version one\n")
    (root / "other.txt").write_bytes(b"other file!\n")  # the same length as page.txt
    os.symlink("page.txt", root / "link.txt")
    (root / "sub" / "index.html").write_bytes(b"<h1>sub</h1>")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "index.html").write_bytes(b"outside the root")
    opens: list[bytes] = []
    real_open_beneath = fs.open_beneath
    if mode == "realpath":

        def no_openat2(*args: Any) -> int:
            raise OSError(errno.ENOSYS, "openat2 refused by this test")

        monkeypatch.setattr(fs, "open_beneath", no_openat2)
        real_files_open = static_mod.FileCache.open

        def counting_files_open(self, path: str):
            opens.append(os.fsencode(path))
            return real_files_open(self, path)

        monkeypatch.setattr(static_mod.FileCache, "open", counting_files_open)
    else:

        def counting_open_beneath(dirfd: int, rel: bytes, flags: int) -> int:
            opens.append(rel)
            return real_open_beneath(dirfd, rel, flags)

        monkeypatch.setattr(fs, "open_beneath", counting_open_beneath)
    files = static_mod.StaticFiles(str(root))
    headers = Headers([])

    def body(path: bytes) -> bytes | int:
        r = files.response("GET", path, headers)
        return r.body if r.status == 200 else r.status

    try:
        assert body(b"/page.txt") == b"version one\n"
        n = len(opens)
        for _ in range(3):
            assert body(b"/page.txt") == b"version one\n"
        assert len(opens) == n  # served again without an open
        # renamed over by a file of the same size and mtime: another inode
        st = page.stat()
        tmp = root / "new.tmp"
        tmp.write_bytes(b"version two\n")
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, page)
        assert body(b"/page.txt") == b"version two\n"
        assert len(opens) > n
        # a mode change: ctime moves, so the path is opened (and checked) again
        n = len(opens)
        assert body(b"/page.txt") == b"version two\n" and len(opens) == n
        os.chmod(page, 0o600)
        assert body(b"/page.txt") == b"version two\n"
        assert len(opens) > n
        # a symlink retargeted to a file of the same size
        assert body(b"/link.txt") == b"version two\n"
        os.unlink(root / "link.txt")
        os.symlink("other.txt", root / "link.txt")
        assert body(b"/link.txt") == b"other file!\n"
        # a directory's index, then the directory swapped for a symlink out of the root
        assert body(b"/sub/") == b"<h1>sub</h1>"
        assert body(b"/sub/") == b"<h1>sub</h1>"
        os.rename(root / "sub", root / "sub.old")
        os.symlink(tmp_path / "outdir", root / "sub")
        assert body(b"/sub/") == 404
        # deleted
        os.unlink(page)
        assert body(b"/page.txt") == 404
    finally:
        files.close()


# ---- validators and ranges, each answer checked against RFC 9110 ---------------------


def validators(h, static, path: bytes = b"/static/hello.txt") -> tuple[str, str]:
    first = get(h, static, path).responses[0]
    etag, lm = first.header("etag"), first.header("last-modified")
    assert etag and etag.startswith('"') and lm
    return etag, lm


def test_if_range_that_matches_sends_the_range(h, site) -> None:
    """RFC 9110 13.1.5: a validator that matches the current one (an entity
    tag by strong comparison, or the exact Last-Modified date) means the
    Range is processed: 206 with the range; a weak tag never matches, nor
    a date a second off: the whole representation, 200."""
    static, big = site
    etag, lm = validators(h, static, b"/static/big.bin")
    for validator in (etag, lm):
        extra = f"Range: bytes=10-19\r\nIf-Range: {validator}\r\n".encode()
        r = get(h, static, b"/static/big.bin", extra).responses[0]
        assert (r.status, r.body) == (206, big[10:20]), validator
        assert r.header("content-range") == f"bytes 10-19/{len(big)}" and r.header("etag") == etag
    later = formatdate(email.utils.parsedate_to_datetime(lm).timestamp() + 1, usegmt=True)
    for validator in (f"W/{etag}", later):
        extra = f"Range: bytes=10-19\r\nIf-Range: {validator}\r\n".encode()
        r = get(h, static, b"/static/big.bin", extra).responses[0]
        assert (r.status, len(r.body), r.header("content-range")) == (200, len(big), None), validator


@pytest.mark.parametrize(
    "inm,status",
    [
        ("*", 304),  # any current representation (13.1.2)
        ("{etag}", 304),
        ("W/{etag}", 304),  # If-None-Match compares weakly (13.1.2)
        ('"other", {etag}', 304),  # a list: any member
        ('"other",W/{etag} , "more"', 304),
        ('"other", W/"other"', 200),
        ('"{bare}"', 200),  # the tag's opaque part with other quotes is another tag
    ],
)
def test_if_none_match_forms(h, site, inm: str, status: int) -> None:
    static, _ = site
    etag, _ = validators(h, static)
    value = inm.format(etag=etag, bare=etag.strip('"') + "x")
    r = get(h, static, b"/static/hello.txt", f"If-None-Match: {value}\r\n".encode()).responses[0]
    assert r.status == status
    assert r.body == (b"" if status == 304 else b"hello static\n")
    if status == 304:  # 15.4.5: the validators a 200 would have carried, no content
        assert (r.header("etag"), r.header("content-length")) == (etag, None)


def test_if_none_match_wins_over_if_modified_since(h, site) -> None:
    """13.1.3: a recipient MUST ignore If-Modified-Since when the request
    has If-None-Match: a tag that does not match is a 200 even though the
    date alone would be a 304, and a matching tag a 304 whatever the date."""
    static, _ = site
    etag, lm = validators(h, static)
    old = formatdate(0, usegmt=True)
    for inm, ims, status in [('"other"', lm, 200), (etag, old, 304)]:
        extra = f"If-None-Match: {inm}\r\nIf-Modified-Since: {ims}\r\n".encode()
        assert get(h, static, b"/static/hello.txt", extra).responses[0].status == status, (inm, ims)


@pytest.fixture(params=["UTC0", "JST-9"])
def zone(request, monkeypatch):
    """The server's local time: GMT, and nine hours east of it (JST)."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_if_modified_since_forms(h, site, zone) -> None:
    """5.6.7: the three HTTP-date forms are accepted, all in GMT whatever
    the server's zone; 13.1.3: a value that is not one valid HTTP-date (a
    list, another zone, garbage) is ignored: the whole response."""
    static, _ = site
    _, lm = validators(h, static)
    t = email.utils.parsedate_to_datetime(lm).timestamp()
    later = time.gmtime(t + 3600)
    valid = [
        lm,
        time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(t)),  # RFC 850
        time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(t)),  # asctime (no zone: GMT, not JST)
        time.strftime("%a %b %e %H:%M:%S %Y", later),
    ]
    invalid = [
        "yesterday",
        f"{lm}, {lm}",  # more than one member
        lm.replace("GMT", "+0000"),
        time.strftime("%a, %d %b %Y %H:%M:%S", later),  # no zone
        lm.replace(lm[5:7], "31").replace(lm[8:11], "Feb"),  # no such day
        "",
    ]
    for ims, status in [(v, 304) for v in valid] + [(v, 200) for v in invalid]:
        r = get(h, static, b"/static/hello.txt", f"If-Modified-Since: {ims}\r\n".encode()).responses[0]
        assert r.status == status, ims


def test_range_with_head_is_ignored(h, site) -> None:
    """14.2: GET is the only method range handling is defined for; a server
    MUST ignore Range with any other: HEAD gets the 200 head of the whole."""
    static, big = site
    for path, size in [(b"/static/big.bin", len(big)), (b"/static/hello.txt", 13)]:
        r = get(h, static, path, b"Range: bytes=0-4\r\n", method=b"HEAD")
        resp = r.responses[0]
        assert (resp.status, resp.body, resp.header("content-range")) == (200, b"", None)
        assert resp.header("content-length") == str(size) and not r.closed


def test_a_range_of_a_small_file_answered_from_memory(h, site) -> None:
    """A file read once into memory (SMALL_FILE) still answers a Range with
    its bytes, not the cached whole response."""
    static, _ = site
    assert get(h, static, b"/static/hello.txt", responses=2).responses[1].body == b"hello static\n"
    for rng, body, where in [(b"0-4", b"hello", "0-4"), (b"-7", b"static\n", "6-12"), (b"12-", b"\n", "12-12")]:
        r = get(h, static, b"/static/hello.txt", b"Range: bytes=" + rng + b"\r\n").responses[0]
        assert (r.status, r.body, r.header("content-range")) == (206, body, f"bytes {where}/13")
        assert r.header("content-length") == str(len(body))


@pytest.mark.parametrize(
    "path,rng,size",
    [
        (b"/static/hello.txt", b"bytes=-0", 13),  # 14.1.1: a zero suffix-length is unsatisfiable
        (b"/static/big.bin", b"bytes=-0", None),
        (b"/static/empty.css", b"bytes=0-", 0),  # nothing in an empty file is satisfiable
        (b"/static/empty.css", b"bytes=-5", 0),
        (b"/static/empty.css", b"bytes=0-0", 0),
    ],
)
def test_unsatisfiable_ranges_are_416_with_the_length(h, site, path: bytes, rng: bytes, size: int | None) -> None:
    """15.5.17: 416, and Content-Range naming the current length."""
    static, big = site
    r = get(h, static, path, b"Range: " + rng + b"\r\n")
    resp = r.responses[0]
    length = len(big) if size is None else size
    assert (resp.status, resp.body, resp.header("content-range")) == (416, b"", f"bytes */{length}")
    assert resp.header("content-length") == "0" and not r.closed


def test_rfc850_two_digit_years_more_than_50_years_ahead_are_last_century() -> None:
    """RFC 9110 5.6.7: a two-digit year that looks more than 50 years in the
    future is the most recent past year with those digits; 50 years ahead is kept."""
    import calendar

    from uringserve.http.static import http_date

    now = time.gmtime().tm_year
    for ahead, year in ((51, now + 51 - 100), (50, now + 50)):
        date = f"Sunday, 01-Jan-{(now + ahead) % 100:02d} 00:00:00 GMT"
        assert http_date(date) == calendar.timegm((year, 1, 1, 0, 0, 0)), date
    assert http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777  # RFC 9110's example


def test_the_200_headers_are_sent_as_written(h, site) -> None:
    """Header names go out byte for byte as their canonical spelling."""
    static, _ = site
    r = get(h, static, b"/static/big.bin")
    assert r.responses[0].status == 200
    assert b"\r\nAccept-Ranges: bytes\r\n" in r.raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def test_a_directory_whose_index_cannot_be_served_closes_only_what_it_opened(h, site) -> None:
    """The directory's fd is closed before its index is opened: when that
    open fails (an index linking out of the root, or none at all) nothing
    else is closed; fd 1 (this process's stdout) is the one a stray close
    would take."""
    static, _ = site
    os.mkdir(os.path.join(static.root, "bare"))  # a directory without index.html
    before = os.fstat(1)
    for path in (b"/static/trap/", b"/static/bare/"):
        r = get(h, static, path)
        assert r.responses[0].status == 404
        after = os.fstat(1)
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_open_beneath_errors_and_the_lowest_fd(tmp_path) -> None:
    """fs.open_beneath's OSError: its errno class, the OS's reason, the path
    as given (bytes that are not UTF-8 kept by surrogateescape); and fd 0 is
    a file like any other (a daemon may have closed its stdin)."""
    (tmp_path / "f").write_bytes(b"x")
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileNotFoundError) as exc:
            fs.open_beneath(dirfd, b"\xff-missing", os.O_RDONLY)
        assert (exc.value.errno, exc.value.strerror, exc.value.filename) == (
            errno.ENOENT,
            "No such file or directory",
            "\udcff-missing",
        )
        saved = os.dup(0)
        os.close(0)
        try:
            fd = fs.open_beneath(dirfd, b"f", os.O_RDONLY)
            assert fd == 0 and os.read(fd, 10) == b"x"
            os.close(fd)
        finally:
            os.dup2(saved, 0)
            os.close(saved)
    finally:
        os.close(dirfd)
