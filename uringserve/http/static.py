"""Static files: safe path resolution, validators (ETag, Last-Modified,
304), single ranges (206/416), and files kept open, and in the ring's
fixed-file table, so a response is read into registered memory and sent
from there without a byte passing through Python. Files up to SMALL_FILE
(64 KiB) are read once per version instead and answered from memory.

A request path is opened with openat2(RESOLVE_BENEATH) under the root:
the kernel resolves it in one call and refuses anything leading out, so
no symlink swapped in between a check and the open can escape, and a
request costs three system calls (open, fstat, close when the file is
already open). Where openat2 is missing (Linux < 5.6, some seccomp
profiles) and for absolute symlinks (which RESOLVE_BENEATH refuses even
when they point inside), the path is resolved with realpath() and checked
instead."""

from __future__ import annotations

import calendar
import collections
import errno
import mimetypes
import os
import re
import stat
import time
import weakref
from email.utils import formatdate
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

from .. import fs
from .messages import FileResponse, Headers, Response, _prepare_headers
from .parser import HTTPError

# O_NONBLOCK: opening a FIFO someone left under the root must not block the
# loop (fstat then finds it is not a regular file); cleared before a kept fd
# is read, so io_uring reads wait for the disk instead of failing EAGAIN
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


# Files up to this size are kept in memory with their open file and answered
# as one prepared Response (head and body in one write, the one-frame path):
# reading them through the ring per request cost 3.7x nginx's server CPU for a
# 4 KiB file. At most FileCache.max_open of them: 256 x 64 KiB = 16 MiB.
SMALL_FILE = 64 * 1024


class OpenFile:
    """A file opened once and shared by every response that sends it. The
    fd closes when the last user lets go (the cache, a queued send); its
    fixed-file slot is given up at eviction and empties once unused."""

    __slots__ = (
        "fd",
        "size",
        "mtime_ns",
        "dev",
        "ino",
        "etag",
        "last_modified",
        "content_type",
        "_ring",
        "_slot",
        "headers_200",
        "_small",
        "__weakref__",
    )

    def __init__(self, path: str, fd: int = -1, st: os.stat_result | None = None) -> None:
        """Open `path`; or take `fd` (blocking, a regular file, `st` its
        fstat), which is then this object's to close, and name it `path`
        (its name gives the Content-Type)."""
        if fd < 0:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if st is None:
                st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.etag = b'"%x-%x"' % (st.st_mtime_ns, st.st_size)
        self.last_modified = formatdate(st.st_mtime, usegmt=True).encode()
        ctype, enc = mimetypes.guess_type(path)
        if ctype is None:
            ctype = "application/octet-stream"
        elif ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        self.content_type = ctype.encode()
        self._ring: Any = None
        self._slot = -1
        self._small: Any = None
        # a whole-file response's headers, encoded once: they change only with the file
        self.headers_200 = _prepare_headers(
            200,
            [
                (b"ETag", self.etag),
                (b"Last-Modified", self.last_modified),
                (b"Accept-Ranges", b"bytes"),
                (b"Content-Type", self.content_type),
            ],
            None,
        )

    def small_response(self) -> Any:
        """A file of at most SMALL_FILE bytes as one prepared Response, read
        once for this version of the file (the cache reopens a changed one):
        sent like a handler's Response, head and body in one write, with no
        file read per request. None if the file changed under the read."""
        r = self._small
        if r is None:
            data = os.pread(self.fd, self.size + 1, 0)
            if len(data) != self.size:
                return None  # written to since the stat: the file path serves it
            r = self._small = Response(data, headers=self.headers_200[0], content_type=None)
        return r

    def slot_for(self, ring: Any) -> int:
        """This file's fixed-file slot in `ring`, registered on first use; -1
        when the ring has no room or no fixed files (the fd is used then)."""
        if ring is None or ring.closed:
            return -1
        if self._ring is not None and self._ring() is ring:
            return self._slot
        self.release_slot()
        slot = ring.file_register(self.fd)
        self._ring = weakref.ref(ring)
        self._slot = slot if slot >= 0 else -1
        return self._slot

    def release_slot(self) -> None:
        ring = self._ring() if self._ring is not None else None
        if ring is not None and not ring.closed and self._slot >= 0:
            ring.file_unregister(self._slot)
        self._ring = None
        self._slot = -1

    def __del__(self) -> None:
        try:
            fd = self.fd
        except AttributeError:  # __init__ failed before the file was open
            return
        os.close(fd)


class FileCache:
    """Open files by identity (device, inode), validated by size and mtime on
    every use, at most `max_open`."""

    def __init__(self, max_open: int = 256) -> None:
        self.max_open = max_open
        self._files: collections.OrderedDict[tuple[int, int], OpenFile] = collections.OrderedDict()

    def open(self, path: str) -> OpenFile:
        """The file at `path` (a symlink as its last component is refused)."""
        f = self._cached(os.stat(path))
        return f if f is not None else self._keep(OpenFile(path))

    def adopt(self, fd: int, st: os.stat_result, name: str) -> OpenFile:
        """The file open as `fd` (`st` its fstat), which this call closes
        unless a new OpenFile keeps it."""
        try:
            f = self._cached(st)
            if f is not None:
                os.close(fd)
                return f
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return self._keep(OpenFile(name, fd, st))  # which refuses (and closes) what is not a regular file

    def _cached(self, st: os.stat_result) -> OpenFile | None:
        key = (st.st_dev, st.st_ino)
        f = self._files.get(key)
        if f is not None:
            if f.mtime_ns == st.st_mtime_ns and f.size == st.st_size:
                self._files.move_to_end(key)
                return f
            self._evict(key)
        return None

    def _keep(self, f: OpenFile) -> OpenFile:
        key = (f.dev, f.ino)
        if key in self._files:
            self._evict(key)
        self._files[key] = f
        while len(self._files) > self.max_open:
            self._evict(next(iter(self._files)))
        return f

    def _evict(self, key: tuple[int, int]) -> None:
        f = self._files.pop(key)
        f.release_slot()

    def close(self) -> None:
        for key in list(self._files):
            self._evict(key)


def _parse_range(value: str, size: int) -> tuple[int, int] | Literal[False] | None:
    """(start, end inclusive) for one satisfiable range; False when
    unsatisfiable (416); None when absent, multiple or invalid (send it all)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:  # suffix: the last N bytes
            n = int(last)
            if n < 0 or not last.isdigit():
                return None
            if n == 0 or size == 0:
                return False
            return max(0, size - n), size - 1
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return False
    if end < start:
        return None
    return start, min(end, size - 1)


class StaticFiles:
    """Serve the files under `root`. `index`: the file served for a
    directory (None: directories are 404)."""

    _root_fd = -1  # the root, open for openat2; -1 without openat2

    def __init__(self, root: str, *, index: str | None = "index.html", max_open: int = 256) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"static root {root!r} is not a directory")
        self.index = index
        self.files = FileCache(max_open)
        # request path -> (the file's path, its identity when opened): a path
        # served before is checked with one stat() instead of parsing it again
        # and open + fstat + close (see known()); the open file itself stays
        # the FileCache's, so eviction still closes it
        self._known: dict[bytes, tuple[bytes, Any, tuple[int, int]]] = {}
        self._root_b = os.fsencode(self.root)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(fs.open_beneath(fd, b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                raise
            return  # no openat2 here: realpath() and checks
        self._root_fd = fd

    @staticmethod
    def _parts(raw_path: bytes) -> list[str]:
        """The path's segments, percent-decoded. Raises HTTPError(400) for
        NUL bytes and `..` segments."""
        decoded = unquote_to_bytes(raw_path)
        if b"\x00" in decoded:
            raise HTTPError(400, "NUL byte in the path")
        parts = [p for p in decoded.decode("utf-8", "surrogateescape").split("/") if p and p != "."]
        if ".." in parts:
            raise HTTPError(400, "'..' in the path")
        return parts

    def known(self, raw_path: bytes) -> OpenFile | None:
        """The open file for a request path that open() resolved before, if
        the file its path leads to now is still that one, unchanged (inode,
        device, size, mtime, ctime): one stat() by path. What is served was
        always opened by open() -- beneath the root, or realpath-checked --
        and a path that leads elsewhere now (a component swapped for a
        symlink, a file renamed over, a changed mode) finds another identity
        and goes through open() again. None: not known, or changed."""
        entry = self._known.get(raw_path)
        if entry is None:
            return None
        path, ident, key = entry
        open_files = self.files._files
        f = open_files.get(key)
        # ctime too: a chmod or chown changes it (and may turn a 200 into a 403)
        if f is None or _same_file(path, ident) != 1:
            del self._known[raw_path]  # changed, gone, or no longer among the open files
            return None
        open_files.move_to_end(key)  # in use, as FileCache.open() counts it
        return f

    def _remember(self, raw_path: bytes, path: bytes, f: OpenFile) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) != (f.dev, f.ino):
            return  # changed since it was opened: not worth remembering
        known = self._known
        if len(known) >= self.files.max_open:
            del known[next(iter(known))]  # the oldest
        known[raw_path] = (path, fs.file_identity(st), (f.dev, f.ino))

    def open(self, raw_path: bytes) -> OpenFile | None:
        """The open file a request path names under the root (a directory's
        index), or None: nothing there, not a regular file, or outside the
        root (404). Raises HTTPError(400) as resolve(), PermissionError (403)."""
        f = self.known(raw_path)
        if f is not None:
            return f
        parts = self._parts(raw_path)
        if self._root_fd >= 0:
            rel = "/".join(parts).encode("utf-8", "surrogateescape") or b"."
            try:
                f, rel = self._open_beneath(rel, parts[-1] if parts else "")
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            except OSError as exc:
                # a symlink loop, a socket, a name too long for the file system
                if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENAMETOOLONG):
                    return None
                if exc.errno != errno.EXDEV:
                    raise
                f = None  # out of the root, or an absolute symlink that may point inside: realpath decides
            else:
                if f is not None:
                    self._remember(raw_path, self._root_b + b"/" + rel, f)
                return f
        path = self._resolve(parts)
        if path is None:
            return None
        try:
            f = self.files.open(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        # by the path as asked, not the resolved one: a link retargeted later must be seen
        self._remember(raw_path, os.fsencode(os.path.join(self.root, *parts)), f)
        return f

    def _open_beneath(self, rel: bytes, name: str) -> tuple[OpenFile | None, bytes]:
        """The file at `rel` (a directory's index) and the path it was opened by."""
        fd = fs.open_beneath(self._root_fd, rel, _OPEN_FLAGS)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                os.close(fd)
                fd = -1
                if self.index is None:
                    return None, rel
                name = self.index
                rel = rel + b"/" + self.index.encode()
                fd = fs.open_beneath(self._root_fd, rel, _OPEN_FLAGS)
                st = os.fstat(fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return self.files.adopt(fd, st, name), rel

    def resolve(self, raw_path: bytes) -> str | None:
        """The real path for a request path under the root, or None (404).
        Raises HTTPError(400) for NUL bytes and `..` segments. (open() is
        what responses use; this is for ASGI apps that answer with
        http.response.pathsend, which takes a path.)"""
        return self._resolve(self._parts(raw_path))

    def _resolve(self, parts: list[str]) -> str | None:
        real = os.path.realpath(os.path.join(self.root, *parts))
        if os.path.isdir(real):
            if self.index is None:
                return None
            real = os.path.realpath(os.path.join(real, self.index))  # the index may be a link too
        # symlinks may point anywhere: only what really lies under the root is served
        if not real.startswith(self.root + os.sep):
            return None
        return real if os.path.isfile(real) else None

    def response(self, method: str, raw_path: bytes, headers: Headers) -> Any:
        """The response for GET/HEAD of `raw_path` (relative to the root)."""
        if method not in ("GET", "HEAD"):
            return Response("405 Method Not Allowed\n", status=405, headers=[("Allow", "GET, HEAD")])
        f = self.known(raw_path)
        if f is None:
            try:
                f = self.open(raw_path)
            except PermissionError:
                return Response("403 Forbidden\n", status=403)
        if f is None:
            return Response("404 Not Found\n", status=404)
        whole = f.headers_200  # ETag, Last-Modified, Accept-Ranges, Content-Type
        if headers.has_any(_ASKS):
            return self._conditional(method, headers, f, whole)
        if f.size <= SMALL_FILE:
            small = f.small_response()
            if small is not None:
                return small
        return FileResponse._prepared(f, 0, f.size, 200, whole)

    def _conditional(self, method: str, headers: Headers, f: OpenFile, whole: Any) -> Any:
        """The response when the request carries a validator or a Range."""
        if _not_modified(headers, f):
            return Response(b"", status=304, headers=whole[0][:3], content_type=None)
        rng = headers.get("range")
        if rng is not None and method == "GET" and _if_range_ok(headers, f):
            r = _parse_range(rng, f.size)
            if r is False:
                return Response(
                    b"", status=416, headers=[(b"Content-Range", b"bytes */%d" % f.size)], content_type=None
                )
            if r is not None:
                start, end = r
                return FileResponse(
                    f,
                    start,
                    end - start + 1,
                    status=206,
                    headers=[*whole[0], (b"Content-Range", b"bytes %d-%d/%d" % (start, end, f.size))],
                )
        if f.size <= SMALL_FILE:
            small = f.small_response()
            if small is not None:
                return small
        return FileResponse._prepared(f, 0, f.size, 200, whole)

    def close(self) -> None:
        self._known.clear()
        self.files.close()
        fd, self._root_fd = self._root_fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)


_same_file = fs.same_file

# the request fields that can change a static response (If-Range only matters with Range)
_ASKS = (b"if-none-match", b"if-modified-since", b"range")


def _not_modified(headers: Headers, f: OpenFile) -> bool:
    inm = headers.get("if-none-match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        etag = f.etag.decode()
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    # RFC 9110 13.1.3: ignored when If-None-Match is present (above), and
    # when it is not one valid HTTP-date
    ims = headers.get("if-modified-since")
    if ims is not None:
        since = http_date(ims)
        return since is not None and f.mtime_ns // 1_000_000_000 <= since
    return False


_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MON = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_MONTHS = {m: i for i, m in enumerate(_MON[1:-1].split("|"), 1)}
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF_FIXDATE = re.compile(rf"{_DAY}, (\d\d) {_MON} (\d{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, (\d\d)-{_MON}-(\d\d) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAY} {_MON} ([ \d]\d) {_TIME} (\d{{4}})")


def http_date(value: str) -> int | None:
    """Seconds since the epoch for an HTTP-date (RFC 9110 5.6.7: IMF-fixdate,
    or the obsolete RFC 850 and asctime forms a recipient must accept, all
    in GMT), or None for anything else: another zone, a list, garbage. As
    strict as nginx's parser: email.utils accepts all of those, and reads a
    date without a zone (asctime's) in the server's local time."""
    value = value.strip()
    if m := _IMF_FIXDATE.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _ASCTIME.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        # a two-digit year more than 50 years ahead is the last such year past
        this_year = time.gmtime().tm_year
        year = str(this_year - this_year % 100 + int(yy))
        if int(year) > this_year + 50:
            year = str(int(year) - 100)
    else:
        return None
    fields = (int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss))
    if not (1 <= fields[2] <= calendar.monthrange(fields[0], fields[1])[1] and fields[3] < 24 and fields[4] < 60):
        return None
    if fields[5] > 60:  # 60: a leap second
        return None
    return calendar.timegm(fields)


def _if_range_ok(headers: Headers, f: OpenFile) -> bool:
    ir = headers.get("if-range")
    if ir is None:
        return True
    ir = ir.strip()
    if ir.startswith('"'):
        return ir == f.etag.decode()
    return ir == f.last_modified.decode()
