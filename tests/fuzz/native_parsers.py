"""The C parsers under AddressSanitizer and UndefinedBehaviorSanitizer
(tests/fuzz/native_build.py), on random and mutated bytes:

- us_http_scan, the request-head recogniser, against llhttp: a parser with
  the (sanitized) recogniser gives the same heads, bodies, ends and errors
  as one without; fed in pieces, the same requests and a refusal where
  there was one; and the recogniser at any offset and any limits reads no
  byte outside what it is given.
- us_resp_frame_*, the load generator's response framer (fed whatever a
  server sends): the same responses, classes and errors however the bytes
  are split."""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.fuzz.common import Carver, fuzz  # noqa: E402

asan: Any = None
scan_tests: Any = None  # tests/test_http_scan.py: its parse() is the oracle
parser_mod: Any = None
CONFIGS: list[Any] = []


def instrument() -> None:
    global parser_mod
    import uringserve.http.parser as _p

    parser_mod = _p


def _load() -> None:
    global asan, scan_tests
    from tests.fuzz import native_build

    sys.path.insert(0, str(native_build.build()))
    import _native_asan  # type: ignore[import-not-found]

    asan = _native_asan
    if parser_mod is None:
        instrument()
    from tests import test_http_scan

    scan_tests = test_http_scan
    CONFIGS.extend([scan_tests.DEFAULT, scan_tests.TIGHT])


def _scan_asan(data: bytes, off: int, n: int, max_head: int, max_target: int, max_headers: int) -> int:
    # the sanitized C reads exactly the bytes object: a read past n is ASan's to catch
    return asan.lib.us_http_scan(data, off, n, max_head, max_target, max_headers)


def parse(pieces: list[bytes], config: Any, native: bool) -> tuple[list, int | None]:
    """test_http_scan's oracle (heads, bodies, ends, errors) over these pieces,
    the recogniser being the sanitized build."""
    cuts = list(itertools.accumulate(len(p) for p in pieces))
    return scan_tests.parse(b"".join(pieces), config, native, cuts, scan=_scan_asan)


def frame(pieces: list[bytes], head_only: int) -> tuple:
    f = asan.ffi.new("struct us_resp_frame *")
    asan.lib.us_resp_frame_init(f, head_only)
    total, classes, error = 0, [0] * 6, 0
    for piece in pieces:
        out = asan.ffi.new("struct us_frame_out *")  # per call, as the load generator's
        buf = asan.ffi.from_buffer(piece)
        used = asan.lib.us_resp_frame_feed(f, buf, len(piece), out)
        assert used <= len(piece)
        total += out.responses
        classes = [a + b for a, b in zip(classes, out.by_class, strict=True)]
        if out.error:
            error = out.error
            break
    return total, classes, error


def one_input(data: bytes) -> None:
    if asan is None:
        _load()
    c = Carver(data)
    what = c.byte()
    config = CONFIGS[c.byte() % len(CONFIGS)]
    payload = c.rest()
    pieces = Carver(payload[:1] * 32 + payload).pieces(payload)
    if what & 1:
        whole_native = parse([payload], config, True)
        assert whole_native == parse([payload], config, False), "the recogniser and llhttp read this differently"
        split_events, split_status = parse(pieces, config, True)
        # The same requests however the bytes are split, with two allowances
        # (noted in docs/architecture.md): which status a request with two
        # faults gets (over a limit, and a bad byte past it) depends on where
        # the pieces end; and a head near max_header_bytes is measured on its
        # raw bytes when it starts a piece but by its fields when it starts
        # inside one, so one may be refused (414/431) where the other is not.
        # Anything else, a different head or body, is a bug.
        whole_events, whole_status = whole_native
        short, long_ = sorted([split_events, whole_events], key=len)
        assert long_[: len(short)] == short, "the requests depend on how the bytes were split"
        if len(short) != len(long_) or (split_status is None) != (whole_status is None):
            refused = [st for st in (whole_status, split_status) if st is not None]
            assert refused and set(refused) <= {414, 431}, (whole_status, split_status)
        for off in range(0, min(len(payload), 64), 7):
            r = _scan_asan(payload, off, len(payload), config.max_header_bytes, config.max_target_bytes, 100)
            assert r >= 0 and (r & 0xFFFFFF) <= len(payload) - off
    else:
        head_only = (what >> 1) & 1
        whole = frame([payload], head_only)
        split = frame(pieces, head_only)
        if not whole[2] and not split[2]:
            assert whole == split, (whole, split)
        else:
            assert bool(whole[2]) == bool(split[2]) and whole[1] == split[1], (whole, split)


def main() -> None:
    fuzz(one_input, instrument)


if __name__ == "__main__":
    main()
