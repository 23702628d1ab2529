/*
 * The channel's rings and its sleep/wake protocol, written once for both
 * sides (libshardsock.so and shardsockd) and for their stress test
 * (core/tests/ring_stress.c).  In the manner of liburing, callers never
 * write a barrier: each function below says which ordering it gives.
 *
 * Two kinds of ring, both of 32-bit free-running positions over a power-
 * of-two number of entries:
 *
 * Cell rings: many producers, one consumer (the request and kick rings:
 * any thread of the process asks, the instance answers).  Every cell
 * begins with a sequence word, as in Dmitry Vyukov's bounded queue:
 *     seq == pos        free, for the producer that claims position pos
 *     seq == pos + 1    published: the consumer may take it
 *     seq == pos + n    taken, and free for position pos + n
 * A producer claims a position by a compare-and-swap of head, and only
 * when that position's cell is free: a full ring refuses, it never
 * overwrites.  The consumer keeps its tail to itself (the instance trusts
 * nothing in shared memory); it publishes how far it got in `tail` for
 * whoever waits for it (a forking thread).  A cell whose producer wants an
 * answer is freed by that producer once it has read the answer, not by
 * the consumer.  A producer that claimed a position and stalls holds up
 * the positions after it: only its own process's.
 *
 * Index rings: one producer, any consumers (the event ring, read under the
 * library's epoll lock; the slot grants, taken by any thread).  The
 * producer checks the tail the consumers wrote before it trusts it.
 *
 * Sleep and wake: a side that sleeps raises its flag, looks at the rings
 * once more, and sleeps only if they are still empty; a side that
 * publishes looks at the flag after publishing and wakes the other when
 * it is raised.  The full fences in the two make sure one of them sees
 * the other (the classic store-buffer pattern).
 */
#ifndef SHARDSOCK_RING_H
#define SHARDSOCK_RING_H

#ifndef SS_CDEF
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#endif

/* ---- cell rings ---- */

struct ss_cellq {
    uint32_t head;        /* next position to claim (producers) */
    uint8_t _pad0[60];
    uint32_t tail;        /* positions the consumer has taken (published by it, for waiters) */
    uint8_t _pad1[60];
};

#ifndef SS_CDEF
#define SS_CELL_SEQ(cells, stride, n, pos) ((uint32_t *)((char *)(cells) + (size_t)((pos) & ((n) - 1)) * (stride)))

/* The consumer's set-up: every cell free for its first lap. */
static inline void ss_cellq_init(struct ss_cellq *q, void *cells, size_t stride, uint32_t n)
{
    q->head = q->tail = 0;
    for (uint32_t i = 0; i < n; i++)
        *SS_CELL_SEQ(cells, stride, n, i) = i;
}

/* Producer: claims the next position into *pos; false when the ring is
 * full (the caller waits for the consumer, or for the thread whose answer
 * holds the cell).  The cell's contents are the caller's until it
 * publishes. */
static inline bool ss_cellq_claim(struct ss_cellq *q, void *cells, size_t stride, uint32_t n, uint32_t *pos)
{
    uint32_t p = __atomic_load_n(&q->head, __ATOMIC_RELAXED);
    for (;;) {
        uint32_t s = __atomic_load_n(SS_CELL_SEQ(cells, stride, n, p), __ATOMIC_ACQUIRE);
        int32_t d = (int32_t)(s - p);
        if (d == 0) {
            if (__atomic_compare_exchange_n(&q->head, &p, p + 1, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                *pos = p;
                return true;
            }
        } else if (d < 0) {
            return false; /* the cell's last lap is not free yet */
        } else {
            p = __atomic_load_n(&q->head, __ATOMIC_RELAXED);
        }
    }
}

/* Producer: the cell's contents are complete (release). */
static inline void ss_cellq_publish(void *cells, size_t stride, uint32_t n, uint32_t pos)
{
    __atomic_store_n(SS_CELL_SEQ(cells, stride, n, pos), pos + 1, __ATOMIC_RELEASE);
}

/* Consumer: whether the cell at its tail is published (acquire: its
 * contents may be read after this says true). */
static inline bool ss_cellq_ready(void *cells, size_t stride, uint32_t n, uint32_t tail)
{
    return __atomic_load_n(SS_CELL_SEQ(cells, stride, n, tail), __ATOMIC_ACQUIRE) == tail + 1;
}

/* Consumer, or the producer that waited for an answer: the cell at pos is
 * free for its next lap (release: nothing read from it moves after). */
static inline void ss_cellq_free(void *cells, size_t stride, uint32_t n, uint32_t pos)
{
    __atomic_store_n(SS_CELL_SEQ(cells, stride, n, pos), pos + n, __ATOMIC_RELEASE);
}

/* Consumer: publishes how far it has taken (release). */
static inline void ss_cellq_taken(struct ss_cellq *q, uint32_t tail)
{
    __atomic_store_n(&q->tail, tail, __ATOMIC_RELEASE);
}

/* Anyone: whether the consumer has taken every position before pos. */
static inline bool ss_cellq_passed(const struct ss_cellq *q, uint32_t pos)
{
    return (int32_t)(__atomic_load_n(&q->tail, __ATOMIC_ACQUIRE) - pos) >= 0;
}

/* An answer in a cell: the consumer writes the answer, then ss_answer;
 * the producer sees it with ss_answered, then reads it. */
static inline void ss_answer(uint32_t *done, uint32_t pos) { __atomic_store_n(done, pos + 1, __ATOMIC_RELEASE); }
static inline bool ss_answered(const uint32_t *done, uint32_t pos)
{
    return __atomic_load_n(done, __ATOMIC_ACQUIRE) == pos + 1;
}

#endif /* SS_CDEF */

/* ---- index rings ---- */

struct ss_idxq {
    uint32_t head;        /* the producer's */
    uint8_t _pad0[60];
    uint32_t tail;        /* the consumers' */
    uint8_t _pad1[60];
};

#ifndef SS_CDEF

/* Producer: entries queued, or UINT32_MAX when the consumers' tail is
 * impossible (a corrupt region). */
static inline uint32_t ss_idxq_count(const struct ss_idxq *q, uint32_t n)
{
    uint32_t c = q->head - __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE);
    return c > n ? UINT32_MAX : c;
}

/* Producer: queues v (release); false when full or corrupt. */
static inline bool ss_idxq_push(struct ss_idxq *q, uint32_t *ents, uint32_t n, uint32_t v)
{
    if (ss_idxq_count(q, n) >= n)
        return false;
    uint32_t h = q->head;
    __atomic_store_n(&ents[h & (n - 1)], v, __ATOMIC_RELAXED); /* a taker may read it as it loses its claim */
    __atomic_store_n(&q->head, h + 1, __ATOMIC_RELEASE);
    return true;
}

/* Any consumer, with others at once: takes the oldest entry; false when
 * the ring is empty. */
static inline bool ss_idxq_take(struct ss_idxq *q, const uint32_t *ents, uint32_t n, uint32_t *v)
{
    uint32_t t = __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE);
    for (;;) {
        uint32_t h = __atomic_load_n(&q->head, __ATOMIC_ACQUIRE);
        if (t == h || h - t > n)
            return false;
        uint32_t x = __atomic_load_n(&ents[t & (n - 1)], __ATOMIC_RELAXED);
        /* the value read before the tail moved is the one this claim takes:
         * the producer overwrites an entry only once the tail passed it */
        if (__atomic_compare_exchange_n(&q->tail, &t, t + 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *v = x;
            return true;
        }
    }
}

/* The one consumer: how many entries wait (acquire), and their start. */
static inline uint32_t ss_idxq_peek(const struct ss_idxq *q, uint32_t *tail)
{
    *tail = q->tail;
    return __atomic_load_n(&q->head, __ATOMIC_ACQUIRE) - *tail;
}

/* The one consumer: entries before tail are taken (release). */
static inline void ss_idxq_release(struct ss_idxq *q, uint32_t tail) { __atomic_store_n(&q->tail, tail, __ATOMIC_RELEASE); }

/* ---- sleep and wake ---- */

/* The sleeper, before its last look at the rings: its flag is a count
 * (several threads of a process may sleep at once). */
static inline void ss_sleeper_enter(uint32_t *flag) { __atomic_add_fetch(flag, 1, __ATOMIC_SEQ_CST); }
static inline void ss_sleeper_leave(uint32_t *flag) { __atomic_sub_fetch(flag, 1, __ATOMIC_SEQ_CST); }
/* A sleeper that is alone (the instance): its flag is 0 or 1. */
static inline void ss_sleeper_set(uint32_t *flag, bool on)
{
#ifdef __SANITIZE_THREAD__
    __atomic_exchange_n(flag, on, __ATOMIC_SEQ_CST); /* ThreadSanitizer cannot see fences: the same order by RMW */
#else
    __atomic_store_n(flag, on, __ATOMIC_RELAXED);
    if (on)
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

/* The waker, after it published: whether the other side sleeps (or is
 * about to) and must be woken.  A fence and a plain load: the waker does
 * not take the flag's line away from the sleeper on every publish. */
static inline bool ss_wake_needed(uint32_t *flag)
{
#ifdef __SANITIZE_THREAD__
    return __atomic_fetch_or(flag, 0, __ATOMIC_SEQ_CST) != 0;
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(flag, __ATOMIC_RELAXED) != 0;
#endif
}

/* The waker of a lone sleeper (the instance, whose flag is 0 or 1):
 * true for the one waker that takes the raised flag and must wake it.
 * Others that publish before the sleeper runs again make no call: it
 * looks at the rings once awake, and raises its flag again before it
 * sleeps. */
static inline bool ss_wake_claim(uint32_t *flag)
{
    return ss_wake_needed(flag) && __atomic_exchange_n(flag, 0, __ATOMIC_ACQ_REL) != 0;
}

#endif /* SS_CDEF */

#endif
