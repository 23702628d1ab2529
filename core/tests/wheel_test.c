/*
 * The timer wheel against a brute-force model: random timers from one
 * millisecond to ten hours, random cancels and re-arms, random clock steps
 * from sub-millisecond to hours.  Every timer must expire at the first
 * collection at or after its deadline (never early, never late), and
 * ss_wheel_next() must never be later than the earliest armed deadline nor
 * in the past.  Exit 0 on success; the seed is the first argument.
 */
#include <stdio.h>
#include <stdlib.h>

#include "engine_int.h"

#define N 2000

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        rng ^= strtoull(argv[1], NULL, 10) * 0x9E3779B97F4A7C15ull;
    static struct ss_wheel w;
    static struct ss_timer t[N];
    static uint64_t due[N]; /* model: deadline in us, 0 = not armed */
    uint64_t now = 5000000 + next_rand() % 100000000;
    ss_wheel_init(&w, now);
    for (int i = 0; i < N; i++)
        ss_timer_init(&t[i]);
    long expired = 0, checks = 0;
    for (int round = 0; round < 200000; round++) {
        int i = (int)(next_rand() % N);
        uint64_t r = next_rand() % 100;
        if (r < 40) {
            /* arm: mostly near, sometimes far */
            uint64_t span = r < 20 ? 50000 : r < 30 ? 10000000 : r < 38 ? 600000000 : 36000000000ull;
            due[i] = now + next_rand() % span;
            ss_timer_set(&w, &t[i], due[i]);
        } else if (r < 50) {
            ss_timer_cancel(&w, &t[i]);
            due[i] = 0;
        } else {
            uint64_t step = r < 85 ? next_rand() % 3000 : r < 97 ? next_rand() % 5000000 : next_rand() % 20000000000ull;
            /* next() is never in the past and never after the earliest deadline */
            uint64_t nx = ss_wheel_next(&w), earliest = UINT64_MAX;
            for (int k = 0; k < N; k++)
                if (due[k] && due[k] < earliest)
                    earliest = due[k];
            uint64_t earliest_tick_us = earliest == UINT64_MAX ? UINT64_MAX : (earliest + 999) / 1000 * 1000;
            if (nx != UINT64_MAX && nx / 1000 <= w.done) {
                fprintf(stderr, "round %d: next %llu is not after done %llu\n", round, (unsigned long long)nx,
                        (unsigned long long)w.done);
                return 1;
            }
            if (nx > earliest_tick_us) {
                fprintf(stderr, "round %d: next %llu later than earliest deadline %llu\n", round,
                        (unsigned long long)nx, (unsigned long long)earliest_tick_us);
                return 1;
            }
            checks++;
            now += step;
            struct ss_list out;
            ss_list_init(&out);
            ss_wheel_collect(&w, now, &out);
            static bool got[N];
            for (int k = 0; k < N; k++)
                got[k] = false;
            while (!ss_list_empty(&out)) {
                struct ss_timer *x = SS_CONTAINER_OF(out.next, struct ss_timer, link);
                ss_list_del(&x->link);
                got[x - t] = true;
            }
            for (int k = 0; k < N; k++) {
                /* due at tick ceil(deadline/1ms); collected once now/1ms reaches it */
                bool should = due[k] && (due[k] + 999) / 1000 <= now / 1000;
                if (should != got[k]) {
                    fprintf(stderr, "round %d: timer %d deadline %llu now %llu: expired=%d wanted %d\n", round, k,
                            (unsigned long long)due[k], (unsigned long long)now, got[k], should);
                    return 1;
                }
                if (got[k]) {
                    due[k] = 0;
                    expired++;
                }
            }
        }
    }
    printf("{\"ok\": true, \"expired\": %ld, \"next_checks\": %ld}\n", expired, checks);
    return 0;
}
