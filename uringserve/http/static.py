"""Static files: safe path resolution, validators (ETag, Last-Modified,
304), single ranges (206/416), and files kept open, and in the ring's
fixed-file table, so a response is read into registered memory and sent
from there without a byte passing through Python."""
from __future__ import annotations

import collections
import mimetypes
import os
import stat
import weakref
from email.utils import formatdate, parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from .messages import FileResponse, Headers, Response
from .parser import HTTPError


class OpenFile:
    """A file opened once and shared by every response that sends it. The
    fd closes when the last user lets go (the cache, a queued send); its
    fixed-file slot is given up at eviction and empties once unused."""
    __slots__ = ("fd", "size", "mtime_ns", "ino", "etag", "last_modified", "content_type", "_ring", "_slot",
                 "__weakref__")

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(path)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
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
    """Open files by real path, validated by stat() on every use, at most `max_open`."""

    def __init__(self, max_open: int = 256) -> None:
        self.max_open = max_open
        self._files: collections.OrderedDict[str, OpenFile] = collections.OrderedDict()

    def open(self, path: str) -> OpenFile:
        st = os.stat(path)
        f = self._files.get(path)
        if f is not None:
            if f.mtime_ns == st.st_mtime_ns and f.size == st.st_size and f.ino == st.st_ino:
                self._files.move_to_end(path)
                return f
            self._evict(path)
        f = OpenFile(path)
        self._files[path] = f
        while len(self._files) > self.max_open:
            self._evict(next(iter(self._files)))
        return f

    def _evict(self, path: str) -> None:
        f = self._files.pop(path)
        f.release_slot()

    def close(self) -> None:
        for path in list(self._files):
            self._evict(path)


def _parse_range(value: str, size: int) -> tuple[int, int] | None | bool:
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

    def __init__(self, root: str, *, index: str | None = "index.html", max_open: int = 256) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"static root {root!r} is not a directory")
        self.index = index
        self.files = FileCache(max_open)

    def resolve(self, raw_path: bytes) -> str | None:
        """The real path for a request path under the root, or None (404).
        Raises HTTPError(400) for NUL bytes and `..` segments."""
        decoded = unquote_to_bytes(raw_path)
        if b"\x00" in decoded:
            raise HTTPError(400, "NUL byte in the path")
        text = decoded.decode("utf-8", "surrogateescape")
        parts = [p for p in text.split("/") if p and p != "."]
        if ".." in parts:
            raise HTTPError(400, "'..' in the path")
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
        path = self.resolve(raw_path)
        if path is None:
            return Response("404 Not Found\n", status=404)
        try:
            f = self.files.open(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return Response("404 Not Found\n", status=404)
        except PermissionError:
            return Response("403 Forbidden\n", status=403)
        base = [(b"ETag", f.etag), (b"Last-Modified", f.last_modified), (b"Accept-Ranges", b"bytes")]
        if _not_modified(headers, f):
            return Response(b"", status=304, headers=base, content_type=None)
        base.append((b"Content-Type", f.content_type))
        rng = headers.get("range")
        if rng is not None and method == "GET" and _if_range_ok(headers, f):
            r = _parse_range(rng, f.size)
            if r is False:
                return Response(b"", status=416, headers=[(b"Content-Range", b"bytes */%d" % f.size)],
                                content_type=None)
            if r is not None:
                start, end = r
                base.append((b"Content-Range", b"bytes %d-%d/%d" % (start, end, f.size)))
                return FileResponse(f, start, end - start + 1, status=206, headers=base)
        return FileResponse(f, 0, f.size, status=200, headers=base)

    def close(self) -> None:
        self.files.close()


def _not_modified(headers: Headers, f: OpenFile) -> bool:
    inm = headers.get("if-none-match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        etag = f.etag.decode()
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    ims = headers.get("if-modified-since")
    if ims is not None:
        try:
            return int(f.mtime_ns // 1_000_000_000) <= int(parsedate_to_datetime(ims).timestamp())
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
    return False


def _if_range_ok(headers: Headers, f: OpenFile) -> bool:
    ir = headers.get("if-range")
    if ir is None:
        return True
    ir = ir.strip()
    if ir.startswith('"'):
        return ir == f.etag.decode()
    return ir == f.last_modified.decode()
