/*
 * Forwarding between the instances of a group (fwd.h; the shared layout and
 * its rules are in shardsock/stats.h).
 *
 * Why it exists: a backend may deliver a segment of a connection to an
 * instance that does not hold it.  On veth and on NICs whose RSS we do not
 * program, Linux picks the transmit queue per socket and re-picks it after
 * a timeout (sk_rethink_txhash), so a retransmission can arrive on another
 * queue.  Answering it with a reset would kill a healthy connection; the
 * receiving instance passes the frame to the owner instead.
 */
#include "fwd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t flow_key(uint32_t rip, uint16_t rport, uint16_t lport)
{
    return (uint64_t)rip << 32 | (uint64_t)rport << 16 | lport;
}

static uint32_t flow_slot(const struct ss_fwd_region *r, uint64_t key, uint32_t probe)
{
    /* keyed mix, as the engine's own flow table (tcp.c flow_hash) */
    uint64_t h = key ^ r->secret[0];
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33 ^ r->secret[1];
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (uint32_t)(h + probe) & (SS_FLOW_ENTRIES - 1);
}

static struct ss_fwd_ring *ring(const struct ss_fwd *f, int src, int dst)
{
    return &f->r->ring[src * f->n + dst];
}

int ss_fwd_open(struct ss_fwd *f, const char *path, int self, int n, const char *doorbells,
                struct ss_counters *ctr, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    f->self = self;
    f->n = n;
    f->ctr = ctr;
    if (n > SS_FWD_MAX_INSTANCES) {
        snprintf(err, errlen, "--instances: at most %d instances in a group", SS_FWD_MAX_INSTANCES);
        return -1;
    }
    const char *p = doorbells;
    for (int k = 0; k < n; k++) {
        char *end;
        long fd = p ? strtol(p, &end, 10) : -1;
        if (!p || end == p || fd < 0 || (k < n - 1 ? *end != ',' : *end != 0)) {
            snprintf(err, errlen, "--doorbells: needs %d eventfd numbers, comma-separated", n);
            return -1;
        }
        f->doorbell[k] = (int)fd;
        p = end + 1;
    }
    f->size = sizeof(struct ss_fwd_region) + (size_t)n * (size_t)n * sizeof(struct ss_fwd_ring);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || (size_t)st.st_size != f->size) {
        snprintf(err, errlen, "%s: missing or not made for %d instances (%s); start groups with 'shardsock up'",
                 path, n, fd < 0 ? strerror(errno) : "wrong size");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    f->r = mmap(NULL, f->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (f->r == MAP_FAILED) {
        f->r = NULL;
        snprintf(err, errlen, "%s: cannot map it: %s", path, strerror(errno));
        return -1;
    }
    if (__atomic_load_n(&f->r->magic, __ATOMIC_ACQUIRE) != SS_FWD_MAGIC || f->r->version != SS_FWD_VERSION ||
        f->r->ninstances != (uint32_t)n) {
        snprintf(err, errlen, "%s: not a forwarding region of version %d for %d instances", path, SS_FWD_VERSION,
                 n);
        ss_fwd_close(f);
        return -1;
    }
    return 0;
}

void ss_fwd_close(struct ss_fwd *f)
{
    if (f->r)
        munmap(f->r, f->size);
    f->r = NULL;
}

/* ---- the flow directory ---- */

void ss_fwd_publish(void *ctx, uint32_t rip, uint16_t rport, uint16_t lport, int add)
{
    struct ss_fwd *f = ctx;
    uint64_t key = flow_key(rip, rport, lport);
    uint32_t me = (uint32_t)f->self + 1;
    for (uint32_t i = 0; i < SS_FLOW_PROBE; i++) {
        struct ss_flow_entry *x = &f->r->flows[flow_slot(f->r, key, i)];
        uint64_t cur = __atomic_load_n(&x->key, __ATOMIC_ACQUIRE);
        if (!add) {
            if (cur == 0)
                return; /* never published (the directory was full) */
            if (cur == key && __atomic_load_n(&x->owner, __ATOMIC_ACQUIRE) == me) {
                __atomic_store_n(&x->owner, 0, __ATOMIC_RELEASE);
                /* A tombstone, never a free entry: another flow's chain may
                 * pass through this one. */
                __atomic_store_n(&x->key, SS_FLOW_TOMBSTONE, __ATOMIC_RELEASE);
                return;
            }
            continue;
        }
        if (cur == key) {
            /* Left by an instance that died, or the same pair reopened
             * here: this instance holds it now. */
            __atomic_store_n(&x->owner, me, __ATOMIC_RELEASE);
            return;
        }
        if ((cur == 0 || cur == SS_FLOW_TOMBSTONE) &&
            __atomic_compare_exchange_n(&x->key, &cur, key, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&x->owner, me, __ATOMIC_RELEASE);
            return;
        }
    }
    if (add)
        f->ctr->fwd_dir_full++;
}

int ss_fwd_owner(void *ctx, uint32_t rip, uint16_t rport, uint16_t lport)
{
    struct ss_fwd *f = ctx;
    uint64_t key = flow_key(rip, rport, lport);
    for (uint32_t i = 0; i < SS_FLOW_PROBE; i++) {
        struct ss_flow_entry *x = &f->r->flows[flow_slot(f->r, key, i)];
        uint64_t cur = __atomic_load_n(&x->key, __ATOMIC_ACQUIRE);
        if (cur == 0)
            return -1;
        if (cur != key)
            continue;
        uint32_t owner = __atomic_load_n(&x->owner, __ATOMIC_ACQUIRE);
        if (owner == 0 || owner > (uint32_t)f->n || (int)owner - 1 == f->self)
            return -1;
        return (int)owner - 1;
    }
    return -1;
}

/* ---- the listener map ---- */

void ss_fwd_listen_publish(void *ctx, uint16_t port, int state)
{
    struct ss_fwd *f = ctx;
    uint64_t bit = 1ull << f->self;
    if (state >= 1)
        __atomic_fetch_or(&f->r->listeners[port], bit, __ATOMIC_ACQ_REL);
    else
        __atomic_fetch_and(&f->r->listeners[port], ~bit, __ATOMIC_ACQ_REL);
    if (state == 2)
        __atomic_fetch_or(&f->r->active[port], bit, __ATOMIC_ACQ_REL);
    else
        __atomic_fetch_and(&f->r->active[port], ~bit, __ATOMIC_ACQ_REL);
    /* the processes of every instance learn that their answers about
     * ports went stale: a sleeping instance wakes to tell its own */
    __atomic_add_fetch(&f->r->listen_gen, 1, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int k = 0; k < f->n; k++) {
        struct ss_fwd_inbox *in = &f->r->inbox[k];
        if (k != f->self && __atomic_load_n(&in->sleeping, __ATOMIC_RELAXED) &&
            __atomic_exchange_n(&in->sleeping, 0, __ATOMIC_ACQ_REL)) {
            uint64_t one = 1;
            if (write(f->doorbell[k], &one, sizeof one) != sizeof one)
                f->ctr->dev_tx_errors++;
        }
    }
}

int ss_fwd_listen_owner(void *ctx, uint32_t rip, uint16_t rport, uint16_t lport, int active)
{
    struct ss_fwd *f = ctx;
    uint64_t set = __atomic_load_n(active ? &f->r->active[lport] : &f->r->listeners[lport], __ATOMIC_ACQUIRE) &
                   ~(1ull << f->self);
    if (!active) {
        /* any listener will do; one in use before one that is not */
        uint64_t used = __atomic_load_n(&f->r->active[lport], __ATOMIC_ACQUIRE) & set;
        if (used)
            set = used;
    }
    int n = __builtin_popcountll(set);
    if (!n)
        return -1;
    /* spread the connections of several peers over the listening instances */
    uint32_t pick = (rip * 2654435761u ^ rport) % (uint32_t)n;
    while (pick--)
        set &= set - 1;
    return __builtin_ctzll(set);
}

/* ---- the rings ---- */

int ss_fwd_send(void *ctx, int owner, const uint8_t *frame, size_t len)
{
    struct ss_fwd *f = ctx;
    if (owner < 0 || owner >= f->n || owner == f->self || len > SS_FWD_FRAME_MAX)
        return -1;
    struct ss_fwd_ring *q = ring(f, f->self, owner);
    uint32_t head = q->head; /* only this instance writes it */
    if (head - __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE) >= SS_FWD_SLOTS)
        return -1;
    struct ss_fwd_slot *s = &q->slot[head % SS_FWD_SLOTS];
    s->len = (uint32_t)len;
    memcpy(s->frame, frame, len);
    __atomic_store_n(&q->head, head + 1, __ATOMIC_RELEASE);
    /* Pairs with the fence in ss_fwd_may_sleep: either the owner sees the
     * frame before it sleeps, or this sees its flag and wakes it. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    struct ss_fwd_inbox *in = &f->r->inbox[owner];
    if (__atomic_load_n(&in->sleeping, __ATOMIC_RELAXED) && __atomic_exchange_n(&in->sleeping, 0, __ATOMIC_ACQ_REL)) {
        uint64_t one = 1;
        if (write(f->doorbell[owner], &one, sizeof one) != sizeof one)
            f->ctr->dev_tx_errors++;
    }
    return 0;
}

int ss_fwd_drain(struct ss_fwd *f, struct ss_engine *e, uint64_t now_us, int budget)
{
    int done = 0;
    for (int src = 0; src < f->n; src++) {
        if (src == f->self)
            continue;
        struct ss_fwd_ring *q = ring(f, src, f->self);
        uint32_t tail = q->tail; /* only this instance writes it */
        uint32_t head = __atomic_load_n(&q->head, __ATOMIC_ACQUIRE);
        for (int k = 0; tail != head && k < budget; k++, tail++) {
            const struct ss_fwd_slot *s = &q->slot[tail % SS_FWD_SLOTS];
            uint32_t len = s->len;
            if (len <= SS_FWD_FRAME_MAX) /* another instance's word is checked too */
                ss_engine_input_forwarded(e, s->frame, len, now_us);
            done++;
        }
        __atomic_store_n(&q->tail, tail, __ATOMIC_RELEASE);
    }
    return done;
}

bool ss_fwd_may_sleep(struct ss_fwd *f)
{
    __atomic_store_n(&f->r->inbox[f->self].sleeping, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int src = 0; src < f->n; src++) {
        if (src == f->self)
            continue;
        struct ss_fwd_ring *q = ring(f, src, f->self);
        if (__atomic_load_n(&q->head, __ATOMIC_ACQUIRE) != q->tail) {
            __atomic_store_n(&f->r->inbox[f->self].sleeping, 0, __ATOMIC_RELAXED);
            return false;
        }
    }
    return true;
}

void ss_fwd_awake(struct ss_fwd *f)
{
    uint64_t x;
    __atomic_store_n(&f->r->inbox[f->self].sleeping, 0, __ATOMIC_RELAXED);
    if (read(f->doorbell[f->self], &x, sizeof x) < 0 && errno != EAGAIN)
        f->ctr->dev_rx_errors++;
}
