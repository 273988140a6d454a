/* Response framing declared in http_frame.h. Written by hand: llhttp frames
 * responses well, but through per-field callbacks, which in a load
 * generator's receive path cost more than the request; this reads only what
 * framing needs (RFC 9112 section 6.3): the status, Content-Length,
 * Transfer-Encoding and Connection.
 */
#include "http_frame.h"

#include <errno.h>
#include <string.h>

enum { S_HEAD, S_BODY, S_CHUNK_SIZE, S_CHUNK_DATA, S_CHUNK_END, S_TRAILER, S_UNTIL_CLOSE, S_DEAD };

void us_resp_frame_init(struct us_resp_frame *f, int head_only)
{
    memset(f, 0, offsetof(struct us_resp_frame, hold));
    f->state = S_HEAD;
    f->head_only = head_only ? 1 : 0;
}

static int fail(struct us_resp_frame *f, struct us_frame_out *out, int err)
{
    f->state = S_DEAD;
    out->error = err;
    return err;
}

/* The next line ending in `term` (termlen bytes) at data[*pos..len): a
 * pointer to it (in data, or in hold when it arrived in pieces) and its
 * length with the terminator, or NULL when it has not ended yet (what there
 * is goes to hold). *pos moves past what was used. */
static const char *take(struct us_resp_frame *f, const char *data, size_t len, size_t *pos, const char *term,
                        size_t termlen, size_t *n, struct us_frame_out *out)
{
    size_t p = *pos;
    if (!f->held) {
        for (size_t i = p; i + termlen <= len; i++) {
            if (data[i] == term[0] && memcmp(data + i, term, termlen) == 0) {
                *n = i + termlen - p;
                if (*n > US_FRAME_HOLD) { /* as if it had come in pieces: the same limit */
                    fail(f, out, -E2BIG);
                    return NULL;
                }
                *pos = i + termlen;
                return data + p;
            }
        }
    }
    /* in pieces: append to hold and look where the terminator can end */
    size_t old = f->held;
    size_t room = US_FRAME_HOLD - old;
    size_t add = len - p < room ? len - p : room;
    memcpy(f->hold + old, data + p, add);
    f->held = (uint32_t)(old + add);
    size_t from = old >= termlen - 1 ? old - (termlen - 1) : 0;
    for (size_t i = from; i + termlen <= f->held; i++) {
        if (memcmp(f->hold + i, term, termlen) == 0) {
            size_t end = i + termlen;
            *n = end;
            *pos = p + (end - old);
            f->held = 0;
            return f->hold;
        }
    }
    *pos = p + add;
    if (f->held == US_FRAME_HOLD)
        fail(f, out, -E2BIG);
    return NULL;
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int name_is(const char *s, size_t n, const char *want)
{
    size_t k = strlen(want);
    if (n != k)
        return 0;
    for (size_t i = 0; i < k; i++)
        if (lower((unsigned char)s[i]) != want[i])
            return 0;
    return 1;
}

/* does the comma-separated value list contain `token` (case-insensitive)? */
static int has_token(const char *v, size_t n, const char *token, int last_only)
{
    size_t k = strlen(token);
    int found = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        int match = e - s == k;
        for (size_t j = 0; match && j < k; j++)
            match = lower((unsigned char)v[s + j]) == token[j];
        if (last_only)
            found = match;
        else if (match)
            return 1;
    }
    return found;
}

/* The head h[0..n) (through its blank line): sets the body's framing. */
static int head(struct us_resp_frame *f, const char *h, size_t n, struct us_frame_out *out)
{
    /* "HTTP/1.x SSS" then a reason phrase, or nothing */
    if (n < 14 || memcmp(h, "HTTP/1.", 7) != 0 || (h[7] != '0' && h[7] != '1') || h[8] != ' ')
        return fail(f, out, -EPROTO);
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (h[i] < '0' || h[i] > '9')
            return fail(f, out, -EPROTO);
        status = status * 10 + (h[i] - '0');
    }
    if (h[12] != ' ' && h[12] != '\r')
        return fail(f, out, -EPROTO);
    int http10 = h[7] == '0';
    int have_len = 0, chunked = 0, conn_close = 0, conn_keep = 0;
    uint64_t length = 0;
    const char *line = memchr(h, '\n', n);
    while (line != NULL && (size_t)(line + 1 - h) < n) {
        const char *s = line + 1;
        const char *eol = memchr(s, '\n', n - (size_t)(s - h));
        if (eol == NULL || eol == s || eol[-1] != '\r')
            return fail(f, out, -EPROTO);
        size_t len = (size_t)(eol - 1 - s);
        if (len == 0)
            break; /* the blank line */
        const char *colon = memchr(s, ':', len);
        if (colon == NULL || colon == s)
            return fail(f, out, -EPROTO);
        size_t nlen = (size_t)(colon - s);
        const char *v = colon + 1;
        size_t vlen = len - nlen - 1;
        while (vlen && (*v == ' ' || *v == '\t'))
            v++, vlen--;
        while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
            vlen--;
        if (name_is(s, nlen, "content-length")) {
            uint64_t x = 0;
            if (vlen == 0 || vlen > 19)
                return fail(f, out, -EPROTO);
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return fail(f, out, -EPROTO);
                x = x * 10 + (uint64_t)(v[i] - '0');
            }
            if (have_len && x != length) /* two different lengths: the framing is unknowable */
                return fail(f, out, -EPROTO);
            have_len = 1;
            length = x;
        } else if (name_is(s, nlen, "transfer-encoding")) {
            chunked = has_token(v, vlen, "chunked", 1);
            if (!chunked) /* an encoding that is not chunked last: delimited by the close */
                conn_close = 1;
        } else if (name_is(s, nlen, "connection")) {
            conn_close |= has_token(v, vlen, "close", 0);
            conn_keep |= has_token(v, vlen, "keep-alive", 0);
        }
        line = eol;
    }
    f->status = status;
    f->close = conn_close || (http10 && !conn_keep);
    if (status >= 100 && status < 200) {
        if (status == 101) /* a protocol switch: not HTTP any more */
            return fail(f, out, -EPROTO);
        f->state = S_HEAD; /* informational: the final response follows */
        return 0;
    }
    if (f->head_only || status == 204 || status == 304)
        f->left = 0, f->state = S_BODY;
    else if (chunked)
        f->state = S_CHUNK_SIZE;
    else if (have_len)
        f->left = length, f->state = S_BODY;
    else
        f->state = S_UNTIL_CLOSE, f->close = 1;
    return 0;
}

/* Body or chunk bytes: up to f->left of data[*pos..len); 1 when all have come. */
static int skip(struct us_resp_frame *f, size_t len, size_t *pos)
{
    uint64_t have = len - *pos;
    uint64_t use = f->left < have ? f->left : have;
    *pos += (size_t)use;
    f->left -= use;
    return f->left == 0;
}

static void done(struct us_resp_frame *f, struct us_frame_out *out)
{
    int s = f->status;
    out->responses++;
    out->by_class[s >= 100 && s < 600 ? s / 100 : 0]++;
    out->last_status = s;
    out->close = f->close;
    f->state = S_HEAD;
    f->left = 0;
}

size_t us_resp_frame_feed(struct us_resp_frame *f, const char *data, size_t len, struct us_frame_out *out)
{
    size_t pos = 0, n = 0;
    const char *l;
    for (;;) {
        switch (f->state) {
        case S_HEAD:
            if (pos == len)
                return pos;
            if ((l = take(f, data, len, &pos, "\r\n\r\n", 4, &n, out)) == NULL)
                return out->error ? pos : len;
            if (head(f, l, n, out) < 0)
                return pos;
            break;
        case S_BODY:
            if (!skip(f, len, &pos))
                return pos;
            done(f, out);
            break;
        case S_CHUNK_SIZE: {
            if (pos == len)
                return pos;
            if ((l = take(f, data, len, &pos, "\r\n", 2, &n, out)) == NULL)
                return out->error ? pos : len;
            uint64_t size = 0;
            size_t i = 0, end = n - 2; /* the line without its CRLF: hex digits, then extensions */
            for (; i < end; i++) {
                int d = hexval((unsigned char)l[i]);
                if (d < 0)
                    break;
                if (i == 15) /* 2^60 bytes: not a chunk any server sends */
                    return fail(f, out, -EPROTO), pos;
                size = size * 16 + (uint64_t)d;
            }
            if (i == 0 || (i < end && l[i] != ';' && l[i] != ' ' && l[i] != '\t'))
                return fail(f, out, -EPROTO), pos;
            f->left = size;
            f->state = size ? S_CHUNK_DATA : S_TRAILER;
            break;
        }
        case S_CHUNK_DATA:
            if (!skip(f, len, &pos))
                return pos;
            f->state = S_CHUNK_END;
            f->left = 2;
            break;
        case S_CHUNK_END:
            while (f->left && pos < len) {
                if (data[pos] != (f->left == 2 ? '\r' : '\n'))
                    return fail(f, out, -EPROTO), pos;
                pos++;
                f->left--;
            }
            if (f->left)
                return pos;
            f->state = S_CHUNK_SIZE;
            break;
        case S_TRAILER:
            if (pos == len)
                return pos;
            if ((l = take(f, data, len, &pos, "\r\n", 2, &n, out)) == NULL)
                return out->error ? pos : len;
            if (n == 2)
                done(f, out);
            break;
        case S_UNTIL_CLOSE:
            return len; /* all of it is body, until the peer closes */
        default:
            out->error = out->error ? out->error : -EPROTO;
            return pos;
        }
    }
}

int us_resp_frame_eof(struct us_resp_frame *f, struct us_frame_out *out)
{
    if (f->state == S_UNTIL_CLOSE) {
        done(f, out);
        f->close = 1;
        return 0;
    }
    /* between responses, nothing was cut; inside one, it was */
    return !(f->state == S_HEAD && f->held == 0);
}
