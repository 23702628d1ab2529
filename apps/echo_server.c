/*
 * echo_server: the kernel's baseline for shardsock's benchmarks.  Echo
 * (RFC 862) and discard (RFC 863) over the kernel's TCP, one epoll thread
 * per core with SO_REUSEPORT listeners, each pinned: the same shape as one
 * shardsock instance per core.
 *
 *   echo_server [--echo PORT] [--discard PORT] [--threads N]
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct worker {
    int id, echo_port, discard_port;
};

static int listener(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) {
        perror("echo_server: listen");
        exit(1);
    }
    return fd;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->id % CPU_SETSIZE, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    int ep = epoll_create1(0);
    int le = w->echo_port ? listener(w->echo_port) : -1, ld = w->discard_port ? listener(w->discard_port) : -1;
    struct epoll_event ev = {.events = EPOLLIN};
    /* data: fd << 1 | discard */
    if (le >= 0) {
        ev.data.u64 = (uint64_t)le << 1;
        epoll_ctl(ep, EPOLL_CTL_ADD, le, &ev);
    }
    if (ld >= 0) {
        ev.data.u64 = (uint64_t)ld << 1 | 1;
        epoll_ctl(ep, EPOLL_CTL_ADD, ld, &ev);
    }
    static __thread char buf[65536];
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = (int)(evs[i].data.u64 >> 1), discard = (int)(evs[i].data.u64 & 1);
            if (fd == le || fd == ld) {
                int c;
                while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event ce = {.events = EPOLLIN, .data.u64 = (uint64_t)c << 1 | (uint64_t)discard};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                close(fd);
                continue;
            }
            if (r > 0 && !discard) {
                /* A blocking echo of what came: enough for a benchmark whose
                 * client never sends more than it reads back. */
                ssize_t off = 0;
                while (off < r) {
                    ssize_t s = write(fd, buf + off, (size_t)(r - off));
                    if (s < 0 && errno != EAGAIN)
                        break;
                    if (s > 0)
                        off += s;
                }
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int echo = 7, discard = 9, threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    static const struct option opts[] = {{"echo", 1, 0, 'e'}, {"discard", 1, 0, 'd'}, {"threads", 1, 0, 't'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'e')
            echo = atoi(optarg);
        else if (o == 'd')
            discard = atoi(optarg);
        else if (o == 't')
            threads = atoi(optarg);
        else
            return 2;
    }
    pthread_t t[256];
    static struct worker w[256];
    for (int i = 0; i < threads && i < 256; i++) {
        w[i] = (struct worker){.id = i, .echo_port = echo, .discard_port = discard};
        pthread_create(&t[i], NULL, run, &w[i]);
    }
    printf("ready\n");
    fflush(stdout);
    pthread_join(t[0], NULL);
    return 0;
}
