/*
 * ring_stress: the channel's ring protocol (shardsock/ring.h) under threads,
 * with nothing else around it: the library's threads and the instance are
 * threads of this one process here, and the rings are small so that they
 * wrap and fill all the time.
 *
 *   cells   P producers put requests on a cell ring, some waiting for their
 *           answer and freeing the cell, some posted (the consumer frees
 *           them); one consumer takes them.  Every producer's requests must
 *           arrive once each, in its order, and every answer must be the
 *           answer to its own request.  Both sides sleep on futexes as the
 *           library and the instance do (ss_sleeper_*, ss_wake_needed): a
 *           lost wake-up hangs, and the alarm fails the run.
 *   index   one producer pushes numbers on an index ring, C consumers take
 *           them at once: each number must be taken exactly once.
 *
 * Usage: ring_stress [SECONDS-LIMIT]; prints one line per part and exits 0,
 * or names the first broken rule and exits 1.  Built three ways by the
 * Makefile: plain, with AddressSanitizer+UBSan, and with ThreadSanitizer.
 */
#include <shardsock/ring.h>

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NCELLS 8
#define PRODUCERS 6
#define PER_PRODUCER 100000
#define NIDX 16
#define CONSUMERS 4
#define IDX_VALUES 1000000

struct cell {
    uint32_t seq;
    uint32_t flags; /* 1: posted */
    uint64_t a0;
    uint32_t done;
    uint32_t _pad;
    uint64_t r0;
};

static struct {
    struct ss_cellq q;
    struct cell cells[NCELLS];
    uint32_t inst_sleeping, inst_bell;            /* the consumer's flag and futex word */
    uint32_t app_sleeping, app_wake_seq;          /* the producers' */
} R;

static void fail(const char *why, unsigned long long a, unsigned long long b)
{
    fprintf(stderr, "ring_stress: %s (%llu, %llu)\n", why, a, b);
    exit(1);
}

static long futex(uint32_t *w, int op, uint32_t v, const struct timespec *t)
{
    return syscall(SYS_futex, w, op, v, t, NULL, 0);
}

/* ---- the cell ring ---- */

static void wake_consumer(void)
{
    if (ss_wake_needed(&R.inst_sleeping)) {
        __atomic_add_fetch(&R.inst_bell, 1, __ATOMIC_RELEASE);
        futex(&R.inst_bell, FUTEX_WAKE, 1, NULL);
    }
}

/* The producers' wait, as the library's (await_instance): spin, then sleep
 * on the wake sequence; a 1 ms bound only where the library has one (a
 * full ring, whose cells other producers may free without waking anyone). */
static void producer_wait(bool (*done)(void *), void *arg, bool bounded)
{
    for (int spins = 0;; spins++) {
        if (done(arg))
            return;
        if (spins < 200)
            continue;
        uint32_t seen = __atomic_load_n(&R.app_wake_seq, __ATOMIC_ACQUIRE);
        ss_sleeper_enter(&R.app_sleeping);
        if (!done(arg)) {
            struct timespec ms = {0, 1000000};
            futex(&R.app_wake_seq, FUTEX_WAIT, seen, bounded ? &ms : NULL);
        }
        ss_sleeper_leave(&R.app_sleeping);
    }
}

/* done() is asked again after it said true (the library's too): a claim
 * happens once. */
struct claim {
    uint32_t pos;
    bool got;
};
static bool try_claim(void *arg)
{
    struct claim *c = arg;
    return c->got || (c->got = ss_cellq_claim(&R.q, R.cells, sizeof R.cells[0], NCELLS, &c->pos));
}
static bool is_answered(void *arg)
{
    uint32_t pos = *(uint32_t *)arg;
    return ss_answered(&R.cells[pos & (NCELLS - 1)].done, pos);
}

static void *producer(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    unsigned seed = (unsigned)id * 7919u + 1;
    for (uint64_t i = 0; i < PER_PRODUCER; i++) {
        struct claim c = {0, false};
        producer_wait(try_claim, &c, true);
        struct cell *x = &R.cells[c.pos & (NCELLS - 1)];
        bool posted = rand_r(&seed) & 1;
        x->flags = posted;
        x->a0 = id << 32 | i;
        ss_cellq_publish(R.cells, sizeof R.cells[0], NCELLS, c.pos);
        wake_consumer();
        if (posted)
            continue;
        producer_wait(is_answered, &c.pos, false);
        if (x->r0 != ((id << 32 | i) ^ 0x5a5a5a5a5a5aull))
            fail("an answer to another request", x->r0, id << 32 | i);
        ss_cellq_free(R.cells, sizeof R.cells[0], NCELLS, c.pos);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    uint64_t next[PRODUCERS] = {0}, total = 0, sleeps = 0;
    uint32_t tail = 0;
    while (total < (uint64_t)PRODUCERS * PER_PRODUCER) {
        if (!ss_cellq_ready(R.cells, sizeof R.cells[0], NCELLS, tail)) {
            uint32_t bell = __atomic_load_n(&R.inst_bell, __ATOMIC_ACQUIRE);
            ss_sleeper_set(&R.inst_sleeping, true);
            if (!ss_cellq_ready(R.cells, sizeof R.cells[0], NCELLS, tail)) {
                futex(&R.inst_bell, FUTEX_WAIT, bell, NULL);
                sleeps++;
            }
            ss_sleeper_set(&R.inst_sleeping, false);
            continue;
        }
        struct cell *x = &R.cells[tail & (NCELLS - 1)];
        uint64_t a0 = x->a0;
        uint32_t p = (uint32_t)(a0 >> 32), i = (uint32_t)a0;
        if (p >= PRODUCERS || i != next[p])
            fail("a producer's requests out of order, lost or doubled", p, i);
        next[p]++;
        total++;
        if (x->flags) {
            ss_cellq_free(R.cells, sizeof R.cells[0], NCELLS, tail);
        } else {
            x->r0 = a0 ^ 0x5a5a5a5a5a5aull;
            ss_answer(&x->done, tail);
        }
        tail++;
        ss_cellq_taken(&R.q, tail);
        /* the instance's flush: wake the sleepers, who look for themselves */
        if (ss_wake_needed(&R.app_sleeping)) {
            __atomic_add_fetch(&R.app_wake_seq, 1, __ATOMIC_RELEASE);
            futex(&R.app_wake_seq, FUTEX_WAKE, INT_MAX, NULL);
        }
    }
    printf("cells: %d producers x %d requests through %d cells, in order, each once; consumer slept %llu times\n",
           PRODUCERS, PER_PRODUCER, NCELLS, (unsigned long long)sleeps);
    return NULL;
}

/* ---- the index ring ---- */

static struct {
    struct ss_idxq q;
    uint32_t ents[NIDX];
    uint32_t taken[IDX_VALUES];
    uint32_t done;
} I;

static void *taker(void *arg)
{
    (void)arg;
    uint32_t v;
    for (;;) {
        if (ss_idxq_take(&I.q, I.ents, NIDX, &v)) {
            if (v >= IDX_VALUES)
                fail("a number never pushed", v, 0);
            __atomic_add_fetch(&I.taken[v], 1, __ATOMIC_RELAXED);
        } else if (__atomic_load_n(&I.done, __ATOMIC_ACQUIRE)) {
            if (!ss_idxq_take(&I.q, I.ents, NIDX, &v))
                return NULL;
            __atomic_add_fetch(&I.taken[v], 1, __ATOMIC_RELAXED);
        }
    }
}

static void alarm_fail(int sig)
{
    (void)sig;
    static const char m[] = "ring_stress: timed out: a lost wake-up, or a ring stuck full\n";
    if (write(2, m, sizeof m - 1) < 0)
        _exit(1);
    _exit(1);
}

int main(int argc, char **argv)
{
    signal(SIGALRM, alarm_fail);
    alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 120);

    ss_cellq_init(&R.q, R.cells, sizeof R.cells[0], NCELLS);
    pthread_t prod[PRODUCERS], cons;
    pthread_create(&cons, NULL, consumer, NULL);
    for (uintptr_t p = 0; p < PRODUCERS; p++)
        pthread_create(&prod[p], NULL, producer, (void *)p);
    for (int p = 0; p < PRODUCERS; p++)
        pthread_join(prod[p], NULL);
    pthread_join(cons, NULL);
    if (!ss_cellq_passed(&R.q, (uint32_t)PRODUCERS * PER_PRODUCER))
        fail("the consumer's published tail lags", R.q.tail, 0);

    pthread_t tk[CONSUMERS];
    for (int c = 0; c < CONSUMERS; c++)
        pthread_create(&tk[c], NULL, taker, NULL);
    for (uint32_t v = 0; v < IDX_VALUES;) {
        if (ss_idxq_push(&I.q, I.ents, NIDX, v))
            v++;
    }
    __atomic_store_n(&I.done, 1, __ATOMIC_RELEASE);
    for (int c = 0; c < CONSUMERS; c++)
        pthread_join(tk[c], NULL);
    for (uint32_t v = 0; v < IDX_VALUES; v++)
        if (I.taken[v] != 1)
            fail("a number taken other than once", v, I.taken[v]);
    printf("index: %d numbers through %d entries to %d takers, each taken once\n", IDX_VALUES, NIDX, CONSUMERS);
    return 0;
}
