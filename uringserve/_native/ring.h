/* The ring part of the native core (ring.c): the kernel ring and how we
 * enter it, the batch call, synchronous operations. Included through
 * ring_internal.h. */
#ifndef URINGSERVE_RING_H
#define URINGSERVE_RING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct us_ring;
struct out;
struct io_uring_cqe;

/* the kernel ring, its two queues and how we enter it */
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

/* Completions reaped outside us_wait() (a synchronous op, us_flush) wait
 * in the stash. The buffers and plain-recv re-arms they imply are held
 * (us_pbufs.held, us_conns.held_rearm: `on` tells recycle_buf and
 * rearm_later to put them there) until their events have been handed out,
 * then recycled a call later, like any other batch's. */
struct us_stash {
    struct us_event *ev;
    int n, cap, on;
};

#pragma GCC visibility push(hidden)
int sys_register(int fd, unsigned op, void *arg, unsigned nr);
/* submit what is queued and wait for `min` completions: >= 0 or -errno */
int do_enter(struct us_ring *r, unsigned min, unsigned flags, void *arg, size_t argsz);
/* submit and wait for the completion with this user_data (others go to the stash): its res */
int sync_op(struct us_ring *r, uint64_t want);
void *map_anon(size_t len);
#pragma GCC visibility pop

static inline void on_none(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o) {}

#endif
