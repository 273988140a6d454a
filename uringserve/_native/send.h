/* The send part of the native core (send.c): the send arena, caller and
 * file segments, vectored sends, zero-copy notifications. Included through
 * ring_internal.h. */
#ifndef URINGSERVE_SEND_H
#define URINGSERVE_SEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

struct us_ring;
struct out;
struct conn;
struct io_uring_cqe;

/* A slot's flags: these bits are this part's, enum cflag's are conn.c's. */
enum sflag {
    F_SEND_INFLIGHT = 1 << 2, F_NO_ZC = 1 << 3, F_SEND_BROKEN = 1 << 8,
    F_FREAD = 1 << 9 /* a file read for this conn is in flight */,
    F_FILL_WAIT = 1 << 10 /* on fillwait: a file read waits for a free chunk */,
    F_FILE_DROP = 1 << 11 /* C_FILE: unregistered; the slot goes when no segment names it */,
    F_ZC_UNSUP = 1 << 12 /* send_zc failed with EOPNOTSUPP (AF_UNIX): plain sends only, in every mode */,
    F_SEND_Q = 1 << 15 /* on sendq: its send is prepared at the next enter */,
};

/* a connection's queue of segments (arena chunks, caller buffers, file ranges) */
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

/* the arena, segments, vectored records, file reads, the send queue */
struct us_sends {
    /* registered memory: the arena's chunks, then the stage (send_stage) */
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

/* a new connection's empty queue */
static inline void sendq_init(struct sendq *q)
{
    q->head = q->tail = NONE;
    q->head_off = q->inflight_len = 0;
    q->queued = 0;
    q->sent = 0;
    q->notify_at = -1;
    q->fseg = q->fprev = NONE;
}

#pragma GCC visibility push(hidden)
int send_alloc(struct us_ring *r);      /* the per-connection tables: -ENOMEM */
int setup_arena(struct us_ring *r);
void send_free(struct us_ring *r);
void queue_discard(struct us_ring *r, struct conn *c);
void flush_sends(struct us_ring *r);
void retry_fills(struct us_ring *r);
/* `data` queued in place as a segment; staged: a range of the stage */
int64_t queue_ref(struct us_ring *r, uint32_t slot, uint32_t gen, const char *data, size_t len, int staged);
/* us_send, but before the queue's first file segment when there is one: a
 * TLS record made now goes ahead of file bytes not yet encrypted */
int64_t queue_before_file(struct us_ring *r, uint32_t slot, uint32_t gen, const char *data, size_t len);
void on_send(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
void on_sendv(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
void on_fread(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
void on_file_drop(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
#pragma GCC visibility pop

#endif
