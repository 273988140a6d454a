/* Client connections and the stage: the part of the native core only the
 * load generator (loadgen.c, loadtest/) uses, kept out of the server's
 * parts. A server's ring never allocates its state (r->client stays NULL);
 * the ring reaches its completions through US_OPS (on_socket, on_connect).
 */
#ifndef URINGSERVE_CLIENT_H
#define URINGSERVE_CLIENT_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
struct us_ring;

/* client connections: a socket made by the ring straight into a slot
 * (IORING_OP_SOCKET, direct) and connected there to a target set once.
 * US_EV_CONNECT reports the outcome; on success receiving has started. */
int us_target_set(struct us_ring *r, uint32_t target, const void *addr, uint32_t addrlen); /* target < 4 */
int us_connect(struct us_ring *r, uint32_t target, uint32_t tag);  /* tag < 2^20; -ENFILE: no free slot */

/* The stage: `stage_bytes` of registered memory the caller fills once
 * (requests a load generator repeats). us_send_staged() queues [off, off+len)
 * of it like any write, sent without a copy into the arena, by the
 * `stage_send` operation; the caller must not change those bytes while a
 * send of them may be in flight. -ENOBUFS: no free segment. */
char *us_stage_region(struct us_ring *r, size_t *len);
int64_t us_send_staged(struct us_ring *r, uint32_t slot, uint32_t gen, uint32_t off, uint32_t len);
/* CDEF END */

#include <sys/socket.h>

struct out;
struct io_uring_cqe;

#define MAX_TARGETS 4

/* connect targets, set by us_target_set() */
struct us_client {
    struct sockaddr_storage tgt[MAX_TARGETS];
    socklen_t tgtlen[MAX_TARGETS];
};

#pragma GCC visibility push(hidden)
void on_socket(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
void on_connect(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o);
#pragma GCC visibility pop

#endif
