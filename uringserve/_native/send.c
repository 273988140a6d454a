/* The send part of the native core: the send arena, caller and file
 * segments, vectored sends, zero-copy notifications. See ring_internal.h
 * for how the parts fit.
 *
 * Buffer ownership
 * - Send arena: registered memory in fixed-size chunks. us_send() copies the
 *   caller's bytes into the connection's chunk queue and returns; the caller
 *   may reuse its buffer at once. A chunk holds one reference per send in
 *   flight from it, and a send_zc keeps that reference until its
 *   notification CQE (IORING_CQE_F_NOTIF): the kernel may read the pages
 *   until then. A chunk goes back to the free stack when it has left its
 *   connection's queue and has no references.
 * - Segments beyond the arena's chunks are the caller's buffers, sent in
 *   place (us_send_ref), ranges of the stage (client.c) and file ranges
 *   (us_send_file); each is handed back through us_released() when the
 *   kernel is done with it.
 * - One send per connection is in flight at a time, so bytes never
 *   interleave and a partial send is resumed from where it stopped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "ring_internal.h"
#include "tls.h"

/* ---- send arena -------------------------------------------------------- */

static uint32_t chunk_alloc(struct us_ring *r)
{
    if (!r->send.nfree)
        return NONE;
    uint32_t c = r->send.ch_free[--r->send.nfree];
    r->send.ch_next[c] = NONE;
    r->send.ch_len[c] = 0;
    r->send.ch_refs[c] = 0;
    r->send.ch_detached[c] = 0;
    r->st.arena_in_use++;
    return c;
}

/* A registered file's slot counts the file segments naming it (in `queued`,
 * which a file slot does not otherwise use). Unregistering waits for the
 * count to reach zero, and the slot is emptied by an SQE queued after every
 * read that names it, so no read can find the slot empty or reused. */
static void issue_file_drop(struct us_ring *r, uint32_t slot)
{
    struct conn *c = &r->conn.table[slot];
    struct io_uring_sqe *sqe = prep(r, UD(OP_FILE_DROP, slot, c->gen, 0), -1, 0, &r->send.drop_fd, 1);
    if (sqe)
        sqe->off = slot;
}

static void file_unref(struct us_ring *r, uint32_t slot)
{
    if (slot >= r->conn.size)
        return;
    struct conn *c = &r->conn.table[slot];
    if (c->state != C_FILE || !c->q.queued)
        return;
    if (--c->q.queued == 0 && (c->flags & F_FILE_DROP))
        issue_file_drop(r, slot);
}

void on_file_drop(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint32_t slot = UD_SLOT(cqe->user_data);
    struct conn *c = &r->conn.table[slot];
    r->st.files_registered--;
    if (c->state == C_FILE && c->gen == (uint16_t)UD_GEN(cqe->user_data))
        slot_release(r, c);
    else
        r->conn.accept_used--; /* the kernel already gave the slot to an accept */
    rearm_starved(r);
}

static void chunk_maybe_free(struct us_ring *r, uint32_t c)
{
    if (!r->send.ch_detached[c] || r->send.ch_refs[c])
        return;
    r->send.ch_detached[c] = 0;
    if (c >= r->send.nchunks) {
        /* the kernel is done with the caller's buffer: hand its index back */
        uint32_t e = c - r->send.nchunks;
        if (!r->send.ext_ptr[e] && r->send.ext_ffixed[e])
            file_unref(r, (uint32_t)r->send.ext_fd[e]);
        if (!r->send.ext_staged[e])
            r->send.released[1 + r->send.released[0]++] = e;
        r->send.ext_free[r->send.nextfree++] = e;
        r->st.ext_in_use--;
        r->send.seg_freed = 1;
        return;
    }
    r->send.ch_free[r->send.nfree++] = c;
    r->st.arena_in_use--;
    r->send.arena_freed = 1;
}

void queue_discard(struct us_ring *r, struct conn *c)
{
    uint32_t ch = c->q.head;
    while (ch != NONE) {
        uint32_t next = r->send.ch_next[ch];
        r->send.ch_detached[ch] = 1;
        chunk_maybe_free(r, ch);
        ch = next;
    }
    c->q.head = c->q.tail = NONE;
    c->q.head_off = 0;
    c->q.queued = 0;
    c->q.fseg = c->q.fprev = NONE;
}

static int file_fill(struct us_ring *r, uint32_t slot, struct conn *c);

static int is_file_seg(struct us_ring *r, uint32_t ch)
{
    return ch >= r->send.nchunks && r->send.ext_ptr[ch - r->send.nchunks] == NULL;
}

static void sent_inflight(struct us_ring *r, struct conn *c, uint32_t ch, uint32_t n)
{
    r->send.ch_refs[ch]++;
    c->q.inflight_len = n;
    c->flags |= F_SEND_INFLIGHT;
    r->st.sends++;
}

/* Bytes of the stage: already in registered memory, so the send reads
 * pinned pages (WRITE_FIXED or send_zc with the fixed buffer) instead of
 * mapping user memory per call. Without a registered arena: plain send. */
static int submit_staged(struct us_ring *r, uint32_t slot, struct conn *c, uint32_t ch,
                         const char *p, uint32_t n)
{
    int how = r->send.arena_registered ? r->cfg.stage_send : US_STAGE_SEND;
    int zc = how == US_STAGE_SEND_ZC_FIXED;
    int tag = zc ? OP_SENDZC : how == US_STAGE_WRITE_FIXED ? OP_STAGE_WRITE : OP_SEND;
    struct io_uring_sqe *sqe = prep(r, UD(tag, slot, c->gen, ch), c->fd, conn_fixed(r), p, n);
    if (!sqe)
        return -EBUSY;
    if (tag == OP_STAGE_WRITE) {
        sqe->buf_index = 0; /* the arena and the stage are one registered buffer */
    } else {
        sqe->msg_flags = MSG_NOSIGNAL;
        if (zc) {
            sqe->ioprio = IORING_SEND_ZC_REPORT_USAGE | IORING_RECVSEND_FIXED_BUF;
            r->st.zc_sends++;
            r->st.zc_fixed_sends++;
        } else {
            r->st.plain_sends++;
        }
    }
    r->st.staged_sends++;
    FAULT_SQE(r, US_FAULT_SEND, sqe);
    sent_inflight(r, c, ch, n);
    return 0;
}

static const char *seg_ptr(struct us_ring *r, uint32_t ch)
{
    return ch >= r->send.nchunks ? r->send.ext_ptr[ch - r->send.nchunks] : r->send.arena + (size_t)ch * r->cfg.chunk_size;
}

/* Two or more memory segments queued (arena chunks, the caller's objects):
 * one SENDMSG over all of them, so writelines() of large buffers, or a head
 * and a body written apart, go out in one send. Returns 1 if submitted, 0
 * if the queue does not call for it, or -EBUSY. Plain sends only: a
 * zero-copy send stays one segment (its notification frees one chunk). */
static int submit_sendv(struct us_ring *r, uint32_t slot, struct conn *c)
{
    uint32_t ch = c->q.head, k = 0, total = 0;
    if (ch == c->q.tail || !r->send.nvfree)
        return 0;
    uint32_t rec = r->send.vfree[r->send.nvfree - 1]; /* taken once the SQE is */
    struct vrec *v = &r->send.vrecs[rec];
    for (uint32_t off = c->q.head_off; ch != NONE && k < VEC_MAX; ch = r->send.ch_next[ch], off = 0) {
        if (is_file_seg(r, ch) || (ch >= r->send.nchunks && r->send.ext_staged[ch - r->send.nchunks]))
            break; /* read first, or sent from the stage: its own way */
        uint32_t n = r->send.ch_len[ch] - off;
        if (n > 0x7fffffffu - total)
            break;
        v->iov[k].iov_base = (void *)(seg_ptr(r, ch) + off);
        v->iov[k].iov_len = n;
        v->seg[k++] = ch;
        total += n;
    }
    if (k < 2)
        return 0;
    memset(&v->mh, 0, sizeof v->mh);
    v->mh.msg_iov = v->iov;
    v->mh.msg_iovlen = k;
    v->nseg = k;
    struct io_uring_sqe *sqe = prep(r, UD(OP_SENDV, slot, c->gen, rec), c->fd, conn_fixed(r), &v->mh, 1);
    if (!sqe)
        return -EBUSY;
    r->send.nvfree--;
    sqe->msg_flags = MSG_NOSIGNAL;
    r->st.plain_sends++;
    r->st.vec_sends++;
    FAULT_SQE(r, US_FAULT_SEND, sqe);
    for (uint32_t i = 1; i < k; i++)
        r->send.ch_refs[v->seg[i]]++;
    sent_inflight(r, c, v->seg[0], total);
    if (c->q.fseg != NONE)
        file_fill(r, slot, c); /* read the next piece while these are sent */
    return 1;
}

static int submit_send(struct us_ring *r, uint32_t slot, struct conn *c)
{
    uint32_t ch = c->q.head;
    if (is_file_seg(r, ch))
        return file_fill(r, slot, c); /* its data is read first; the read's completion sends */
    uint32_t off = c->q.head_off;
    uint32_t n = r->send.ch_len[ch] - off;
    int ext = ch >= r->send.nchunks;
    const char *p = ext ? r->send.ext_ptr[ch - r->send.nchunks] + off
                        : r->send.arena + (size_t)ch * r->cfg.chunk_size + off;
    int mode = r->cfg.send_mode;
    int zc, fixedbuf;
    if (ext && r->send.ext_staged[ch - r->send.nchunks])
        return submit_staged(r, slot, c, ch, p, n);
    if (mode == US_SEND_AUTO) {
        zc = !(c->flags & F_NO_ZC) && n >= r->cfg.zc_threshold && (ext || r->send.arena_registered);
        fixedbuf = zc && !ext;
    } else {
        zc = (mode == US_SEND_ZC || mode == US_SEND_ZC_FIXED) && !(c->flags & F_ZC_UNSUP);
        fixedbuf = zc && mode == US_SEND_ZC_FIXED && r->send.arena_registered && !ext;
    }
    if (!zc) {
        int v = submit_sendv(r, slot, c);
        if (v)
            return v < 0 ? v : 0;
    }
    struct io_uring_sqe *sqe = prep(r, UD(zc ? OP_SENDZC : OP_SEND, slot, c->gen, ch), c->fd,
                                    conn_fixed(r), p, n);
    if (!sqe)
        return -EBUSY;
    sqe->msg_flags = MSG_NOSIGNAL;
    if (zc) {
        sqe->ioprio = IORING_SEND_ZC_REPORT_USAGE | (fixedbuf ? IORING_RECVSEND_FIXED_BUF : 0);
        sqe->buf_index = 0;
        r->st.zc_sends++;
        r->st.zc_fixed_sends += fixedbuf;
    } else {
        r->st.plain_sends++;
    }
    FAULT_SQE(r, US_FAULT_SEND, sqe);
    sent_inflight(r, c, ch, n);
    if (c->q.fseg != NONE)
        file_fill(r, slot, c); /* read the next piece while this one is sent */
    return 0;
}

/* A write queues its bytes; the send is prepared when the caller next
 * enters the kernel (us_wait, us_flush), not at the write, so everything a
 * callback writes to a connection before then leaves in one send
 * (writelines, several pipelined responses) where the first write used to
 * go alone and the rest after its completion. Sends that follow a
 * completion are prepared at once: that is inside the enter already. */
static void send_later(struct us_ring *r, uint32_t slot, struct conn *c)
{
    if (c->flags & (F_SEND_Q | F_SEND_INFLIGHT))
        return;
    c->flags |= F_SEND_Q;
    r->send.sendq[r->send.nsendq++] = slot;
}

void flush_sends(struct us_ring *r)
{
    uint32_t n = r->send.nsendq;
    r->send.nsendq = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t slot = r->send.sendq[i];
        struct conn *c = &r->conn.table[slot];
        if (!(c->flags & F_SEND_Q))
            continue; /* listed twice (closed and reused in between): done already */
        c->flags &= ~F_SEND_Q;
        if ((c->state == C_OPEN || c->state == C_CLOSING) && c->q.queued && !(c->flags & F_SEND_INFLIGHT)
            && submit_send(r, slot, c) == -EBUSY)
            send_later(r, slot, c); /* no SQE free even after submitting: the next enter */
    }
}

/* ---- file segments -----------------------------------------------------
 * A file queued with us_send_file() is a segment without memory. When it is
 * at the head of its connection's queue, or one chunk behind the head, the
 * next piece is read into a free arena chunk (READ_FIXED: registered memory)
 * and that chunk is linked in before the file segment, so it is sent like
 * any arena chunk (send_zc from the fixed buffer when big enough). At most
 * one read per connection is in flight; with the chunk being sent that is
 * double buffering. The chunk being read holds a reference, so a close or a
 * send error that discards the queue leaves it to the read's completion. */

static void fill_wait(struct us_ring *r, uint32_t slot, struct conn *c)
{
    if (c->flags & F_FILL_WAIT)
        return;
    c->flags |= F_FILL_WAIT;
    r->send.fillwait[r->send.nfillwait++] = slot;
    r->st.file_waits++;
}

/* TLS: the ciphertext queued ahead of the file that still lets the next
 * piece be read (about two chunks: one plaintext chunk's records being sent
 * while the next is read and encrypted, as the plain path's one chunk) */
static int tls_read_ahead(struct us_ring *r, struct conn *c, uint32_t f)
{
    uint32_t limit = 2 * r->cfg.chunk_size, before = 0;
    for (uint32_t ch = c->q.head; ch != f && ch != NONE; ch = r->send.ch_next[ch]) {
        before += r->send.ch_len[ch] - (ch == c->q.head ? c->q.head_off : 0);
        if (before > limit)
            return 0;
    }
    return 1;
}

static int file_fill(struct us_ring *r, uint32_t slot, struct conn *c)
{
    uint32_t f = c->q.fseg;
    if (f == NONE || (c->flags & F_FREAD))
        return 0;
    if (c->is_tls) {
        if (!tls_read_ahead(r, c, f))
            return 0;
        /* the plaintext chunk and at least one for its records: a read
         * that could not be encrypted would only be read again */
        if (r->send.nfree < 2) {
            fill_wait(r, slot, c);
            return 0;
        }
    } else if (!(c->q.head == f || c->q.fprev == c->q.head)) {
        return 0; /* enough is read ahead */
    }
    uint32_t a = chunk_alloc(r);
    if (a == NONE) {
        fill_wait(r, slot, c);
        return 0;
    }
    uint32_t e = f - r->send.nchunks;
    uint32_t n = r->send.ch_len[f] < r->cfg.chunk_size ? r->send.ch_len[f] : r->cfg.chunk_size;
    char *dst = r->send.arena + (size_t)a * r->cfg.chunk_size;
    int fixedbuf = r->send.arena_registered;
    struct io_uring_sqe *sqe = prep(r, UD(fixedbuf ? OP_FREAD : OP_FREAD_PLAIN, slot, c->gen, a), r->send.ext_fd[e],
                                    r->send.ext_ffixed[e], dst, n);
    if (!sqe) {
        r->send.ch_detached[a] = 1;
        chunk_maybe_free(r, a);
        return -EBUSY;
    }
    sqe->off = r->send.ext_foff[e];
    sqe->buf_index = 0;
    r->send.ch_refs[a] = 1;
    r->send.ch_detached[a] = 1; /* not queued yet: freed by the completion if the queue is gone */
    c->flags |= F_FREAD;
    r->st.file_reads++;
    return 0;
}

/* the first file segment after `from` (and the segment before it) */
static void file_next(struct us_ring *r, struct conn *c, uint32_t from)
{
    uint32_t prev = from;
    for (uint32_t ch = r->send.ch_next[from]; ch != NONE; prev = ch, ch = r->send.ch_next[ch])
        if (is_file_seg(r, ch)) {
            c->q.fseg = ch;
            c->q.fprev = prev;
            return;
        }
    c->q.fseg = c->q.fprev = NONE;
}

static void send_failed(struct us_ring *r, uint32_t slot, struct conn *c, int res, struct out *o)
{
    /* later sends fail at once, as a send() syscall would: a writer
     * that never yields to the loop still learns of it */
    c->flags |= F_SEND_BROKEN;
    queue_discard(r, c);
    emit(o, US_EV_SEND_ERR, slot, c->gen, res);
    if (c->state == C_CLOSING)
        issue_close(r, slot, c);
}

/* A TLS connection's file read completed: its plaintext (chunk `a`) is
 * encrypted at once, the records queued before the file segment, and the
 * chunk freed; the segment gives up what whole records took. When the arena
 * fills mid-way the rest is not held: the segment still names those bytes,
 * and they are read again once chunks are free (OpenSSL keeps a record it
 * could place only in part; the re-read offers its bytes again). */
static void on_tls_fread(struct us_ring *r, uint32_t slot, struct conn *c, uint32_t a, uint32_t res, struct out *o)
{
    uint32_t f = c->q.fseg, e = f - r->send.nchunks;
    const char *plain = r->send.arena + (size_t)a * r->cfg.chunk_size;
    int64_t n = c->tls ? tls_encrypt_file(c->tls, plain, res) : -EPIPE; /* freed: never sent in clear */
    chunk_maybe_free(r, a);
    if (n < 0) {
        send_failed(r, slot, c, (int)n, o);
        return;
    }
    r->send.ext_foff[e] += (uint64_t)n;
    r->send.ch_len[f] -= (uint32_t)n;
    c->q.queued -= (uint64_t)n; /* its records were counted as us_send queued them */
    r->st.file_bytes += (uint64_t)n;
    if (r->send.ch_len[f] == 0) { /* all encrypted: the segment leaves the queue */
        uint32_t prev = c->q.fprev, next = r->send.ch_next[f];
        if (prev == NONE)
            c->q.head = next;
        else
            r->send.ch_next[prev] = next;
        if (c->q.tail == f)
            c->q.tail = prev;
        r->send.ch_detached[f] = 1;
        chunk_maybe_free(r, f); /* hands the segment back: the caller may close the file */
        if (prev != NONE) {
            file_next(r, c, prev);
        } else if (c->q.head != NONE && is_file_seg(r, c->q.head)) {
            c->q.fseg = c->q.head;
            c->q.fprev = NONE;
        } else if (c->q.head != NONE) {
            file_next(r, c, c->q.head);
        } else {
            c->q.fseg = c->q.fprev = NONE;
        }
        if (c->q.fseg == NONE && c->tls)
            tls_files_sent(c->tls);
    }
    if (!(c->flags & F_SEND_INFLIGHT))
        submit_send(r, slot, c);
    else
        file_fill(r, slot, c);
}

void on_fread(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    uint32_t slot = UD_SLOT(ud), a = UD_AUX(ud);
    struct conn *c = conn_get(r, slot, UD_GEN(ud));
    r->send.ch_refs[a]--;
    if (!c) {
        r->st.stale_cqes++;
        chunk_maybe_free(r, a);
        return;
    }
    c->flags &= ~F_FREAD;
    uint32_t f = c->q.fseg;
    if (f == NONE) { /* the queue was discarded meanwhile */
        chunk_maybe_free(r, a);
        return;
    }
    int res = cqe->res;
    if (res <= 0) {
        /* the peer was promised these bytes; a file that shrank (res 0) or
         * cannot be read ends the connection's sending */
        chunk_maybe_free(r, a);
        send_failed(r, slot, c, res < 0 ? res : -ENODATA, o);
        return;
    }
    if (c->is_tls) {
        on_tls_fread(r, slot, c, a, (uint32_t)res, o);
        return;
    }
    uint32_t e = f - r->send.nchunks;
    r->send.ch_detached[a] = 0;
    r->send.ch_len[a] = (uint32_t)res;
    r->send.ch_next[a] = f;
    if (c->q.fprev == NONE)
        c->q.head = a;
    else
        r->send.ch_next[c->q.fprev] = a;
    c->q.fprev = a;
    r->send.ext_foff[e] += (uint64_t)res;
    r->send.ch_len[f] -= (uint32_t)res;
    r->st.file_bytes += (uint64_t)res;
    if (r->send.ch_len[f] == 0) { /* all read: the segment leaves the queue */
        r->send.ch_next[a] = r->send.ch_next[f];
        if (c->q.tail == f)
            c->q.tail = a;
        r->send.ch_detached[f] = 1;
        chunk_maybe_free(r, f); /* hands the segment back: the caller may close the file */
        file_next(r, c, a);
    }
    if (!(c->flags & F_SEND_INFLIGHT))
        submit_send(r, slot, c);
    else
        file_fill(r, slot, c);
}

void retry_fills(struct us_ring *r)
{
    uint32_t n = r->send.nfillwait;
    r->send.nfillwait = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t slot = r->send.fillwait[i];
        struct conn *c = &r->conn.table[slot];
        c->flags &= ~F_FILL_WAIT;
        if ((c->state == C_OPEN || c->state == C_CLOSING) && c->q.fseg != NONE) {
            if (c->q.head == c->q.fseg && !(c->flags & F_SEND_INFLIGHT))
                submit_send(r, slot, c);
            else
                file_fill(r, slot, c);
        }
    }
}

/* ---- send completions -------------------------------------------------- */

static void send_done(struct us_ring *r, uint32_t slot, struct conn *c, struct out *o);

/* `res` bytes of a send (of one segment or several) went out: consumed
 * from the head of the queue, segment by segment; a segment sent whole
 * leaves the queue, and a partial send stops inside one, where the next
 * send starts. (The arena's tail chunk may have grown since the send was
 * made; only what was sent is consumed.) */
static void consume_sent(struct us_ring *r, struct conn *c, uint32_t res)
{
    r->st.send_bytes += res;
    if (res < c->q.inflight_len)
        r->st.send_partial++;
    c->q.queued -= res;
    c->q.sent += res;
    for (uint32_t left = res; left;) {
        uint32_t old = c->q.head, avail = r->send.ch_len[old] - c->q.head_off;
        if (left < avail) {
            c->q.head_off += left;
            break;
        }
        left -= avail;
        c->q.head = old == c->q.tail ? NONE : r->send.ch_next[old];
        if (c->q.head == NONE)
            c->q.tail = NONE;
        c->q.head_off = 0;
        if (c->q.fprev == old)
            c->q.fprev = NONE; /* the file segment is the head now */
        r->send.ch_detached[old] = 1;
        chunk_maybe_free(r, old);
    }
}

void on_send(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    uint32_t slot = UD_SLOT(ud), ch = UD_AUX(ud);
    int zc = UD_OP(ud) == OP_SENDZC;
    struct conn *c = conn_get(r, slot, UD_GEN(ud));
    if (zc && (cqe->flags & IORING_CQE_F_NOTIF)) {
        r->st.zc_notifs++;
        uint32_t usage = (uint32_t)cqe->res;
        if (r->faults && fault_fires(r->faults, US_FAULT_ZC_COPIED))
            usage |= IORING_NOTIF_USAGE_ZC_COPIED;
        if (usage & IORING_NOTIF_USAGE_ZC_COPIED) {
            r->st.zc_copied++;
            if (c)
                c->flags |= F_NO_ZC; /* the kernel copied anyway: plain send is cheaper */
        }
        r->send.ch_refs[ch]--;
        chunk_maybe_free(r, ch);
        return;
    }
    if (!(zc && (cqe->flags & IORING_CQE_F_MORE)))
        r->send.ch_refs[ch]--;
    if (!c) {
        r->st.stale_cqes++;
        chunk_maybe_free(r, ch);
        return;
    }
    c->flags &= ~F_SEND_INFLIGHT;
    int res = cqe->res;
    if (res == -EOPNOTSUPP && zc) {
        /* a socket without zero-copy (AF_UNIX): the same bytes again, plainly */
        c->flags |= F_NO_ZC | F_ZC_UNSUP;
        r->st.zc_unsupported++;
        submit_send(r, slot, c);
        return;
    }
    if (res < 0 && res != -EINTR && res != -EAGAIN) {
        chunk_maybe_free(r, ch);
        send_failed(r, slot, c, res, o);
        return;
    }
    if (res > 0)
        consume_sent(r, c, (uint32_t)res);
    send_done(r, slot, c, o);
}

/* After a send's completion: the next send, or the close or shutdown that
 * waited for the queue to drain, and WRITABLE once below the caller's mark. */
static void send_done(struct us_ring *r, uint32_t slot, struct conn *c, struct out *o)
{
    if (c->q.queued) {
        submit_send(r, slot, c);
    } else if (c->state == C_CLOSING) {
        if (c->q.notify_at >= 0) {
            /* a paused writer closed: as with asyncio, it may still write its
             * last words when resumed (TLS close_notify); Python closes again */
            c->q.notify_at = -1;
            emit(o, US_EV_WRITABLE, slot, c->gen, 0);
            return;
        }
        issue_close(r, slot, c);
        return;
    } else if (c->flags & F_SHUT_PENDING) {
        issue_shutdown(r, slot, c);
    }
    if (c->q.notify_at >= 0 && (int64_t)c->q.queued <= c->q.notify_at) {
        c->q.notify_at = -1;
        emit(o, US_EV_WRITABLE, slot, c->gen, (int32_t)(c->q.queued > 0x7fffffff ? 0x7fffffff : c->q.queued));
    }
}

/* A vectored send's completion: every segment it named lets go of its
 * reference, then what was sent is consumed as for any send. */
void on_sendv(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    uint32_t slot = UD_SLOT(ud), rec = UD_AUX(ud);
    struct vrec *v = &r->send.vrecs[rec];
    struct conn *c = conn_get(r, slot, UD_GEN(ud));
    for (uint32_t i = 0; i < v->nseg; i++)
        r->send.ch_refs[v->seg[i]]--;
    r->send.vfree[r->send.nvfree++] = rec;
    if (!c) {
        r->st.stale_cqes++;
        for (uint32_t i = 0; i < v->nseg; i++)
            chunk_maybe_free(r, v->seg[i]);
        return;
    }
    c->flags &= ~F_SEND_INFLIGHT;
    int res = cqe->res;
    if (res < 0 && res != -EINTR && res != -EAGAIN) {
        for (uint32_t i = 0; i < v->nseg; i++)
            chunk_maybe_free(r, v->seg[i]);
        send_failed(r, slot, c, res, o);
        return;
    }
    if (res > 0)
        consume_sent(r, c, (uint32_t)res);
    send_done(r, slot, c, o);
}

/* ---- send API ---------------------------------------------------------- */

/* The connection a send may queue on, or NULL with *err set. A CLOSING
 * connection still takes data: asyncio flushes writes made after close()
 * while earlier data is still queued. */
static inline struct conn *send_conn(struct us_ring *r, uint32_t slot, uint32_t gen, int *err)
{
    struct conn *c = conn_get(r, slot, gen);
    *err = !c ? -EBADF : (c->flags & (F_SHUT_PENDING | F_SHUT_DONE | F_SEND_BROKEN)) ? -EPIPE : 0;
    return *err ? NULL : c;
}

int64_t us_send(struct us_ring *r, uint32_t slot, uint32_t gen, const char *data, size_t len)
{
    int err;
    struct conn *c = send_conn(r, slot, gen, &err);
    if (!c)
        return err;
    size_t copied = 0;
    uint32_t cs = r->cfg.chunk_size;
    while (copied < len) {
        uint32_t t = c->q.tail;
        if (t == NONE || t >= r->send.nchunks || r->send.ch_len[t] == cs) {
            uint32_t n = chunk_alloc(r);
            if (n == NONE) {
                r->send.arena_waiting = 1;
                r->st.arena_short++;
                break;
            }
            if (t == NONE)
                c->q.head = n;
            else
                r->send.ch_next[t] = n;
            c->q.tail = t = n;
        }
        size_t room = cs - r->send.ch_len[t];
        size_t n = len - copied < room ? len - copied : room;
        /* appending past an in-flight send's range is safe: the kernel reads only that range */
        memcpy(r->send.arena + (size_t)t * cs + r->send.ch_len[t], data + copied, n);
        r->send.ch_len[t] += (uint32_t)n;
        copied += n;
    }
    c->q.queued += copied;
    if (c->q.queued)
        send_later(r, slot, c);
    return (int64_t)copied;
}

static int64_t queue_before_file_(struct us_ring *r, struct conn *c, uint32_t slot, uint32_t gen,
                                  const char *data, size_t len);

int64_t queue_before_file(struct us_ring *r, uint32_t slot, uint32_t gen, const char *data, size_t len)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    /* the TLS layer's own records (a file's, close_notify) are queued even
     * when a FIN was asked for meanwhile (a TLS half-close): the FIN waits
     * behind them, as it waits behind anything queued */
    uint32_t shut = c->flags & F_SHUT_PENDING;
    c->flags &= ~F_SHUT_PENDING;
    int64_t n = queue_before_file_(r, c, slot, gen, data, len);
    c->flags |= shut;
    return n;
}

static int64_t queue_before_file_(struct us_ring *r, struct conn *c, uint32_t slot, uint32_t gen,
                                  const char *data, size_t len)
{
    uint32_t f = c->q.fseg;
    if (f == NONE)
        return us_send(r, slot, gen, data, len);
    /* the queue is cut before the file for us_send to append there, then joined again */
    uint32_t head = c->q.head, tail = c->q.tail;
    c->q.tail = c->q.fprev;
    if (c->q.fprev == NONE)
        c->q.head = NONE;
    int64_t n = us_send(r, slot, gen, data, len);
    if (c->q.tail == NONE) {
        c->q.head = head; /* nothing was before the file and nothing was added */
    } else {
        r->send.ch_next[c->q.tail] = f;
        c->q.fprev = c->q.tail;
    }
    c->q.tail = tail;
    return n;
}

int64_t queue_ref(struct us_ring *r, uint32_t slot, uint32_t gen, const char *data, size_t len, int staged)
{
    int err;
    struct conn *c = send_conn(r, slot, gen, &err);
    if (!c)
        return err;
    if (!r->send.nextfree || len == 0 || len > 0x7fffffff)
        return -ENOBUFS; /* the caller copies instead */
    uint32_t e = r->send.ext_free[--r->send.nextfree];
    uint32_t seg = r->send.nchunks + e;
    r->send.ext_ptr[e] = data;
    r->send.ext_staged[e] = (uint8_t)staged;
    r->send.ch_next[seg] = NONE;
    r->send.ch_len[seg] = (uint32_t)len;
    r->send.ch_refs[seg] = 0;
    r->send.ch_detached[seg] = 0;
    r->st.ext_in_use++;
    if (c->q.tail == NONE)
        c->q.head = seg;
    else
        r->send.ch_next[c->q.tail] = seg;
    c->q.tail = seg;
    c->q.queued += len;
    r->st.ext_sends += !staged;
    send_later(r, slot, c);
    return (int64_t)e;
}

int64_t us_send_ref(struct us_ring *r, uint32_t slot, uint32_t gen, const char *data, size_t len)
{
    return queue_ref(r, slot, gen, data, len, 0);
}

/* Queue `len` bytes of a file from `off`, read by the ring into registered
 * memory on the way (see "file segments"). `file` is a slot from
 * us_file_register() (fixed=1) or a plain fd (fixed=0). The caller keeps the
 * file open until the returned segment index appears in us_released(). */
int64_t us_send_file(struct us_ring *r, uint32_t slot, uint32_t gen, int file, int fixed,
                     uint64_t off, uint64_t len)
{
    int err;
    struct conn *c = send_conn(r, slot, gen, &err);
    if (!c)
        return err;
    if (len == 0 || len > 0x7fffffff)
        return -EINVAL; /* the caller splits big files */
    if (c->is_tls) {
        if (r->send.nchunks < 2 || !c->tls)
            return -EOPNOTSUPP; /* a plaintext chunk and a chunk for its records: the caller writes instead */
        if (!tls_established(c->tls)) {
            r->send.seg_waiting = 1; /* held by the caller until the handshake is done, as writes are */
            return -ENOBUFS;
        }
    }
    /* an unregistered file's slot lives on only while something holds it */
    if (fixed && (!conn_fixed(r) || (uint32_t)file >= r->conn.size || r->conn.table[file].state != C_FILE ||
                  ((r->conn.table[file].flags & F_FILE_DROP) && !r->conn.table[file].q.queued)))
        return -EBADF;
    if (!r->send.nextfree) {
        r->send.seg_waiting = 1; /* a queued range retries on US_EV_ARENA, as writes do */
        return -ENOBUFS;
    }
    if (fixed)
        r->conn.table[file].q.queued++;
    uint32_t e = r->send.ext_free[--r->send.nextfree];
    uint32_t seg = r->send.nchunks + e;
    r->send.ext_ptr[e] = NULL;
    r->send.ext_fd[e] = file;
    r->send.ext_ffixed[e] = (uint8_t)(fixed != 0);
    r->send.ext_foff[e] = off;
    r->send.ch_next[seg] = NONE;
    r->send.ch_len[seg] = (uint32_t)len;
    r->send.ch_refs[seg] = 0;
    r->send.ch_detached[seg] = 0;
    r->st.ext_in_use++;
    r->st.file_sends++;
    if (c->q.tail == NONE)
        c->q.head = seg;
    else
        r->send.ch_next[c->q.tail] = seg;
    if (c->q.fseg == NONE) {
        c->q.fseg = seg;
        c->q.fprev = c->q.tail;
    }
    c->q.tail = seg;
    c->q.queued += len;
    if (!(c->flags & F_SEND_INFLIGHT))
        send_later(r, slot, c);
    else
        file_fill(r, slot, c);
    return (int64_t)e;
}

/* A file joins the fixed-file table (an alloc-range slot, like an adopted
 * socket), so reads name it by index and skip the fd lookup. The caller's
 * fd stays the caller's; the slot holds its own reference. */
int us_file_register(struct us_ring *r, int fd)
{
    if (!conn_fixed(r))
        return -EOPNOTSUPP;
    if (!accept_room(r))
        return -ENFILE;
    int slot = slot_alloc_install(r, fd, OP_FILE);
    if (slot < 0)
        return slot;
    struct conn *c = &r->conn.table[slot];
    c->gen++;
    c->state = C_FILE;
    c->flags = 0;
    c->q.head = c->q.tail = c->q.fseg = c->q.fprev = NONE;
    c->q.queued = 0;
    r->conn.accept_used++;
    r->st.files_registered++;
    return slot;
}

/* Keep a registered file's slot (delta +1) for a send the caller will queue
 * later, or let it go (-1). */
int us_file_hold(struct us_ring *r, uint32_t slot, int delta)
{
    if (slot >= r->conn.size || r->conn.table[slot].state != C_FILE)
        return -EBADF;
    if (delta > 0) {
        if (r->conn.table[slot].flags & F_FILE_DROP)
            return -EBADF;
        r->conn.table[slot].q.queued++;
    } else {
        file_unref(r, slot);
    }
    return 0;
}

/* The slot empties once no queued file segment names it (see file_unref). */
int us_file_unregister(struct us_ring *r, uint32_t slot)
{
    if (slot >= r->conn.size || r->conn.table[slot].state != C_FILE || (r->conn.table[slot].flags & F_FILE_DROP))
        return -EBADF;
    struct conn *c = &r->conn.table[slot];
    c->flags |= F_FILE_DROP;
    if (!c->q.queued)
        issue_file_drop(r, slot);
    return 0;
}

uint32_t *us_released(struct us_ring *r)
{
    return r->send.released;
}

int64_t us_queued(struct us_ring *r, uint32_t slot, uint32_t gen)
{
    struct conn *c = conn_get(r, slot, gen);
    return c ? (int64_t)c->q.queued : -EBADF;
}

int64_t us_sent(struct us_ring *r, uint32_t slot, uint32_t gen)
{
    struct conn *c = conn_get(r, slot, gen);
    return c ? (int64_t)c->q.sent : -EBADF;
}

int us_notify_below(struct us_ring *r, uint32_t slot, uint32_t gen, int64_t level)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    c->q.notify_at = level;
    return 0;
}

/* ---- setup ------------------------------------------------------------- */

int send_alloc(struct us_ring *r)
{
    uint32_t n = r->conn.size;
    r->send.sendq = calloc(2 * (size_t)n, sizeof(uint32_t)); /* as conn.rearm: a slot can sit there twice */
    r->send.vrecs = calloc(n, sizeof(struct vrec));
    r->send.vfree = calloc(n, sizeof(uint32_t));
    if (r->send.vfree)
        for (uint32_t i = 0; i < n; i++)
            r->send.vfree[r->send.nvfree++] = n - 1 - i;
    r->send.fillwait = calloc(2 * (size_t)n, sizeof(uint32_t)); /* as conn.rearm */
    r->send.drop_fd = -1;
    if (!r->send.sendq || !r->send.vrecs || !r->send.vfree || !r->send.fillwait)
        return -ENOMEM;
    return 0;
}

int setup_arena(struct us_ring *r)
{
    uint32_t n = r->cfg.arena_chunks, x = r->cfg.ext_segments, all = n + x;
    r->send.nchunks = n;
    r->send.next = x;
    size_t chunks_len = (size_t)n * r->cfg.chunk_size;
    r->send.arena_len = chunks_len + r->cfg.stage_bytes; /* the stage after the chunks: one registration */
    r->send.arena = map_anon(r->send.arena_len);
    r->send.ch_next = calloc(all, sizeof(uint32_t));
    r->send.ch_len = calloc(all, sizeof(uint32_t));
    r->send.ch_free = calloc(n, sizeof(uint32_t));
    r->send.ch_refs = calloc(all, sizeof(uint16_t));
    r->send.ch_detached = calloc(all, 1);
    r->send.ext_ptr = calloc(x + 1, sizeof(char *));
    r->send.ext_fd = calloc(x + 1, sizeof(int));
    r->send.ext_ffixed = calloc(x + 1, 1);
    r->send.ext_staged = calloc(x + 1, 1);
    r->send.ext_foff = calloc(x + 1, sizeof(uint64_t));
    r->send.ext_free = calloc(x + 1, sizeof(uint32_t));
    r->send.released = calloc(x + 1, sizeof(uint32_t));
    if (!r->send.arena || !r->send.ch_next || !r->send.ch_len || !r->send.ch_free || !r->send.ch_refs || !r->send.ch_detached ||
        !r->send.ext_ptr || !r->send.ext_free || !r->send.released || !r->send.ext_fd || !r->send.ext_ffixed || !r->send.ext_foff || !r->send.ext_staged)
        return -ENOMEM;
    for (uint32_t i = 0; i < x; i++)
        r->send.ext_free[i] = x - 1 - i;
    r->send.nextfree = x;
    for (uint32_t i = 0; i < n; i++)
        r->send.ch_free[i] = n - 1 - i;
    r->send.nfree = n;
    if (r->cfg.send_mode == US_SEND_PLAIN || r->cfg.send_mode == US_SEND_ZC)
        return 0; /* ablations that never use the fixed buffer: nothing to pin */
    struct iovec iov = { .iov_base = r->send.arena, .iov_len = r->send.arena_len };
    int injected = fault_setup_take(US_SETUP_FAULT_ARENA);
    if (injected)
        return -injected;
    /* pins the pages; counts against RLIMIT_MEMLOCK for users without CAP_IPC_LOCK */
    if (sys_register(r->io.fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0)
        return -errno;
    r->send.arena_registered = 1;
    return 0;
}

/* after the ring fd is closed (the kernel has unregistered the arena) */
void send_free(struct us_ring *r)
{
    if (r->send.arena)
        munmap(r->send.arena, r->send.arena_len);
    free(r->send.sendq);
    free(r->send.vrecs);
    free(r->send.vfree);
    free(r->send.fillwait);
    free(r->send.ch_next);
    free(r->send.ch_len);
    free(r->send.ch_free);
    free(r->send.ch_refs);
    free(r->send.ch_detached);
    free(r->send.ext_ptr);
    free(r->send.ext_fd);
    free(r->send.ext_ffixed);
    free(r->send.ext_staged);
    free(r->send.ext_foff);
    free(r->send.ext_free);
    free(r->send.released);
}
