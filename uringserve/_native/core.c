/* uringserve native core.
 *
 * Theory of operation
 * -------------------
 * One ring per event loop, driven from one thread (SINGLE_ISSUER). Python
 * crosses into C once per loop iteration with us_wait(): it publishes every
 * queued SQE, waits, and turns completions into `struct us_event`s in a
 * caller-owned array. Completions that need no Python (send completions,
 * zero-copy notifications, partial-send resubmits, buffer recycling, accept
 * and recv re-arming) are finished here and produce no event.
 *
 * user_data = op:8 | slot:20 | gen:16 | aux:20. A connection's generation is
 * bumped when its close is issued and when a new connection takes the slot,
 * so a completion whose generation is not the slot's current one is stale:
 * it is counted and dropped (its provided buffer returned, its send chunk
 * released), never delivered.
 *
 * Buffer ownership
 * - Provided buffers: the kernel owns a buffer from the time it sits in the
 *   ring until a recv CQE names it. The RECV event's `data` points into it
 *   and stays valid until the next us_wait(), which puts every buffer handed
 *   out by the previous call back into the ring (exactly once: each bid is
 *   on the recycle list at most once, because the kernel hands it out once).
 * - Send arena: registered memory in fixed-size chunks. us_send() copies the
 *   caller's bytes into the connection's chunk queue and returns; the caller
 *   may reuse its buffer at once. A chunk holds one reference per send in
 *   flight from it, and a send_zc keeps that reference until its
 *   notification CQE (IORING_CQE_F_NOTIF): the kernel may read the pages
 *   until then. A chunk goes back to the free stack when it has left its
 *   connection's queue and has no references.
 * - One send per connection is in flight at a time, so bytes never
 *   interleave and a partial send is resumed from where it stopped.
 * - Accept slots: an accept is armed only while the fixed-file alloc range
 *   has room for it, because an accept-direct that finds the table full has
 *   already taken the connection from the backlog and the kernel drops it.
 *   A freed slot (close CQE) re-arms starved listeners.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "abi.h"
#include "core.h"
#include "faults.h"

#define NONE 0xFFFFFFFFu
#define EV_ROOM 10 /* a bundle recv yields up to 8 RECV events + EOF/err */
#define BUNDLE_MAX_BUFS 8

/* The operations the core submits, one line each: the tag that user_data
 * carries (op:8), the io_uring opcode submitted under it (prep() takes the
 * opcode from here, so nothing is submitted that this table does not name),
 * the kernel that brought that opcode (for a reader and for doctor: support
 * is probed, never inferred from the version), and the function that
 * finishes its completions in process_cqe(). on_none: nothing to finish (a
 * cancel, or a synchronous operation whose CQE sync_op() takes). us_ops()
 * hands this table to Python. */
#define US_OPS(X)                                                                    \
    /* tag          IORING_OP_*       kernel  completion */                          \
    X(ACCEPT,       ACCEPT,           "5.5",  on_accept)    /* listeners */          \
    X(RECV,         RECV,             "5.6",  on_recv)      /* multishot or plain */ \
    X(SEND,         SEND,             "5.6",  on_send)                               \
    X(SENDZC,       SEND_ZC,          "6.0",  on_send)      /* and its notif CQE */  \
    X(CLOSE,        CLOSE,            "5.6",  on_close)     /* a connection's slot */ \
    X(SHUTDOWN,     SHUTDOWN,         "5.11", on_shutdown)                           \
    X(CANCEL,       ASYNC_CANCEL,     "5.5",  on_none)      /* before a close, pause */ \
    X(POLL,         POLL_ADD,         "5.1",  on_poll)      /* foreign fds */        \
    X(POLL_REMOVE,  ASYNC_CANCEL,     "5.5",  on_none)                               \
    X(INSTALL,      FIXED_FD_INSTALL, "6.8",  on_none)      /* sync: us_fd_install */ \
    X(LCLOSE,       CLOSE,            "5.6",  on_lclose)    /* a listener's slot */  \
    X(ADOPT,        FILES_UPDATE,     "5.6",  on_none)      /* sync: us_conn_adopt */ \
    X(FREAD,        READ_FIXED,       "5.1",  on_fread)     /* file into a chunk */  \
    X(FILE,         FILES_UPDATE,     "5.6",  on_none)      /* sync: us_file_register */ \
    X(FILE_DROP,    FILES_UPDATE,     "5.6",  on_file_drop)                          \
    X(SOCKET,       SOCKET,           "5.19", on_socket)    /* client connections */ \
    X(CONNECT,      CONNECT,          "5.5",  on_connect)                            \
    X(PROBE,        NOP,              "5.1",  on_none)      /* sync: us_fault_set */ \
    X(SENDV,        SENDMSG,          "5.3",  on_sendv)     /* several segments */   \
    X(STAGE_WRITE,  WRITE_FIXED,      "5.1",  on_send)      /* from the stage */     \
    X(FREAD_PLAIN,  READ,             "5.6",  on_fread)     /* arena not registered */

enum op {
    OP_NONE = 0,
#define X(tag, iop, since, handler) OP_##tag,
    US_OPS(X)
#undef X
    OP_COUNT
};
_Static_assert(OP_COUNT <= 256, "the tag is 8 bits of user_data");

/* a tag's io_uring opcode: a constant where the tag is one (prep() inlined) */
static const uint8_t op_opcode[OP_COUNT] = {
#define X(tag, iop, since, handler) [OP_##tag] = IORING_OP_##iop,
    US_OPS(X)
#undef X
};

/* A vectored send: up to VEC_MAX queued segments in one IORING_OP_SENDMSG.
 * The record lives until the send's CQE (its segments hold a reference), so
 * a connection closed meanwhile still finds what to release. */
#define VEC_MAX 8
struct vrec {
    struct msghdr mh;
    struct iovec iov[VEC_MAX];
    uint32_t seg[VEC_MAX];
    uint32_t nseg;
};

#define MAX_TARGETS 4

#define UD(op, slot, gen, aux) \
    (((uint64_t)(op) << 56) | ((uint64_t)((slot) & 0xFFFFF) << 36) | \
     ((uint64_t)((gen) & 0xFFFF) << 20) | (uint64_t)((aux) & 0xFFFFF))
#define UD_OP(u) ((unsigned)((u) >> 56))
#define UD_SLOT(u) ((uint32_t)(((u) >> 36) & 0xFFFFF))
#define UD_GEN(u) ((uint32_t)(((u) >> 20) & 0xFFFF))
#define UD_AUX(u) ((uint32_t)((u) & 0xFFFFF))

enum cstate { C_FREE = 0, C_OPEN, C_CLOSING /* close waits for the queue */, C_CLOSE_WAIT /* close issued */ };

/* One flag word per slot; the part that owns each bit is named. */
enum cflag {
    /* connections (receive, shutdown, close) */
    F_RECV_ARMED = 1 << 0, F_RECV_PAUSED = 1 << 1, F_SHUT_PENDING = 1 << 4, F_SHUT_DONE = 1 << 5,
    F_REARM_Q = 1 << 6, F_EOF = 1 << 7,
    F_SHUT_INFLIGHT = 1 << 13 /* an IORING_OP_SHUTDOWN is in flight (see issue_close) */,
    F_CLOSE_DEFER = 1 << 14 /* close asked for while the shutdown was in flight: issued at its CQE */,
    /* sends */
    F_SEND_INFLIGHT = 1 << 2, F_NO_ZC = 1 << 3, F_SEND_BROKEN = 1 << 8,
    F_FREAD = 1 << 9 /* a file read for this conn is in flight */,
    F_FILL_WAIT = 1 << 10 /* on fillwait: a file read waits for a free chunk */,
    F_FILE_DROP = 1 << 11 /* C_FILE: unregistered; the slot goes when no segment names it */,
    F_ZC_UNSUP = 1 << 12 /* send_zc failed with EOPNOTSUPP (AF_UNIX): plain sends only, in every mode */,
    F_SEND_Q = 1 << 15 /* on sendq: its send is prepared at the next enter */,
};

enum cstate_extra { C_FILE = 4 /* the slot holds a registered file, not a connection */ };

/* sends: a connection's queue of segments (arena chunks, caller buffers, file ranges) */
struct sendq {
    uint32_t head, tail; /* send chunk queue */
    uint32_t head_off;   /* bytes of the head chunk already sent */
    uint32_t inflight_len;
    uint64_t queued;     /* C_FILE slots: the segments and holds naming the file */
    uint64_t sent;       /* bytes the kernel took, over the connection's life */
    int64_t notify_at;   /* emit WRITABLE when queued <= this; -1 off */
    uint32_t fseg;       /* the first file segment in the queue, NONE if none */
    uint32_t fprev;      /* the segment queued just before fseg, NONE if fseg is the head */
};

struct conn {
    uint16_t gen;
    uint8_t state;
    uint16_t flags;
    struct sendq q;      /* the send part's */
    int fd;              /* fixed: the slot; fd mode: the fd */
    char *rbuf;          /* US_RECV_PLAIN: this slot's buffer in the data region */
};

struct listener {
    int fd;
    uint16_t gen;
    uint8_t used, active, starved;
    uint32_t inflight;
};

struct accept_ctx {
    struct sockaddr_storage addr;
    socklen_t len;
    uint8_t busy;
};

struct out {
    struct us_event *ev;
    int n, max;
};

/* ring: the kernel ring, its two queues and how we enter it */
struct us_io {
    int fd, enter_fd;
    unsigned enter_flags;
    int enabled, disabled_setup;
    pid_t owner;                    /* the thread that enabled the ring and registered its fd */
    uint32_t setup_flags, features;
    /* SQ */
    unsigned *sq_head, *sq_tail, *sq_array, sq_mask, sq_entries;
    struct io_uring_sqe *sqes;
    unsigned sqe_tail, sqe_submitted;
    /* CQ */
    unsigned *cq_head, *cq_tail, cq_mask;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_map_len, cq_map_len, sqes_len;
};

/* ring: completions reaped outside us_wait() (a synchronous op, us_flush)
 * wait in the stash. The buffers and plain-recv re-arms they imply are held
 * (us_pbufs.held, us_conns.held_rearm: `on` says where recycle_buf and
 * rearm_later put them) until their events have been handed out, then
 * recycled a call later, like any other batch's. */
struct us_stash {
    struct us_event *ev;
    int n, cap, on;
};

/* connections: the slot table, listeners and accepting, receive re-arms */
struct us_conns {
    struct conn *table;
    uint32_t size;
    uint32_t *rearm;
    uint32_t nrearm;
    uint32_t *held_rearm;           /* re-arms implied by stashed events */
    uint32_t nheld_rearm;
    uint32_t accept_used, accepts_inflight, accept_range;
    uint32_t accept_limit;          /* connections (slots in use) at which accepting pauses: <= accept_range */
    int accept_starved;
    struct listener *lst;
    struct accept_ctx *acc;
};

/* connections: the provided buffer ring and the data region it hands out */
struct us_pbufs {
    struct io_uring_buf_ring *ring;
    size_t ring_len;
    char *data;
    size_t data_len;
    uint32_t mask, tail, cons_pos;
    uint16_t *shadow;   /* bid placed at each ring position */
    uint16_t *recycle;
    uint32_t nrecycle;
    uint16_t *reserve;  /* buffers not yet circulating (see setup_bufring) */
    uint32_t nreserve;
    uint16_t *held;     /* buffers of stashed events */
    uint32_t nheld;
};

/* sends: the arena, segments, vectored records, file reads, the send queue */
struct us_sends {
    /* registered memory: the arena's chunks, then the stage (client.c) */
    char *arena;
    size_t arena_len;
    /* send segments: [0, arena_chunks) are arena chunks, the rest are
     * external segments (a caller's buffer, sent in place; see us_send_ref) */
    uint32_t *ch_next, *ch_len, *ch_free;
    uint16_t *ch_refs;
    uint8_t *ch_detached;
    uint32_t nfree;
    uint32_t nchunks, next;         /* arena chunks, external segments */
    const char **ext_ptr;           /* NULL: a file segment, read into chunks on the way */
    int *ext_fd;                    /* file segments: the file (a fixed slot if ext_ffixed) */
    uint8_t *ext_ffixed;
    uint8_t *ext_staged;            /* the segment is a range of the stage: nothing to report when done */
    uint64_t *ext_foff;             /* file segments: the next offset to read */
    uint32_t *ext_free, nextfree;
    struct vrec *vrecs; /* one per connection: at most one send in flight each */
    uint32_t *vfree, nvfree;
    uint32_t *sendq; /* connections whose queued data waits for flush_sends() */
    uint32_t nsendq;
    uint32_t *fillwait, nfillwait;  /* conns whose next file read waits for a chunk */
    int drop_fd;                    /* -1: what a FILES_UPDATE that empties a slot reads */
    uint32_t *released;             /* [count, segment...]: the caller empties it */
    int arena_registered, arena_waiting, arena_freed;
    int seg_waiting, seg_freed;     /* the same for segments (us_send_file) */
};

/* client connections (the load generator's): targets set by us_target_set() */
struct us_client {
    struct sockaddr_storage tgt[MAX_TARGETS];
    socklen_t tgtlen[MAX_TARGETS];
};

/* A ring is its parts, each owned by one file; everything else reads them. */
struct us_ring {
    struct us_config cfg;
    struct us_io io;                /* ring.c */
    struct us_stash stash;          /* ring.c */
    struct us_conns conn;           /* conn.c */
    struct us_pbufs pbuf;           /* conn.c */
    struct us_sends send;           /* send.c */
    struct us_client *client;       /* client.c: NULL until us_target_set() */
    struct us_stats st;             /* counted by every part */
    struct us_fault_plan *faults;   /* tests only (faults.h); NULL: no fault is ever injected */
};

/* the one check a ring without a fault plan pays per operation */
#define FAULT_SQE(r, op, sqe) \
    do { if (__builtin_expect((r)->faults != NULL, 0)) fault_apply_sqe((r)->faults, (op), (sqe)); } while (0)

/* ---- syscalls ---------------------------------------------------------- */

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned submit, unsigned min, unsigned flags, void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, submit, min, flags, arg, argsz);
}

static int sys_register(int fd, unsigned op, void *arg, unsigned nr)
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

static int do_enter(struct us_ring *r, unsigned min, unsigned flags, void *arg, size_t argsz)
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

static inline struct io_uring_sqe *get_sqe(struct us_ring *r)
{
    unsigned head = __atomic_load_n(r->io.sq_head, __ATOMIC_ACQUIRE);
    if (r->io.sqe_tail - head >= r->io.sq_entries) {
        do_enter(r, 0, 0, NULL, 0);
        head = __atomic_load_n(r->io.sq_head, __ATOMIC_ACQUIRE);
        if (r->io.sqe_tail - head >= r->io.sq_entries)
            return NULL;
    }
    struct io_uring_sqe *sqe = &r->io.sqes[r->io.sqe_tail & r->io.sq_mask];
    memset(sqe, 0, sizeof(*sqe));
    r->io.sqe_tail++;
    r->st.sqes++;
    r->st.inflight++;
    return sqe;
}

/* one small prep per operation, over a common one (as liburing does); the
 * opcode is the one US_OPS names for the user_data's tag */
static inline struct io_uring_sqe *prep(struct us_ring *r, uint64_t ud, int fd, int fixed,
                                        const void *addr, uint32_t len)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    if (!sqe)
        return NULL;
    sqe->opcode = op_opcode[UD_OP(ud)];
    sqe->fd = fd;
    if (fixed)
        sqe->flags |= IOSQE_FIXED_FILE;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->user_data = ud;
    return sqe;
}

static int conn_fixed(struct us_ring *r) { return r->cfg.fixed_files; }

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

/* ---- events ------------------------------------------------------------ */

static struct us_event *emit(struct out *o, uint32_t kind, uint32_t conn, uint32_t gen, int32_t res)
{
    struct us_event *e = &o->ev[o->n++];
    e->kind = kind;
    e->res = res;
    e->conn = conn;
    e->gen = gen;
    e->aux = 0;
    e->flags = 0;
    e->data = NULL;
    e->off = 0;
    e->addrlen = 0;
    return e;
}

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

static void slot_release(struct us_ring *r, struct conn *c);
static void rearm_starved(struct us_ring *r);

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

static void on_file_drop(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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

static void queue_discard(struct us_ring *r, struct conn *c)
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
static void issue_close(struct us_ring *r, uint32_t slot, struct conn *c);
static struct conn *conn_get(struct us_ring *r, uint32_t slot, uint32_t gen);

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

/* The stage: `stage_bytes` of registered memory after the arena's chunks,
 * which the load generator fills once and sends from (client.c). */
static char *send_stage(struct us_ring *r, size_t *len)
{
    *len = r->cfg.stage_bytes;
    return r->send.arena + (size_t)r->send.nchunks * r->cfg.chunk_size;
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

static void flush_sends(struct us_ring *r)
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

static int file_fill(struct us_ring *r, uint32_t slot, struct conn *c)
{
    uint32_t f = c->q.fseg;
    if (f == NONE || (c->flags & F_FREAD))
        return 0;
    if (!(c->q.head == f || c->q.fprev == c->q.head))
        return 0; /* enough is read ahead */
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

static void on_fread(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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

static void retry_fills(struct us_ring *r)
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

/* ---- connections ------------------------------------------------------- */

static int arm_recv(struct us_ring *r, uint32_t slot, struct conn *c)
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

static void slot_release(struct us_ring *r, struct conn *c)
{
    r->conn.accept_used--;
    c->state = C_FREE;
    c->flags = 0;
}

static void issue_close(struct us_ring *r, uint32_t slot, struct conn *c)
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
    c->gen++;
    c->state = C_CLOSE_WAIT;
    c->flags = 0;
    prep_cancel_fd(r, c->fd, UD(OP_CANCEL, slot, c->gen, 0), 1);
    prep_close_slot(r, c->fd, UD(OP_CLOSE, slot, c->gen, 0));
    r->st.closes++;
}

static void issue_shutdown(struct us_ring *r, uint32_t slot, struct conn *c)
{
    c->flags &= ~F_SHUT_PENDING;
    c->flags |= F_SHUT_DONE | F_SHUT_INFLIGHT;
    struct io_uring_sqe *sqe = prep(r, UD(OP_SHUTDOWN, slot, c->gen, 0), c->fd, conn_fixed(r), NULL, SHUT_WR);
    if (!sqe)
        c->flags &= ~F_SHUT_INFLIGHT; /* no SQE: nothing in flight to wait for */
}

static struct conn *conn_get(struct us_ring *r, uint32_t slot, uint32_t gen)
{
    if (slot >= r->conn.size)
        return NULL;
    struct conn *c = &r->conn.table[slot];
    if (c->state != C_OPEN && c->state != C_CLOSING)
        return NULL;
    if (c->gen != (uint16_t)gen)
        return NULL;
    return c;
}

static void conn_init(struct us_ring *r, uint32_t slot, int fd)
{
    struct conn *c = &r->conn.table[slot];
    c->gen++;
    c->state = C_OPEN;
    c->flags = 0;
    c->q.head = c->q.tail = NONE;
    c->q.head_off = c->q.inflight_len = 0;
    c->q.queued = 0;
    c->q.sent = 0;
    c->q.notify_at = -1;
    c->fd = fd;
    c->q.fseg = c->q.fprev = NONE;
    if (r->cfg.recv_mode == US_RECV_PLAIN)
        c->rbuf = r->pbuf.data + ((size_t)r->cfg.buf_count + slot) * r->cfg.buf_size;
}

/* ---- listeners --------------------------------------------------------- */

static uint32_t accept_room(struct us_ring *r)
{
    uint32_t busy = r->conn.accept_used + r->conn.accepts_inflight;
    return busy >= r->conn.accept_limit ? 0 : r->conn.accept_limit - busy;
}

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

static void rearm_starved(struct us_ring *r)
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

/* ---- completion handlers ----------------------------------------------- */

static void on_accept(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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

/* ---- client connections ------------------------------------------------ */

static void connect_failed(struct us_ring *r, struct out *o, uint32_t slot, uint32_t gen, uint32_t tag, int res)
{
    r->st.connect_errors++;
    struct us_event *e = emit(o, US_EV_CONNECT, slot, gen, res);
    e->aux = tag;
}

/* The socket is in its slot (or is an fd in fd mode): connect it there. */
static void on_socket(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    uint32_t target = UD_SLOT(ud), tag = UD_AUX(ud);
    int res = cqe->res;
    if (res >= 0 && !conn_fixed(r) && (uint32_t)res >= r->conn.size) {
        close(res); /* an fd beyond the table */
        res = -EMFILE;
    }
    if (res < 0) {
        r->conn.accept_used--; /* us_connect() held the slot */
        connect_failed(r, o, NONE, 0, tag, res);
        rearm_starved(r);
        return;
    }
    uint32_t slot = (uint32_t)res;
    conn_init(r, slot, res);
    struct conn *c = &r->conn.table[slot];
    struct io_uring_sqe *sqe = prep(r, UD(OP_CONNECT, slot, c->gen, tag), c->fd, conn_fixed(r), &r->client->tgt[target], 0);
    if (!sqe) {
        connect_failed(r, o, slot, c->gen, tag, -EBUSY);
        issue_close(r, slot, c);
        return;
    }
    sqe->off = r->client->tgtlen[target]; /* connect's addrlen */
}

static void on_connect(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    uint32_t slot = UD_SLOT(ud), tag = UD_AUX(ud);
    struct conn *c = conn_get(r, slot, UD_GEN(ud));
    if (!c) { /* closed by the caller while connecting */
        r->st.stale_cqes++;
        return;
    }
    if (cqe->res < 0) {
        connect_failed(r, o, slot, c->gen, tag, cqe->res);
        issue_close(r, slot, c);
        return;
    }
    r->st.connects++;
    struct us_event *e = emit(o, US_EV_CONNECT, slot, c->gen, 0);
    e->aux = tag;
    arm_recv(r, slot, c);
}

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

static void on_recv(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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
            int left = res;
            for (int i = 0; i < nb; i++) {
                int n = left < (int)r->cfg.buf_size ? left : (int)r->cfg.buf_size;
                struct us_event *e = emit(o, US_EV_RECV, slot, c->gen, n);
                e->off = (uint32_t)bids[i] * r->cfg.buf_size;
                e->data = r->pbuf.data + e->off;
                recycle_buf(r, bids[i]);
                left -= n;
            }
            if (!more)
                rearm_later(r, slot, c);
        }
        return;
    }
    for (int i = 0; i < nb; i++)
        recycle_buf(r, bids[i]);
    if (res == 0) {
        c->flags |= F_EOF;
        emit(o, US_EV_EOF, slot, c->gen, 0);
    } else if (res == -ENOBUFS) {
        r->st.enobufs++;
        grow_bufs(r);
        rearm_later(r, slot, c);
    } else if (res == -ECANCELED || res == -EINTR || res == -EAGAIN) {
        if (!(c->flags & F_RECV_ARMED))
            rearm_later(r, slot, c); /* a resume that raced the pause's cancel */
    } else {
        c->flags |= F_EOF;
        emit(o, US_EV_RECV_ERR, slot, c->gen, res);
    }
}

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

static void on_send(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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
static void on_sendv(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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

static void on_close(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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

static void on_shutdown(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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

static void on_poll(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    struct us_event *e = emit(o, US_EV_POLL, UD_SLOT(ud), UD_GEN(ud), cqe->res);
    e->flags = (cqe->flags & IORING_CQE_F_MORE) != 0;
}

static void on_lclose(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
{
    uint64_t ud = cqe->user_data;
    struct listener *l = &r->conn.lst[UD_SLOT(ud)];
    if (l->gen == (uint16_t)UD_GEN(ud) && !l->active)
        l->used = 0;
}

static void on_none(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o) {}

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

static void refill(struct us_ring *r)
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
        if (c->state == C_OPEN && !(c->flags & (F_RECV_ARMED | F_RECV_PAUSED | F_EOF))) {
            arm_recv(r, slot, c);
            r->st.recv_rearms++;
        }
    }
}

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

/* Buffers and re-arms of stashed CQEs wait until the caller has seen every
 * stashed event (a plain-mode re-arm reuses the buffer an event points
 * into). With no stashed event left they go to the next refill -- also
 * when the stashed CQEs made no event at all: a recv that ended ECANCELED
 * because a resume raced its pause's cancel only queues a re-arm, and
 * waiting for an event that never comes left the connection unread. */
static void release_held(struct us_ring *r)
{
    for (uint32_t i = 0; i < r->pbuf.nheld; i++)
        r->pbuf.recycle[r->pbuf.nrecycle++] = r->pbuf.held[i];
    for (uint32_t i = 0; i < r->conn.nheld_rearm; i++)
        r->conn.rearm[r->conn.nrearm++] = r->conn.held_rearm[i];
    r->pbuf.nheld = r->conn.nheld_rearm = 0;
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

/* ---- connection API ---------------------------------------------------- */

static int sync_op(struct us_ring *r, uint64_t want);

/* A connected socket made elsewhere (a client connect, systemd, another
 * library) joins the connection table. Fixed files: IORING_OP_FILES_UPDATE
 * with IORING_FILE_INDEX_ALLOC lets the kernel pick a free slot in the
 * alloc range; choosing one ourselves could overwrite a slot an accept has
 * just filled but whose CQE we have not reaped. The caller's fd stays open
 * and the caller's: the slot holds its own reference. fd mode: the ring
 * works on its own dup. Receiving starts with us_recv_start(). */
/* fd into a kernel-chosen alloc-range slot (IORING_OP_FILES_UPDATE with
 * IORING_FILE_INDEX_ALLOC, synchronously): the slot, or -errno */
static int slot_alloc_install(struct us_ring *r, int fd, int op)
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

int us_recv_start(struct us_ring *r, uint32_t slot, uint32_t gen)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    c->flags &= ~F_RECV_PAUSED;
    if (!(c->flags & (F_RECV_ARMED | F_EOF)))
        return arm_recv(r, slot, c);
    return 0;
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
    if ((c->flags & F_RECV_ARMED) && r->cfg.recv_mode == US_RECV_PBUF) {
        struct io_uring_sqe *sqe = prep(r, UD(OP_CANCEL, slot, c->gen, 0), 0, 0, NULL, 0);
        if (!sqe)
            return -EBUSY;
        sqe->addr = UD(OP_RECV, slot, c->gen, 0);
    }
    return 0;
}

/* The connection a send may queue on, or NULL with *err set. A CLOSING
 * connection still takes data: asyncio flushes writes made after close()
 * while earlier data is still queued. */
static struct conn *send_conn(struct us_ring *r, uint32_t slot, uint32_t gen, int *err)
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

static int64_t queue_ref(struct us_ring *r, uint32_t slot, uint32_t gen, const char *data, size_t len, int staged)
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

int64_t us_send_staged(struct us_ring *r, uint32_t slot, uint32_t gen, uint32_t off, uint32_t len)
{
    size_t stage_len;
    char *stage = send_stage(r, &stage_len);
    if ((uint64_t)off + len > stage_len || len == 0)
        return -EINVAL;
    return queue_ref(r, slot, gen, stage + off, len, 1);
}

char *us_stage_region(struct us_ring *r, size_t *len)
{
    return send_stage(r, len);
}

int us_target_set(struct us_ring *r, uint32_t target, const void *addr, uint32_t addrlen)
{
    if (target >= MAX_TARGETS || addrlen > sizeof(r->client->tgt[0]) || addrlen < sizeof(sa_family_t))
        return -EINVAL;
    if (!r->client && !(r->client = calloc(1, sizeof(*r->client))))
        return -ENOMEM; /* a server's ring never carries targets */
    memcpy(&r->client->tgt[target], addr, addrlen);
    r->client->tgtlen[target] = addrlen;
    return 0;
}

int us_connect(struct us_ring *r, uint32_t target, uint32_t tag)
{
    if (target >= MAX_TARGETS || !r->client || !r->client->tgtlen[target] || tag > 0xFFFFF)
        return -EINVAL;
    if (!accept_room(r))
        return -ENFILE;
    int family = ((struct sockaddr *)&r->client->tgt[target])->sa_family;
    struct io_uring_sqe *sqe = prep(r, UD(OP_SOCKET, target, 0, tag), family, 0, NULL, 0);
    if (!sqe)
        return -EBUSY;
    sqe->off = SOCK_STREAM | (conn_fixed(r) ? 0 : SOCK_CLOEXEC); /* SOCK_CLOEXEC is invalid for direct */
    sqe->len = 0;
    if (conn_fixed(r))
        sqe->file_index = IORING_FILE_INDEX_ALLOC;
    r->conn.accept_used++; /* the slot is spoken for until on_socket() */
    return 0;
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

/* A synchronous op on a ring whose completions belong to the batch call:
 * completions reaped while waiting are kept in the stash for us_wait(). */
static int sync_op(struct us_ring *r, uint64_t want)
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

/* ---- setup ------------------------------------------------------------- */

static void *map_anon(size_t len)
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

static int setup_files(struct us_ring *r)
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

static int setup_bufring(struct us_ring *r)
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

static int setup_arena(struct us_ring *r)
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
    r->conn.size = cfg->files;
    r->conn.accept_range = cfg->files - cfg->reserved_slots;
    r->conn.accept_limit = r->conn.accept_range;
    r->conn.table = calloc(r->conn.size, sizeof(struct conn));
    /* a slot can sit in the list twice: queued, closed and reused within one batch */
    r->conn.rearm = calloc(2 * (size_t)r->conn.size, sizeof(uint32_t));
    r->send.sendq = calloc(2 * (size_t)r->conn.size, sizeof(uint32_t)); /* as rearm */
    r->send.vrecs = calloc(r->conn.size, sizeof(struct vrec));
    r->send.vfree = calloc(r->conn.size, sizeof(uint32_t));
    if (r->send.vfree)
        for (uint32_t i = 0; i < r->conn.size; i++)
            r->send.vfree[r->send.nvfree++] = r->conn.size - 1 - i;
    r->send.fillwait = calloc(2 * (size_t)r->conn.size, sizeof(uint32_t)); /* as rearm */
    r->send.drop_fd = -1;
    r->conn.lst = calloc(cfg->reserved_slots, sizeof(struct listener));
    r->conn.acc = calloc((size_t)cfg->reserved_slots * cfg->accept_depth, sizeof(struct accept_ctx));
    r->stash.cap = (int)cfg->cq_entries + EV_ROOM;
    r->stash.ev = calloc((size_t)r->stash.cap, sizeof(struct us_event));
    r->conn.held_rearm = calloc(2 * (size_t)r->conn.size, sizeof(uint32_t));
    r->pbuf.held = calloc(cfg->buf_count, sizeof(uint16_t));
    if (!r->conn.table || !r->conn.rearm || !r->send.sendq || !r->send.vrecs || !r->send.vfree || !r->send.fillwait || !r->conn.lst || !r->conn.acc || !r->stash.ev || !r->conn.held_rearm || !r->pbuf.held) {
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
    if (r->pbuf.ring)
        munmap(r->pbuf.ring, r->pbuf.ring_len);
    if (r->pbuf.data)
        munmap(r->pbuf.data, r->pbuf.data_len);
    if (r->send.arena)
        munmap(r->send.arena, r->send.arena_len);
    free(r->conn.table);
    free(r->conn.rearm);
    free(r->send.sendq);
    free(r->send.vrecs);
    free(r->send.vfree);
    free(r->conn.lst);
    free(r->conn.acc);
    free(r->stash.ev);
    free(r->pbuf.held);
    free(r->conn.held_rearm);
    free(r->pbuf.shadow);
    free(r->pbuf.recycle);
    free(r->pbuf.reserve);
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
    free(r->send.fillwait);
    free(r->send.ext_free);
    free(r->send.released);
    free(r->client);
    free(r->faults);
    free(r);
}

/* ---- fault injection (tests; see faults.h) ----------------------------- */

int us_fault_set(struct us_ring *r, int op, const struct us_fault_spec *spec)
{
    if (!r->faults) {
        if (!spec)
            return 0;
        /* the kernel must inject NOP results (6.10), or every fault would be EINVAL */
        uint64_t ud = UD(OP_PROBE, 0, 0, 0);
        struct io_uring_sqe *sqe = prep(r, ud, -1, 0, NULL, (uint32_t)-EHOSTDOWN);
        if (!sqe)
            return -EBUSY;
        sqe->rw_flags = 1; /* IORING_NOP_INJECT_RESULT */
        int res = sync_op(r, ud);
        if (res != -EHOSTDOWN)
            return res == -EINVAL || res == 0 ? -EOPNOTSUPP : res;
        r->faults = fault_plan_new();
        if (!r->faults)
            return -ENOMEM;
    }
    return fault_plan_set(r->faults, op, spec);
}

void us_fault_counts(struct us_ring *r, uint64_t *calls, uint64_t *hits)
{
    fault_plan_counts(r->faults, calls, hits);
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

int us_ring_fd(struct us_ring *r) { return r->io.fd; }
uint32_t us_table_size(struct us_ring *r) { return r->conn.size; }

char *us_data_region(struct us_ring *r, size_t *len)
{
    *len = r->pbuf.data_len;
    return r->pbuf.data;
}

void us_stats_get(struct us_ring *r, struct us_stats *st)
{
    *st = r->st;
    st->bufs_circulating = r->cfg.buf_count - r->pbuf.nreserve;
    st->slots_used = r->conn.accept_used;
    st->accepts_inflight = r->conn.accepts_inflight;
}

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
