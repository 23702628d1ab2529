/*
 * pair: two engines connected back to back in one process, through a
 * simulated link that loses, reorders and duplicates frames with a seeded
 * random generator, on a virtual clock.  Nothing touches a network.
 *
 *   pair --bytes N [--loss P] [--reorder P] [--dup P] [--seed S]
 *        transfers N bytes in each direction over one connection at the
 *        same time and checks both streams byte for byte (64-bit FNV-1a of
 *        the generated and the received stream).  Exit 0 on success.
 *   pair --conns K   opens and closes K connections one after another.
 *   pair --idle K    holds K established connections that exchanged a
 *        little data, and reports the heap bytes each costs.
 *
 * A failing seed replays exactly: the clock, the link and the data all come
 * from the seed.  Output is one JSON object on stdout.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <shardsock/engine.h>

#define LINK_DELAY_US 50
#define REORDER_DELAY_US 700
#define PORT 5001

struct rng {
    uint64_t s;
};
static uint64_t rng_next(struct rng *r)
{
    /* xorshift64*: small, fast, and enough for a link simulator */
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1DULL;
}
static double rng_unit(struct rng *r) { return (double)(rng_next(r) >> 11) / 9007199254740992.0; }

/* ---- the link: a min-heap of frames by delivery time ---- */
struct frame {
    uint64_t at;
    uint64_t order; /* ties keep sending order */
    int to;         /* 0: engine A, 1: engine B */
    uint16_t len;
    uint8_t *data;
};
struct link {
    struct frame *heap;
    size_t n, cap;
    uint64_t order;
    struct rng rng;
    double loss, reorder, dup;
    uint64_t sent, lost, reordered, duplicated;
};

static bool before(const struct frame *a, const struct frame *b)
{
    return a->at < b->at || (a->at == b->at && a->order < b->order);
}

static void heap_push(struct link *l, struct frame f)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->heap = realloc(l->heap, l->cap * sizeof *l->heap);
        if (!l->heap)
            abort();
    }
    size_t i = l->n++;
    l->heap[i] = f;
    while (i && before(&l->heap[i], &l->heap[(i - 1) / 2])) {
        struct frame t = l->heap[i];
        l->heap[i] = l->heap[(i - 1) / 2];
        l->heap[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static struct frame heap_pop(struct link *l)
{
    struct frame top = l->heap[0];
    l->heap[0] = l->heap[--l->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1, m = i;
        if (c < l->n && before(&l->heap[c], &l->heap[m]))
            m = c;
        if (c + 1 < l->n && before(&l->heap[c + 1], &l->heap[m]))
            m = c + 1;
        if (m == i)
            break;
        struct frame t = l->heap[i];
        l->heap[i] = l->heap[m];
        l->heap[m] = t;
        i = m;
    }
    return top;
}

struct side {
    struct link *link;
    int to;
    uint64_t *now;
};

static void enqueue(struct link *l, int to, const uint8_t *frame, size_t len, uint64_t at)
{
    struct frame f = {.at = at, .order = l->order++, .to = to, .len = (uint16_t)len, .data = malloc(len)};
    if (!f.data)
        abort();
    memcpy(f.data, frame, len);
    heap_push(l, f);
}

static int tx(void *ctx, const uint8_t *frame, size_t len)
{
    struct side *s = ctx;
    struct link *l = s->link;
    l->sent++;
    if (len > 1514) {
        /* A real link refuses a frame above the MTU: so does this one. */
        fprintf(stderr, "pair: frame of %zu bytes exceeds the 1500-byte MTU\n", len);
        exit(4);
    }
    if (rng_unit(&l->rng) < l->loss) {
        l->lost++;
        return 0;
    }
    uint64_t at = *s->now + LINK_DELAY_US;
    if (rng_unit(&l->rng) < l->reorder) {
        l->reordered++;
        at += REORDER_DELAY_US;
    }
    enqueue(l, s->to, frame, len, at);
    if (rng_unit(&l->rng) < l->dup) {
        l->duplicated++;
        enqueue(l, s->to, frame, len, at + LINK_DELAY_US);
    }
    return 0;
}

/* ---- the two hosts ---- */
struct host {
    struct ss_engine *e;
    struct side side;
    int sid;
    /* what this host sends */
    struct rng data;
    uint64_t to_send, sent, hash_sent;
    bool shut;
    /* what it receives */
    struct rng expect;
    uint64_t received, hash_rcvd;
    bool eof;
    int error;
};

static const uint8_t MAC_A[6] = {2, 0, 0, 0, 0, 0xa};
static const uint8_t MAC_B[6] = {2, 0, 0, 0, 0, 0xb};
static const uint32_t IP_A = 0xc6120002; /* 198.18.0.2 */
static const uint32_t IP_B = 0xc6120003; /* 198.18.0.3 */

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static struct ss_engine *make_engine(const uint8_t *mac, uint32_t ip, struct side *side, uint64_t seed,
                                     uint64_t now)
{
    struct ss_engine_config c;
    ss_engine_config_init(&c);
    memcpy(c.mac, mac, 6);
    c.ip = ip;
    c.secret[0] = seed * 0x9E3779B97F4A7C15ULL + ip;
    c.secret[1] = ~c.secret[0];
    c.tx = tx;
    c.tx_ctx = side;
    struct ss_engine *e = ss_engine_create(&c, now);
    if (!e) {
        perror("ss_engine_create");
        exit(2);
    }
    return e;
}

struct world {
    struct link link;
    uint64_t now;
    struct host a, b;
};

static void world_init(struct world *w, uint64_t seed, double loss, double reorder, double dup, size_t max_socks)
{
    memset(w, 0, sizeof *w);
    (void)max_socks;
    w->now = 1000000;
    w->link.rng.s = seed * 2654435761u + 1;
    w->link.loss = loss;
    w->link.reorder = reorder;
    w->link.dup = dup;
    /* What A sends is delivered to B (1), and back. */
    w->a.side = (struct side){&w->link, 1, &w->now};
    w->b.side = (struct side){&w->link, 0, &w->now};
    w->a.e = make_engine(MAC_A, IP_A, &w->a.side, seed, w->now);
    w->b.e = make_engine(MAC_B, IP_B, &w->b.side, seed, w->now);
    ss_arp_add_static(w->a.e, IP_B, MAC_B);
    ss_arp_add_static(w->b.e, IP_A, MAC_A);
}

static void world_free(struct world *w)
{
    ss_engine_destroy(w->a.e);
    ss_engine_destroy(w->b.e);
    while (w->link.n) {
        struct frame f = heap_pop(&w->link);
        free(f.data);
    }
    free(w->link.heap);
}

/* Delivers what is due, runs the timers, and moves the clock to the next
 * event.  Returns false when nothing will ever happen again. */
/* PAIR_TRACE=1 prints every TCP segment delivered: the replay of a seed. */
static void trace(const struct world *w, const struct frame *f)
{
    const uint8_t *p = f->data;
    if (f->len < 54 || p[12] != 0x08 || p[13] != 0 || p[23] != 6)
        return;
    const uint8_t *t = p + 14 + (p[14] & 0xf) * 4;
    unsigned tot = (unsigned)(p[16] << 8 | p[17]);
    unsigned doff = (unsigned)(t[12] >> 4) * 4;
    unsigned len = tot - (unsigned)(p[14] & 0xf) * 4 - doff;
#define U32(q) ((uint32_t)(q)[0] << 24 | (uint32_t)(q)[1] << 16 | (uint32_t)(q)[2] << 8 | (q)[3])
    fprintf(stderr, "%12.6f %s %c%c%c%c%c seq=%u ack=%u win=%u len=%u\n", w->now / 1e6, f->to ? "A>B" : "B>A",
            t[13] & 2 ? 'S' : '.', t[13] & 16 ? 'A' : '.', t[13] & 1 ? 'F' : '.', t[13] & 4 ? 'R' : '.',
            t[13] & 8 ? 'P' : '.', U32(t + 4), U32(t + 8), (unsigned)(t[14] << 8 | t[15]), len);
#undef U32
}

static bool step(struct world *w)
{
    static int tracing = -1; /* read once; the tool's only global, not the engine's */
    if (tracing < 0)
        tracing = getenv("PAIR_TRACE") != NULL;
    while (w->link.n && w->link.heap[0].at <= w->now) {
        struct frame f = heap_pop(&w->link);
        if (tracing)
            trace(w, &f);
        ss_engine_input(f.to ? w->b.e : w->a.e, f.data, f.len, w->now);
        free(f.data);
    }
    ss_engine_poll(w->a.e, w->now);
    ss_engine_poll(w->b.e, w->now);
    uint64_t next = UINT64_MAX;
    if (w->link.n)
        next = w->link.heap[0].at;
    uint64_t da = ss_engine_next_deadline(w->a.e), db = ss_engine_next_deadline(w->b.e);
    if (da < next)
        next = da;
    if (db < next)
        next = db;
    if (next == UINT64_MAX)
        return false;
    w->now = next > w->now ? next : w->now + 1;
    return true;
}

/* The stream a host sends: byte k is a keyed function of k, so any write,
 * partial or not, continues it exactly. */
static void fill(uint8_t *buf, uint64_t key, uint64_t off, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t z = key + 0x9E3779B97F4A7C15ULL * ((off + i) / 8 + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        buf[i] = (uint8_t)(z >> (8 * ((off + i) % 8)));
    }
}

static void pump(struct host *h, uint64_t now)
{
    uint8_t buf[65536];
    /* send */
    /* Generating the stream costs time: only when the engine says writable. */
    while (h->sid >= 0 && h->sent < h->to_send && (ss_tcp_poll(h->e, h->sid) & SS_EV_OUT)) {
        size_t n = sizeof buf;
        if (h->to_send - h->sent < n)
            n = (size_t)(h->to_send - h->sent);
        fill(buf, h->data.s, h->sent, n);
        ssize_t r = ss_tcp_send(h->e, h->sid, buf, n, now);
        if (r <= 0) {
            if (r < 0 && r != -EAGAIN)
                h->error = (int)-r;
            break;
        }
        h->hash_sent = fnv(h->hash_sent, buf, (size_t)r);
        h->sent += (uint64_t)r;
    }
    if (h->sid >= 0 && h->sent == h->to_send && !h->shut) {
        ss_tcp_shutdown(h->e, h->sid, 1, now);
        h->shut = true;
    }
    /* receive */
    while (h->sid >= 0 && !h->eof) {
        ssize_t r = ss_tcp_recv(h->e, h->sid, buf, sizeof buf, now);
        if (r == -EAGAIN)
            break;
        if (r < 0) {
            h->error = (int)-r;
            h->eof = true;
            break;
        }
        if (r == 0) {
            h->eof = true;
            break;
        }
        h->hash_rcvd = fnv(h->hash_rcvd, buf, (size_t)r);
        h->received += (uint64_t)r;
    }
}

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t ctr_sum(struct ss_engine *e, size_t off)
{
    return *(const uint64_t *)((const char *)ss_engine_counters(e) + off);
}
#define CTR(w, name) (ctr_sum((w)->a.e, offsetof(struct ss_counters, name)) + ctr_sum((w)->b.e, offsetof(struct ss_counters, name)))

static int connect_pair(struct world *w, int lsid)
{
    w->a.sid = ss_tcp_socket(w->a.e);
    int r = ss_tcp_connect(w->a.e, w->a.sid, IP_B, PORT, w->now);
    if (r != -EINPROGRESS) {
        fprintf(stderr, "pair: connect: %d\n", r);
        return -1;
    }
    w->b.sid = -1;
    for (int i = 0; i < 1000000 && w->b.sid < 0; i++) {
        bool more = step(w);
        w->b.sid = ss_tcp_accept(w->b.e, lsid, w->now);
        if (!more)
            break;
    }
    return w->b.sid >= 0 ? 0 : -1;
}

static int transfer(uint64_t bytes, uint64_t seed, double loss, double reorder, double dup, double vlimit_s)
{
    struct world w;
    world_init(&w, seed, loss, reorder, dup, 16);
    int lsid = ss_tcp_socket(w.b.e);
    ss_tcp_bind(w.b.e, lsid, 0, PORT);
    ss_tcp_listen(w.b.e, lsid, 16);
    double t0 = wall();
    uint64_t start = w.now;
    if (connect_pair(&w, lsid) < 0) {
        printf("{\"ok\": false, \"error\": \"handshake failed\"}\n");
        world_free(&w);
        return 1;
    }
    struct host *hs[2] = {&w.a, &w.b};
    for (int i = 0; i < 2; i++) {
        hs[i]->to_send = bytes;
        hs[i]->data.s = seed * 31 + 7 + (uint64_t)i;
        hs[i]->expect.s = seed * 31 + 7 + (uint64_t)(1 - i);
        hs[i]->hash_sent = hs[i]->hash_rcvd = 0xcbf29ce484222325ULL;
    }
    bool ok = true;
    for (;;) {
        pump(&w.a, w.now);
        pump(&w.b, w.now);
        if (w.a.eof && w.b.eof)
            break;
        if (w.a.error || w.b.error || (double)(w.now - start) / 1e6 > vlimit_s) {
            ok = false;
            break;
        }
        if (!step(&w)) {
            pump(&w.a, w.now);
            pump(&w.b, w.now);
            if (!(w.a.eof && w.b.eof)) {
                /* Nothing in flight and no timer armed, yet the transfer is
                 * not over: a liveness bug.  Say where each side stands. */
                struct host *hh[2] = {&w.a, &w.b};
                for (int i = 0; i < 2; i++) {
                    struct ss_tcp_info ti;
                    ss_tcp_info(hh[i]->e, hh[i]->sid, &ti);
                    fprintf(stderr, "pair: stalled: %c state=%s snd_una=%u snd_nxt=%u snd_wnd=%u queued=%u "
                            "rcv_nxt=%u rcv_wnd=%u rcv_queued=%u cwnd=%u\n", 'A' + i, ss_tcp_state_name(ti.state),
                            ti.snd_una, ti.snd_nxt, ti.snd_wnd, ti.snd_queued, ti.rcv_nxt, ti.rcv_wnd,
                            ti.rcv_queued, ti.cwnd);
                }
                ok = false;
            }
            break;
        }
    }
    double secs = wall() - t0;
    ok = ok && w.a.received == bytes && w.b.received == bytes && w.a.hash_rcvd == w.b.hash_sent &&
         w.b.hash_rcvd == w.a.hash_sent;
    ss_tcp_close(w.a.e, w.a.sid, w.now);
    ss_tcp_close(w.b.e, w.b.sid, w.now);
    printf("{\"ok\": %s, \"bytes_each_way\": %" PRIu64 ", \"a_received\": %" PRIu64 ", \"b_received\": %" PRIu64
           ", \"errors\": [%d, %d], \"hash_a_to_b\": [\"%016" PRIx64 "\", \"%016" PRIx64 "\"]"
           ", \"virtual_s\": %.3f, \"wall_s\": %.3f, \"frames\": %" PRIu64 ", \"lost\": %" PRIu64
           ", \"reordered\": %" PRIu64 ", \"duplicated\": %" PRIu64 ", \"tcp_segments\": %" PRIu64
           ", \"retransmits\": %" PRIu64 ", \"fast_retransmits\": %" PRIu64 ", \"rto_expired\": %" PRIu64
           ", \"ooo_segments\": %" PRIu64 ", \"sack_recoveries\": %" PRIu64 ", \"seed\": %" PRIu64 "}\n",
           ok ? "true" : "false", bytes, w.b.received, w.a.received, w.a.error, w.b.error, w.a.hash_sent,
           w.b.hash_rcvd, (double)(w.now - start) / 1e6, secs, w.link.sent, w.link.lost, w.link.reordered,
           w.link.duplicated, CTR(&w, tcp_tx_segments), CTR(&w, tcp_retransmits), CTR(&w, tcp_fast_retransmits),
           CTR(&w, tcp_rto_expired), CTR(&w, tcp_ooo_segments), CTR(&w, tcp_sack_recoveries), seed);
    world_free(&w);
    return ok ? 0 : 1;
}

/* K connections opened, one byte each way, closed; for the per-connection
 * cost.  The clock jumps past TIME-WAIT so pairs never pile up. */
static int churn(uint64_t conns, uint64_t seed)
{
    struct world w;
    world_init(&w, seed, 0, 0, 0, 16);
    int lsid = ss_tcp_socket(w.b.e);
    ss_tcp_bind(w.b.e, lsid, 0, PORT);
    ss_tcp_listen(w.b.e, lsid, 128);
    uint64_t done = 0;
    double t0 = wall();
    for (uint64_t i = 0; i < conns; i++) {
        if (connect_pair(&w, lsid) < 0)
            break;
        ss_tcp_close(w.a.e, w.a.sid, w.now);
        ss_tcp_close(w.b.e, w.b.sid, w.now);
        for (int k = 0; k < 100 && step(&w); k++)
            if (!w.link.n)
                break;
        done++;
    }
    printf("{\"ok\": %s, \"connections\": %" PRIu64 ", \"wall_s\": %.3f, \"tcp_segments\": %" PRIu64 "}\n",
           done == conns ? "true" : "false", done, wall() - t0, CTR(&w, tcp_tx_segments));
    world_free(&w);
    return done == conns ? 0 : 1;
}

/* Heap bytes per idle established connection, both ends together and apart. */
static int idle(uint64_t conns, uint64_t seed)
{
    struct world w;
    world_init(&w, seed, 0, 0, 0, conns * 2 + 16);
    int lsid = ss_tcp_socket(w.b.e);
    ss_tcp_bind(w.b.e, lsid, 0, PORT);
    ss_tcp_listen(w.b.e, lsid, 4096);
    while (w.link.n)
        step(&w);
    struct mallinfo2 m0 = mallinfo2();
    uint64_t made = 0;
    for (uint64_t i = 0; i < conns; i++) {
        if (connect_pair(&w, lsid) < 0)
            break;
        uint8_t b[64] = {0};
        ss_tcp_send(w.a.e, w.a.sid, b, sizeof b, w.now);
        while (w.link.n)
            step(&w);
        ss_tcp_recv(w.b.e, w.b.sid, b, sizeof b, w.now);
        ss_tcp_send(w.b.e, w.b.sid, b, sizeof b, w.now);
        while (w.link.n)
            step(&w);
        ss_tcp_recv(w.a.e, w.a.sid, b, sizeof b, w.now);
        made++;
    }
    /* Let delayed ACKs and timers settle. */
    for (int k = 0; k < 1000 && step(&w) && w.now < 1000000 + 3600000000ull; k++)
        ;
    struct mallinfo2 m1 = mallinfo2();
    double per_pair = (double)(m1.uordblks - m0.uordblks) / (double)(made ? made : 1);
    printf("{\"ok\": %s, \"connections\": %" PRIu64 ", \"heap_bytes_per_connection_both_ends\": %.0f"
           ", \"heap_bytes_per_connection_end\": %.0f}\n",
           made == conns ? "true" : "false", made, per_pair, per_pair / 2);
    world_free(&w);
    return made == conns ? 0 : 1;
}

int main(int argc, char **argv)
{
    uint64_t bytes = 0, conns = 0, idles = 0, seed = 1;
    double loss = 0, reorder = 0, dup = 0, vlimit = 36000;
    static const struct option opts[] = {
        {"bytes", required_argument, 0, 'b'}, {"loss", required_argument, 0, 'l'},
        {"reorder", required_argument, 0, 'r'}, {"dup", required_argument, 0, 'd'},
        {"seed", required_argument, 0, 's'}, {"conns", required_argument, 0, 'c'},
        {"idle", required_argument, 0, 'i'}, {"virtual-limit", required_argument, 0, 'v'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'b': bytes = strtoull(optarg, NULL, 10); break;
        case 'l': loss = atof(optarg); break;
        case 'r': reorder = atof(optarg); break;
        case 'd': dup = atof(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'c': conns = strtoull(optarg, NULL, 10); break;
        case 'i': idles = strtoull(optarg, NULL, 10); break;
        case 'v': vlimit = atof(optarg); break;
        default:
            fprintf(stderr, "usage: pair --bytes N [--loss P --reorder P --dup P --seed S] | --conns K | --idle K\n");
            return 2;
        }
    }
    if (conns)
        return churn(conns, seed);
    if (idles)
        return idle(idles, seed);
    return transfer(bytes, seed, loss, reorder, dup, vlimit);
}
