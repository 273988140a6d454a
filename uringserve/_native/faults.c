/* Fault plans: which operations fail, when, and how (see faults.h). */
#define _GNU_SOURCE
#include "faults.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "ring_internal.h"

#ifndef IORING_NOP_INJECT_RESULT
#define IORING_NOP_INJECT_RESULT (1U << 0) /* 6.10: sqe->len is the result */
#endif

struct rule {
    struct us_fault_spec spec;
    int on;
    uint64_t rng;
    uint64_t calls, hits;
};

struct us_fault_plan {
    struct rule rules[US_FAULT_OPS];
};

static int setup_stage, setup_err;

struct us_fault_plan *fault_plan_new(void)
{
    return calloc(1, sizeof(struct us_fault_plan));
}

int fault_plan_set(struct us_fault_plan *p, int op, const struct us_fault_spec *spec)
{
    if (op < 0 || op >= US_FAULT_OPS)
        return -EINVAL;
    struct rule *r = &p->rules[op];
    if (!spec) {
        r->on = 0;
        return 0;
    }
    if (spec->err < 0 || spec->err > 4095 || (spec->err == 0 && op != US_FAULT_SEND && op != US_FAULT_ZC_COPIED))
        return -EINVAL;
    if (!spec->nth && !spec->every && !spec->ppm)
        return -EINVAL; /* a rule that never fires is a mistake, not a plan */
    if (spec->ppm > 1000000)
        return -EINVAL;
    r->spec = *spec;
    r->rng = spec->seed ? spec->seed : 0x9E3779B97F4A7C15ull;
    r->calls = r->hits = 0;
    r->on = 1;
    return 0;
}

void fault_plan_counts(const struct us_fault_plan *p, uint64_t *calls, uint64_t *hits)
{
    for (int i = 0; i < US_FAULT_OPS; i++) {
        calls[i] = p ? p->rules[i].calls : 0;
        hits[i] = p ? p->rules[i].hits : 0;
    }
}

int fault_fires(struct us_fault_plan *p, int op)
{
    struct rule *r = &p->rules[op];
    if (!r->on)
        return 0;
    r->calls++;
    const struct us_fault_spec *s = &r->spec;
    if (s->limit && r->hits >= s->limit)
        return 0;
    int fire = (s->nth && r->calls == s->nth) || (s->every && r->calls % s->every == 0);
    if (!fire && s->ppm) {
        /* xorshift64: reproducible from the seed, no libc state shared */
        r->rng ^= r->rng << 13;
        r->rng ^= r->rng >> 7;
        r->rng ^= r->rng << 17;
        fire = r->rng % 1000000 < s->ppm;
    }
    r->hits += (uint64_t)fire;
    return fire;
}

void fault_apply_sqe(struct us_fault_plan *p, int op, struct io_uring_sqe *sqe)
{
    int err = p->rules[op].spec.err;
    if (err == 0 && sqe->len <= 1)
        return; /* a byte cannot be sent short: not a call this rule sees */
    if (!fault_fires(p, op))
        return;
    if (err == 0) { /* a short send: the kernel sends half */
        sqe->len /= 2;
        return;
    }
    uint64_t ud = sqe->user_data;
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_NOP;
    sqe->rw_flags = IORING_NOP_INJECT_RESULT; /* nop_flags */
    sqe->len = (uint32_t)-err;
    sqe->user_data = ud;
}

void us_fault_setup_next(int stage, int err)
{
    setup_stage = stage;
    setup_err = err;
}

int fault_setup_take(int stage)
{
    if (!setup_err || stage != setup_stage)
        return 0;
    int e = setup_err;
    setup_err = setup_stage = 0;
    return e;
}

/* ---- a ring's plan ---------------------------------------------------- */

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
