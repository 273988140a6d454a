/* HTTP/1.1 response framing for the load generator: where each response in
 * a byte stream ends, and its status, without a callback per header.
 *
 * A client that keeps N requests in flight only needs to know where each
 * response ends (status line, Content-Length, chunked encoding, or no body
 * for HEAD, 1xx, 204 and 304) and what its status was. This finds that in
 * one call per received piece, keeping the state of a response split across
 * pieces, so the recv completion path can count responses in C.
 * tests/test_http_frame.py holds it to llhttp's response parser on generated
 * and split input.
 */
#ifndef URINGSERVE_HTTP_FRAME_H
#define URINGSERVE_HTTP_FRAME_H
#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
#define US_FRAME_HOLD 8192  /* a head (or a chunk-size or trailer line) longer than this is refused */

struct us_resp_frame {
    uint32_t state;     /* where in a response the stream is (http_frame.c) */
    uint32_t held;      /* bytes of an unfinished line or head in hold[] */
    uint64_t left;      /* body or chunk bytes still to come */
    int32_t status;     /* of the response in progress, once its status line is read */
    uint32_t head_only; /* the requests are HEAD: responses have no body */
    uint32_t close;     /* the response in progress ends the connection */
    char hold[US_FRAME_HOLD];
};

struct us_frame_out {
    uint32_t responses;   /* completed (final, not 1xx) in this call */
    uint32_t by_class[6]; /* of those: [1]..[5] = 1xx..5xx, [0] any other status */
    int32_t last_status;
    int32_t error;        /* 0; -EPROTO: not an HTTP/1.x response; -E2BIG: a head or line over US_FRAME_HOLD */
    uint32_t close;       /* the last completed response ends the connection (Connection: close, 1.0) */
};

void us_resp_frame_init(struct us_resp_frame *f, int head_only);
/* The response bytes data[0..len): adds what completed to *out (which the
 * caller zeroes) and returns the bytes consumed: len, unless out->error is
 * set, when the stream cannot be framed further. */
size_t us_resp_frame_feed(struct us_resp_frame *f, const char *data, size_t len, struct us_frame_out *out);
/* The peer closed: completes a response delimited by the close; 1 when one was in progress and cut short. */
int us_resp_frame_eof(struct us_resp_frame *f, struct us_frame_out *out);
/* CDEF END */

#endif
