/* Fault injection for tests: chosen operations fail with chosen errors.
 *
 * Off unless a test asks (us_fault_set); a ring without a plan pays one
 * predictable branch on a NULL pointer per submitted operation. Errors are
 * injected where the kernel would report them: the operation's SQE is
 * replaced by a NOP that completes with the error (IORING_NOP_INJECT_RESULT,
 * 6.10) under the same user_data, so the operation never ran, no buffer was
 * taken and no byte moved, exactly as when the kernel fails it. A short send
 * halves the SQE's length: the kernel really sends fewer bytes.
 */
#ifndef URINGSERVE_FAULTS_H
#define URINGSERVE_FAULTS_H

#include <stdint.h>

/* CDEF BEGIN */
#define US_FAULT_ACCEPT    0  /* accept SQEs: EMFILE, ENFILE, ECONNABORTED, ECANCELED, ... */
#define US_FAULT_RECV      1  /* recv arms (multishot: each arm): ENOBUFS, ECONNRESET, ECANCELED, ... */
#define US_FAULT_SEND      2  /* send SQEs (plain, zc, write_fixed): EPIPE, EAGAIN, ...; err 0: a short send */
#define US_FAULT_ZC_COPIED 3  /* zero-copy notifications reported as copied (err unused) */
#define US_FAULT_OPS       4

#define US_SETUP_FAULT_BUF_RING 5  /* the provided buffer ring's registration (us_ring_new stage 5) */
#define US_SETUP_FAULT_ARENA    6  /* the send arena's registration (stage 6) */

/* A rule fires on the nth call (once), on every `every`th call, and with
 * probability ppm/1e6 per call (seeded), at most `limit` times (0: no limit). */
struct us_fault_spec {
    int32_t err;   /* positive errno; 0 with US_FAULT_SEND: a short send */
    uint32_t nth, every, ppm, limit;
    uint64_t seed;
};

struct us_ring;
/* spec NULL clears the rule; -EINVAL: bad op or spec. -EOPNOTSUPP: the
 * kernel cannot inject results (NOP_INJECT_RESULT, 6.10) */
int us_fault_set(struct us_ring *r, int op, const struct us_fault_spec *spec);
/* calls seen and faults injected per op, US_FAULT_OPS entries each */
void us_fault_counts(struct us_ring *r, uint64_t *calls, uint64_t *hits);
/* the next us_ring_new() in this process fails registering `stage` with err */
void us_fault_setup_next(int stage, int err);
/* CDEF END */

struct io_uring_sqe;
struct us_fault_plan;

struct us_fault_plan *fault_plan_new(void);
int fault_plan_set(struct us_fault_plan *p, int op, const struct us_fault_spec *spec);
void fault_plan_counts(const struct us_fault_plan *p, uint64_t *calls, uint64_t *hits);
int fault_fires(struct us_fault_plan *p, int op);
void fault_apply_sqe(struct us_fault_plan *p, int op, struct io_uring_sqe *sqe);
int fault_setup_take(int stage); /* the error to fail `stage` with, once, or 0 */

#endif
