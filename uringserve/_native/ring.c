/* The ring part of the native core: ring setup, submission, reaping, the
 * batch call (us_wait, us_flush, synchronous operations), polls for
 * foreign fds, probes. See ring_internal.h for how the parts fit.
 *
 * The batch call: us_wait() first gives back what the caller's previous
 * batch held (provided buffers, receive re-arms: conn.c), prepares the sends
 * written since (send.c), enters the kernel once to submit and wait, and
 * reaps every completion through its tag's handler (US_OPS), which finishes
 * it in C or turns it into an event.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

/* ---- syscalls ---------------------------------------------------------- */

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned submit, unsigned min, unsigned flags, void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, submit, min, flags, arg, argsz);
}

int sys_register(int fd, unsigned op, void *arg, unsigned nr)
{
    return (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
}

/* ---- submission -------------------------------------------------------- */

static int enable_ring(struct us_ring *r)
{
    if (r->io.enabled)
        return 0;
    if (r->io.disabled_setup && sys_register(r->io.fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
        return -errno;
    r->io.enabled = 1;
    r->io.owner = gettid();
    /* registered ring fds are per thread: register from the submitting one */
    struct io_uring_rsrc_update up = { .offset = (unsigned)-1, .data = (uint64_t)r->io.fd };
    if (sys_register(r->io.fd, IORING_REGISTER_RING_FDS, &up, 1) == 1) {
        r->io.enter_fd = (int)up.offset;
        r->io.enter_flags = IORING_ENTER_REGISTERED_RING;
        r->st.registered_ring = 1;
    }
    return 0;
}

int do_enter(struct us_ring *r, unsigned min, unsigned flags, void *arg, size_t argsz)
{
    int err = enable_ring(r);
    if (err)
        return err;
    /* another thread (closing a loop another thread ran) cannot use the
     * owner's registered fd, and under SINGLE_ISSUER the kernel refuses it
     * with EEXIST, which the caller sees */
    int other = gettid() != r->io.owner;
    unsigned submit = r->io.sqe_tail - r->io.sqe_submitted;
    __atomic_store_n(r->io.sq_tail, r->io.sqe_tail, __ATOMIC_RELEASE);
    r->st.enters++;
    int ret = sys_enter(other ? r->io.fd : r->io.enter_fd, submit, min,
                        flags | (other ? 0 : r->io.enter_flags), arg, argsz);
    if (ret < 0)
        return -errno;
    r->io.sqe_submitted += (unsigned)ret;
    /* SUBMIT_ALL or not, whatever the kernel did not take stays queued */
    return ret;
}

/* ---- poll -------------------------------------------------------------- */

int us_poll_add(struct us_ring *r, int fd, uint32_t mask, uint32_t id, uint32_t gen, int multishot)
{
    struct io_uring_sqe *sqe = prep(r, UD(OP_POLL, id, gen, 0), fd, 0, NULL,
                                    multishot ? IORING_POLL_ADD_MULTI : 0);
    if (!sqe)
        return -EBUSY;
    sqe->poll32_events = mask;
    return 0;
}

/* ASYNC_CANCEL, not POLL_REMOVE: POLL_REMOVE needs the poll's ownership and
 * answers -EALREADY (cancelling nothing) while a wakeup's task work is
 * pending, which under DEFER_TASKRUN lasts until our next enter. A cancel
 * marks the poll cancelled and its pending task work then ends it. */
int us_poll_remove(struct us_ring *r, uint32_t id, uint32_t gen)
{
    struct io_uring_sqe *sqe = prep(r, UD(OP_POLL_REMOVE, id, gen, 0), 0, 0, NULL, 0);
    if (!sqe)
        return -EBUSY;
    sqe->addr = UD(OP_POLL, id, gen, 0);
    return 0;
}

static void on_poll(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    struct us_event *e = emit(o, US_EV_POLL, UD_SLOT(ud), UD_GEN(ud), cqe->res);
    e->flags = (cqe->flags & IORING_CQE_F_MORE) != 0;
}

/* ---- completions ------------------------------------------------------- */

/* every completion goes to the handler US_OPS names for its tag */
static void process_cqe(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    r->st.cqes++;
    if (!(cqe->flags & IORING_CQE_F_MORE))
        r->st.inflight--;
    switch (UD_OP(cqe->user_data)) {
#define X(tag, iop, since, handler) case OP_##tag: handler(r, cqe, o); break;
    US_OPS(X)
#undef X
    default: /* no tag of ours */
        break;
    }
}

/* ---- the batch call ---------------------------------------------------- */

static int reap(struct us_ring *r, struct out *o)
{
    unsigned head = *r->io.cq_head;
    unsigned tail = __atomic_load_n(r->io.cq_tail, __ATOMIC_ACQUIRE);
    while (head != tail && o->max - o->n >= EV_ROOM) {
        process_cqe(r, &r->io.cqes[head & r->io.cq_mask], o);
        head++;
        if (head == tail)
            tail = __atomic_load_n(r->io.cq_tail, __ATOMIC_ACQUIRE);
    }
    __atomic_store_n(r->io.cq_head, head, __ATOMIC_RELEASE);
    return head != tail;
}

static int cq_ready(struct us_ring *r)
{
    return *r->io.cq_head != __atomic_load_n(r->io.cq_tail, __ATOMIC_ACQUIRE);
}

static void stash_cqe(struct us_ring *r, struct io_uring_cqe *cqe)
{
    struct out o = { r->stash.ev, r->stash.n, r->stash.cap };
    r->stash.on = 1;
    process_cqe(r, cqe, &o);
    r->stash.on = 0;
    r->stash.n = o.n;
}

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int us_wait(struct us_ring *r, struct us_event *ev, int max, int min_complete, int64_t timeout_ns)
{
    struct out o = { ev, 0, max };
    if (max < EV_ROOM)
        return -EINVAL;
    if (!r->stash.n)
        release_held(r); /* stashed CQEs that made no event (a re-arm after ECANCELED) */
    refill(r); /* what the caller's previous batch held goes back first */
    flush_sends(r);
    if (r->send.nfillwait && r->send.nfree)
        retry_fills(r); /* chunks freed outside a reap (a close, the stash): no completion may come to say so */
    if (r->stash.n) {
        int n = r->stash.n < max ? r->stash.n : max;
        memcpy(ev, r->stash.ev, (size_t)n * sizeof(*ev));
        memmove(r->stash.ev, r->stash.ev + n, (size_t)(r->stash.n - n) * sizeof(*ev));
        r->stash.n -= n;
        o.n = n;
        min_complete = 0;
        if (!r->stash.n) /* all handed out: their buffers come back with this batch's */
            release_held(r);
    }
    if (cq_ready(r))
        min_complete = 0;
    if (timeout_ns == 0)
        min_complete = 0;
    int64_t deadline = min_complete > 0 && timeout_ns > 0 ? now_ns() + timeout_ns : 0;
    for (;;) {
        struct __kernel_timespec ts;
        struct io_uring_getevents_arg arg = { 0 };
        unsigned flags = IORING_ENTER_GETEVENTS;
        if (min_complete > 0 && timeout_ns >= 0) {
            ts.tv_sec = timeout_ns / 1000000000;
            ts.tv_nsec = timeout_ns % 1000000000;
            arg.ts = (uint64_t)(uintptr_t)&ts;
            flags |= IORING_ENTER_EXT_ARG;
        }
        int ret = do_enter(r, (unsigned)(min_complete > 0 ? min_complete : 0), flags,
                           (flags & IORING_ENTER_EXT_ARG) ? &arg : NULL,
                           (flags & IORING_ENTER_EXT_ARG) ? sizeof(arg) : 0);
        if (ret < 0 && ret != -EINTR && ret != -ETIME && ret != -EBUSY && ret != -EAGAIN)
            return ret;
        reap(r, &o);
        if (r->send.nfillwait && r->send.nfree)
            retry_fills(r); /* submitted with the next enter */
        if (((r->send.arena_waiting && r->send.arena_freed) || (r->send.seg_waiting && r->send.seg_freed)) && o.n < o.max) {
            r->send.arena_waiting = r->send.seg_waiting = 0;
            emit(&o, US_EV_ARENA, 0, 0, (int32_t)r->send.nfree);
        }
        r->send.arena_freed = r->send.seg_freed = 0;
        if (o.n || min_complete <= 0 || ret == -EINTR || ret == -ETIME)
            break;
        /* Only completions the core finishes itself arrived (sends, zc
         * notifications, file reads, re-arms): wait again instead of waking
         * the caller for nothing. A signal (EINTR) or the caller's timeout
         * still returns. */
        if (timeout_ns > 0) {
            timeout_ns = deadline - now_ns();
            if (timeout_ns <= 0)
                break;
        }
        r->st.quiet_waits++;
        refill(r); /* re-arms and buffers from stale completions of this round */
    }
    r->st.events += (uint64_t)o.n;
    return o.n;
}

/* Submit what is queued and run pending task work now, without reaping:
 * for effects the caller needs at once (a listener really closed when
 * server.close() returns). Completions stay in the CQ for us_wait(). */
int us_flush(struct us_ring *r)
{
    flush_sends(r);
    int ret = do_enter(r, 0, IORING_ENTER_GETEVENTS, NULL, 0);
    if (ret < 0 && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN)
        return ret;
    unsigned head = *r->io.cq_head;
    unsigned tail = __atomic_load_n(r->io.cq_tail, __ATOMIC_ACQUIRE);
    while (head != tail && r->stash.cap - r->stash.n >= EV_ROOM) {
        stash_cqe(r, &r->io.cqes[head & r->io.cq_mask]);
        head++;
    }
    __atomic_store_n(r->io.cq_head, head, __ATOMIC_RELEASE);
    return 0;
}

/* A synchronous op on a ring whose completions belong to the batch call:
 * completions reaped while waiting are kept in the stash for us_wait(). */
int sync_op(struct us_ring *r, uint64_t want)
{
    for (int spins = 0; spins < 1000; spins++) {
        int ret = do_enter(r, 1, IORING_ENTER_GETEVENTS, NULL, 0);
        if (ret < 0 && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN)
            return ret;
        unsigned head = *r->io.cq_head;
        unsigned tail = __atomic_load_n(r->io.cq_tail, __ATOMIC_ACQUIRE);
        int found = 0, res = 0;
        while (head != tail) {
            struct io_uring_cqe *cqe = &r->io.cqes[head & r->io.cq_mask];
            if (cqe->user_data == want) {
                r->st.cqes++;
                r->st.inflight--;
                found = 1;
                res = cqe->res;
            } else {
                if (r->stash.cap - r->stash.n < EV_ROOM)
                    break;
                stash_cqe(r, cqe);
            }
            head++;
        }
        __atomic_store_n(r->io.cq_head, head, __ATOMIC_RELEASE);
        if (found)
            return res;
        if (head != tail)
            return -EBUSY; /* stash full: give up rather than lose completions */
    }
    return -ETIME;
}

/* ---- setup ------------------------------------------------------------- */

void *map_anon(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int ring_setup(struct us_ring *r)
{
    /* tried in this order; each refusal (EINVAL) drops the next flag */
    static const uint32_t optional[] = {
        IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_R_DISABLED,
    };
    uint32_t flags = IORING_SETUP_CQSIZE;
    for (unsigned i = 0; i < sizeof(optional) / sizeof(optional[0]); i++)
        flags |= optional[i];
    flags &= ~r->cfg.setup_flags_off;
    for (unsigned i = 0;; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = flags;
        p.cq_entries = r->cfg.cq_entries;
        int fd = sys_setup(r->cfg.sq_entries, &p);
        if (fd >= 0) {
            r->io.fd = r->io.enter_fd = fd;
            r->io.setup_flags = flags;
            r->io.features = p.features;
            r->io.disabled_setup = (flags & IORING_SETUP_R_DISABLED) != 0;
            size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
            size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
            if (p.features & IORING_FEAT_SINGLE_MMAP)
                sq_len = cq_len = sq_len > cq_len ? sq_len : cq_len;
            r->io.sq_map = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
            if (r->io.sq_map == MAP_FAILED)
                return -errno;
            r->io.sq_map_len = sq_len;
            if (p.features & IORING_FEAT_SINGLE_MMAP) {
                r->io.cq_map = r->io.sq_map;
            } else {
                r->io.cq_map = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
                if (r->io.cq_map == MAP_FAILED)
                    return -errno;
                r->io.cq_map_len = cq_len;
            }
            r->io.sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
            r->io.sqes = mmap(NULL, r->io.sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
            if (r->io.sqes == MAP_FAILED)
                return -errno;
            char *sq = r->io.sq_map, *cq = r->io.cq_map;
            r->io.sq_head = (unsigned *)(sq + p.sq_off.head);
            r->io.sq_tail = (unsigned *)(sq + p.sq_off.tail);
            r->io.sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
            r->io.sq_entries = *(unsigned *)(sq + p.sq_off.ring_entries);
            r->io.sq_array = (unsigned *)(sq + p.sq_off.array);
            for (unsigned k = 0; k < r->io.sq_entries; k++)
                r->io.sq_array[k] = k; /* identity: SQE k sits at ring position k */
            r->io.cq_head = (unsigned *)(cq + p.cq_off.head);
            r->io.cq_tail = (unsigned *)(cq + p.cq_off.tail);
            r->io.cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
            r->io.cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
            r->io.sqe_tail = r->io.sqe_submitted = *r->io.sq_tail;
            return 0;
        }
        int err = errno;
        if (err != EINVAL || i >= sizeof(optional) / sizeof(optional[0]))
            return -err;
        flags &= ~optional[i];
    }
}

static int valid_config(const struct us_config *c)
{
    if (!c->buf_count || (c->buf_count & (c->buf_count - 1)) || c->buf_count > 32768)
        return 0;
    if (c->files < 2 || c->files > (1u << 20) || c->reserved_slots < 1 || c->reserved_slots >= c->files)
        return 0;
    if (c->arena_chunks < 1 || c->chunk_size < 64 || c->buf_size < 64 ||
        (uint64_t)c->arena_chunks + c->ext_segments >= (1u << 20)) /* 20-bit aux in user_data */
        return 0;
    if (c->accept_depth < 1 || c->accept_depth > 64 || c->sq_entries < 8 || c->cq_entries < c->sq_entries)
        return 0;
    /* RECV events carry a 32-bit offset into the data region */
    uint64_t region = (uint64_t)c->buf_count * c->buf_size;
    if (c->recv_mode == US_RECV_PLAIN)
        region += (uint64_t)c->files * c->buf_size;
    if (region >= (1ull << 32))
        return 0;
    return 1;
}

struct us_ring *us_ring_new(const struct us_config *cfg, int *err, int *stage)
{
    *err = 0;
    *stage = 0;
    if (!valid_config(cfg)) {
        *err = EINVAL;
        return NULL;
    }
    struct us_ring *r = calloc(1, sizeof(*r));
    if (!r) {
        *err = ENOMEM;
        *stage = 7;
        return NULL;
    }
    r->cfg = *cfg;
    r->io.fd = -1;
    int e = ring_setup(r);
    if (e) { *stage = 1; goto fail; }
    r->stash.cap = (int)cfg->cq_entries + EV_ROOM;
    r->stash.ev = calloc((size_t)r->stash.cap, sizeof(struct us_event));
    if (!r->stash.ev || conn_alloc(r) || send_alloc(r)) {
        e = -ENOMEM;
        *stage = 7;
        goto fail;
    }
    e = setup_files(r);
    if (e) { *stage = 3; goto fail; }
    e = setup_bufring(r);
    if (e) { *stage = 5; goto fail; }
    e = setup_arena(r);
    if (e) { *stage = 6; goto fail; }
    r->st.slots_total = r->conn.accept_range;
    r->st.arena_chunks = cfg->arena_chunks;
    r->st.bufs_total = cfg->buf_count;
    r->st.setup_flags = r->io.setup_flags;
    r->st.features = r->io.features;
    r->st.arena_registered = r->send.arena_registered;
    return r;
fail:
    *err = -e;
    us_ring_free(r);
    return NULL;
}

void us_ring_free(struct us_ring *r)
{
    if (!r)
        return;
    if (r->st.registered_ring && gettid() == r->io.owner) {
        /* from another thread the registration stays until the owner thread exits */
        struct io_uring_rsrc_update up = { .offset = (unsigned)r->io.enter_fd };
        sys_register(r->io.fd, IORING_UNREGISTER_RING_FDS, &up, 1);
    }
    /* closing the ring fd cancels what is left and unregisters files,
     * buffers and the buffer ring; then our memory can go */
    if (r->io.fd >= 0)
        close(r->io.fd);
    if (r->io.sqes && r->io.sqes != MAP_FAILED)
        munmap(r->io.sqes, r->io.sqes_len);
    if (r->io.cq_map && r->io.cq_map != MAP_FAILED && r->io.cq_map != r->io.sq_map)
        munmap(r->io.cq_map, r->io.cq_map_len);
    if (r->io.sq_map && r->io.sq_map != MAP_FAILED)
        munmap(r->io.sq_map, r->io.sq_map_len);
    conn_free(r);
    send_free(r);
    free(r->stash.ev);
    free(r->client);
    free(r->faults);
    free(r);
}

int us_ring_fd(struct us_ring *r) { return r->io.fd; }

void us_stats_get(struct us_ring *r, struct us_stats *st)
{
    *st = r->st;
    st->bufs_circulating = r->cfg.buf_count - r->pbuf.nreserve;
    st->slots_used = r->conn.accept_used;
    st->accepts_inflight = r->conn.accepts_inflight;
    st->bulk_parked = r->conn.bulk_parked;
}

/* ---- what the core submits, and probes --------------------------------- */

static const struct us_opinfo op_info[] = {
#define X(tag, iop, since, handler) { #tag, #iop, IORING_OP_##iop, since },
    US_OPS(X)
#undef X
};

const struct us_opinfo *us_ops(int *n)
{
    *n = (int)(sizeof(op_info) / sizeof(op_info[0]));
    return op_info;
}

/* US_EVENTS lists the kinds densely and in order: entry k is kind k + 1 */
enum { EVX_NONE,
#define X(name) EVX_##name,
       US_EVENTS(X)
#undef X
};
#define X(name) _Static_assert(EVX_##name == US_EV_##name, "US_EVENTS out of order: " #name);
US_EVENTS(X)
#undef X

static const struct us_evinfo ev_info[] = {
#define X(name) { #name, US_EV_##name },
    US_EVENTS(X)
#undef X
};

const struct us_evinfo *us_events(int *n)
{
    *n = (int)(sizeof(ev_info) / sizeof(ev_info[0]));
    return ev_info;
}

static int probe_fd(int fd, int op)
{
    size_t len = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *p = calloc(1, len);
    if (!p)
        return -ENOMEM;
    int ret = sys_register(fd, IORING_REGISTER_PROBE, p, 256);
    if (ret < 0) {
        ret = -errno;
    } else if (op >= 0) {
        ret = op <= p->last_op && (p->ops[op].flags & IO_URING_OP_SUPPORTED);
    } else {
        ret = p->last_op;
    }
    free(p);
    return ret;
}

int us_probe_op(struct us_ring *r, int op)
{
    return probe_fd(r->io.fd, op);
}

int us_probe_all(int *ops_out, int nops)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    int fd = sys_setup(4, &p);
    if (fd < 0)
        return -errno;
    int last = probe_fd(fd, -1);
    for (int i = 0; i < nops && last >= 0; i++)
        ops_out[i] = probe_fd(fd, i);
    close(fd);
    return last;
}
