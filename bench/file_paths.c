/* The ways a server can send a cached file over TCP, side by side: the
 * sender's CPU per file (its own threads and io_uring's io-wq workers, which
 * are threads of the process; the reader is another process, on another
 * CPU). Loopback only: on a NIC, send_zc would change the picture.
 *
 *   cc -O2 -o bench/build/file_paths bench/file_paths.c
 *   bench/build/file_paths [SIZE] [COUNT] [ROUNDS]
 *
 * modes:
 *   sendfile      sendfile(2), what nginx does (page references, no copy)
 *   uring-splice  IORING_OP_SPLICE file -> pipe -> socket, linked
 *                 (page references too; the kernel runs splice in io-wq)
 *   uring-send    IORING_OP_SEND from memory holding the file (a copy)
 *   uring-read    IORING_OP_READ into memory, then SEND (two copies)
 *
 * Written by hand: no liburing on the machines this runs on, and the
 * point is the kernel's cost per operation, not a library's. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
    perror(what);
    exit(1);
}

struct ring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static void ring_init(struct ring *r)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    r->fd = (int)syscall(__NR_io_uring_setup, 8, &p);
    if (r->fd < 0)
        die("io_uring_setup");
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
        die("mmap");
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

static struct io_uring_sqe *sqe_get(struct ring *r, int op, int fd, uint64_t addr, uint32_t len, uint64_t off)
{
    unsigned tail = *r->sq_tail, i = tail & *r->sq_mask;
    struct io_uring_sqe *s = &r->sqes[i];
    memset(s, 0, sizeof *s);
    s->opcode = (uint8_t)op;
    s->fd = fd;
    s->addr = addr;
    s->len = len;
    s->off = off;
    r->sq_array[i] = i;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    return s;
}

/* submit what is queued, wait for n completions; their results in res[] */
static void submit_wait(struct ring *r, unsigned n, int *res)
{
    unsigned got = 0;
    int submit = 1;
    while (got < n) {
        unsigned head = *r->cq_head, tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        while (head != tail && got < n) {
            res[got++] = r->cqes[head & *r->cq_mask].res;
            head++;
        }
        __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
        if (got == n)
            break;
        unsigned to_submit = submit ? 8 : 0; /* the kernel takes what is queued */
        if (syscall(__NR_io_uring_enter, r->fd, to_submit, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0 && errno != EINTR)
            die("io_uring_enter");
        submit = 0;
    }
}

static double cpu_now(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u); /* every thread of this process, io-wq workers included */
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

static int connected_pair(pid_t *reader, long long total)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &al))
        die("listen");
    *reader = fork();
    if (*reader == 0) { /* the client: read and discard everything */
        pin(1);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&a, sizeof a))
            die("connect");
        static char buf[1 << 18];
        for (long long got = 0; got < total;) {
            ssize_t n = recv(c, buf, sizeof buf, 0);
            if (n <= 0)
                die("recv");
            got += n;
        }
        _exit(0);
    }
    int s = accept(l, NULL, NULL);
    if (s < 0)
        die("accept");
    close(l);
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
}

static double run(const char *mode, int file, char *mem, int size, int count)
{
    pid_t reader;
    int s = connected_pair(&reader, (long long)size * count);
    struct ring r;
    ring_init(&r);
    int pipefd[2] = { -1, -1 };
    if (!strcmp(mode, "uring-splice")) {
        if (pipe2(pipefd, O_CLOEXEC))
            die("pipe");
        if (fcntl(pipefd[1], F_SETPIPE_SZ, size) < size)
            die("F_SETPIPE_SZ");
    }
    int res[2];
    double t0 = cpu_now();
    for (int i = 0; i < count; i++) {
        int done = 0;
        while (done < size) {
            int want = size - done;
            if (!strcmp(mode, "sendfile")) {
                off_t off = done;
                ssize_t n = sendfile(s, file, &off, (size_t)want);
                if (n <= 0)
                    die("sendfile");
                done += (int)n;
            } else if (!strcmp(mode, "uring-splice")) {
                struct io_uring_sqe *a = sqe_get(&r, IORING_OP_SPLICE, pipefd[1], 0, (uint32_t)want, 0);
                a->splice_fd_in = file;
                a->splice_off_in = (uint64_t)done;
                a->off = (uint64_t)-1;
                a->flags = IOSQE_IO_LINK;
                struct io_uring_sqe *b = sqe_get(&r, IORING_OP_SPLICE, s, 0, (uint32_t)want, (uint64_t)-1);
                b->splice_fd_in = pipefd[0];
                b->splice_off_in = (uint64_t)-1;
                submit_wait(&r, 2, res);
                if (res[0] <= 0 || res[1] <= 0 || res[0] != res[1]) {
                    fprintf(stderr, "splice: %d %d\n", res[0], res[1]);
                    exit(1);
                }
                done += res[1];
            } else { /* uring-send from memory; uring-read reads the file into it first */
                if (done == 0 && !strcmp(mode, "uring-read")) {
                    sqe_get(&r, IORING_OP_READ, file, (uint64_t)(uintptr_t)mem, (uint32_t)size, 0);
                    submit_wait(&r, 1, res);
                    if (res[0] != size)
                        die("read");
                }
                struct io_uring_sqe *a = sqe_get(&r, IORING_OP_SEND, s, (uint64_t)(uintptr_t)(mem + done), (uint32_t)want, 0);
                a->msg_flags = MSG_NOSIGNAL;
                submit_wait(&r, 1, res);
                if (res[0] <= 0)
                    die("send");
                done += res[0];
            }
        }
    }
    double cpu = cpu_now() - t0;
    int status;
    waitpid(reader, &status, 0);
    close(s);
    close(r.fd);
    if (pipefd[0] >= 0) {
        close(pipefd[0]);
        close(pipefd[1]);
    }
    return cpu / count * 1e6;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int size = argc > 1 ? atoi(argv[1]) : 65536;
    int count = argc > 2 ? atoi(argv[2]) : 20000;
    int rounds = argc > 3 ? atoi(argv[3]) : 5;
    const char *modes[] = { "sendfile", "uring-splice", "uring-send", "uring-read" };
    enum { NM = 4 };
    signal(SIGPIPE, SIG_IGN);
    pin(0);
    char path[] = "/tmp/file_paths.XXXXXX";
    int file = mkstemp(path);
    if (file < 0)
        die("mkstemp");
    unlink(path);
    char *mem = malloc((size_t)size);
    for (int i = 0; i < size; i++)
        mem[i] = (char)(i * 7);
    if (write(file, mem, (size_t)size) != size)
        die("write");
    double us[NM][64];
    for (int k = 0; k < rounds && k < 64; k++)
        for (int m = 0; m < NM; m++) {
            us[m][k] = run(modes[m], file, mem, size, count);
            fprintf(stderr, "round %d %-13s %8.2f us/file\n", k + 1, modes[m], us[m][k]);
        }
    printf("%d-byte file, %d sends per run, median of %d rounds, sender CPU per file "
           "(all its threads); reader on CPU 1\n", size, count, rounds);
    double base = 0;
    for (int m = 0; m < NM; m++) {
        qsort(us[m], (size_t)rounds, sizeof(double), cmp);
        double med = us[m][rounds / 2];
        if (m == 0)
            base = med;
        printf("%-13s %8.2f us   %5.2fx sendfile\n", modes[m], med, med / base);
    }
    return 0;
}
