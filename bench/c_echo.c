/* c_echo: the near-limit reference for bench/echo_bench.py.
 *
 *   c_echo PORT
 *
 * The same native core the Python loop drives (uringserve/_native/core.c),
 * driven from C with no interpreter: accept-direct, multishot recv from the
 * provided buffer ring, sends from the registered arena. The gap between
 * this and UringEventLoop is what Python costs per message.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core.h"

static volatile sig_atomic_t stop;
static void on_sig(int s) { (void)s; stop = 1; }

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    struct us_config cfg = {
        .sq_entries = 1024, .cq_entries = 8192, .files = 4096, .reserved_slots = 64,
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
        for (int i = 0; i < n; i++)
            if (ev[i].kind == US_EV_RECV)
                us_send(r, ev[i].conn, ev[i].gen, ev[i].data, (size_t)ev[i].res);
            else if (ev[i].kind == US_EV_EOF || ev[i].kind == US_EV_RECV_ERR)
                us_close(r, ev[i].conn, ev[i].gen, 0);
    }
    us_ring_free(r);
    return 0;
}
