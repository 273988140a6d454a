/* uringserve native core: public interface.
 *
 * The block between CDEF BEGIN and CDEF END is read verbatim by build.py as
 * the cffi cdef, so it holds only what cffi's parser accepts: plain integer
 * #defines, structs, prototypes.
 */
#ifndef URINGSERVE_CORE_H
#define URINGSERVE_CORE_H

#include <stdint.h>
#include <stddef.h>

/* CDEF BEGIN */
#define US_EV_ACCEPT     1  /* conn=new slot, gen, aux=listener id, addr; res<0: accept error, nothing
                               more is armed on that listener until us_listener_start() or a close;
                               flags=US_ACCEPT_LATE: accepted as the listener was being stopped */
#define US_ACCEPT_LATE   1  /* the kernel had taken the connection from the backlog: serve or close it */
#define US_EV_RECV       2  /* res=bytes, data valid until the next us_wait() */
#define US_EV_EOF        3  /* peer sent FIN */
#define US_EV_RECV_ERR   4  /* res=-errno; receiving has stopped */
#define US_EV_WRITABLE   5  /* queued bytes fell to the level asked by us_notify_below(); res=queued */
#define US_EV_SEND_ERR   6  /* res=-errno; queued data was discarded */
#define US_EV_CLOSED     7  /* the slot is closed and free; gen is the old generation */
#define US_EV_SHUTDOWN   8  /* write side shut down after the queue drained; res=0 or -errno */
#define US_EV_POLL       9  /* conn=poll id, gen=poll gen, res=revents or -errno, flags=more */
#define US_EV_ARENA     10  /* arena chunks or segments were freed after a us_send()/us_send_file() came up short */
#define US_EV_CONNECT   11  /* us_connect() done: conn=slot, gen, aux=tag, res=0 or -errno. On an error
                               conn is the slot being closed (CLOSED follows) or 0xFFFFFFFF when no socket was made */
#define US_EV_BULK_WANT 12  /* the connection moves bulk: its provided-buffer recv has ended; answer with
                               us_recv_into() (memory for the next receive) or us_recv_decline() */
#define US_EV_BULK      13  /* a us_recv_into() receive completed: res=bytes, 0 (EOF) or -errno (-ECANCELED:
                               none, not an error); the caller's memory is its own again. flags: US_BULK_* */
#define US_BULK_STALE    1  /* the connection is closing or gone: only let the memory go */
#define US_BULK_MORE     2  /* the read was large: answer as to BULK_WANT (the next receive's memory) */
#define US_DECLINE_NOW     0  /* not now (paused, closing): ask again at the next stream of full reads */
#define US_DECLINE_BACKOFF 1  /* the caller's memory is too small to gain: ask again much later */
#define US_DECLINE_NEVER   2  /* not for this connection (its bytes must come through the ring: TLS in the core) */
#define US_RECV_BULK_WANT  1  /* us_recv_start(): nothing armed, answer as to BULK_WANT */
#define US_BULK_READ  262144 /* what a bulk receive asks for at most: asyncio's loops read 256 KiB at a time */

#define US_SEND_AUTO     0  /* send_zc from the arena for big writes, plain send below; copied-zc conns fall back */
#define US_SEND_PLAIN    1  /* plain send only */
#define US_SEND_ZC       2  /* send_zc without fixed buffers, every write */
#define US_SEND_ZC_FIXED 3  /* send_zc with IORING_RECVSEND_FIXED_BUF, every write */

/* how us_send_staged() sends from the stage (registered memory) */
#define US_STAGE_WRITE_FIXED   0  /* IORING_OP_WRITE_FIXED: one copy from pinned pages, one CQE */
#define US_STAGE_SEND_ZC_FIXED 1  /* send_zc with IORING_RECVSEND_FIXED_BUF (copied on loopback) */
#define US_STAGE_SEND          2  /* plain send from the same memory (the ablation's baseline) */

#define US_RECV_PBUF     0  /* multishot recv from the provided buffer ring */
#define US_RECV_PLAIN    1  /* single-shot recv into a per-connection buffer */

struct us_config {
    uint32_t sq_entries;
    uint32_t cq_entries;
    uint32_t files;           /* fixed-file table size (conn table size in fd mode) */
    uint32_t reserved_slots;  /* low slots for listeners and sockets installed by hand */
    uint32_t buf_count;       /* provided buffers: power of two, <= 32768 */
    uint32_t buf_size;
    uint32_t chunk_size;      /* send arena chunk */
    uint32_t arena_chunks;
    uint32_t zc_threshold;    /* US_SEND_AUTO: send_zc at or above this many bytes */
    uint32_t accept_depth;    /* single-shot accepts kept in flight per listener */
    uint32_t ext_segments;    /* caller buffers that may be in flight at once (us_send_ref) */
    int32_t send_mode;
    int32_t recv_mode;
    int32_t fixed_files;      /* 1: fixed-file table; 0: regular fds (ablation) */
    int32_t recv_bundle;      /* 1: IORING_RECVSEND_BUNDLE on multishot recv */
    uint32_t setup_flags_off; /* setup flags never to try (tests force the fallbacks) */
    uint32_t stage_bytes;     /* registered memory after the arena for bytes sent many times (us_send_staged) */
    int32_t stage_send;       /* US_STAGE_* */
    uint32_t bulk_bytes;      /* caller memory bulk receives may hold armed at once (0: no bulk receive) */
};

/* The first six fields are read in bulk by Python (struct.iter_unpack), so
 * they stay first and 32-bit. */
struct us_event {
    uint32_t kind;
    uint32_t conn;
    int32_t res;
    uint32_t off;       /* RECV: offset of the data in us_data_region() */
    uint32_t gen;
    uint32_t flags;
    uint32_t aux;
    uint32_t addrlen;
    char *data;         /* RECV: the same data as a pointer (for C callers) */
    unsigned char addr[28];
    uint32_t pad;
};

struct us_stats {
    uint64_t sqes, enters, cqes, stale_cqes, events;
    uint64_t accepts, accept_errors, accept_paused;
    uint64_t recvs, recv_bytes, recv_rearms, enobufs, bundles, buf_resyncs;
    uint64_t sends, send_bytes, send_partial, zc_sends, zc_notifs, zc_copied, plain_sends;
    uint64_t arena_short, closes, ext_sends;
    uint32_t slots_used, slots_total, accepts_inflight, inflight;
    uint32_t arena_chunks, arena_in_use, bufs_total, bufs_out, bufs_circulating;
    uint32_t setup_flags, features;
    int32_t arena_registered, registered_ring;
    uint32_t ext_in_use;
    uint32_t files_registered;
    uint64_t file_sends, file_reads, file_bytes, file_waits;
    uint64_t zc_fixed_sends, plain_recvs; /* which paths the ablation modes take */
    uint64_t quiet_waits;     /* us_wait rounds that produced no event and waited again */
    uint64_t connects, connect_errors, staged_sends;
    uint64_t late_accepts;    /* accepts that completed as their listener stopped (handed to the caller) */
    uint64_t zc_unsupported;  /* send_zc refused with EOPNOTSUPP (AF_UNIX), resent plainly */
    uint64_t vec_sends;       /* sends of several queued segments at once (SENDMSG) */
    uint64_t closes_deferred; /* closes held until the connection's SHUTDOWN completed */
    uint64_t tls_live;        /* SSL objects alive (tls.c): us_tls_new() minus us_tls_free() */
    /* which receive path data took: the provided-buffer ring, or the caller's memory (bulk) */
    uint64_t pbuf_recvs, pbuf_recv_bytes, bulk_recvs, bulk_recv_bytes;
    uint64_t bulk_switches;   /* connections asked for memory (BULK_WANT) after reads filled the buffers */
    uint64_t bulk_refused;    /* bulk receives refused because bulk_bytes was spent (taken from the ring instead) */
    uint64_t bulk_parked;     /* bytes of caller memory bulk receives hold armed now, or are promised while
                                 the caller is asked for it (<= bulk_bytes) */
    uint64_t bulk_parked_peak;
    uint64_t bulk_idle_cancels; /* armed bulk recvs cancelled by us_bulk_sweep() after a sweep period without data */
    uint64_t ktls_tx;         /* TLS connections whose sending the kernel took over (ktls.c) */
    uint64_t ktls_fallback;   /* TLS connections that asked for kTLS and stayed on OpenSSL's path */
    uint64_t tls_file_bytes;  /* file bytes encrypted in the core from registered memory (TLS file path) */
};

struct us_ring;

/* ring lifetime; both return NULL and set *err to a positive errno, *stage to
 * what failed (1 setup, 2 mmap, 3 files, 4 alloc range, 5 buf ring, 6 arena,
 * 7 memory) */
struct us_ring *us_ring_new(const struct us_config *cfg, int *err, int *stage);
void us_ring_free(struct us_ring *r);
int us_ring_fd(struct us_ring *r);
uint32_t us_table_size(struct us_ring *r);            /* slots (conn table entries): every slot index is below */
char *us_data_region(struct us_ring *r, size_t *len);  /* where RECV data lives */
int us_probe_op(struct us_ring *r, int op);           /* 1 supported, 0 not, <0 -errno */
int us_probe_all(int *ops_out, int nops);             /* probe without a configured ring */

/* What the core submits, read-only (US_OPS in ring_internal.h): one entry
 * per operation (user_data tag; several may share an io_uring opcode), so
 * that doctor probes every opcode (us_probe_all) and names what lacks it.
 * `n` gets the count. */
struct us_opinfo {
    const char *tag;    /* the core's operation, e.g. "SENDV", "FILE_DROP" */
    const char *name;   /* its io_uring opcode without IORING_OP_, e.g. "SENDMSG" */
    int32_t op;         /* the IORING_OP_* number */
    const char *since;  /* the kernel that brought the opcode, e.g. "5.19" */
};
const struct us_opinfo *us_ops(int *n);

/* the event kinds above by name ("ACCEPT" for US_EV_ACCEPT), in kind order */
struct us_evinfo {
    const char *name;
    uint32_t kind;
};
const struct us_evinfo *us_events(int *n);

void us_stats_get(struct us_ring *r, struct us_stats *st);

/* submit everything queued, wait for min_complete completions or timeout_ns
 * (<0: no timeout), reap up to max events. Returns the event count or -errno. */
int us_wait(struct us_ring *r, struct us_event *ev, int max, int min_complete, int64_t timeout_ns);

/* listeners: fd stays owned by the caller */
int us_listener_add(struct us_ring *r, int fd);      /* >=0 listener id (a reserved slot) */
int us_listener_start(struct us_ring *r, int lid);
int us_listener_stop(struct us_ring *r, int lid);    /* cancels accepts, frees the slot later */
/* accepting pauses while `limit` connections are open, resumes below; 0: the table size; -ERANGE above it */
int us_accept_limit(struct us_ring *r, uint32_t limit);
int us_flush(struct us_ring *r);                     /* submit, run task work, reap into the stash for us_wait() */

/* connections */
int us_conn_adopt(struct us_ring *r, int fd, uint32_t *gen);  /* install a connected socket; fd is closed on success */
/* 0, -errno, or US_RECV_BULK_WANT: the connection moves bulk; answer as to US_EV_BULK_WANT */
int us_recv_start(struct us_ring *r, uint32_t slot, uint32_t gen);
int us_recv_pause(struct us_ring *r, uint32_t slot, uint32_t gen);
/* after BULK_WANT (or BULK with US_BULK_MORE): receive once into `buf`, `len` bytes, which the caller
 * keeps alive and untouched until this slot's US_EV_BULK. 0: armed; -ENOBUFS: bulk_bytes spent,
 * -ECANCELED: paused or ended meanwhile (either way the memory is not used and the provided-buffer
 * recv is armed when reading goes on); -EINVAL: not asked */
int us_recv_into(struct us_ring *r, uint32_t slot, uint32_t gen, char *buf, uint32_t len);
/* the answer without memory: back to the provided-buffer ring, and when to ask again (US_DECLINE_*) */
int us_recv_decline(struct us_ring *r, uint32_t slot, uint32_t gen, int how);
/* called every sweep period while bulk recvs are armed: cancels each one that was armed already at the
 * previous call and got nothing since (its -ECANCELED US_EV_BULK returns the connection to the
 * provided-buffer ring and the memory to the caller). Returns the number cancelled. */
int us_bulk_sweep(struct us_ring *r);
int64_t us_send(struct us_ring *r, uint32_t slot, uint32_t gen, const char *data, size_t len);
/* send `data` in place, without copying, as a whole; returns the segment
 * index (0..ext_segments-1). The caller keeps `data` alive and unchanged
 * until that index appears in us_released(); -ENOBUFS: copy instead */
int64_t us_send_ref(struct us_ring *r, uint32_t slot, uint32_t gen, const char *data, size_t len);
/* send `len` bytes of a file from `off`: read by the ring into registered
 * memory and sent from there. `file` is a us_file_register() slot (fixed=1)
 * or an fd. Returns a segment index as us_send_ref does; keep the file open
 * until it is released. -ENOBUFS: no segment free; -EINVAL: len 0 or > 2 GiB */
int64_t us_send_file(struct us_ring *r, uint32_t slot, uint32_t gen, int file, int fixed,
                     uint64_t off, uint64_t len);
int us_file_register(struct us_ring *r, int fd);      /* >=0 fixed slot, -EOPNOTSUPP without fixed files */
int us_file_unregister(struct us_ring *r, uint32_t slot);  /* the slot empties when unused */
int us_file_hold(struct us_ring *r, uint32_t slot, int delta); /* +1/-1: keep the slot for a later send */
uint32_t *us_released(struct us_ring *r);            /* [count, segments...]; the caller resets count */
int64_t us_queued(struct us_ring *r, uint32_t slot, uint32_t gen);
int64_t us_sent(struct us_ring *r, uint32_t slot, uint32_t gen);   /* bytes sent so far */
int us_notify_below(struct us_ring *r, uint32_t slot, uint32_t gen, int64_t level);
int us_shutdown(struct us_ring *r, uint32_t slot, uint32_t gen);          /* after the queue drains */
int us_close(struct us_ring *r, uint32_t slot, uint32_t gen, int graceful);
int us_fd_install(struct us_ring *r, uint32_t slot, uint32_t gen);        /* a real fd for the caller, or -errno */
int us_cancel_all(struct us_ring *r);                /* loop close: abort every connection and listener */

/* client connections and the stage (the load generator's): client.h */

/* readiness for foreign fds */
int us_poll_add(struct us_ring *r, int fd, uint32_t mask, uint32_t id, uint32_t gen, int multishot);
int us_poll_remove(struct us_ring *r, uint32_t id, uint32_t gen);
/* CDEF END */

/* Every US_EV_* above, in kind order (us_events() is made from this; a new
 * kind is its #define and a line here) */
#define US_EVENTS(X) \
    X(ACCEPT) X(RECV) X(EOF) X(RECV_ERR) X(WRITABLE) X(SEND_ERR) X(CLOSED) X(SHUTDOWN) X(POLL) X(ARENA) X(CONNECT) X(BULK_WANT) X(BULK)

#endif
