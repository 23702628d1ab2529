/*
 * linkem: a link emulator in user space, for kernels built without netem
 * (this one has no sch_netem, fq or etf, so the kernel cannot delay or
 * reorder).  It bridges two interfaces of a namespace frame by frame through
 * packet sockets and impairs each direction the way netem would:
 *
 *   --delay-ms D    every frame waits D ms (netem "delay D")
 *   --jitter-ms J   plus a uniform -J..+J ms (netem "delay D J"; frames may
 *                   then overtake each other, as with netem's jitter)
 *   --loss P        drops a frame with probability P (netem "loss P")
 *   --dup P         sends a frame twice with probability P ("duplicate P")
 *   --reorder P     sends a frame at once, ahead of the delayed ones, with
 *                   probability P ("reorder P": needs a delay)
 *   --seed S        the random sequence, so a failing run can be repeated
 *   --limit N       frames waiting per direction (netem "limit", 1000)
 *
 * The interfaces carry no address in their namespace, so the namespace's
 * own kernel answers nothing: frames go only through here.  On SIGTERM or
 * SIGINT it prints one JSON object of what it did to each direction and
 * exits 0.  It prints "ready" on stdout once both sockets are bound.
 *
 * usage: linkem IF_A IF_B [options]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_MAX 65536

struct frame {
    uint64_t due_us, order; /* order: arrival number, breaks ties FIFO */
    uint32_t len;
    uint8_t *data;
};

struct stats {
    uint64_t frames, lost, duplicated, reordered, sent, overflow, send_errors, sent_early;
};

struct dir {
    const char *name;
    int in, out; /* sockets */
    int out_ifindex;
    struct frame *heap; /* min-heap by (due_us, order) */
    uint32_t n, cap;
    uint64_t arrivals, max_sent_order;
    struct stats st;
};

struct conf {
    double delay_ms, jitter_ms, loss, dup, reorder;
    uint32_t limit;
    uint64_t seed;
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* xorshift64*: quick, and seeded for repeatable runs */
static double uniform(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (double)((*s * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static int before(const struct frame *a, const struct frame *b)
{
    return a->due_us < b->due_us || (a->due_us == b->due_us && a->order < b->order);
}

static void heap_push(struct dir *d, struct frame f)
{
    uint32_t i = d->n++;
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!before(&f, &d->heap[p]))
            break;
        d->heap[i] = d->heap[p];
        i = p;
    }
    d->heap[i] = f;
}

static struct frame heap_pop(struct dir *d)
{
    struct frame top = d->heap[0], last = d->heap[--d->n];
    uint32_t i = 0;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= d->n)
            break;
        if (c + 1 < d->n && before(&d->heap[c + 1], &d->heap[c]))
            c++;
        if (!before(&d->heap[c], &last))
            break;
        d->heap[i] = d->heap[c];
        i = c;
    }
    if (d->n)
        d->heap[i] = last;
    return top;
}

static int open_port(const char *ifname, int *ifindex)
{
    *ifindex = (int)if_nametoindex(ifname);
    if (!*ifindex) {
        fprintf(stderr, "linkem: no interface %s here\n", ifname);
        exit(2);
    }
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
    int one = 1, big = 8 << 20;
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = *ifindex};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("linkem: packet socket");
        exit(2);
    }
    /* our own transmissions are not input; big buffers ride out bursts */
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
    return fd;
}

static void enqueue(struct dir *d, const struct conf *c, uint64_t *rng, const uint8_t *buf, uint32_t len,
                    uint64_t t)
{
    d->st.frames++;
    uint64_t order = ++d->arrivals;
    if (uniform(rng) < c->loss) {
        d->st.lost++;
        return;
    }
    int copies = uniform(rng) < c->dup ? 2 : 1;
    if (copies == 2)
        d->st.duplicated++;
    for (int k = 0; k < copies; k++) {
        double ms = c->delay_ms;
        if (c->reorder > 0 && uniform(rng) < c->reorder) {
            ms = 0;
            d->st.sent_early++;
        } else if (c->jitter_ms > 0)
            ms += (uniform(rng) * 2 - 1) * c->jitter_ms;
        if (ms < 0)
            ms = 0;
        if (d->n >= c->limit) {
            d->st.overflow++;
            return;
        }
        if (d->n == d->cap) {
            d->cap = d->cap ? d->cap * 2 : 1024;
            d->heap = realloc(d->heap, d->cap * sizeof *d->heap);
        }
        struct frame f = {.due_us = t + (uint64_t)(ms * 1000), .order = order, .len = len, .data = malloc(len)};
        if (!d->heap || !f.data) {
            fprintf(stderr, "linkem: out of memory\n");
            exit(1);
        }
        memcpy(f.data, buf, len);
        heap_push(d, f);
    }
}

static void release_due(struct dir *d, uint64_t t)
{
    while (d->n && d->heap[0].due_us <= t) {
        struct frame f = heap_pop(d);
        struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_ifindex = d->out_ifindex, .sll_halen = 6};
        memcpy(a.sll_addr, f.data, 6);
        if (sendto(d->out, f.data, f.len, 0, (struct sockaddr *)&a, sizeof a) == (ssize_t)f.len) {
            d->st.sent++;
            if (f.order < d->max_sent_order)
                d->st.reordered++;
            else
                d->max_sent_order = f.order;
        } else {
            d->st.send_errors++;
        }
        free(f.data);
    }
}

static void print_stats(const struct dir *d, const char *sep)
{
    printf("\"%s\": {\"frames\": %llu, \"lost\": %llu, \"duplicated\": %llu, \"sent_early\": %llu, "
           "\"reordered\": %llu, \"sent\": %llu, \"overflow\": %llu, \"send_errors\": %llu}%s",
           d->name, (unsigned long long)d->st.frames, (unsigned long long)d->st.lost,
           (unsigned long long)d->st.duplicated, (unsigned long long)d->st.sent_early,
           (unsigned long long)d->st.reordered, (unsigned long long)d->st.sent, (unsigned long long)d->st.overflow,
           (unsigned long long)d->st.send_errors, sep);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"delay-ms", 1, 0, 'd'}, {"jitter-ms", 1, 0, 'j'}, {"loss", 1, 0, 'l'},
                                         {"dup", 1, 0, 'u'},      {"reorder", 1, 0, 'r'},   {"seed", 1, 0, 's'},
                                         {"limit", 1, 0, 'L'},    {0, 0, 0, 0}};
    struct conf c = {.limit = 1000, .seed = 1};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'd': c.delay_ms = atof(optarg); break;
        case 'j': c.jitter_ms = atof(optarg); break;
        case 'l': c.loss = atof(optarg); break;
        case 'u': c.dup = atof(optarg); break;
        case 'r': c.reorder = atof(optarg); break;
        case 's': c.seed = strtoull(optarg, NULL, 0); break;
        case 'L': c.limit = (uint32_t)atoi(optarg); break;
        default:
            fprintf(stderr, "usage: linkem IF_A IF_B [--delay-ms D] [--jitter-ms J] [--loss P] [--dup P]\n"
                            "              [--reorder P] [--seed S] [--limit N]\n");
            return 2;
        }
    }
    if (argc - optind != 2 || c.loss < 0 || c.loss > 1 || c.dup < 0 || c.dup > 1 || c.reorder < 0 ||
        c.reorder > 1 || c.delay_ms < 0 || c.jitter_ms < 0 || !c.limit) {
        fprintf(stderr, "linkem: needs two interfaces; probabilities in 0..1, times >= 0, limit > 0\n");
        return 2;
    }
    uint64_t rng = c.seed ? c.seed : 1;
    int ia, ib;
    int a = open_port(argv[optind], &ia), b = open_port(argv[optind + 1], &ib);
    struct dir dirs[2] = {{.name = "a_to_b", .in = a, .out = b, .out_ifindex = ib},
                          {.name = "b_to_a", .in = b, .out = a, .out_ifindex = ia}};
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    printf("ready\n");
    fflush(stdout);
    static uint8_t buf[FRAME_MAX];
    while (!stop) {
        uint64_t t = now_us(), next = UINT64_MAX;
        for (int k = 0; k < 2; k++) {
            release_due(&dirs[k], t);
            if (dirs[k].n && dirs[k].heap[0].due_us < next)
                next = dirs[k].heap[0].due_us;
        }
        struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
        struct timespec ts = {1, 0};
        if (next != UINT64_MAX) {
            uint64_t wait = next > t ? next - t : 0;
            ts.tv_sec = (time_t)(wait / 1000000);
            ts.tv_nsec = (long)(wait % 1000000) * 1000;
        }
        if (ppoll(p, 2, &ts, NULL) < 0 && errno != EINTR)
            break;
        for (int k = 0; k < 2; k++) {
            /* a bounded burst per socket, so neither direction starves */
            for (int burst = 0; burst < 256; burst++) {
                ssize_t n = recv(dirs[k].in, buf, sizeof buf, 0);
                if (n <= 0)
                    break;
                enqueue(&dirs[k], &c, &rng, buf, (uint32_t)n, now_us());
            }
        }
    }
    printf("{");
    print_stats(&dirs[0], ", ");
    print_stats(&dirs[1], "");
    printf("}\n");
    return 0;
}
