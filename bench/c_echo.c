/* c_echo: the near-limit reference for bench/echo_bench.py.
 *
 *   c_echo PORT
 *
 * The same native core the Python loop drives (uringserve/_native/ring.c and its parts),
 * driven from C with no interpreter: accept-direct, multishot recv from the
 * provided buffer ring, sends from the registered arena. The gap between
 * this and UringEventLoop is what Python costs per message.
 *
 * When the send arena is full, us_send() takes less than it was given: the
 * rest waits in a per-connection buffer, that connection stops receiving,
 * and US_EV_ARENA (chunks freed) retries it. Every byte is echoed, in order.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core.h"

static volatile sig_atomic_t stop;
static void on_sig(int s) { (void)s; stop = 1; }

#define FILES 4096

struct pending {
    char *buf;
    size_t len, cap;
    uint32_t gen;
};
static struct pending pend[FILES];
static uint32_t waiting[FILES], nwaiting;

static void keep(uint32_t slot, uint32_t gen, const char *p, size_t len)
{
    struct pending *q = &pend[slot];
    if (q->len + len > q->cap) {
        q->cap = (q->len + len) * 2;
        q->buf = realloc(q->buf, q->cap);
        if (!q->buf)
            abort();
    }
    memcpy(q->buf + q->len, p, len);
    q->len += len;
    q->gen = gen;
}

static void echo(struct us_ring *r, uint32_t slot, uint32_t gen, const char *p, size_t len)
{
    struct pending *q = &pend[slot];
    if (q->len && q->gen == gen) { /* behind bytes still waiting: keep the order */
        keep(slot, gen, p, len);
        return;
    }
    q->len = 0;
    int64_t n = us_send(r, slot, gen, p, len);
    if (n < 0 || (size_t)n == len)
        return;
    keep(slot, gen, p + n, len - (size_t)n);
    us_recv_pause(r, slot, gen);
    waiting[nwaiting++] = slot;
}

static void retry(struct us_ring *r)
{
    uint32_t n = nwaiting;
    nwaiting = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t slot = waiting[i];
        struct pending *q = &pend[slot];
        int64_t sent = us_send(r, slot, q->gen, q->buf, q->len);
        if (sent < 0) {
            q->len = 0; /* the connection is gone */
            continue;
        }
        memmove(q->buf, q->buf + sent, q->len - (size_t)sent);
        q->len -= (size_t)sent;
        if (q->len)
            waiting[nwaiting++] = slot;
        else
            us_recv_start(r, slot, q->gen);
    }
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    struct us_config cfg = {
        .sq_entries = 1024, .cq_entries = 8192, .files = FILES, .reserved_slots = 64,
        .buf_count = 512, .buf_size = 16384, .chunk_size = 32768, .arena_chunks = 128,
        .zc_threshold = 32768, .accept_depth = 4, .ext_segments = 0, .send_mode = US_SEND_AUTO,
        .recv_mode = US_RECV_PBUF, .fixed_files = 1,
    };
    int err, stage;
    struct us_ring *r = us_ring_new(&cfg, &err, &stage);
    if (!r) {
        fprintf(stderr, "ring setup failed at stage %d: errno %d\n", stage, err);
        return 1;
    }
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(ls, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* inherited on accept */
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 1024)) {
        perror("listen");
        return 1;
    }
    us_listener_start(r, us_listener_add(r, ls));
    signal(SIGTERM, on_sig);
    signal(SIGINT, on_sig);
    printf("c_echo on 127.0.0.1:%d pid %d\n", port, getpid());
    fflush(stdout);
    struct us_event ev[512];
    while (!stop) {
        int n = us_wait(r, ev, 512, 1, 500000000);
        for (int i = 0; i < n; i++) {
            uint32_t kind = ev[i].kind;
            if (kind == US_EV_RECV)
                echo(r, ev[i].conn, ev[i].gen, ev[i].data, (size_t)ev[i].res);
            else if (kind == US_EV_EOF || kind == US_EV_RECV_ERR)
                us_close(r, ev[i].conn, ev[i].gen, 1); /* after what is queued has gone */
            else if (kind == US_EV_ARENA)
                retry(r);
        }
    }
    us_ring_free(r);
    return 0;
}
