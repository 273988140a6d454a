/* The connection part of the native core (conn.c): the slot table,
 * listeners and accepting, receiving through the provided buffer ring,
 * shutdown and close. Included through ring_internal.h. */
#ifndef URINGSERVE_CONN_H
#define URINGSERVE_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "send.h"

struct us_ring;
struct us_tls;
struct out;
struct io_uring_cqe;

#define BUNDLE_MAX_BUFS 8

enum cstate { C_FREE = 0, C_OPEN, C_CLOSING /* close waits for the queue */, C_CLOSE_WAIT /* close issued */,
              C_FILE /* the slot holds a registered file, not a connection (send.c) */ };

/* A slot's flags: these bits are this part's, enum sflag's are send.c's. */
enum cflag {
    F_RECV_ARMED = 1 << 0, F_RECV_PAUSED = 1 << 1, F_SHUT_PENDING = 1 << 4, F_SHUT_DONE = 1 << 5,
    F_REARM_Q = 1 << 6, F_EOF = 1 << 7,
    F_SHUT_INFLIGHT = 1 << 13 /* an IORING_OP_SHUTDOWN is in flight (see issue_close) */,
    F_CLOSE_DEFER = 1 << 14 /* close asked for while the shutdown was in flight: issued at its CQE */,
    /* bulk receive (see on_bulk in conn.c) */
    F_BULK_SWITCH = 1 << 16 /* the multishot recv is being cancelled: BULK_WANT at its last CQE */,
    F_BULK_WAIT = 1 << 17 /* BULK_WANT (or BULK with MORE) emitted: nothing armed until the answer */,
    F_BULK_ARMED = 1 << 18 /* a recv into caller memory is in flight (F_RECV_ARMED is set too) */,
    F_BULK_OFF = 1 << 19 /* never bulk: declined for good, or a client connection of the load generator */,
    F_BULK_IDLE = 1 << 20 /* the armed bulk recv was armed already at the last us_bulk_sweep() */,
};

struct conn {
    uint16_t gen;
    uint8_t state;
    uint32_t flags;
    struct sendq q;      /* send.c's */
    int fd;              /* fixed: the slot; fd mode: the fd */
    int16_t streak;      /* provided-buffer reads in a row that filled a buffer (<0: backing off bulk) */
    char *rbuf;          /* US_RECV_PLAIN: this slot's buffer in the data region */
    struct us_tls *tls;  /* tls.c's SSL object of this connection (us_tls_new), NULL once freed */
    uint8_t is_tls;      /* set with tls and kept after it is freed: a file is never sent in clear */
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

/* the slot table, listeners and accepting, receive re-arms */
struct us_conns {
    struct conn *table;
    uint32_t size;
    uint32_t *rearm;
    uint32_t nrearm;
    uint32_t *held_rearm;           /* re-arms implied by stashed events (see struct us_stash) */
    uint32_t nheld_rearm;
    uint32_t accept_used, accepts_inflight, accept_range;
    uint32_t accept_limit;          /* connections (slots in use) at which accepting pauses: <= accept_range */
    int accept_starved;
    struct listener *lst;
    struct accept_ctx *acc;
    uint64_t bulk_parked;           /* the sum of bulk_len: against cfg.bulk_bytes */
    uint32_t *bulk_len;             /* per slot: bytes of the recv into caller memory in flight (0: none);
                                       kept past a close until that recv's CQE, so a reused slot waits */
};

/* the provided buffer ring and the data region it hands out */
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
    uint16_t *held;     /* buffers of stashed events (see struct us_stash) */
    uint32_t nheld;
};

#pragma GCC visibility push(hidden)
int conn_alloc(struct us_ring *r);      /* the tables: -ENOMEM */
int setup_files(struct us_ring *r);
int setup_bufring(struct us_ring *r);
void conn_free(struct us_ring *r);
void conn_init(struct us_ring *r, uint32_t slot, int fd);
void slot_release(struct us_ring *r, struct conn *c);
int slot_alloc_install(struct us_ring *r, int fd, int op);
int arm_recv(struct us_ring *r, uint32_t slot, struct conn *c);
void issue_close(struct us_ring *r, uint32_t slot, struct conn *c);
void issue_shutdown(struct us_ring *r, uint32_t slot, struct conn *c);
void rearm_starved(struct us_ring *r);
void refill(struct us_ring *r);
void release_held(struct us_ring *r);
void on_accept(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
void on_recv(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
void on_close(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
void on_shutdown(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
void on_lclose(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
void on_bulk(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
#pragma GCC visibility pop

#endif
