/* The connection part of the native core: the slot table, listeners and
 * accepting, receiving through the provided buffer ring, shutdown and
 * close. See ring_internal.h for how the parts fit.
 *
 * Buffer ownership
 * - Provided buffers: the kernel owns a buffer from the time it sits in the
 *   ring until a recv CQE names it. The RECV event's `data` points into it
 *   and stays valid until the next us_wait(), which puts every buffer handed
 *   out by the previous call back into the ring (exactly once: each bid is
 *   on the recycle list at most once, because the kernel hands it out once).
 * - Accept slots: an accept is armed only while the fixed-file alloc range
 *   has room for it, because an accept-direct that finds the table full has
 *   already taken the connection from the backlog and the kernel drops it.
 *   A freed slot (close CQE) re-arms starved listeners.
 * - Bulk receive (caller memory): a connection whose provided-buffer reads
 *   fill BULK_AFTER buffers in a row is switched: its multishot recv is
 *   cancelled, and at that recv's last CQE (everything it took has been
 *   emitted, in order, before) the core emits BULK_WANT and arms nothing.
 *   The caller answers with memory (us_recv_into: one single-shot recv into
 *   it, US_EV_BULK at its CQE) or declines (back to the ring). Since nothing
 *   is armed between the multishot's end and the answer, and one recv at a
 *   time is armed after it, no byte is reordered across the switch. A read
 *   of a buffer's size or more asks for the next memory (US_BULK_MORE); a
 *   shorter one, a pause, an EOF or a spent budget returns the connection to
 *   the ring. The memory is the caller's until the recv's CQE, whatever it
 *   ends with (-ECANCELED after a close included: that CQE is still emitted,
 *   flagged stale), and the bytes armed count against bulk_bytes until then.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ring_internal.h"

/* ---- submission -------------------------------------------------------- */

static int prep_cancel_fd(struct us_ring *r, int fd, uint64_t ud, int link)
{
    struct io_uring_sqe *sqe = prep(r, ud, fd, 0, NULL, 0);
    if (!sqe)
        return -EBUSY;
    sqe->cancel_flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
    if (conn_fixed(r))
        sqe->cancel_flags |= IORING_ASYNC_CANCEL_FD_FIXED;
    if (link)
        sqe->flags |= IOSQE_IO_HARDLINK; /* the close runs even when nothing was cancelled */
    return 0;
}

static int prep_close_slot(struct us_ring *r, int fd, uint64_t ud)
{
    struct io_uring_sqe *sqe;
    if (conn_fixed(r)) {
        sqe = prep(r, ud, 0, 0, NULL, 0);
        if (sqe)
            sqe->file_index = (uint32_t)fd + 1;
    } else {
        sqe = prep(r, ud, fd, 0, NULL, 0);
    }
    return sqe ? 0 : -EBUSY;
}

/* ---- connections ------------------------------------------------------- */

int arm_recv(struct us_ring *r, uint32_t slot, struct conn *c)
{
    struct io_uring_sqe *sqe;
    if (r->cfg.recv_mode == US_RECV_PLAIN) {
        sqe = prep(r, UD(OP_RECV, slot, c->gen, 0), c->fd, conn_fixed(r), c->rbuf, r->cfg.buf_size);
    } else {
        sqe = prep(r, UD(OP_RECV, slot, c->gen, 0), c->fd, conn_fixed(r), NULL, 0);
        if (sqe) {
            sqe->ioprio = IORING_RECV_MULTISHOT;
            sqe->flags |= IOSQE_BUFFER_SELECT;
            sqe->buf_group = 0;
            if (r->cfg.recv_bundle) {
                sqe->ioprio |= IORING_RECVSEND_BUNDLE;
                sqe->len = r->cfg.buf_size * BUNDLE_MAX_BUFS;
            }
        }
    }
    if (!sqe)
        return -EBUSY;
    FAULT_SQE(r, US_FAULT_RECV, sqe);
    c->flags |= F_RECV_ARMED;
    return 0;
}

/* provided-buffer reads in a row that filled their buffer before a connection
 * is switched to bulk receive: four buffers (64 KiB at the default 16 KiB)
 * back to back is a stream, not a message that happens to fill one buffer */
#define BULK_AFTER 4
/* a declined switch (the caller had no memory to give: paused, a small
 * get_buffer()) waits this many more full reads before asking again */
#define BULK_BACKOFF 64

static int bulk_room(struct us_ring *r, uint32_t slot)
{
    return r->conn.bulk_len[slot] == 0 && r->conn.bulk_parked + US_BULK_READ <= r->cfg.bulk_bytes;
}

/* what `slot` holds of the budget: a bulk recv's length while it is in
 * flight, and US_BULK_READ while the caller is asked for memory (so that the
 * answers of one batch cannot overdraw it and be refused after their
 * switch); 0: nothing */
static void bulk_hold(struct us_ring *r, uint32_t slot, uint32_t len)
{
    r->conn.bulk_parked = r->conn.bulk_parked - r->conn.bulk_len[slot] + len;
    r->conn.bulk_len[slot] = len;
    if (r->conn.bulk_parked > r->st.bulk_parked_peak)
        r->st.bulk_parked_peak = r->conn.bulk_parked;
}

static void rearm_later(struct us_ring *r, uint32_t slot, struct conn *c)
{
    if (c->flags & (F_REARM_Q | F_RECV_PAUSED | F_EOF))
        return;
    c->flags |= F_REARM_Q;
    if (r->stash.on)
        r->conn.held_rearm[r->conn.nheld_rearm++] = slot;
    else
        r->conn.rearm[r->conn.nrearm++] = slot;
}

void slot_release(struct us_ring *r, struct conn *c)
{
    r->conn.accept_used--;
    c->state = C_FREE;
    c->flags = 0;
}

void issue_close(struct us_ring *r, uint32_t slot, struct conn *c)
{
    if (c->flags & F_SHUT_INFLIGHT) {
        /* SHUTDOWN always runs in io-wq and looks its fixed file up when it
         * runs: closed now, the slot could hold the next accepted connection
         * by then, and that one would be shut down (wrk and loadtest saw new
         * connections end after a request or two). Close at its CQE. */
        queue_discard(r, c);
        c->state = C_CLOSING;
        c->flags |= F_CLOSE_DEFER;
        r->st.closes_deferred++;
        return;
    }
    queue_discard(r, c);
    if (c->flags & F_BULK_WAIT)
        bulk_hold(r, slot, 0); /* the answer will find the connection gone */
    c->gen++;
    c->state = C_CLOSE_WAIT;
    c->flags = 0;
    prep_cancel_fd(r, c->fd, UD(OP_CANCEL, slot, c->gen, 0), 1);
    prep_close_slot(r, c->fd, UD(OP_CLOSE, slot, c->gen, 0));
    r->st.closes++;
}

void issue_shutdown(struct us_ring *r, uint32_t slot, struct conn *c)
{
    c->flags &= ~F_SHUT_PENDING;
    c->flags |= F_SHUT_DONE | F_SHUT_INFLIGHT;
    struct io_uring_sqe *sqe = prep(r, UD(OP_SHUTDOWN, slot, c->gen, 0), c->fd, conn_fixed(r), NULL, SHUT_WR);
    if (!sqe)
        c->flags &= ~F_SHUT_INFLIGHT; /* no SQE: nothing in flight to wait for */
}

void conn_init(struct us_ring *r, uint32_t slot, int fd)
{
    struct conn *c = &r->conn.table[slot];
    c->gen++;
    c->state = C_OPEN;
    c->flags = 0;
    sendq_init(&c->q);
    c->fd = fd;
    c->streak = 0;
    c->tls = NULL;
    c->is_tls = 0;
    if (r->cfg.recv_mode == US_RECV_PLAIN)
        c->rbuf = r->pbuf.data + ((size_t)r->cfg.buf_count + slot) * r->cfg.buf_size;
}

void on_close(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    uint32_t slot = UD_SLOT(ud);
    struct conn *c = &r->conn.table[slot];
    if (c->state != C_CLOSE_WAIT || c->gen != (uint16_t)UD_GEN(ud)) {
        r->st.stale_cqes++;
        return;
    }
    slot_release(r, c);
    emit(o, US_EV_CLOSED, slot, (uint16_t)(c->gen - 1), cqe->res);
    rearm_starved(r);
}

void on_shutdown(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    struct conn *c = conn_get(r, UD_SLOT(ud), UD_GEN(ud));
    if (!c)
        return;
    c->flags &= ~F_SHUT_INFLIGHT;
    if (c->flags & F_CLOSE_DEFER)
        issue_close(r, UD_SLOT(ud), c);
    else
        emit(o, US_EV_SHUTDOWN, UD_SLOT(ud), c->gen, cqe->res);
}

/* ---- listeners --------------------------------------------------------- */

static void arm_listener(struct us_ring *r, uint32_t lid)
{
    struct listener *l = &r->conn.lst[lid];
    uint32_t depth = r->cfg.accept_depth;
    for (uint32_t k = 0; k < depth && l->active; k++) {
        struct accept_ctx *a = &r->conn.acc[lid * depth + k];
        if (a->busy)
            continue;
        if (!accept_room(r)) {
            if (!l->starved)
                r->st.accept_paused++;
            l->starved = 1;
            r->conn.accept_starved = 1;
            return;
        }
        a->len = sizeof(a->addr);
        int fixed = conn_fixed(r);
        struct io_uring_sqe *sqe = prep(r, UD(OP_ACCEPT, lid, l->gen, lid * depth + k),
                                        fixed ? (int)lid : l->fd, fixed, &a->addr, 0);
        if (!sqe)
            return;
        sqe->addr2 = (uint64_t)(uintptr_t)&a->len;
        if (fixed)
            sqe->file_index = IORING_FILE_INDEX_ALLOC; /* SOCK_CLOEXEC is invalid for direct */
        else
            sqe->accept_flags = SOCK_CLOEXEC;
        FAULT_SQE(r, US_FAULT_ACCEPT, sqe);
        a->busy = 1;
        l->inflight++;
        r->conn.accepts_inflight++;
    }
    l->starved = 0;
}

void rearm_starved(struct us_ring *r)
{
    if (!r->conn.accept_starved || !accept_room(r))
        return;
    r->conn.accept_starved = 0;
    for (uint32_t i = 0; i < r->cfg.reserved_slots; i++)
        if (r->conn.lst[i].used && r->conn.lst[i].active && r->conn.lst[i].starved)
            arm_listener(r, i);
}

static int reserve_slot(struct us_ring *r)
{
    for (uint32_t i = 0; i < r->cfg.reserved_slots; i++)
        if (!r->conn.lst[i].used) {
            r->conn.lst[i].used = 1;
            return (int)i;
        }
    return -ENFILE;
}

static int install_fd(struct us_ring *r, uint32_t slot, int fd)
{
    int fds[1] = { fd };
    struct io_uring_rsrc_update up = { .offset = slot, .data = (uint64_t)(uintptr_t)fds };
    int ret = sys_register(r->io.fd, IORING_REGISTER_FILES_UPDATE, &up, 1);
    return ret < 0 ? -errno : 0;
}

int us_listener_add(struct us_ring *r, int fd)
{
    int lid = reserve_slot(r);
    if (lid < 0)
        return lid;
    if (conn_fixed(r)) {
        int err = install_fd(r, (uint32_t)lid, fd);
        if (err) {
            r->conn.lst[lid].used = 0;
            return err;
        }
    }
    struct listener *l = &r->conn.lst[lid];
    l->fd = fd;
    l->gen++;
    l->active = l->starved = 0;
    return lid;
}

int us_listener_start(struct us_ring *r, int lid)
{
    if (lid < 0 || (uint32_t)lid >= r->cfg.reserved_slots || !r->conn.lst[lid].used)
        return -EBADF;
    r->conn.lst[lid].active = 1;
    arm_listener(r, (uint32_t)lid);
    return 0;
}

int us_listener_stop(struct us_ring *r, int lid)
{
    if (lid < 0 || (uint32_t)lid >= r->cfg.reserved_slots || !r->conn.lst[lid].used)
        return -EBADF;
    struct listener *l = &r->conn.lst[lid];
    l->active = 0;
    l->gen++; /* accepts still in flight become stale; a connection they bring is closed */
    int fd = conn_fixed(r) ? lid : l->fd;
    prep_cancel_fd(r, fd, UD(OP_CANCEL, lid, l->gen, 0), conn_fixed(r));
    if (conn_fixed(r))
        prep_close_slot(r, lid, UD(OP_LCLOSE, lid, l->gen, 0));
    else
        l->used = 0; /* the fd stays the caller's */
    return 0;
}

/* Accepting pauses while `limit` connections are open (outgoing ones
 * included, as nginx's worker_connections counts them) and resumes at the
 * next close; connections wait in the listen backlog meanwhile. 0: the
 * table's size. Accepts in flight count against it: set before listening,
 * it is never passed (lowered later, accepts already armed may complete). */
int us_accept_limit(struct us_ring *r, uint32_t limit)
{
    if (limit > r->conn.accept_range)
        return -ERANGE;
    r->conn.accept_limit = limit ? limit : r->conn.accept_range;
    rearm_starved(r); /* a raised limit accepts at once */
    return 0;
}

void on_accept(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    uint32_t lid = UD_SLOT(ud), k = UD_AUX(ud);
    struct listener *l = &r->conn.lst[lid];
    struct accept_ctx *a = &r->conn.acc[k];
    a->busy = 0;
    r->conn.accepts_inflight--;
    l->inflight--;
    int stale = !(l->used && l->active && l->gen == (uint16_t)UD_GEN(ud));
    int res = cqe->res;
    if (res < 0) {
        if (stale)
            return; /* cancelled by us_listener_stop() */
        if (res == -ECANCELED || res == -ECONNABORTED || res == -EINTR || res == -EAGAIN || res == -EPROTO) {
            /* this connection is gone (or none was taken): the next one */
            if (res != -ECANCELED)
                r->st.accept_errors++;
            arm_listener(r, lid);
            return;
        }
        r->st.accept_errors++;
        if (res == -ENFILE || res == -EMFILE || res == -ENOMEM || res == -ENOBUFS) {
            /* out of slots or fds: re-armed by the next close, or by the
             * caller's retry (us_listener_start) if nothing of ours closes */
            if (!l->starved)
                r->st.accept_paused++;
            l->starved = 1;
            r->conn.accept_starved = 1;
        }
        /* the caller logs it and retries after a delay (never a spin) */
        struct us_event *e = emit(o, US_EV_ACCEPT, lid, l->gen, res);
        e->aux = lid;
        return;
    }
    uint32_t slot = (uint32_t)res;
    if (slot >= r->conn.size) { /* fd mode only: an fd beyond the table */
        close(res);
        r->st.accept_errors++;
        arm_listener(r, lid);
        return;
    }
    r->conn.accept_used++;
    r->st.accepts++;
    conn_init(r, slot, res);
    struct conn *c = &r->conn.table[slot];
    /* Stale: the listener was stopped while this accept completed. The
     * connection has left the backlog (on a shared socket another process
     * would have served it), so the caller decides, never a silent close. */
    struct us_event *e = emit(o, US_EV_ACCEPT, slot, c->gen, 0);
    e->aux = lid;
    if (stale) {
        e->flags = US_ACCEPT_LATE;
        r->st.late_accepts++;
    }
    e->addrlen = a->len > sizeof(e->addr) ? sizeof(e->addr) : a->len;
    memcpy(e->addr, &a->addr, e->addrlen);
    arm_recv(r, slot, c);
    arm_listener(r, lid);
}

void on_lclose(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    struct listener *l = &r->conn.lst[UD_SLOT(ud)];
    if (l->gen == (uint16_t)UD_GEN(ud) && !l->active)
        l->used = 0;
}

/* ---- receiving: the provided buffer ring ------------------------------- */

static void recycle_buf(struct us_ring *r, uint32_t bid)
{
    if (r->stash.on)
        r->pbuf.held[r->pbuf.nheld++] = (uint16_t)bid;
    else
        r->pbuf.recycle[r->pbuf.nrecycle++] = (uint16_t)bid;
}

/* The kernel takes buffers from the ring head in order, so every buffer in
 * the ring is cycled through; a small circulating set stays in cache. The
 * set starts small and doubles, from the reserve, whenever the kernel runs
 * out (ENOBUFS): light load gets locality, bursts get the whole ring. */
static void grow_bufs(struct us_ring *r)
{
    uint32_t circulating = r->cfg.buf_count - r->pbuf.nreserve;
    for (uint32_t i = 0; i < circulating && r->pbuf.nreserve; i++) {
        r->pbuf.recycle[r->pbuf.nrecycle++] = r->pbuf.reserve[--r->pbuf.nreserve]; /* no event refers to these */
        r->st.bufs_out++; /* refill() counts it back in */
    }
}

/* Buffers a recv consumed, in ring order. Non-bundle: one. Bundle: the
 * kernel takes consecutive ring entries starting at the one it names. */
static int take_bufs(struct us_ring *r, struct io_uring_cqe *cqe, uint16_t *bids, int res)
{
    if (!(cqe->flags & IORING_CQE_F_BUFFER))
        return 0;
    uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    int n = 1;
    if (r->cfg.recv_bundle && res > 0)
        n = (int)((res + r->cfg.buf_size - 1) / r->cfg.buf_size);
    if (r->pbuf.shadow[r->pbuf.cons_pos & r->pbuf.mask] != bid) {
        /* ring order lost (bundle regressions): resync on the named buffer */
        r->st.buf_resyncs++;
        for (uint32_t i = 0; i <= r->pbuf.mask; i++)
            if (r->pbuf.shadow[(r->pbuf.cons_pos + i) & r->pbuf.mask] == bid) {
                r->pbuf.cons_pos += i;
                break;
            }
    }
    for (int i = 0; i < n; i++)
        bids[i] = r->pbuf.shadow[(r->pbuf.cons_pos++) & r->pbuf.mask];
    if (n > 1)
        r->st.bundles++;
    r->st.bufs_out += (uint32_t)n;
    return n;
}

/* ---- receiving: bulk, into the caller's memory ------------------------- */

/* end the provided-buffer recv to switch: what it has taken still arrives,
 * and its last CQE asks the caller for memory (recv_ended) */
static void bulk_switch(struct us_ring *r, uint32_t slot, struct conn *c)
{
    struct io_uring_sqe *sqe = prep(r, UD(OP_CANCEL, slot, c->gen, 0), 0, 0, NULL, 0);
    if (!sqe)
        return; /* tried again at the next full read */
    sqe->addr = UD(OP_RECV, slot, c->gen, 0);
    c->flags |= F_BULK_SWITCH;
}

static void bulk_want(struct us_ring *r, uint32_t slot, struct conn *c, struct out *o)
{
    c->flags &= ~F_BULK_SWITCH;
    c->flags |= F_BULK_WAIT;
    bulk_hold(r, slot, US_BULK_READ);
    c->streak = 0;
    r->st.bulk_switches++;
    emit(o, US_EV_BULK_WANT, slot, c->gen, 0);
}

/* a provided-buffer recv has ended with data or a transient error: the ring
 * again, or the caller's memory if the connection moves bulk */
static void recv_ended(struct us_ring *r, uint32_t slot, struct conn *c, struct out *o)
{
    /* once the switch is under way a short read before its cancel landed
     * does not undo it (the bulk recv's own short read does). The switch
     * happens also when the last read left the socket empty (no
     * IORING_CQE_F_SOCK_NONEMPTY): the cancel usually lands after the
     * multishot has drained a whole message, so a request/response peer
     * (the 64 KiB echo) would never get into bulk; a connection that goes
     * quiet with memory armed gives it back at us_bulk_sweep */
    if ((c->streak >= BULK_AFTER || (c->flags & F_BULK_SWITCH)) && !(c->flags & (F_RECV_PAUSED | F_EOF | F_BULK_OFF)) &&
        bulk_room(r, slot))
        bulk_want(r, slot, c, o);
    else {
        c->flags &= ~F_BULK_SWITCH;
        rearm_later(r, slot, c);
    }
}

void on_bulk(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    uint32_t slot = UD_SLOT(ud);
    int res = cqe->res;
    /* the memory is the caller's again whatever became of the connection */
    bulk_hold(r, slot, 0);
    struct conn *c = conn_get(r, slot, UD_GEN(ud));
    if (!c || c->state != C_OPEN) {
        r->st.stale_cqes++;
        struct us_event *e = emit(o, US_EV_BULK, slot, UD_GEN(ud), res);
        e->flags = US_BULK_STALE;
        return;
    }
    c->flags &= ~(F_RECV_ARMED | F_BULK_ARMED | F_BULK_IDLE);
    struct us_event *e = emit(o, US_EV_BULK, slot, c->gen, res);
    if (res > 0) {
        r->st.recvs++;
        r->st.recv_bytes += (uint64_t)res;
        r->st.bulk_recvs++;
        r->st.bulk_recv_bytes += (uint64_t)res;
        /* a large read keeps the connection in the stream: paused now, it is
         * asked for memory again as soon as it resumes (us_recv_start) */
        c->streak = res >= (int)r->cfg.buf_size ? BULK_AFTER : 0;
        if (c->streak && !(c->flags & F_RECV_PAUSED) && bulk_room(r, slot)) {
            c->flags |= F_BULK_WAIT;
            bulk_hold(r, slot, US_BULK_READ);
            e->flags = US_BULK_MORE;
        } else {
            rearm_later(r, slot, c); /* a short read: small messages go back to the ring */
        }
    } else if (res == 0) {
        c->flags |= F_EOF;
    } else if (res == -ECANCELED || res == -EINTR || res == -EAGAIN) {
        rearm_later(r, slot, c); /* a pause's cancel: the ring again when reading resumes */
    } else {
        c->flags |= F_EOF;
    }
}

int us_recv_into(struct us_ring *r, uint32_t slot, uint32_t gen, char *buf, uint32_t len)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    if (!(c->flags & F_BULK_WAIT))
        return -EINVAL;
    c->flags &= ~F_BULK_WAIT;
    bulk_hold(r, slot, 0); /* the reservation, replaced by `len` */
    int err = 0;
    struct io_uring_sqe *sqe = NULL;
    if (c->state != C_OPEN || (c->flags & (F_RECV_PAUSED | F_EOF)))
        err = -ECANCELED;
    else if (!len || r->conn.bulk_parked + len > r->cfg.bulk_bytes) {
        r->st.bulk_refused++;
        err = -ENOBUFS;
    } else if (!(sqe = prep(r, UD(OP_BULK, slot, c->gen, 0), c->fd, conn_fixed(r), buf, len)))
        err = -EBUSY;
    if (err) {
        if (c->state == C_OPEN && !(c->flags & (F_RECV_ARMED | F_RECV_PAUSED | F_EOF)))
            arm_recv(r, slot, c);
        return err;
    }
    FAULT_SQE(r, US_FAULT_RECV, sqe);
    bulk_hold(r, slot, len);
    c->flags = (c->flags | F_RECV_ARMED | F_BULK_ARMED) & ~F_BULK_IDLE;
    return 0;
}

/* An armed bulk recv is released by data, a pause or a close; one whose
 * peer went quiet would park its memory for good and starve the budget.
 * Each call marks the armed ones and cancels those marked at the previous
 * call: armed for between one and two sweep periods with nothing arrived.
 * The mark costs the hot path one bit clear (us_recv_into); the scan is of
 * the slot table, and the caller calls only while something is armed. */
int us_bulk_sweep(struct us_ring *r)
{
    int n = 0;
    for (uint32_t slot = 0; slot < r->conn.size; slot++) {
        struct conn *c = &r->conn.table[slot];
        if (c->state != C_OPEN || !(c->flags & F_BULK_ARMED))
            continue;
        if (!(c->flags & F_BULK_IDLE)) {
            c->flags |= F_BULK_IDLE;
            continue;
        }
        struct io_uring_sqe *sqe = prep(r, UD(OP_CANCEL, slot, c->gen, 0), 0, 0, NULL, 0);
        if (!sqe)
            break; /* the SQ is full: the next sweep */
        sqe->addr = UD(OP_BULK, slot, c->gen, 0);
        c->flags &= ~F_BULK_IDLE;
        r->st.bulk_idle_cancels++;
        n++;
    }
    return n;
}

int us_recv_decline(struct us_ring *r, uint32_t slot, uint32_t gen, int how)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    if (how == US_DECLINE_NEVER)
        c->flags |= F_BULK_OFF;
    if (!(c->flags & F_BULK_WAIT))
        return 0;
    c->flags &= ~F_BULK_WAIT;
    bulk_hold(r, slot, 0);
    if (how == US_DECLINE_BACKOFF)
        c->streak = -BULK_BACKOFF; /* NOW leaves the streak: 0 after BULK_WANT or a resume (asked again after
                                      BULK_AFTER full reads), BULK_AFTER after a BULK with MORE (the next one) */
    if (c->state == C_OPEN && !(c->flags & (F_RECV_ARMED | F_RECV_PAUSED | F_EOF)))
        return arm_recv(r, slot, c);
    return 0;
}

/* ---- receiving: completions of the provided-buffer recv ---------------- */

void on_recv(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    uint32_t slot = UD_SLOT(ud);
    int res = cqe->res;
    uint16_t bids[BUNDLE_MAX_BUFS + 1];
    int nb = take_bufs(r, cqe, bids, res);
    struct conn *c = conn_get(r, slot, UD_GEN(ud));
    if (!c || c->state != C_OPEN) {
        for (int i = 0; i < nb; i++)
            recycle_buf(r, bids[i]);
        r->st.stale_cqes++;
        return;
    }
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        c->flags &= ~F_RECV_ARMED;
    if (res > 0) {
        r->st.recvs++;
        r->st.recv_bytes += (uint64_t)res;
        if (r->cfg.recv_mode == US_RECV_PLAIN) {
            r->st.plain_recvs++;
            struct us_event *e = emit(o, US_EV_RECV, slot, c->gen, res);
            e->data = c->rbuf;
            e->off = (uint32_t)(c->rbuf - r->pbuf.data);
            rearm_later(r, slot, c); /* after Python has read rbuf */
        } else {
            r->st.pbuf_recvs++;
            r->st.pbuf_recv_bytes += (uint64_t)res;
            int left = res;
            for (int i = 0; i < nb; i++) {
                int n = left < (int)r->cfg.buf_size ? left : (int)r->cfg.buf_size;
                struct us_event *e = emit(o, US_EV_RECV, slot, c->gen, n);
                e->off = (uint32_t)bids[i] * r->cfg.buf_size;
                e->data = r->pbuf.data + e->off;
                recycle_buf(r, bids[i]);
                left -= n;
            }
            if (res < (int)r->cfg.buf_size) {
                if (c->streak > 0)
                    c->streak = 0; /* a backoff (< 0) counts full reads only */
            }
            else if (c->streak < BULK_AFTER)
                c->streak++;
            if (!more)
                recv_ended(r, slot, c, o);
            else if (c->streak >= BULK_AFTER && !(c->flags & (F_BULK_SWITCH | F_BULK_OFF | F_RECV_PAUSED)) &&
                     bulk_room(r, slot))
                bulk_switch(r, slot, c);
        }
        return;
    }
    for (int i = 0; i < nb; i++)
        recycle_buf(r, bids[i]);
    if (res == 0) {
        c->flags |= F_EOF;
        c->flags &= ~F_BULK_SWITCH;
        emit(o, US_EV_EOF, slot, c->gen, 0);
    } else if (res == -ENOBUFS) {
        r->st.enobufs++;
        grow_bufs(r);
        recv_ended(r, slot, c, o); /* a stream that emptied the ring: bulk, if it was one */
    } else if (res == -ECANCELED || res == -EINTR || res == -EAGAIN) {
        /* the switch's cancel ended it, or a resume raced the pause's cancel */
        if (!(c->flags & F_RECV_ARMED))
            recv_ended(r, slot, c, o);
    } else {
        c->flags |= F_EOF;
        c->flags &= ~F_BULK_SWITCH;
        emit(o, US_EV_RECV_ERR, slot, c->gen, res);
    }
}

/* what the caller's previous batch held goes back: buffers into the ring,
 * re-arms of receives that stopped */
void refill(struct us_ring *r)
{
    if (r->pbuf.nrecycle) {
        for (uint32_t i = 0; i < r->pbuf.nrecycle; i++) {
            uint16_t bid = r->pbuf.recycle[i];
            uint32_t pos = r->pbuf.tail & r->pbuf.mask;
            struct io_uring_buf *b = &r->pbuf.ring->bufs[pos];
            b->addr = (uint64_t)(uintptr_t)(r->pbuf.data + (size_t)bid * r->cfg.buf_size);
            b->len = r->cfg.buf_size;
            b->bid = bid;
            r->pbuf.shadow[pos] = bid;
            r->pbuf.tail++;
        }
        r->st.bufs_out -= r->pbuf.nrecycle;
        r->pbuf.nrecycle = 0;
        __atomic_store_n(&r->pbuf.ring->tail, (uint16_t)r->pbuf.tail, __ATOMIC_RELEASE);
    }
    uint32_t n = r->conn.nrearm;
    r->conn.nrearm = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t slot = r->conn.rearm[i];
        struct conn *c = &r->conn.table[slot];
        c->flags &= ~F_REARM_Q;
        if (c->state == C_OPEN && !(c->flags & (F_RECV_ARMED | F_RECV_PAUSED | F_EOF | F_BULK_WAIT))) {
            arm_recv(r, slot, c);
            r->st.recv_rearms++;
        }
    }
}

/* Buffers and re-arms of stashed CQEs wait until the caller has seen every
 * stashed event (a plain-mode re-arm reuses the buffer an event points
 * into). With no stashed event left they go to the next refill -- also
 * when the stashed CQEs made no event at all: a recv that ended ECANCELED
 * because a resume raced its pause's cancel only queues a re-arm, and
 * waiting for an event that never comes left the connection unread. */
void release_held(struct us_ring *r)
{
    for (uint32_t i = 0; i < r->pbuf.nheld; i++)
        r->pbuf.recycle[r->pbuf.nrecycle++] = r->pbuf.held[i];
    for (uint32_t i = 0; i < r->conn.nheld_rearm; i++)
        r->conn.rearm[r->conn.nrearm++] = r->conn.held_rearm[i];
    r->pbuf.nheld = r->conn.nheld_rearm = 0;
}

/* ---- connection API ---------------------------------------------------- */

/* fd into a kernel-chosen alloc-range slot (IORING_OP_FILES_UPDATE with
 * IORING_FILE_INDEX_ALLOC, synchronously): the slot, or -errno */
int slot_alloc_install(struct us_ring *r, int fd, int op)
{
    int fds[1] = { fd };
    uint64_t ud = UD(op, 0, 0, 0);
    struct io_uring_sqe *sqe = prep(r, ud, -1, 0, fds, 1);
    if (!sqe)
        return -EBUSY;
    sqe->off = IORING_FILE_INDEX_ALLOC;
    int res = sync_op(r, ud);
    if (res < 0)
        return res;
    if (res != 1 || fds[0] < 0 || (uint32_t)fds[0] >= r->conn.size)
        return -ENFILE;
    return fds[0];
}

/* A connected socket made elsewhere (a client connect, systemd, another
 * library) joins the connection table. Fixed files: IORING_OP_FILES_UPDATE
 * with IORING_FILE_INDEX_ALLOC lets the kernel pick a free slot in the
 * alloc range; choosing one ourselves could overwrite a slot an accept has
 * just filled but whose CQE we have not reaped. The caller's fd stays open
 * and the caller's: the slot holds its own reference. fd mode: the ring
 * works on its own dup. Receiving starts with us_recv_start(). */
int us_conn_adopt(struct us_ring *r, int fd, uint32_t *gen)
{
    uint32_t slot;
    if (!accept_room(r))
        return -ENFILE;
    if (conn_fixed(r)) {
        int res = slot_alloc_install(r, fd, OP_ADOPT);
        if (res < 0)
            return res;
        slot = (uint32_t)res;
        conn_init(r, slot, (int)slot);
    } else {
        int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (own < 0)
            return -errno;
        if ((uint32_t)own >= r->conn.size) {
            close(own);
            return -EMFILE;
        }
        slot = (uint32_t)own;
        conn_init(r, slot, own);
    }
    r->conn.accept_used++;
    *gen = r->conn.table[slot].gen;
    return (int)slot;
}

int us_recv_start(struct us_ring *r, uint32_t slot, uint32_t gen)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    c->flags &= ~F_RECV_PAUSED;
    if (c->flags & (F_RECV_ARMED | F_EOF | F_BULK_WAIT)) /* BULK_WAIT: the caller's answer arms */
        return 0;
    if (c->streak >= BULK_AFTER && !(c->flags & F_BULK_OFF) && r->cfg.recv_mode == US_RECV_PBUF && bulk_room(r, slot)) {
        /* resumed in a stream (a pause after each read cancels every switch
         * before its last CQE): the caller answers as to BULK_WANT */
        c->flags |= F_BULK_WAIT;
        bulk_hold(r, slot, US_BULK_READ);
        c->streak = 0;
        r->st.bulk_switches++;
        return US_RECV_BULK_WANT;
    }
    return arm_recv(r, slot, c);
}

int us_recv_pause(struct us_ring *r, uint32_t slot, uint32_t gen)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    if (c->flags & F_RECV_PAUSED)
        return 0;
    c->flags |= F_RECV_PAUSED;
    /* a multishot recv would keep taking data: cancel it; what it already
     * took still arrives and the caller holds it */
    if ((c->flags & F_RECV_ARMED) && (r->cfg.recv_mode == US_RECV_PBUF || (c->flags & F_BULK_ARMED))) {
        struct io_uring_sqe *sqe = prep(r, UD(OP_CANCEL, slot, c->gen, 0), 0, 0, NULL, 0);
        if (!sqe)
            return -EBUSY;
        /* a bulk recv would write into the caller's memory after the pause: cancelled the same way */
        sqe->addr = (c->flags & F_BULK_ARMED) ? UD(OP_BULK, slot, c->gen, 0) : UD(OP_RECV, slot, c->gen, 0);
    }
    return 0;
}

int us_shutdown(struct us_ring *r, uint32_t slot, uint32_t gen)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    if (c->flags & (F_SHUT_PENDING | F_SHUT_DONE))
        return 0;
    c->flags |= F_SHUT_PENDING;
    if (!c->q.queued && !(c->flags & F_SEND_INFLIGHT))
        issue_shutdown(r, slot, c);
    return 0;
}

int us_close(struct us_ring *r, uint32_t slot, uint32_t gen, int graceful)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    if (graceful && (c->q.queued || (c->flags & F_SEND_INFLIGHT))) {
        if (c->state == C_OPEN && (c->flags & F_RECV_ARMED))
            us_recv_pause(r, slot, gen);
        c->state = C_CLOSING;
        return 0;
    }
    issue_close(r, slot, c);
    return 0;
}

int us_cancel_all(struct us_ring *r)
{
    for (uint32_t i = 0; i < r->cfg.reserved_slots; i++)
        if (r->conn.lst[i].used && r->conn.lst[i].active)
            us_listener_stop(r, (int)i);
    for (uint32_t s = 0; s < r->conn.size; s++) {
        struct conn *c = &r->conn.table[s];
        if (c->state == C_OPEN || c->state == C_CLOSING)
            issue_close(r, s, c);
    }
    return (int)r->st.inflight;
}

int us_fd_install(struct us_ring *r, uint32_t slot, uint32_t gen)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    if (!conn_fixed(r)) {
        int fd = fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
        return fd < 0 ? -errno : fd;
    }
    uint64_t ud = UD(OP_INSTALL, slot, c->gen, 0);
    struct io_uring_sqe *sqe = prep(r, ud, (int)slot, 1, NULL, 0);
    if (!sqe)
        return -EBUSY;
    return sync_op(r, ud);
}

uint32_t us_table_size(struct us_ring *r) { return r->conn.size; }

char *us_data_region(struct us_ring *r, size_t *len)
{
    *len = r->pbuf.data_len;
    return r->pbuf.data;
}

/* ---- setup ------------------------------------------------------------- */

int conn_alloc(struct us_ring *r)
{
    const struct us_config *cfg = &r->cfg;
    r->conn.size = cfg->files;
    r->conn.accept_range = cfg->files - cfg->reserved_slots;
    r->conn.accept_limit = r->conn.accept_range;
    r->conn.table = calloc(r->conn.size, sizeof(struct conn));
    /* a slot can sit in the list twice: queued, closed and reused within one batch */
    r->conn.rearm = calloc(2 * (size_t)r->conn.size, sizeof(uint32_t));
    r->conn.held_rearm = calloc(2 * (size_t)r->conn.size, sizeof(uint32_t));
    r->conn.lst = calloc(cfg->reserved_slots, sizeof(struct listener));
    r->conn.acc = calloc((size_t)cfg->reserved_slots * cfg->accept_depth, sizeof(struct accept_ctx));
    r->pbuf.held = calloc(cfg->buf_count, sizeof(uint16_t));
    r->conn.bulk_len = calloc(r->conn.size, sizeof(uint32_t));
    if (!r->conn.table || !r->conn.bulk_len || !r->conn.rearm || !r->conn.held_rearm || !r->conn.lst || !r->conn.acc || !r->pbuf.held)
        return -ENOMEM;
    return 0;
}

int setup_files(struct us_ring *r)
{
    if (!conn_fixed(r))
        return 0;
    struct io_uring_rsrc_register reg = { .nr = r->cfg.files, .flags = IORING_RSRC_REGISTER_SPARSE };
    if (sys_register(r->io.fd, IORING_REGISTER_FILES2, &reg, sizeof(reg)) < 0)
        return -errno;
    struct io_uring_file_index_range range = {
        .off = r->cfg.reserved_slots, .len = r->cfg.files - r->cfg.reserved_slots };
    if (sys_register(r->io.fd, IORING_REGISTER_FILE_ALLOC_RANGE, &range, 0) < 0)
        return -errno;
    return 0;
}

int setup_bufring(struct us_ring *r)
{
    uint32_t n = r->cfg.buf_count;
    r->pbuf.ring_len = ((size_t)n * sizeof(struct io_uring_buf) + 4095) & ~(size_t)4095;
    r->pbuf.ring = map_anon(r->pbuf.ring_len);
    /* one region for all received data: the ring's buffers, then (plain
     * recv ablation) one buffer per slot; untouched pages cost nothing */
    r->pbuf.data_len = (size_t)n * r->cfg.buf_size;
    if (r->cfg.recv_mode == US_RECV_PLAIN)
        r->pbuf.data_len += (size_t)r->conn.size * r->cfg.buf_size;
    r->pbuf.data = map_anon(r->pbuf.data_len);
    r->pbuf.shadow = calloc(n, sizeof(uint16_t));
    r->pbuf.recycle = calloc(n, sizeof(uint16_t));
    r->pbuf.reserve = calloc(n, sizeof(uint16_t));
    if (!r->pbuf.ring || !r->pbuf.data || !r->pbuf.shadow || !r->pbuf.recycle || !r->pbuf.reserve)
        return -ENOMEM;
    r->pbuf.mask = n - 1;
    struct io_uring_buf_reg reg = { .ring_addr = (uint64_t)(uintptr_t)r->pbuf.ring, .ring_entries = n, .bgid = 0 };
    int injected = fault_setup_take(US_SETUP_FAULT_BUF_RING);
    if (injected)
        return -injected;
    if (sys_register(r->io.fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0)
        return -errno;
    uint32_t initial = n < 64 ? n : 64;
    for (uint32_t i = 0; i < initial; i++)
        recycle_buf(r, i);
    for (uint32_t i = n; i > initial; i--)
        r->pbuf.reserve[r->pbuf.nreserve++] = (uint16_t)(i - 1);
    r->st.bufs_out = initial;
    refill(r);
    return 0;
}

/* after the ring fd is closed (the kernel has let go of the buffer ring) */
void conn_free(struct us_ring *r)
{
    if (r->pbuf.ring)
        munmap(r->pbuf.ring, r->pbuf.ring_len);
    if (r->pbuf.data)
        munmap(r->pbuf.data, r->pbuf.data_len);
    free(r->conn.table);
    free(r->conn.rearm);
    free(r->conn.held_rearm);
    free(r->conn.lst);
    free(r->conn.acc);
    free(r->conn.bulk_len);
    free(r->pbuf.held);
    free(r->pbuf.shadow);
    free(r->pbuf.recycle);
    free(r->pbuf.reserve);
}
