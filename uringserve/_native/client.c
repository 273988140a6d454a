/* Client connections and the stage, for the load generator (loadgen.c):
 * a socket made by the ring straight into a slot (IORING_OP_SOCKET, direct),
 * connected there (IORING_OP_CONNECT) to a target set once; from then on it
 * is a connection like an accepted one (conn.c). The stage is registered
 * memory after the send arena's chunks (send_stage), whose ranges are
 * queued as segments and sent without a copy (send.c: submit_staged).
 *
 * A server's ring never allocates this part's state: r->client is made by
 * the first us_target_set(). See ring_internal.h for how the parts fit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ring_internal.h"

static void connect_failed(struct us_ring *r, struct out *o, uint32_t slot, uint32_t gen, uint32_t tag, int res)
{
    r->st.connect_errors++;
    struct us_event *e = emit(o, US_EV_CONNECT, slot, gen, res);
    e->aux = tag;
}

/* The socket is in its slot (or is an fd in fd mode): connect it there. */
void on_socket(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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

void on_connect(struct us_ring *r, struct io_uring_cqe *cqe, struct out *o)
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
    c->flags |= F_BULK_OFF; /* the load generator reads its replies from the ring (loadgen.c) */
    arm_recv(r, slot, c);
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
