"""The load generator's native driver (loadgen.h) and the C response framer
(http_frame.h), as Python sees them: the one module of loadtest/ that calls
the core. The driver runs on a Ring of its own (uringserve.ring); its
per-request work (send, frame, time, count) stays in C.
"""

from __future__ import annotations

from typing import Any

from uringserve._native import check, ffi, lib, oserror
from uringserve.ring import Ring

LOAD_MODES = {"http": lib.US_LOAD_HTTP, "echo": lib.US_LOAD_ECHO, "resp": lib.US_LOAD_RESP, "ws": lib.US_LOAD_WS}
# the error classes of the load driver, in US_LERR_* order
LOAD_ERRORS = ("connect", "read", "write", "timeout", "protocol", "short", "handshake", "closed", "mismatch")
# ws: the close codes counted one by one (US_WS_CLOSE_N's layout); the last two are ranges
WS_CLOSE_KEYS = (*(str(c) for c in range(1000, 1016)), "3000-4999", "other")
HIST_LEN = lib.US_HIST_LEN
HIST_HIGHEST = lib.US_HIST_HIGHEST


class Load:
    """The load generator's native driver (loadgen.h) on a ring of its own:
    client connections, staged requests, responses framed and timed in C.

    `units` are byte strings staged once in the ring's registered memory,
    each with the number of responses it asks for; connection i cycles
    through the unit indexes `sequences[i]`."""

    def __init__(
        self,
        ring: Ring,
        *,
        mode: str,
        address: bytes,
        conns: int,
        units: list[tuple[bytes, int]],
        sequences: list[list[int]],
        depth: int = 1,
        keepalive: bool = True,
        head_only: bool = False,
        rate: float = 0.0,
        timeout: float = 0.0,
        ws: dict[str, Any] | None = None,
    ) -> None:
        if mode not in LOAD_MODES:
            raise ValueError(f"mode {mode!r} is not one of {sorted(LOAD_MODES)}")
        if len(sequences) != conns:
            raise ValueError(f"{len(sequences)} request sequences for {conns} connections")
        self.ring = ring
        stage = lib.us_stage_region(ring.handle, size := ffi.new("size_t *"))
        total = sum(len(data) for data, _ in units)
        if total > size[0]:
            raise ValueError(f"{total} bytes of requests do not fit the ring's stage of {size[0]} bytes")
        cunits = ffi.new("struct us_load_unit[]", len(units))
        off = 0
        for k, (data, count) in enumerate(units):
            ffi.memmove(stage + off, data, len(data))
            cunits[k].off, cunits[k].len, cunits[k].count = off, len(data), count
            off += len(data)
        flat = [u for seq in sequences for u in seq]
        seq_off = [0]
        for seq in sequences:
            seq_off.append(seq_off[-1] + len(seq))
        cf = ffi.new("struct us_load_conf *")
        cf.mode = LOAD_MODES[mode]
        cf.conns = conns
        cf.depth = depth
        cf.keepalive = int(keepalive)
        cf.head_only = int(head_only)
        cf.target = 0
        cf.rate_ns = round(1e9 / rate) if rate > 0 else 0
        cf.timeout_ns = round(timeout * 1e9)
        if ws:
            cf.ws_flags = (lib.US_WS_TEXT if ws["text"] else 0) | (lib.US_WS_DEFLATE if ws["deflate"] else 0)
            cf.ws_hs_unit = ws["hs_unit"]
            cf.ws_expect = ws["expect"]
            cf.ws_accept = ws["accept"].encode()
        check(lib.us_target_set(ring.handle, 0, address, len(address)), "setting the load target")
        err = ffi.new("int *")
        ptr = lib.us_load_new(
            ring.handle, cf, cunits, len(units), ffi.new("uint32_t[]", flat), ffi.new("uint32_t[]", seq_off), err
        )
        if ptr == ffi.NULL:
            raise oserror(-err[0], "configuring the load (units, sequences, depth)")
        self._ptr = ffi.gc(ptr, lib.us_load_free)
        self._stats = ffi.new("struct us_load_stats *")

    def start(self) -> None:
        check(lib.us_load_start(self._ptr), "starting the load")

    def run(self, until_ns: int) -> None:
        """Drive the load until time.monotonic_ns() reaches `until_ns`."""
        check(lib.us_load_run(self._ptr, until_ns), "driving the load")

    def stop(self, until_ns: int) -> int:
        """Close every connection; the number still not closed at `until_ns`."""
        return check(lib.us_load_stop(self._ptr, until_ns), "stopping the load")

    def reset(self) -> None:
        lib.us_load_reset(self._ptr)

    def stats(self) -> dict[str, Any]:
        lib.us_load_stats_get(self._ptr, self._stats)
        s = self._stats
        out: dict[str, Any] = {n: getattr(s, n) for n in dir(s) if n not in ("errors", "by_class", "ws_closes")}
        out["errors"] = dict(zip(LOAD_ERRORS, s.errors, strict=True))
        out["by_class"] = list(s.by_class)
        out["ws_closes"] = list(s.ws_closes)
        return out

    def histogram(self, corrected: bool) -> list[tuple[int, int]]:
        """(counts index, count) of the non-empty HdrHistogram buckets, latency in ns."""
        counts = memoryview(ffi.buffer(lib.us_load_hist(self._ptr, int(corrected)), 8 * HIST_LEN)).cast("Q")
        return [(i, c) for i, c in enumerate(counts) if c]


def hist_index(ns: int) -> int:
    """The load driver's histogram counts index for a latency in ns."""
    return lib.us_hist_index(ns)


def resp_replies(data: bytes) -> int:
    """Complete RESP replies in `data` (the load driver's reply counter), -1 if malformed."""
    return lib.us_resp_replies(data, len(data))


class ResponseFramer:
    """HTTP/1.x response framing (http_frame.h): where each response in a
    stream ends and its status. The native driver's receive path calls the
    C function itself; this face of it is for the TLS path (tls.py), which
    frames in Python, and for tests."""

    def __init__(self, head_only: bool = False) -> None:
        self._f = ffi.new("struct us_resp_frame *")
        lib.us_resp_frame_init(self._f, 1 if head_only else 0)

    def feed(self, data: bytes) -> dict[str, Any]:
        """What `data` completed: responses, their count per status class
        (index 1..5; 0 for others), the last status, whether the last one
        closes the connection, bytes consumed, and error (0, -EPROTO, -E2BIG)."""
        out = ffi.new("struct us_frame_out *")
        used = lib.us_resp_frame_feed(self._f, data, len(data), out)
        return _frame_result(out, used)

    def eof(self) -> tuple[dict[str, Any], bool]:
        """The peer closed: what that completed, and whether a response was cut short."""
        out = ffi.new("struct us_frame_out *")
        cut = lib.us_resp_frame_eof(self._f, out)
        return _frame_result(out, 0), bool(cut)


def _frame_result(out: Any, used: int) -> dict[str, Any]:
    return {
        "responses": out.responses,
        "by_class": list(out.by_class),
        "last_status": out.last_status,
        "close": bool(out.close),
        "error": out.error,
        "used": used,
    }
