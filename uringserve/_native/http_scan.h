/* HTTP/1.1 request heads: a one-call recogniser for the common case.
 *
 * llhttp (through httptools) stays the parser of record. Its Python binding
 * calls back into Python for the URL and for every header, which on a small
 * request costs more than the rest of serving it; this recognises, in one
 * call, a complete body-less GET or HEAD head written in a strict subset of
 * RFC 9112 that llhttp accepts and reads the same way, and declines anything
 * else (the caller then hands the bytes, from the same message boundary, to
 * llhttp). Declining is always safe; accepting is only done for input whose
 * every byte is in the subset below. tests/test_http_scan.py checks the
 * agreement with llhttp, byte for byte, on generated and random input.
 */
#ifndef URINGSERVE_HTTP_SCAN_H
#define URINGSERVE_HTTP_SCAN_H
#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
/* Result bits of us_http_scan() when it accepts (> 0). */
#define US_SCAN_HEAD_LEN_MASK 0xFFFFFF  /* bits 0-23: the head's length, through its blank line */
#define US_SCAN_TARGET_SHIFT 24         /* bits 24-39: the request-target's length */
#define US_SCAN_HEAD_METHOD 0x10000000000   /* bit 40: HEAD (else GET) */
#define US_SCAN_HTTP10 0x20000000000        /* bit 41: HTTP/1.0 (else 1.1) */
#define US_SCAN_KEEP_ALIVE 0x40000000000    /* bit 42: llhttp's should_keep_alive(), always set:
                                               a request that is not keep-alive is declined */

/* The request head at data[off..len), or 0: incomplete, outside the subset,
 * or beyond a limit (the head longer than max_head bytes, the target longer
 * than max_target, more than max_headers fields: llhttp's path answers those).
 * Lengths in the result count from data + off. */
int64_t us_http_scan(const char *data, size_t off, size_t len, size_t max_head, size_t max_target,
                     size_t max_headers);
/* CDEF END */

#endif
