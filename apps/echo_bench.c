/*
 * echo_bench: a load client for echo and discard servers.
 *
 *   echo_bench --host A.B.C.D --conns N --size B --seconds S --mode rr
 *       N connections, each sending B bytes and waiting for them back, for S
 *       seconds: round trips per second.
 *   echo_bench --host A.B.C.D --port 9 --conns N --seconds S --mode bulk
 *       N connections writing 64 KiB at a time: Gbit/s one way.
 * Prints one JSON object.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    const char *host = "198.18.0.2", *mode = "rr";
    int port = 7, conns = 1, size = 64;
    double seconds = 3;
    static const struct option opts[] = {{"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"conns", 1, 0, 'c'},
                                         {"size", 1, 0, 's'}, {"seconds", 1, 0, 't'}, {"mode", 1, 0, 'm'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 's': size = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'm': mode = optarg; break;
        default: return 2;
        }
    }
    int bulk = strcmp(mode, "bulk") == 0;
    if (size < 1 || size > 65536 || conns < 1 || conns > 10000)
        return 2;
    struct rlimit rl = {20000, 20000};
    setrlimit(RLIMIT_NOFILE, &rl);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    int ep = epoll_create1(0);
    int *fds = calloc((size_t)conns, sizeof *fds);
    int *got = calloc((size_t)conns, sizeof *got);
    static char buf[65536];
    memset(buf, 'x', sizeof buf);
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            printf("{\"ok\": false, \"error\": \"connect: %s\"}\n", strerror(errno));
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fds[i] = fd;
        struct epoll_event ev = {.events = bulk ? EPOLLOUT : EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (!bulk && write(fd, buf, (size_t)size) != size)
            return 1;
    }
    unsigned long long trips = 0, bytes = 0;
    double t0 = now(), end = t0 + seconds;
    struct epoll_event evs[512];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 512, 100);
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32, fd = fds[i];
            if (bulk) {
                ssize_t w = write(fd, buf, sizeof buf);
                if (w > 0)
                    bytes += (unsigned long long)w;
                continue;
            }
            ssize_t r = read(fd, buf, (size_t)(size - got[i]));
            if (r <= 0) {
                printf("{\"ok\": false, \"error\": \"connection %d ended\"}\n", i);
                return 1;
            }
            got[i] += (int)r;
            if (got[i] == size) {
                got[i] = 0;
                trips++;
                if (write(fd, buf, (size_t)size) != size)
                    return 1;
            }
        }
    }
    double dt = now() - t0;
    printf("{\"ok\": true, \"mode\": \"%s\", \"conns\": %d, \"size\": %d, \"seconds\": %.3f, "
           "\"round_trips\": %llu, \"round_trips_per_s\": %.0f, \"bytes\": %llu, \"gbit_per_s\": %.3f}\n",
           mode, conns, size, dt, trips, trips / dt, bytes, bytes * 8 / dt / 1e9);
    return 0;
}
