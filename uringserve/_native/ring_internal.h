/* uringserve native core: what its parts share.
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
 * The parts, each a file with its own header and its own part of
 * struct us_ring (below):
 * - ring.c (ring.h, us_io, us_stash): ring setup, submission, reaping, the
 *   batch call (us_wait, us_flush, synchronous ops), polls, probes.
 * - conn.c (conn.h, us_conns, us_pbufs): the connection table, listeners
 *   and accepting, receiving from the provided buffer ring, shutdown, close.
 * - send.c (send.h, us_sends, struct sendq in each connection): the send
 *   arena, caller and file segments, vectored sends, zero-copy
 *   notifications.
 * - client.c (client.h, us_client): client connections and the stage, for
 *   the load generator (loadgen.c); a server's ring never allocates them.
 * - faults.c (faults.h): fault injection, for tests.
 * A completion reaches its part through US_OPS below: the tag in its
 * user_data names the handler.
 *
 * Every file of the core defines _GNU_SOURCE and includes this header first.
 */
#ifndef URINGSERVE_RING_INTERNAL_H
#define URINGSERVE_RING_INTERNAL_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "abi.h"
#include "core.h"
#include "faults.h"

#define NONE 0xFFFFFFFFu
#define EV_ROOM 10 /* a bundle recv yields up to 8 RECV events + EOF/err or BULK_WANT */

/* The operations the core submits, one line each: the tag that user_data
 * carries (op:8), the io_uring opcode submitted under it (prep() takes the
 * opcode from here, so nothing is submitted that this table does not name),
 * the kernel that brought that opcode (for a reader and for doctor: support
 * is probed, never inferred from the version), and the function that
 * finishes its completions in process_cqe() (declared in the owning part's
 * header). on_none: nothing to finish (a cancel, or a synchronous operation
 * whose CQE sync_op() takes). us_ops() hands this table to Python.
 *
 * A new operation: a line here, its handler in its part, and the prep that
 * submits it (prep(r, UD(OP_NEW, ...), ...)). */
#define US_OPS(X)                                                                        \
    /* tag          IORING_OP_*       kernel  completion      part */                    \
    X(ACCEPT,       ACCEPT,           "5.5",  on_accept)    /* conn.c: listeners */      \
    X(RECV,         RECV,             "5.6",  on_recv)      /* conn.c */                 \
    X(SEND,         SEND,             "5.6",  on_send)      /* send.c */                 \
    X(SENDZC,       SEND_ZC,          "6.0",  on_send)      /* send.c, and notifs */     \
    X(CLOSE,        CLOSE,            "5.6",  on_close)     /* conn.c */                 \
    X(SHUTDOWN,     SHUTDOWN,         "5.11", on_shutdown)  /* conn.c */                 \
    X(CANCEL,       ASYNC_CANCEL,     "5.5",  on_none)      /* before close, pause */    \
    X(POLL,         POLL_ADD,         "5.1",  on_poll)      /* ring.c: foreign fds */    \
    X(POLL_REMOVE,  ASYNC_CANCEL,     "5.5",  on_none)      /* ring.c */                 \
    X(INSTALL,      FIXED_FD_INSTALL, "6.8",  on_none)      /* sync: us_fd_install */    \
    X(LCLOSE,       CLOSE,            "5.6",  on_lclose)    /* conn.c: a listener */     \
    X(ADOPT,        FILES_UPDATE,     "5.6",  on_none)      /* sync: us_conn_adopt */    \
    X(FREAD,        READ_FIXED,       "5.1",  on_fread)     /* send.c: file reads */     \
    X(FILE,         FILES_UPDATE,     "5.6",  on_none)      /* sync: us_file_register */ \
    X(FILE_DROP,    FILES_UPDATE,     "5.6",  on_file_drop) /* send.c */                 \
    X(SOCKET,       SOCKET,           "5.19", on_socket)    /* client.c */               \
    X(CONNECT,      CONNECT,          "5.5",  on_connect)   /* client.c */               \
    X(PROBE,        NOP,              "5.1",  on_none)      /* sync: us_fault_set */     \
    X(SENDV,        SENDMSG,          "5.3",  on_sendv)     /* send.c: segments */       \
    X(STAGE_WRITE,  WRITE_FIXED,      "5.1",  on_send)      /* send.c: the stage */      \
    X(FREAD_PLAIN,  READ,             "5.6",  on_fread)     /* arena not registered */   \
    X(BULK,         RECV,             "5.6",  on_bulk)      /* conn.c: into caller memory */ \
    X(SOCKOPT,      URING_CMD,        "6.7",  on_none)      /* sync: ktls.c setsockopt */ \
    X(ALERT,        SENDMSG,          "5.3",  on_none)      /* sync: ktls.c close_notify */

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

#define UD(op, slot, gen, aux) \
    (((uint64_t)(op) << 56) | ((uint64_t)((slot) & 0xFFFFF) << 36) | \
     ((uint64_t)((gen) & 0xFFFF) << 20) | (uint64_t)((aux) & 0xFFFFF))
#define UD_OP(u) ((unsigned)((u) >> 56))
#define UD_SLOT(u) ((uint32_t)(((u) >> 36) & 0xFFFFF))
#define UD_GEN(u) ((uint32_t)(((u) >> 20) & 0xFFFF))
#define UD_AUX(u) ((uint32_t)((u) & 0xFFFFF))

/* the caller's event array as us_wait() fills it */
struct out {
    struct us_event *ev;
    int n, max;
};

#include "ring.h"
#include "conn.h"
#include "send.h"
#include "client.h"

/* A ring is its parts, each owned by one file; the others read them. */
struct us_ring {
    struct us_config cfg;
    struct us_io io;                /* ring.c */
    struct us_stash stash;          /* ring.c */
    struct us_conns conn;           /* conn.c */
    struct us_pbufs pbuf;           /* conn.c */
    struct us_sends send;           /* send.c */
    struct us_client *client;       /* client.c: NULL until us_target_set() */
    struct us_stats st;             /* counted by every part */
    struct us_fault_plan *faults;   /* faults.c, tests only; NULL: no fault is ever injected */
};

/* ---- helpers the hot paths share: inline, so the split adds no calls ---- */

static inline int conn_fixed(struct us_ring *r) { return r->cfg.fixed_files; }

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

/* the one check a ring without a fault plan pays per operation */
#define FAULT_SQE(r, op, sqe) \
    do { if (__builtin_expect((r)->faults != NULL, 0)) fault_apply_sqe((r)->faults, (op), (sqe)); } while (0)

static inline struct us_event *emit(struct out *o, uint32_t kind, uint32_t conn, uint32_t gen, int32_t res)
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

/* the open (or closing) connection in `slot` of generation `gen`, or NULL */
static inline struct conn *conn_get(struct us_ring *r, uint32_t slot, uint32_t gen)
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

/* slots a new connection (or file) may still take without passing the accept limit */
static inline uint32_t accept_room(struct us_ring *r)
{
    uint32_t busy = r->conn.accept_used + r->conn.accepts_inflight;
    return busy >= r->conn.accept_limit ? 0 : r->conn.accept_limit - busy;
}

/* The stage: `stage_bytes` of registered memory after the arena's chunks,
 * which the load generator fills once and sends from (client.c). */
static inline char *send_stage(struct us_ring *r, size_t *len)
{
    *len = r->cfg.stage_bytes;
    return r->send.arena + (size_t)r->send.nchunks * r->cfg.chunk_size;
}

#endif
