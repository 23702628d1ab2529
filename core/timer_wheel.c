/*
 * A two-level hierarchical timer wheel (Varghese and Lauck).
 *
 * Level 0 holds the timers due within the next SS_WHEEL_SLOTS ticks, one
 * tick (1 ms) a slot, so a level-0 slot holds only timers of one tick.
 * Level 1 holds the later ones, SS_WHEEL_SLOTS ticks a slot; when the clock
 * reaches the start of a level-1 slot, its timers cascade into level 0.  A
 * timer beyond level 1's reach waits in its last slot and is placed again
 * when that slot cascades.
 *
 * A timer sits in the slot of its deadline rounded up to the next
 * millisecond, so it never runs early.
 */
#include "engine_int.h"

#define MASK (SS_WHEEL_SLOTS - 1)

static uint64_t tick_of(uint64_t us) { return (us + 999) / 1000; }

static void mark(struct ss_wheel_level *l, uint32_t s)
{
    l->busy[s / 64] |= 1ull << (s % 64);
    l->summary |= 1ull << (s / 64);
}

static void unmark(struct ss_wheel_level *l, uint32_t s)
{
    l->busy[s / 64] &= ~(1ull << (s % 64));
    if (!l->busy[s / 64])
        l->summary &= ~(1ull << (s / 64));
}
static bool busy(const struct ss_wheel_level *l, uint32_t s) { return l->busy[s / 64] >> (s % 64) & 1; }
static void unmark_if_empty(struct ss_wheel_level *l, uint32_t s)
{
    if (ss_list_empty(&l->slot[s]))
        unmark(l, s);
}

void ss_wheel_init(struct ss_wheel *w, uint64_t now_us)
{
    for (int lv = 0; lv < 2; lv++) {
        for (uint32_t i = 0; i < SS_WHEEL_SLOTS; i++)
            ss_list_init(&w->level[lv].slot[i]);
        for (uint32_t i = 0; i < SS_WHEEL_SLOTS / 64; i++)
            w->level[lv].busy[i] = 0;
        w->level[lv].summary = 0;
    }
    w->done = now_us / 1000;
    w->armed = 0;
}

void ss_timer_init(struct ss_timer *t)
{
    ss_list_init(&t->link);
    t->armed = false;
    t->tick = 0;
}

/* Places an armed timer by its tick relative to w->done. */
static void place(struct ss_wheel *w, struct ss_timer *t)
{
    uint64_t base = w->done + 1;
    if (t->tick < base)
        t->tick = base; /* already due: the next collection runs it */
    if (t->tick - base < SS_WHEEL_SLOTS) {
        t->level = 0;
        t->slot = (uint16_t)(t->tick & MASK);
    } else {
        uint64_t j = t->tick >> SS_WHEEL_BITS;
        uint64_t last = (base >> SS_WHEEL_BITS) + SS_WHEEL_SLOTS - 1;
        /* A timer beyond reach must be looked at again when its slot
         * cascades: for it, that moment is the slot's bound. */
        uint64_t key = j <= last ? t->tick : last << SS_WHEEL_BITS;
        t->level = 1;
        t->slot = (uint16_t)((j < last ? j : last) & MASK);
        if (!busy(&w->level[1], t->slot) || key < w->level1_min[t->slot])
            w->level1_min[t->slot] = key;
    }
    ss_list_add_tail(&w->level[t->level].slot[t->slot], &t->link);
    mark(&w->level[t->level], t->slot);
}

void ss_timer_cancel(struct ss_wheel *w, struct ss_timer *t)
{
    if (!t->armed) {
        /* A due timer waits on the collector's list until its handler runs;
         * re-arming or freeing it before then must take it off that list. */
        ss_list_del(&t->link);
        return;
    }
    ss_list_del(&t->link);
    t->armed = false;
    w->armed--;
    unmark_if_empty(&w->level[t->level], t->slot);
}

void ss_timer_set(struct ss_wheel *w, struct ss_timer *t, uint64_t at_us)
{
    ss_timer_cancel(w, t);
    t->tick = tick_of(at_us);
    t->armed = true;
    w->armed++;
    place(w, t);
}

/* Takes every timer out of one slot into tmp. */
static void empty_slot(struct ss_wheel_level *l, uint32_t s, struct ss_list *tmp)
{
    struct ss_list *head = &l->slot[s];
    while (!ss_list_empty(head)) {
        struct ss_list *n = head->next;
        ss_list_del(n);
        ss_list_add_tail(tmp, n);
    }
    unmark(l, s);
}

/* Due timers of tmp go to out, disarmed; the others are placed again. */
static void sort_out(struct ss_wheel *w, struct ss_list *tmp, uint64_t now_tick, struct ss_list *out)
{
    while (!ss_list_empty(tmp)) {
        struct ss_timer *t = SS_CONTAINER_OF(tmp->next, struct ss_timer, link);
        ss_list_del(&t->link);
        if (t->tick <= now_tick) {
            t->armed = false;
            w->armed--;
            ss_list_add_tail(out, &t->link);
        } else {
            place(w, t);
        }
    }
}

/* Offset from slot `from` (circularly) to the first busy slot of a level,
 * or -1 when the level is empty: the rest of from's word, then the summary
 * word finds the next non-empty word. */
static int64_t first_busy(const struct ss_wheel_level *l, uint32_t from)
{
    if (!l->summary)
        return -1;
    uint32_t word = from / 64;
    uint64_t bits = l->busy[word] >> (from % 64);
    if (bits)
        return __builtin_ctzll(bits);
    /* Words after this one, then from the start (wrapping to this word's
     * low bits, which lie a whole revolution ahead). */
    uint64_t after = word == 63 ? 0 : l->summary >> (word + 1) << (word + 1);
    uint32_t w2 = (uint32_t)__builtin_ctzll(after ? after : l->summary);
    uint32_t slot = w2 * 64 + (uint32_t)__builtin_ctzll(l->busy[w2]);
    return (int64_t)((slot - from) & MASK);
}

void ss_wheel_collect(struct ss_wheel *w, uint64_t now_us, struct ss_list *out)
{
    uint64_t now_tick = now_us / 1000;
    struct ss_list tmp;
    ss_list_init(&tmp);
    if (now_tick <= w->done)
        return;
    if (!w->armed) {
        w->done = now_tick;
        return;
    }
    if (now_tick - w->done < SS_WHEEL_SLOTS) {
        /* Visit the busy level-0 slots and the level-1 boundaries up to now,
         * skipping empty slots a bitmap word at a time. */
        uint64_t k = w->done + 1;
        while (k <= now_tick) {
            uint32_t s0 = (uint32_t)(k & MASK);
            if (s0 == 0) {
                /* The start of a level-1 slot: its timers come down. */
                uint32_t s1 = (uint32_t)((k >> SS_WHEEL_BITS) & MASK);
                if (busy(&w->level[1], s1)) {
                    w->done = k - 1;
                    empty_slot(&w->level[1], s1, &tmp);
                    sort_out(w, &tmp, k - 1, out);
                }
            }
            if (busy(&w->level[0], s0)) {
                empty_slot(&w->level[0], s0, &tmp);
                sort_out(w, &tmp, k, out);
            }
            uint64_t boundary = (k | MASK) + 1;
            int64_t d = first_busy(&w->level[0], (s0 + 1) & MASK);
            uint64_t next = d < 0 ? boundary : k + 1 + (uint64_t)d;
            k = next < boundary ? next : boundary;
        }
        w->done = now_tick;
        return;
    }
    /* A jump of a whole level-0 revolution or more (a long sleep): all of
     * level 0 is due; level-1 slots that began by now are sorted out. */
    while (w->level[0].summary) {
        uint32_t word = (uint32_t)__builtin_ctzll(w->level[0].summary);
        empty_slot(&w->level[0], word * 64 + (uint32_t)__builtin_ctzll(w->level[0].busy[word]), &tmp);
    }
    uint64_t first = (w->done + 1) >> SS_WHEEL_BITS, last = now_tick >> SS_WHEEL_BITS;
    if (last - first >= SS_WHEEL_SLOTS) {
        first = 0;
        last = SS_WHEEL_SLOTS - 1;
    }
    for (uint64_t j = first; j <= last; j++)
        if (busy(&w->level[1], (uint32_t)(j & MASK)))
            empty_slot(&w->level[1], (uint32_t)(j & MASK), &tmp);
    w->done = now_tick;
    sort_out(w, &tmp, now_tick, out);
}

uint64_t ss_wheel_next(const struct ss_wheel *w)
{
    if (!w->armed)
        return UINT64_MAX;
    uint64_t best = UINT64_MAX;
    uint64_t base = w->done + 1;
    /* Level 0: the first busy slot is the earliest tick there. */
    int64_t d0 = first_busy(&w->level[0], (uint32_t)(base & MASK));
    if (d0 >= 0)
        best = base + (uint64_t)d0;
    /* Level 1: the first busy slot (the first still to cascade starts at or
     * after base) holds the earliest of the later timers. */
    uint64_t j0 = (base + MASK) >> SS_WHEEL_BITS;
    int64_t d1 = first_busy(&w->level[1], (uint32_t)(j0 & MASK));
    if (d1 >= 0) {
        uint64_t at = w->level1_min[(j0 + (uint64_t)d1) & MASK];
        if (at < base)
            at = base;
        if (at < best)
            best = at;
    }
    return best == UINT64_MAX ? UINT64_MAX : best * 1000;
}
