"""The native recogniser of common request heads (http_scan.h), for the
parser: a C function that needs no ring, so the parser stays testable
without one.

http_scan(data, off, len, max_head, max_target, max_headers) returns 0
(declined: llhttp parses it) or the head's description in the SCAN_* bits.
"""

from __future__ import annotations

from .._native import lib

http_scan = lib.us_http_scan
SCAN_HEAD_LEN_MASK = lib.US_SCAN_HEAD_LEN_MASK  # the head's length, through its blank line
SCAN_TARGET_SHIFT = lib.US_SCAN_TARGET_SHIFT  # the target's length, 16 bits from here
SCAN_HEAD_METHOD = lib.US_SCAN_HEAD_METHOD  # HEAD, else GET
SCAN_HTTP10 = lib.US_SCAN_HTTP10  # HTTP/1.0, else 1.1
SCAN_KEEP_ALIVE = lib.US_SCAN_KEEP_ALIVE  # always set: a request that is not keep-alive is declined
