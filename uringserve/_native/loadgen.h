/* The load generator's native driver (loadtest/): client connections on a
 * uringserve ring, driven entirely in C between two calls from Python.
 *
 * Connections are made by the ring into fixed slots (us_connect), requests
 * are bytes staged once in registered memory and sent from there
 * (us_send_staged), responses arrive through the provided buffer ring and
 * are framed here (HTTP: http_frame.c; echo: byte-exact comparison with what
 * was sent; RESP: a reply counter). Each response's latency goes into an
 * HdrHistogram-layout counts array that Python merges with the hdrhistogram
 * package. Python configures, calls us_load_run() in slices, and reports.
 */
#ifndef URINGSERVE_LOADGEN_H
#define URINGSERVE_LOADGEN_H
#include <stdint.h>

/* CDEF BEGIN */
#define US_LOAD_HTTP 0
#define US_LOAD_ECHO 1
#define US_LOAD_RESP 2
#define US_LOAD_WS   3   /* WebSocket echo: upgrade once per connection, masked frames, echoes compared */

#define US_WS_TEXT    1  /* ws: send text frames (else binary) */
#define US_WS_DEFLATE 2  /* ws: the units are permessage-deflate payloads (RSV1 set); echoes are inflated */

/* error classes, as wrk counts them plus the two a framer can see */
#define US_LERR_CONNECT  0
#define US_LERR_READ     1  /* recv error, or the server closed with requests unanswered */
#define US_LERR_WRITE    2
#define US_LERR_TIMEOUT  3
#define US_LERR_PROTOCOL 4  /* not a valid response (or, echo: not the bytes sent) */
#define US_LERR_SHORT    5  /* the server closed in the middle of a response */
#define US_LERR_HANDSHAKE 6 /* ws: the upgrade was refused (its status: by_class, last_hs_status) or its 101 was wrong */
#define US_LERR_CLOSED   7  /* ws: the server sent a close frame (its code: ws_closes, last_close_code) */
#define US_LERR_MISMATCH 8  /* ws: an echo that is not the message sent (bytes, length or type) */
#define US_LERR_N        9

/* ws_closes[] index of a close code: 1000..1015 -> 0..15, 3000..4999 -> 16, others -> 17 */
#define US_WS_CLOSE_N 18

/* HdrHistogram(lowest 1, highest 3600e9, 3 significant digits) in ns:
 * counts[] has this layout (hdr_index() in loadgen.c) */
#define US_HIST_LEN     33792
#define US_HIST_HIGHEST 3600000000000

struct us_load_conf {
    uint32_t mode;        /* US_LOAD_* */
    uint32_t conns;
    uint32_t depth;       /* closed loop: one unit (up to depth requests) in flight per connection;
                             rate mode: up to depth single-request units in flight */
    uint32_t keepalive;   /* 0: close after each unit's responses and connect again */
    uint32_t head_only;   /* HTTP: the requests are HEAD */
    uint32_t target;      /* us_target_set() id */
    uint64_t rate_ns;     /* > 0: constant rate, one request every rate_ns over all connections */
    uint64_t timeout_ns;  /* a request unanswered this long: timeout, connection closed */
    /* US_LOAD_WS: units are message payloads (count 1), masked per frame when sent */
    uint32_t ws_flags;    /* US_WS_* */
    uint32_t ws_hs_unit;  /* the staged upgrade request, sent once per connection */
    uint32_t ws_expect;   /* the echo of unit k must be the bytes of unit k + ws_expect */
    char ws_accept[32];   /* the Sec-WebSocket-Accept value the 101 must carry, NUL-terminated */
};

/* staged bytes [off, off+len) asking for `count` responses */
struct us_load_unit {
    uint32_t off, len, count;
};

struct us_load_stats {
    uint64_t responses, sent, units_sent;
    uint64_t bytes_in;
    uint64_t errors[9];       /* US_LERR_* */
    uint64_t by_class[6];     /* HTTP: [1]..[5] status classes, [0] other; RESP: [2] replies, [5] error replies;
                                 ws: the handshake answers' classes ([1]: 101) */
    uint64_t connects, closes_by_peer;
    uint64_t ring_errors;     /* operations the ring refused (reported, never retried silently) */
    uint32_t open, connecting;
    int32_t last_errno;       /* of the last connect/read/write error */
    uint64_t ws_closes[18];   /* ws: close frames received, by code (US_WS_CLOSE_N) */
    uint64_t hs_invalid;      /* ws: 101 answers without the right accept value or the offered deflate */
    uint32_t last_close_code; /* ws: of the last close frame received */
    int32_t last_hs_status;   /* ws: of the last refused handshake */
};

struct us_load;
struct us_ring;

/* seq_off has conns+1 entries: connection i sends units seq[seq_off[i]..seq_off[i+1]) in a cycle.
 * Everything is copied. NULL with *err set (-EINVAL, -ENOMEM). */
struct us_load *us_load_new(struct us_ring *r, const struct us_load_conf *cf,
                            const struct us_load_unit *units, uint32_t nunits,
                            const uint32_t *seq, const uint32_t *seq_off, int *err);
void us_load_free(struct us_load *l);
/* connect every connection; the clock (and the rate schedule) starts now */
int us_load_start(struct us_load *l);
/* drive the load until CLOCK_MONOTONIC reaches until_ns; 0 or -errno from the ring */
int us_load_run(struct us_load *l, int64_t until_ns);
/* close every connection and wait (until until_ns) for the slots to be free; returns those still open */
int us_load_stop(struct us_load *l, int64_t until_ns);
void us_load_stats_get(struct us_load *l, struct us_load_stats *st);
/* zero the counters and histograms (the end of a warm-up) */
void us_load_reset(struct us_load *l);
/* the counts arrays (US_HIST_LEN): 0 latency from the actual send, 1 from the intended send (rate mode) */
uint64_t *us_load_hist(struct us_load *l, int corrected);
/* the counts index of a latency in ns (the layout above; tests hold it to HdrHistogram's) */
uint32_t us_hist_index(uint64_t ns);
/* RESP replies in data[0..len) for a fresh framer (tests): complete replies, or -1 on a protocol error */
int64_t us_resp_replies(const char *data, uint64_t len);
/* CDEF END */

#endif
