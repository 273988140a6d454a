/* echo_load: ping-pong echo load generator for bench/echo_bench.py.
 *
 *   echo_load HOST PORT CONNS MSG_SIZE SECONDS
 *
 * Each of CONNS connections sends one MSG_SIZE message, waits for all of it
 * to come back, checks it byte for byte, and sends the next. Prints
 * "msgs=N seconds=S errors=E". epoll, non-blocking, one thread: the load
 * side should cost as little as possible on its own core.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    size_t sent, got;
    unsigned seq;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(char *buf, size_t n, unsigned seq)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)('a' + (seq + i) % 26);
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT CONNS MSG_SIZE SECONDS\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconn = atoi(argv[3]);
    size_t msg = (size_t)atol(argv[4]);
    double secs = atof(argv[5]);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, host, &sa.sin_addr);
    int ep = epoll_create1(0);
    struct conn *cs = calloc((size_t)nconn, sizeof(*cs));
    char *out = malloc(msg + 26), *in = malloc(msg + 65536), *want = malloc(msg);
    fill(out, msg + 26, 0);
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            perror("connect");
            return 1;
        }
        cs[i].fd = fd;
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    long msgs = 0, errors = 0;
    double t0 = now(), end = t0 + secs;
    for (int i = 0; i < nconn; i++)
        if (write(cs[i].fd, out, msg) != (ssize_t)msg)
            errors++;
    struct epoll_event evs[256];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            struct conn *c = &cs[evs[k].data.u32];
            ssize_t r = read(c->fd, in, msg - c->got);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            /* verify against what this connection sent for this message */
            if (memcmp(in, out + (c->seq % 26) + c->got, (size_t)r) != 0)
                errors++;
            c->got += (size_t)r;
            if (c->got == msg) {
                msgs++;
                c->got = 0;
                c->seq++;
                if (write(c->fd, out + (c->seq % 26), msg) != (ssize_t)msg)
                    errors++;
            }
        }
    }
    double el = now() - t0;
    printf("msgs=%ld seconds=%.3f errors=%ld\n", msgs, el, errors);
    (void)want;
    return errors ? 1 : 0;
}
