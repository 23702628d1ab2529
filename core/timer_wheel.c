/* A hashed timer wheel: O(1) insert and cancel, expiry proportional to the
 * slots elapsed.  No scan of all connections ever happens. */
#include "engine_int.h"

static uint64_t tick_of(uint64_t us) { return (us + 999) / 1000; }

static void mark(struct ss_wheel *w, uint32_t slot) { w->busy[slot / 64] |= 1ull << (slot % 64); }

static void unmark_if_empty(struct ss_wheel *w, uint32_t slot)
{
    if (ss_list_empty(&w->slot[slot]))
        w->busy[slot / 64] &= ~(1ull << (slot % 64));
}

void ss_wheel_init(struct ss_wheel *w, uint64_t now_us)
{
    for (int i = 0; i < SS_WHEEL_SLOTS; i++)
        ss_list_init(&w->slot[i]);
    for (int i = 0; i < SS_WHEEL_SLOTS / 64; i++)
        w->busy[i] = 0;
    w->done = now_us / 1000;
    w->armed = 0;
}

void ss_timer_init(struct ss_timer *t)
{
    ss_list_init(&t->link);
    t->armed = false;
    t->tick = 0;
}

void ss_timer_cancel(struct ss_wheel *w, struct ss_timer *t)
{
    if (!t->armed)
        return;
    ss_list_del(&t->link);
    t->armed = false;
    w->armed--;
    unmark_if_empty(w, (uint32_t)(t->tick % SS_WHEEL_SLOTS));
}

void ss_timer_set(struct ss_wheel *w, struct ss_timer *t, uint64_t at_us)
{
    ss_timer_cancel(w, t);
    uint64_t tick = tick_of(at_us);
    /* A deadline already past runs at the next collection. */
    if (tick <= w->done)
        tick = w->done + 1;
    t->tick = tick;
    t->armed = true;
    ss_list_add_tail(&w->slot[tick % SS_WHEEL_SLOTS], &t->link);
    mark(w, (uint32_t)(tick % SS_WHEEL_SLOTS));
    w->armed++;
}

static void collect_slot(struct ss_wheel *w, struct ss_list *slot, uint64_t now_tick, struct ss_list *out)
{
    struct ss_list *n = slot->next;
    while (n != slot) {
        struct ss_list *next = n->next;
        struct ss_timer *t = SS_CONTAINER_OF(n, struct ss_timer, link);
        if (t->tick <= now_tick) {
            ss_list_del(n);
            t->armed = false;
            w->armed--;
            ss_list_add_tail(out, n);
        }
        n = next;
    }
}

static bool slot_busy(const struct ss_wheel *w, uint32_t slot) { return w->busy[slot / 64] >> (slot % 64) & 1; }

void ss_wheel_collect(struct ss_wheel *w, uint64_t now_us, struct ss_list *out)
{
    uint64_t now_tick = now_us / 1000;
    if (now_tick <= w->done)
        return;
    if (w->armed) {
        /* After a long sleep, one pass over every slot is enough. */
        uint64_t from = w->done + 1;
        if (now_tick - w->done >= SS_WHEEL_SLOTS)
            from = now_tick - SS_WHEEL_SLOTS + 1;
        for (uint64_t k = from; k <= now_tick; k++) {
            uint32_t slot = (uint32_t)(k % SS_WHEEL_SLOTS);
            if (slot_busy(w, slot)) {
                collect_slot(w, &w->slot[slot], now_tick, out);
                unmark_if_empty(w, slot);
            }
        }
    }
    w->done = now_tick;
}

uint64_t ss_wheel_next(const struct ss_wheel *w)
{
    if (!w->armed)
        return UINT64_MAX;
    /* Walk the busy slots in deadline order from the next tick; the first
     * slot holding a timer of its own revolution has the earliest one.  A
     * timer further out than one revolution is caught by the running
     * minimum. */
    uint64_t best = UINT64_MAX;
    uint64_t k = w->done + 1;
    uint64_t end = w->done + SS_WHEEL_SLOTS;
    while (k <= end) {
        uint32_t slot = (uint32_t)(k % SS_WHEEL_SLOTS);
        uint64_t bits = w->busy[slot / 64] >> (slot % 64);
        if (!bits) {
            k += 64 - slot % 64; /* rest of this word is empty */
            continue;
        }
        k += (uint64_t)__builtin_ctzll(bits);
        if (k > end)
            break;
        const struct ss_list *l = &w->slot[k % SS_WHEEL_SLOTS];
        for (const struct ss_list *n = l->next; n != l; n = n->next) {
            const struct ss_timer *t = SS_CONTAINER_OF(n, struct ss_timer, link);
            if (t->tick < best)
                best = t->tick;
        }
        if (best == k)
            break;
        k++;
    }
    return best * 1000;
}
