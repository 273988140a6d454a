/* The load generator's native driver: see loadgen.h.
 *
 * Every logical connection i (0..conns-1) cycles through its own sequence of
 * staged units. Closed loop (wrk): one unit in flight, the next sent when
 * all its responses are in. Constant rate (wrk2): request g of the whole run
 * is due at start + g * rate_ns and belongs to connection g % conns; a
 * connection sends a due request as soon as it has room (depth), and its
 * latency is counted both from the actual send and from the due time, so a
 * server stall shows in the corrected figures instead of silently delaying
 * later sends (coordinated omission).
 *
 * Time is read once per us_wait() batch: every completion in a batch
 * arrived before the wait returned, so that read bounds them all.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <zlib.h>

#include "core.h"
#include "client.h"
#include "http_frame.h"
#include "loadgen.h"

#define NONE 0xFFFFFFFFu
#define EVMAX 512
#define SCAN_NS 10000000       /* timeouts and connect retries are checked every 10 ms */
#define RETRY_NS 10000000      /* a failed connect is retried after 10 ms, not in a spin */
#define RESP_DEPTH 16
#define HS_MAX 8192            /* ws: the 101 head is read into this much, then freed */
#define ZBUF 16384             /* ws: inflated echo bytes are compared this much at a time */

enum { WS_HS, WS_OPEN };
/* ws_feed() results besides 0 */
enum { WSR_PROTOCOL = -1, WSR_CLOSED = -2, WSR_MISMATCH = -3, WSR_WRITE = -4, WSR_COUNTED = -5 };

enum lstate { L_IDLE, L_CONNECTING, L_OPEN, L_CLOSING };

struct resp_fr {
    uint8_t st, type, neg;
    uint32_t depth;
    int64_t num;
    uint64_t left;
    int64_t stack[RESP_DEPTH];
};

struct lconn {
    uint32_t slot, gen;
    uint8_t state;
    uint32_t pos, nseq;         /* sequence: seq[first + pos], pos < nseq */
    uint32_t first;
    uint32_t out;               /* requests sent and not answered */
    uint32_t unit_left;         /* closed loop: responses the unit in flight still owes */
    uint64_t k_sent;            /* rate mode: requests of this connection sent so far */
    uint64_t credit;            /* rate mode: due requests not sent yet */
    uint32_t rec_head, rec_n;   /* ring of in-flight request times */
    int64_t retry_at;           /* L_IDLE after a failed connect: not before */
    uint64_t echo_off;          /* echo: bytes of the oldest unsent-back unit already compared */
    uint32_t echo_unit;         /* echo: the unit being compared */
    /* ws: the handshake, then a frame reader for the server's (unmasked) frames */
    uint8_t ws_phase, fh_len, in_msg, msg_op, msg_z, f_op, f_fin;
    uint8_t ctl_len;
    uint8_t fh[14];             /* a frame header being gathered */
    uint8_t ctl[125];           /* a control frame's payload */
    uint32_t hs_len;
    char *hs;                   /* the 101 head so far (WS_HS only) */
    int64_t hs_at;              /* when the upgrade request went out */
    uint64_t f_left;            /* payload bytes of the current frame still to come */
    uint64_t msg_off;           /* bytes of the echoed message compared so far (inflated if compressed) */
    uint64_t rnd;               /* xorshift64 state: a fresh mask for every frame (RFC 6455 5.3) */
    z_stream *z;                /* permessage-deflate inflater, with the server's context takeover */
};

struct rec {
    int64_t actual, intended;
};

struct us_load {
    struct us_ring *r;
    struct us_load_conf cf;
    struct us_load_unit *units;
    uint32_t *seq;
    struct lconn *lc;
    struct rec *recs;           /* conns * depth */
    struct us_resp_frame *fr;   /* HTTP framers, one per connection */
    struct resp_fr *rf;         /* RESP framers */
    uint32_t *owner;            /* slot -> logical connection */
    uint32_t nslots;
    char *stage;
    struct us_event *ev;
    uint64_t *hist[2];
    char *wbuf;                 /* ws: one frame being masked, copied into the ring by us_send() */
    uint8_t *zbuf;              /* ws: inflated bytes */
    int64_t start, now, next_scan;
    uint64_t tickets;           /* rate mode: requests released to connections */
    uint32_t closing;           /* slots closed by us whose CLOSED has not come */
    int running;
    struct us_load_stats st;
};

/* ---- histogram ---------------------------------------------------------- */

/* HdrHistogram's counts index for lowest 1, 3 significant digits: 2048 sub
 * buckets, so values below 2048 are exact and the rest keep 3 digits. */
static uint32_t hdr_index(uint64_t v)
{
    if (v > US_HIST_HIGHEST)
        v = US_HIST_HIGHEST;
    int bucket = (64 - __builtin_clzll(v | 2047)) - 11;
    uint32_t sub = (uint32_t)(v >> bucket);
    return ((uint32_t)(bucket + 1) << 10) + (sub - 1024);
}

uint32_t us_hist_index(uint64_t ns)
{
    return hdr_index(ns);
}

static void record(struct us_load *l, int64_t since, int which)
{
    int64_t d = l->now - since;
    l->hist[which][hdr_index(d > 0 ? (uint64_t)d : 1)]++;
}

/* ---- RESP replies --------------------------------------------------------
 * Counted byte by byte with no hold buffer: the state carries a number being
 * read, bulk bytes still to skip, and the element counts of open
 * aggregates. Returns replies completed, -1 on a protocol error; *errors
 * counts error replies among them. */

enum { R_TYPE, R_LINE, R_NUM, R_NUM_LF, R_BULK, R_LINE_LF };

static int resp_elem_done(struct resp_fr *f)
{
    while (f->depth) {
        if (--f->stack[f->depth - 1] > 0)
            return 0;
        f->depth--;
    }
    return 1;
}

static int64_t resp_feed(struct resp_fr *f, const char *p, uint64_t len, uint64_t *errors)
{
    int64_t done = 0;
    uint64_t i = 0;
    while (i < len) {
        char ch = p[i];
        switch (f->st) {
        case R_TYPE:
            f->type = (uint8_t)ch;
            i++;
            if (strchr("+-:_,#(", ch) && ch) {
                f->st = R_LINE;
                if (ch == '-' && !f->depth)
                    (*errors)++;
            } else if (ch && strchr("$!=*%~>|", ch)) {
                f->st = R_NUM;
                f->num = 0;
                f->neg = 0;
            } else {
                return -1;
            }
            break;
        case R_LINE: {
            const char *lf = memchr(p + i, '\n', len - i);
            if (!lf) {
                i = len;
                break;
            }
            i = (uint64_t)(lf - p) + 1;
            f->st = R_TYPE;
            if (resp_elem_done(f))
                done++;
            break;
        }
        case R_NUM:
            i++;
            if (ch >= '0' && ch <= '9') {
                if (f->num > (INT64_MAX - 9) / 10)
                    return -1;
                f->num = f->num * 10 + (ch - '0');
            } else if (ch == '-' && !f->num && !f->neg) {
                f->neg = 1;
            } else if (ch == '\r') {
                f->st = R_NUM_LF;
            } else {
                return -1;
            }
            break;
        case R_NUM_LF: {
            if (ch != '\n')
                return -1;
            i++;
            int64_t n = f->neg ? -f->num : f->num;
            if (strchr("$!=", f->type)) {
                if (n < 0) { /* null bulk */
                    f->st = R_TYPE;
                    if (resp_elem_done(f))
                        done++;
                } else {
                    f->left = (uint64_t)n;
                    f->st = R_BULK;
                }
                break;
            }
            if (f->type == '%' || f->type == '|')
                n *= 2;
            if (f->type == '|')
                n += 1; /* an attribute is followed by the reply it describes */
            f->st = R_TYPE;
            if (n <= 0) {
                if (resp_elem_done(f))
                    done++;
            } else {
                if (f->depth == RESP_DEPTH)
                    return -1;
                f->stack[f->depth++] = n;
            }
            break;
        }
        case R_BULK: {
            uint64_t take = len - i < f->left ? len - i : f->left;
            i += take;
            f->left -= take;
            if (!f->left)
                f->st = R_LINE_LF; /* the CRLF after the payload */
            break;
        }
        case R_LINE_LF:
            i++;
            if (ch == '\n') {
                f->st = R_TYPE;
                if (resp_elem_done(f))
                    done++;
            } else if (ch != '\r') {
                return -1;
            }
            break;
        }
    }
    return done;
}

int64_t us_resp_replies(const char *data, uint64_t len)
{
    struct resp_fr f;
    uint64_t errors = 0;
    memset(&f, 0, sizeof(f));
    return resp_feed(&f, data, len, &errors);
}

/* ---- time --------------------------------------------------------------- */

static int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* ---- connections -------------------------------------------------------- */

static void connect_conn(struct us_load *l, uint32_t i)
{
    struct lconn *c = &l->lc[i];
    int ret = us_connect(l->r, l->cf.target, i);
    if (ret < 0) {
        l->st.ring_errors++;
        c->state = L_IDLE;
        c->retry_at = l->now + RETRY_NS;
        return;
    }
    c->state = L_CONNECTING;
    c->slot = NONE;
    l->st.connecting++;
}

static void reset_conn_state(struct us_load *l, uint32_t i)
{
    struct lconn *c = &l->lc[i];
    c->out = c->unit_left = 0;
    c->rec_head = c->rec_n = 0;
    c->echo_off = 0;
    c->echo_unit = c->pos; /* a new connection echoes from the next unit sent, not the one lost */
    if (l->fr)
        us_resp_frame_init(&l->fr[i], (int)l->cf.head_only);
    if (l->rf)
        memset(&l->rf[i], 0, sizeof(l->rf[i]));
    if (l->cf.mode == US_LOAD_WS) {
        free(c->hs);
        c->hs = NULL;
        c->hs_len = 0;
        c->ws_phase = WS_HS;
        c->fh_len = c->in_msg = c->ctl_len = 0;
        c->f_left = c->msg_off = 0;
        if (c->z) {
            inflateEnd(c->z);
            free(c->z);
            c->z = NULL;
        }
    }
}

/* End this connection (an error, the server's close, or no keep-alive);
 * a new one is made when the slot is free (US_EV_CLOSED). */
static void drop(struct us_load *l, uint32_t i)
{
    struct lconn *c = &l->lc[i];
    if (c->state != L_OPEN)
        return;
    c->state = L_CLOSING;
    l->st.open--;
    l->closing++;
    if (us_close(l->r, c->slot, c->gen, 0) < 0)
        l->st.ring_errors++;
    reset_conn_state(l, i);
}

static void fail(struct us_load *l, uint32_t i, int cls, int err)
{
    l->st.errors[cls]++;
    if (err)
        l->st.last_errno = err;
    drop(l, i);
}

static void push_rec(struct us_load *l, struct lconn *c, uint32_t i, int64_t intended)
{
    uint32_t d = l->cf.depth;
    struct rec *rr = &l->recs[(size_t)i * d + (c->rec_head + c->rec_n) % d];
    rr->actual = l->now;
    rr->intended = intended;
    c->rec_n++;
}

static int ws_send_frame(struct us_load *l, uint32_t i, uint8_t b0, const char *payload, uint64_t len);

static int send_unit(struct us_load *l, uint32_t i, int64_t intended)
{
    struct lconn *c = &l->lc[i];
    const struct us_load_unit *u = &l->units[l->seq[c->first + c->pos]];
    int64_t ret;
    if (l->cf.mode == US_LOAD_WS) {
        uint8_t b0 = 0x80 | ((l->cf.ws_flags & US_WS_TEXT) ? 0x1 : 0x2) | ((l->cf.ws_flags & US_WS_DEFLATE) ? 0x40 : 0);
        ret = ws_send_frame(l, i, b0, l->stage + u->off, u->len);
    } else {
        ret = us_send_staged(l->r, c->slot, c->gen, u->off, u->len);
    }
    if (ret < 0) {
        fail(l, i, US_LERR_WRITE, (int)-ret);
        return -1;
    }
    c->pos = c->pos + 1 == c->nseq ? 0 : c->pos + 1;
    for (uint32_t k = 0; k < u->count; k++)
        push_rec(l, c, i, intended);
    c->out += u->count;
    c->unit_left = u->count;
    l->st.sent += u->count;
    l->st.units_sent++;
    return 0;
}

/* rate mode: what this connection may send now */
static void send_due(struct us_load *l, uint32_t i)
{
    struct lconn *c = &l->lc[i];
    if (l->cf.mode == US_LOAD_WS && c->ws_phase != WS_OPEN)
        return; /* due messages wait for the handshake: their latency counts from when they were due */
    while (c->state == L_OPEN && c->credit && c->out < l->cf.depth) {
        int64_t due = l->start + (int64_t)((c->k_sent * l->cf.conns + i) * l->cf.rate_ns);
        c->credit--;
        c->k_sent++;
        if (send_unit(l, i, due) < 0)
            return;
    }
}

static void next_request(struct us_load *l, uint32_t i)
{
    if (l->cf.rate_ns)
        send_due(l, i);
    else if (l->lc[i].out == 0 && l->running && (l->cf.mode != US_LOAD_WS || l->lc[i].ws_phase == WS_OPEN))
        send_unit(l, i, l->now);
}

/* n responses completed on connection i */
static void completed(struct us_load *l, uint32_t i, uint32_t n)
{
    struct lconn *c = &l->lc[i];
    uint32_t d = l->cf.depth;
    for (uint32_t k = 0; k < n && c->rec_n; k++) {
        struct rec *rr = &l->recs[(size_t)i * d + c->rec_head];
        record(l, rr->actual, 0);
        record(l, rr->intended, 1);
        c->rec_head = (c->rec_head + 1) % d;
        c->rec_n--;
    }
    c->out -= n;
    c->unit_left = c->unit_left > n ? c->unit_left - n : 0;
    l->st.responses += n;
}

/* ---- WebSocket (US_LOAD_WS) ----------------------------------------------
 * Client frames are masked with a fresh key each (xorshift64 seeded from
 * getrandom: unpredictable enough for RFC 6455 5.3's purpose, which is that
 * a script cannot choose the bytes on the wire), into one scratch frame
 * that us_send() copies into the ring. Server frames are read here byte by
 * byte with no hold buffer beyond a header and a control payload; a data
 * message is compared with the unit it echoes as it arrives (inflated first
 * when RSV1 says it is compressed). */

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static int ws_send_frame(struct us_load *l, uint32_t i, uint8_t b0, const char *payload, uint64_t len)
{
    struct lconn *c = &l->lc[i];
    uint8_t *h = (uint8_t *)l->wbuf;
    size_t n = 0;
    h[n++] = b0;
    if (len < 126) {
        h[n++] = 0x80 | (uint8_t)len;
    } else if (len < 65536) {
        h[n++] = 0x80 | 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = 0x80 | 127;
        for (int k = 7; k >= 0; k--)
            h[n++] = (uint8_t)(len >> (8 * k));
    }
    uint32_t key = (uint32_t)(xorshift(&c->rnd) >> 16);
    memcpy(h + n, &key, 4);
    n += 4;
    /* the key's bytes in wire order, repeated: XOR eight bytes at a time */
    uint64_t k8 = (uint64_t)key | ((uint64_t)key << 32);
    uint64_t j = 0;
    for (; j + 8 <= len; j += 8) {
        uint64_t w;
        memcpy(&w, payload + j, 8);
        w ^= k8;
        memcpy(h + n + j, &w, 8);
    }
    const uint8_t *kb = h + n - 4;
    for (; j < len; j++)
        h[n + j] = (uint8_t)payload[j] ^ kb[j & 3];
    int64_t ret = us_send(l->r, c->slot, c->gen, l->wbuf, n + len);
    if (ret >= 0 && (uint64_t)ret < n + len) {
        l->st.ring_errors++; /* the send arena is full: a frame cut short is no frame */
        return -ENOBUFS;
    }
    return ret < 0 ? (int)ret : 0;
}

/* the staged bytes the oldest message in flight must come back as */
static const struct us_load_unit *ws_expected(struct us_load *l, struct lconn *c)
{
    return &l->units[l->seq[c->first + c->echo_unit] + l->cf.ws_expect];
}

static int ws_compare(struct us_load *l, struct lconn *c, const uint8_t *p, uint64_t n)
{
    const struct us_load_unit *u = ws_expected(l, c);
    if (c->msg_off + n > u->len || memcmp(p, l->stage + u->off + c->msg_off, n))
        return WSR_MISMATCH;
    c->msg_off += n;
    return 0;
}

static int ws_inflate(struct us_load *l, struct lconn *c, const uint8_t *p, uint64_t n)
{
    z_stream *z = c->z;
    z->next_in = (Bytef *)p;
    z->avail_in = (uInt)n;
    for (;;) {
        z->next_out = l->zbuf;
        z->avail_out = ZBUF;
        int ret = inflate(z, Z_SYNC_FLUSH);
        if (ret != Z_OK && ret != Z_BUF_ERROR && ret != Z_STREAM_END)
            return WSR_PROTOCOL;
        uint64_t got = ZBUF - z->avail_out;
        if (got && ws_compare(l, c, l->zbuf, got) < 0)
            return WSR_MISMATCH;
        if (ret == Z_STREAM_END) { /* a final block: the next message starts a new stream */
            inflateReset(z);
            if (!z->avail_in)
                return 0;
            continue;
        }
        if (z->avail_out && (!z->avail_in || ret == Z_BUF_ERROR))
            return 0;
    }
}

static void ws_count_close(struct us_load *l, uint32_t code)
{
    uint32_t k = code >= 1000 && code <= 1015 ? code - 1000 : code >= 3000 && code <= 4999 ? 16 : 17;
    l->st.ws_closes[k]++;
    l->st.last_close_code = code;
}

/* a frame's payload is all in */
static int ws_frame_end(struct us_load *l, uint32_t i, uint32_t *done)
{
    struct lconn *c = &l->lc[i];
    if (c->f_op >= 0x8) {
        if (c->f_op == 0x9) /* ping: a pong with the same payload, masked like any client frame */
            return ws_send_frame(l, i, 0x8A, (const char *)c->ctl, c->ctl_len) < 0 ? WSR_WRITE : 0;
        if (c->f_op == 0x8) {
            if (c->ctl_len == 1)
                return WSR_PROTOCOL;
            ws_count_close(l, c->ctl_len ? (uint32_t)c->ctl[0] << 8 | c->ctl[1] : 1005);
            return WSR_CLOSED;
        }
        return 0; /* an unsolicited pong */
    }
    if (!c->f_fin)
        return 0;
    if (c->msg_z) {
        static const uint8_t tail[4] = {0, 0, 0xff, 0xff}; /* RFC 7692 7.2.2: what the sender removed */
        int ret = ws_inflate(l, c, tail, 4);
        if (ret < 0)
            return ret;
    }
    uint8_t want = (l->cf.ws_flags & US_WS_TEXT) ? 0x1 : 0x2;
    if (c->msg_off != ws_expected(l, c)->len || c->msg_op != want)
        return WSR_MISMATCH;
    c->in_msg = 0;
    c->msg_off = 0;
    c->echo_unit = c->echo_unit + 1 == c->nseq ? 0 : c->echo_unit + 1;
    (*done)++;
    return 0;
}

/* a frame header is complete in c->fh */
static int ws_frame_start(struct us_load *l, uint32_t i)
{
    struct lconn *c = &l->lc[i];
    uint8_t b0 = c->fh[0], b1 = c->fh[1];
    uint64_t len = b1 & 0x7f;
    if (len == 126)
        len = (uint64_t)c->fh[2] << 8 | c->fh[3];
    else if (len == 127) {
        len = 0;
        for (int k = 2; k < 10; k++)
            len = len << 8 | c->fh[k];
        if (len >> 63)
            return WSR_PROTOCOL;
    }
    c->f_op = b0 & 0x0f;
    c->f_fin = b0 >> 7;
    c->f_left = len;
    c->fh_len = 0;
    int rsv1 = (b0 & 0x40) != 0;
    if (b0 & 0x30)
        return WSR_PROTOCOL;
    if (c->f_op >= 0x8) {
        if (c->f_op > 0xA || !c->f_fin || len > 125 || rsv1)
            return WSR_PROTOCOL;
        c->ctl_len = 0;
        return 0;
    }
    if (c->f_op == 0x0) {
        if (!c->in_msg || rsv1)
            return WSR_PROTOCOL;
        return 0;
    }
    if (c->f_op > 0x2 || c->in_msg || (rsv1 && !c->z))
        return WSR_PROTOCOL;
    if (!c->rec_n)
        return WSR_MISMATCH; /* a message nobody sent */
    c->in_msg = 1;
    c->msg_op = c->f_op;
    c->msg_z = (uint8_t)rsv1;
    c->msg_off = 0;
    return 0;
}

static int ws_feed(struct us_load *l, uint32_t i, const uint8_t *p, uint64_t len, uint32_t *done)
{
    struct lconn *c = &l->lc[i];
    *done = 0;
    while (len) {
        if (!c->f_left && (c->fh_len || c->f_op == 0xFF)) {
            /* gathering a header: 2 bytes, then the extended length */
            c->fh[c->fh_len++] = *p++;
            len--;
            if (c->fh_len < 2)
                continue;
            if (c->fh[1] & 0x80)
                return WSR_PROTOCOL; /* a server must not mask */
            uint8_t l7 = c->fh[1] & 0x7f;
            uint8_t need = l7 == 127 ? 10 : l7 == 126 ? 4 : 2;
            if (c->fh_len < need)
                continue;
            int ret = ws_frame_start(l, i);
            if (ret < 0)
                return ret;
            if (!c->f_left && (ret = ws_frame_end(l, i, done)) < 0)
                return ret;
            c->f_op = c->f_left ? c->f_op : 0xFF;
            continue;
        }
        uint64_t take = len < c->f_left ? len : c->f_left;
        int ret = 0;
        if (c->f_op >= 0x8) {
            memcpy(c->ctl + c->ctl_len, p, take);
            c->ctl_len += (uint8_t)take;
        } else if (c->msg_z) {
            ret = ws_inflate(l, c, p, take);
        } else {
            ret = ws_compare(l, c, p, take);
        }
        if (ret < 0)
            return ret;
        p += take;
        len -= take;
        c->f_left -= take;
        if (!c->f_left) {
            if ((ret = ws_frame_end(l, i, done)) < 0)
                return ret;
            c->f_op = 0xFF; /* the next byte starts a header */
        }
    }
    return 0;
}

/* the upgrade answer, gathered until its blank line; what follows it is frames */
static int ws_handshake_data(struct us_load *l, uint32_t i, const char *p, uint32_t len, uint32_t *done)
{
    struct lconn *c = &l->lc[i];
    *done = 0;
    uint32_t from = c->hs_len > 3 ? c->hs_len - 3 : 0;
    uint32_t take = len < HS_MAX - c->hs_len ? len : HS_MAX - c->hs_len;
    memcpy(c->hs + c->hs_len, p, take);
    c->hs_len += take;
    c->hs[c->hs_len] = 0;
    char *end = memmem(c->hs + from, c->hs_len - from, "\r\n\r\n", 4);
    if (!end) {
        if (c->hs_len == HS_MAX) {
            l->st.errors[US_LERR_HANDSHAKE]++;
            l->st.hs_invalid++;
            return WSR_COUNTED;
        }
        return 0;
    }
    end[2] = 0; /* the head, as a string, for the searches below */
    int status = 0;
    if (!strncmp(c->hs, "HTTP/1.", 7) && c->hs_len > 12 && c->hs[8] == ' ')
        for (int k = 9; k < 12 && c->hs[k] >= '0' && c->hs[k] <= '9'; k++)
            status = status * 10 + (c->hs[k] - '0');
    l->st.by_class[status >= 100 && status < 600 ? status / 100 : 0]++;
    if (status != 101) {
        l->st.last_hs_status = status;
        l->st.errors[US_LERR_HANDSHAKE]++;
        return WSR_COUNTED;
    }
    if (!strstr(c->hs, l->cf.ws_accept) ||
        ((l->cf.ws_flags & US_WS_DEFLATE) && !strcasestr(c->hs, "permessage-deflate"))) {
        l->st.hs_invalid++;
        l->st.last_hs_status = status;
        l->st.errors[US_LERR_HANDSHAKE]++;
        return WSR_COUNTED;
    }
    uint32_t rest_at = (uint32_t)(end + 4 - c->hs) - (c->hs_len - take); /* offset in p of the first frame byte */
    free(c->hs);
    c->hs = NULL;
    c->hs_len = 0;
    if (l->cf.ws_flags & US_WS_DEFLATE) {
        c->z = calloc(1, sizeof(z_stream));
        if (!c->z || inflateInit2(c->z, -15) != Z_OK) {
            free(c->z);
            c->z = NULL;
            l->st.ring_errors++;
            return WSR_WRITE;
        }
    }
    c->ws_phase = WS_OPEN;
    c->f_op = 0xFF;
    if (rest_at < len) {
        int ret = ws_feed(l, i, (const uint8_t *)p + rest_at, len - rest_at, done);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* a ws connection is up: send the upgrade request */
static void ws_connected(struct us_load *l, uint32_t i)
{
    struct lconn *c = &l->lc[i];
    const struct us_load_unit *u = &l->units[l->cf.ws_hs_unit];
    c->hs = malloc(HS_MAX + 1);
    if (!c->hs) {
        l->st.ring_errors++;
        drop(l, i);
        return;
    }
    c->hs_len = 0;
    c->hs_at = l->now;
    int64_t ret = us_send_staged(l->r, c->slot, c->gen, u->off, u->len);
    if (ret < 0)
        fail(l, i, US_LERR_WRITE, (int)-ret);
}

/* the load is over: a close frame (1000), then the socket once it is sent */
static void ws_goodbye(struct us_load *l, uint32_t i)
{
    struct lconn *c = &l->lc[i];
    if (c->state != L_OPEN || c->ws_phase != WS_OPEN)
        return;
    static const char bye[2] = {0x03, (char)0xE8};
    if (ws_send_frame(l, i, 0x88, bye, 2) < 0)
        return;
    c->state = L_CLOSING;
    l->st.open--;
    l->closing++;
    if (us_close(l->r, c->slot, c->gen, 1) < 0)
        l->st.ring_errors++;
    reset_conn_state(l, i);
}

/* echo: the bytes back must be the bytes sent, in order */
static int echo_feed(struct us_load *l, uint32_t i, const char *p, uint32_t len, uint32_t *done)
{
    struct lconn *c = &l->lc[i];
    *done = 0;
    while (len) {
        if (!c->rec_n)
            return -1; /* bytes nobody asked for */
        const struct us_load_unit *u = &l->units[l->seq[c->first + c->echo_unit]];
        uint32_t msg = u->len / u->count;
        uint64_t take = u->len - c->echo_off;
        if (take > len)
            take = len;
        if (memcmp(p, l->stage + u->off + c->echo_off, take))
            return -1;
        uint64_t before = c->echo_off / msg;
        c->echo_off += take;
        *done += (uint32_t)(c->echo_off / msg - before);
        p += take;
        len -= (uint32_t)take;
        if (c->echo_off == u->len) {
            c->echo_off = 0;
            c->echo_unit = c->echo_unit + 1 == c->nseq ? 0 : c->echo_unit + 1;
        }
    }
    return 0;
}

static void on_data(struct us_load *l, uint32_t i, const char *p, uint32_t len)
{
    struct lconn *c = &l->lc[i];
    uint32_t n = 0;
    int close_after = 0;
    l->st.bytes_in += len;
    if (l->cf.mode == US_LOAD_HTTP) {
        struct us_frame_out o;
        memset(&o, 0, sizeof(o));
        us_resp_frame_feed(&l->fr[i], p, len, &o);
        n = o.responses;
        for (int k = 0; k < 6; k++)
            l->st.by_class[k] += o.by_class[k];
        if (o.error || n > c->out) {
            if (n <= c->out)
                completed(l, i, n);
            fail(l, i, US_LERR_PROTOCOL, 0);
            return;
        }
        close_after = o.close;
    } else if (l->cf.mode == US_LOAD_WS) {
        int ret = c->ws_phase == WS_HS ? ws_handshake_data(l, i, p, len, &n)
                                       : ws_feed(l, i, (const uint8_t *)p, len, &n);
        if (ret < 0) {
            static const int cls[] = {0, US_LERR_PROTOCOL, US_LERR_CLOSED, US_LERR_MISMATCH, US_LERR_WRITE};
            if (n)
                completed(l, i, n);
            if (c->ws_phase == WS_HS)
                c->retry_at = l->now + RETRY_NS; /* a refused upgrade is tried again after 10 ms, not in a spin */
            if (ret == WSR_COUNTED)
                drop(l, i);
            else
                fail(l, i, cls[-ret], 0);
            return;
        }
        if (c->ws_phase == WS_OPEN && !n && !c->out && !c->rec_n)
            next_request(l, i); /* the handshake just completed */
    } else if (l->cf.mode == US_LOAD_ECHO) {
        if (echo_feed(l, i, p, len, &n) < 0) {
            fail(l, i, US_LERR_PROTOCOL, 0);
            return;
        }
    } else {
        uint64_t errs = 0;
        int64_t got = resp_feed(&l->rf[i], p, len, &errs);
        if (got < 0 || (uint64_t)got > c->out) {
            fail(l, i, US_LERR_PROTOCOL, 0);
            return;
        }
        n = (uint32_t)got;
        l->st.by_class[5] += errs;
        l->st.by_class[2] += n - errs;
    }
    if (!n)
        return;
    completed(l, i, n);
    if (close_after) {
        l->st.closes_by_peer++;
        if (c->out)
            l->st.errors[US_LERR_READ]++; /* pipelined requests the server will not answer */
        drop(l, i);
        return;
    }
    if (!l->cf.keepalive && c->out == 0) {
        drop(l, i);
        return;
    }
    next_request(l, i);
}

static void on_eof(struct us_load *l, uint32_t i, int res)
{
    struct lconn *c = &l->lc[i];
    if (res < 0) {
        fail(l, i, US_LERR_READ, -res);
        return;
    }
    l->st.closes_by_peer++;
    if (l->cf.mode == US_LOAD_HTTP) {
        struct us_frame_out o;
        memset(&o, 0, sizeof(o));
        int cut = us_resp_frame_eof(&l->fr[i], &o);
        if (o.responses) {
            for (int k = 0; k < 6; k++)
                l->st.by_class[k] += o.by_class[k];
            completed(l, i, o.responses);
        }
        if (cut) {
            fail(l, i, US_LERR_SHORT, 0);
            return;
        }
    } else if (l->cf.mode == US_LOAD_WS && (c->ws_phase == WS_HS || c->f_left || c->fh_len || c->in_msg)) {
        if (c->ws_phase == WS_HS) {
            l->st.errors[US_LERR_HANDSHAKE]++; /* the server closed without answering the upgrade */
            c->retry_at = l->now + RETRY_NS;
            drop(l, i);
        } else {
            fail(l, i, US_LERR_SHORT, 0);
        }
        return;
    } else if (l->cf.mode == US_LOAD_ECHO && c->echo_off) {
        fail(l, i, US_LERR_SHORT, 0);
        return;
    } else if (l->cf.mode == US_LOAD_RESP && (l->rf[i].st != R_TYPE || l->rf[i].depth)) {
        fail(l, i, US_LERR_SHORT, 0);
        return;
    }
    if (c->out)
        fail(l, i, US_LERR_READ, ECONNRESET);
    else
        drop(l, i);
}

static void on_event(struct us_load *l, const struct us_event *e)
{
    if (e->kind == US_EV_CONNECT) {
        uint32_t i = e->aux;
        if (i >= l->cf.conns)
            return;
        struct lconn *c = &l->lc[i];
        l->st.connecting--;
        if (e->res < 0) {
            l->st.errors[US_LERR_CONNECT]++;
            l->st.last_errno = -e->res;
            c->state = L_IDLE;
            c->retry_at = l->now + RETRY_NS;
            if (e->conn != NONE && e->conn < l->nslots) {
                l->owner[e->conn] = i;
                l->closing++;
                c->state = L_CLOSING; /* a new try when the slot is free */
                c->slot = e->conn;
            }
            return;
        }
        c->slot = e->conn;
        c->gen = e->gen;
        c->state = L_OPEN;
        l->owner[e->conn] = i;
        l->st.open++;
        l->st.connects++;
        if (!l->running) {
            drop(l, i);
            return;
        }
        if (l->cf.mode == US_LOAD_WS)
            ws_connected(l, i);
        else
            next_request(l, i);
        return;
    }
    if (e->conn >= l->nslots)
        return;
    uint32_t i = l->owner[e->conn];
    if (i == NONE)
        return;
    struct lconn *c = &l->lc[i];
    if (e->kind == US_EV_CLOSED) {
        if (c->slot != e->conn)
            return;
        l->owner[e->conn] = NONE;
        l->closing--;
        c->slot = NONE;
        c->state = L_IDLE;
        if (l->running && c->retry_at <= l->now)
            connect_conn(l, i);
        return;
    }
    if (c->state != L_OPEN || c->slot != e->conn || c->gen != e->gen)
        return;
    switch (e->kind) {
    case US_EV_RECV: on_data(l, i, e->data, (uint32_t)e->res); break;
    case US_EV_EOF: on_eof(l, i, 0); break;
    case US_EV_RECV_ERR: on_eof(l, i, e->res); break;
    case US_EV_SEND_ERR: fail(l, i, US_LERR_WRITE, -e->res); break;
    default: break;
    }
}

/* every SCAN_NS: requests past their timeout, and connects to retry */
static void scan(struct us_load *l)
{
    uint32_t d = l->cf.depth;
    for (uint32_t i = 0; i < l->cf.conns; i++) {
        struct lconn *c = &l->lc[i];
        if (c->state == L_OPEN && c->rec_n && l->cf.timeout_ns &&
            l->now - l->recs[(size_t)i * d + c->rec_head].actual > (int64_t)l->cf.timeout_ns)
            fail(l, i, US_LERR_TIMEOUT, ETIMEDOUT);
        else if (c->state == L_OPEN && c->hs && l->cf.timeout_ns && l->now - c->hs_at > (int64_t)l->cf.timeout_ns)
            fail(l, i, US_LERR_TIMEOUT, ETIMEDOUT); /* no answer to the upgrade */
        else if (c->state == L_IDLE && l->running && c->retry_at <= l->now)
            connect_conn(l, i);
    }
    l->next_scan = l->now + SCAN_NS;
}

/* rate mode: release the requests that are due to their connections */
static void release_due(struct us_load *l)
{
    if (!l->cf.rate_ns || l->now < l->start)
        return;
    uint64_t due = (uint64_t)(l->now - l->start) / l->cf.rate_ns + 1;
    for (; l->tickets < due; l->tickets++) {
        uint32_t i = (uint32_t)(l->tickets % l->cf.conns);
        l->lc[i].credit++;
        send_due(l, i);
    }
}

static int64_t next_wake(struct us_load *l, int64_t until)
{
    int64_t t = until < l->next_scan ? until : l->next_scan;
    if (l->cf.rate_ns) {
        int64_t due = l->start + (int64_t)(l->tickets * l->cf.rate_ns);
        if (due < t)
            t = due;
    }
    return t;
}

static int pump(struct us_load *l, int64_t until, int stopping)
{
    for (;;) {
        l->now = mono_ns();
        if (!stopping) {
            release_due(l);
            if (l->now >= l->next_scan)
                scan(l);
        }
        if (l->now >= until || (stopping && !l->st.open && !l->st.connecting && !l->closing))
            return 0;
        int64_t wake = stopping ? until : next_wake(l, until);
        int64_t wait = wake - l->now;
        int n = us_wait(l->r, l->ev, EVMAX, 1, wait > 0 ? wait : 0);
        if (n < 0)
            return n;
        l->now = mono_ns();
        for (int k = 0; k < n; k++)
            on_event(l, &l->ev[k]);
    }
}

/* ---- API ---------------------------------------------------------------- */

struct us_load *us_load_new(struct us_ring *r, const struct us_load_conf *cf,
                            const struct us_load_unit *units, uint32_t nunits,
                            const uint32_t *seq, const uint32_t *seq_off, int *err)
{
    size_t stage_len;
    char *stage = us_stage_region(r, &stage_len);
    *err = -EINVAL;
    if (!cf->conns || !cf->depth || !nunits || cf->mode > US_LOAD_WS || cf->conns > 0xFFFFF)
        return NULL;
    uint64_t biggest = 0;
    if (cf->mode == US_LOAD_WS) {
        if (cf->ws_hs_unit >= nunits || !memchr(cf->ws_accept, 0, sizeof(cf->ws_accept)) || !cf->ws_accept[0])
            return NULL;
        for (uint32_t k = 0; k < seq_off[cf->conns]; k++)
            if (seq[k] >= nunits || (uint64_t)seq[k] + cf->ws_expect >= nunits)
                return NULL;
        for (uint32_t k = 0; k < nunits; k++)
            biggest = units[k].len > biggest ? units[k].len : biggest;
    }
    for (uint32_t k = 0; k < nunits; k++) {
        const struct us_load_unit *u = &units[k];
        if (!u->len || !u->count || u->count > cf->depth || (uint64_t)u->off + u->len > stage_len)
            return NULL;
        if (cf->mode == US_LOAD_ECHO && u->len % u->count)
            return NULL; /* echo: count messages of equal size */
        if (cf->rate_ns && u->count != 1)
            return NULL; /* rate mode paces single requests */
    }
    for (uint32_t i = 0; i < cf->conns; i++) {
        if (seq_off[i + 1] <= seq_off[i])
            return NULL;
    }
    for (uint32_t k = 0; k < seq_off[cf->conns]; k++)
        if (seq[k] >= nunits)
            return NULL;
    *err = -ENOMEM;
    struct us_load *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->r = r;
    l->cf = *cf;
    l->stage = stage;
    l->nslots = us_table_size(r);
    l->units = malloc(nunits * sizeof(*units));
    l->seq = malloc(seq_off[cf->conns] * sizeof(uint32_t));
    l->lc = calloc(cf->conns, sizeof(struct lconn));
    l->recs = calloc((size_t)cf->conns * cf->depth, sizeof(struct rec));
    l->owner = malloc(l->nslots * sizeof(uint32_t));
    l->ev = calloc(EVMAX, sizeof(struct us_event));
    l->hist[0] = calloc(US_HIST_LEN, sizeof(uint64_t));
    l->hist[1] = calloc(US_HIST_LEN, sizeof(uint64_t));
    if (cf->mode == US_LOAD_HTTP)
        l->fr = malloc(cf->conns * sizeof(struct us_resp_frame));
    if (cf->mode == US_LOAD_RESP)
        l->rf = calloc(cf->conns, sizeof(struct resp_fr));
    if (cf->mode == US_LOAD_WS) {
        l->wbuf = malloc(biggest + 14);
        l->zbuf = malloc(ZBUF);
    }
    if ((cf->mode == US_LOAD_WS && (!l->wbuf || !l->zbuf)) || !l->units || !l->seq || !l->lc || !l->recs || !l->owner || !l->ev || !l->hist[0] || !l->hist[1] ||
        (cf->mode == US_LOAD_HTTP && !l->fr) || (cf->mode == US_LOAD_RESP && !l->rf)) {
        us_load_free(l);
        return NULL;
    }
    memcpy(l->units, units, nunits * sizeof(*units));
    memcpy(l->seq, seq, seq_off[cf->conns] * sizeof(uint32_t));
    memset(l->owner, 0xFF, l->nslots * sizeof(uint32_t));
    for (uint32_t i = 0; i < cf->conns; i++) {
        l->lc[i].first = seq_off[i];
        l->lc[i].nseq = seq_off[i + 1] - seq_off[i];
        l->lc[i].slot = NONE;
        reset_conn_state(l, i);
    }
    if (cf->mode == US_LOAD_WS) {
        for (uint32_t i = 0; i < cf->conns; i++) {
            uint64_t seed = 0;
            if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
                seed = (uint64_t)mono_ns() * 0x9E3779B97F4A7C15ull + i;
            l->lc[i].rnd = seed | 1; /* xorshift's state must not be 0 */
        }
    }
    *err = 0;
    return l;
}

void us_load_free(struct us_load *l)
{
    if (!l)
        return;
    free(l->units);
    free(l->seq);
    free(l->recs);
    free(l->owner);
    free(l->ev);
    free(l->hist[0]);
    free(l->hist[1]);
    free(l->fr);
    free(l->rf);
    if (l->lc && l->cf.mode == US_LOAD_WS) {
        for (uint32_t i = 0; i < l->cf.conns; i++) {
            free(l->lc[i].hs);
            if (l->lc[i].z) {
                inflateEnd(l->lc[i].z);
                free(l->lc[i].z);
            }
        }
    }
    free(l->lc);
    free(l->wbuf);
    free(l->zbuf);
    free(l);
}

int us_load_start(struct us_load *l)
{
    l->now = l->start = mono_ns();
    l->next_scan = l->now + SCAN_NS;
    l->running = 1;
    for (uint32_t i = 0; i < l->cf.conns; i++)
        connect_conn(l, i);
    return 0;
}

int us_load_run(struct us_load *l, int64_t until_ns)
{
    return pump(l, until_ns, 0);
}

int us_load_stop(struct us_load *l, int64_t until_ns)
{
    l->running = 0;
    l->now = mono_ns();
    for (uint32_t i = 0; i < l->cf.conns; i++) {
        if (l->cf.mode == US_LOAD_WS)
            ws_goodbye(l, i);
        drop(l, i);
    }
    int ret = pump(l, until_ns, 1);
    if (ret < 0)
        return ret;
    return (int)(l->st.open + l->st.connecting + l->closing);
}

void us_load_stats_get(struct us_load *l, struct us_load_stats *st)
{
    *st = l->st;
}

void us_load_reset(struct us_load *l)
{
    uint32_t open = l->st.open, connecting = l->st.connecting;
    memset(&l->st, 0, sizeof(l->st));
    l->st.open = open;
    l->st.connecting = connecting;
    memset(l->hist[0], 0, US_HIST_LEN * sizeof(uint64_t));
    memset(l->hist[1], 0, US_HIST_LEN * sizeof(uint64_t));
}

uint64_t *us_load_hist(struct us_load *l, int corrected)
{
    return l->hist[corrected ? 1 : 0];
}
