/*
 * TCP timers.  Each connection has one wheel entry, kept at its earliest
 * armed deadline; the deadlines themselves live in t->deadline[].  Keeping
 * the entry exact (not lazily early) makes ss_engine_next_deadline() true,
 * so an idle instance sleeps until something is really due.
 *
 *   SS_T_RTX      retransmission (RFC 6298), also SYN and SYN-ACK
 *   SS_T_PERSIST  zero-window probing (RFC 9293 3.8.6.1)
 *   SS_T_DELACK   delayed ACK (RFC 1122 4.2.3.2, RFC 5681 4.2)
 *   SS_T_KEEP     keepalive (RFC 1122 4.2.3.6)
 *   SS_T_2MSL     TIME-WAIT (RFC 9293 3.6.1), orphaned FIN-WAIT-2
 */
#include "engine_int.h"

static void rearm(struct ss_tcb *t)
{
    uint64_t next = UINT64_MAX;
    for (int i = 0; i < SS_T_COUNT; i++)
        if (t->deadline[i] && t->deadline[i] < next)
            next = t->deadline[i];
    if (next == UINT64_MAX)
        ss_timer_cancel(&t->e->wheel, &t->timer);
    else if (!t->timer.armed || (next + 999) / 1000 != t->timer.tick)
        ss_timer_set(&t->e->wheel, &t->timer, next);
}

void ss_tcp_timer_set(struct ss_tcb *t, int which, uint64_t at_us)
{
    t->deadline[which] = at_us ? at_us : 1;
    rearm(t);
}

void ss_tcp_timer_clear(struct ss_tcb *t, int which)
{
    if (!t->deadline[which])
        return;
    t->deadline[which] = 0;
    rearm(t);
}

void ss_tcp_arm_rtx(struct ss_tcb *t)
{
    t->deadline[SS_T_PERSIST] = 0; /* rearmed just below */
    ss_tcp_timer_set(t, SS_T_RTX, t->e->now_us + t->rto_us);
}

/* RFC 6298 section 2: SRTT, RTTVAR and RTO from one measurement. */
void ss_tcp_rtt_sample(struct ss_tcb *t, uint32_t r)
{
    const struct ss_engine_config *c = &t->e->cfg;
    if (!t->rtt_measured) {
        t->rtt_measured = true;
        t->srtt_us = r;          /* (2.2) */
        t->rttvar_us = r / 2;
    } else {
        uint32_t delta = t->srtt_us > r ? t->srtt_us - r : r - t->srtt_us;
        t->rttvar_us = (3 * t->rttvar_us + delta) / 4; /* (2.3), beta 1/4 */
        t->srtt_us = (7 * t->srtt_us + r) / 8;          /* alpha 1/8 */
    }
    uint64_t rto = (uint64_t)t->srtt_us + SS_MAX(1000u, 4 * t->rttvar_us); /* G = 1 ms */
    rto = SS_MAX(rto, (uint64_t)c->rto_min_ms * 1000);  /* (2.4), configurable */
    rto = SS_MIN(rto, (uint64_t)c->rto_max_ms * 1000);  /* (2.5) */
    t->rto_us = (uint32_t)rto;
}

/* RFC 6298 5.7: when the SYN (or SYN-ACK) had to be retransmitted and the
 * handshake gave no RTT sample, data starts with an RTO of 3 seconds. */
void ss_tcp_handshake_rto(struct ss_tcb *t)
{
    if (t->backoff && !t->rtt_measured) {
        uint32_t three = SS_MIN(3000000u, t->e->cfg.rto_max_ms * 1000u);
        t->rto_us = SS_MAX(three, t->e->cfg.rto_min_ms * 1000u);
    }
}

static void backoff_rto(struct ss_tcb *t)
{
    /* RFC 6298 5.5: double the RTO, up to the maximum. */
    uint64_t rto = (uint64_t)t->rto_us * 2;
    t->rto_us = (uint32_t)SS_MIN(rto, (uint64_t)t->e->cfg.rto_max_ms * 1000);
}

static int timeout_error(const struct ss_tcb *t) { return t->soft_error ? -t->soft_error : -ETIMEDOUT; }

static void on_rtx(struct ss_tcb *t)
{
    struct ss_engine *e = t->e;
    if (t->state == SS_TCP_SYN_SENT || t->state == SS_TCP_SYN_RECEIVED) {
        uint32_t limit = t->state == SS_TCP_SYN_SENT ? e->cfg.syn_retries : e->cfg.synack_retries;
        e->ctr->tcp_rto_expired++;
        if (++t->backoff > limit) {
            e->ctr->tcp_timeouts++;
            ss_tcp_done(t, timeout_error(t));
            return;
        }
        backoff_rto(t);
        t->rtt_timing = false; /* Karn */
        e->ctr->tcp_retransmits++;
        ss_tcp_send_syn(t);
        ss_tcp_arm_rtx(t);
        return;
    }
    if (t->snd_una == t->snd_max)
        return;
    e->ctr->tcp_rto_expired++;
    if (++t->backoff > e->cfg.retries) {
        e->ctr->tcp_timeouts++;
        ss_tcp_done(t, timeout_error(t));
        return;
    }
    /* RFC 5681 3.1 (4), once per loss: later timeouts of the same
     * segment keep ssthresh.  Then the loss window of one segment. */
    if (t->backoff == 1)
        t->ssthresh = SS_MAX((t->snd_max - t->snd_una) / 2, 2 * t->smss);
    t->cwnd = t->smss;
    t->in_recovery = false;
    t->sack_recovery = false;
    /* The scoreboard stays: go-back-N skips what the peer holds, as Linux
     * does after a timeout.  RFC 2018 8 would forget it in case the
     * receiver discarded SACKed data; ss_sack_prune notices that instead. */
    t->dupacks = 0;
    t->recover = t->snd_max; /* RFC 6582 3.2 step 4 */
    t->rtt_timing = false;
    backoff_rto(t);
    /* Go back to the first unacknowledged byte; ACKs then clock out the rest. */
    t->snd_nxt = t->snd_una;
    ss_tcp_output(t);
    if (!t->deadline[SS_T_RTX] && !t->deadline[SS_T_PERSIST])
        ss_tcp_arm_rtx(t);
}

static void on_persist(struct ss_tcb *t)
{
    struct ss_engine *e = t->e;
    uint32_t flight = t->snd_nxt - t->snd_una;
    if (t->cork && t->snd_wnd > flight)
        e->ctr->tcp_cork_timeouts++; /* the window is open: a cork held the data */
    else
        e->ctr->tcp_zero_window_probes++; /* a window shut, or too small to use (RFC 9293 3.8.6.2.1) */
    ss_tcp_send_probe(t);
    if (t->deadline[SS_T_RTX])
        return; /* the window had room: data went out under the RTO */
    /* Back off like the RTO, but never give up while the peer answers
     * (RFC 1122 4.2.2.17). */
    if (t->persist_backoff < 16)
        t->persist_backoff++;
    uint64_t base = SS_MAX((uint64_t)t->rto_us, (uint64_t)e->cfg.rto_min_ms * 1000);
    uint64_t iv = SS_MIN(base << t->persist_backoff, (uint64_t)e->cfg.rto_max_ms * 1000);
    ss_tcp_timer_set(t, SS_T_PERSIST, e->now_us + iv);
}

static void on_delack(struct ss_tcb *t)
{
    if (t->last_ack_sent == t->rcv_nxt || t->state == SS_TCP_SYN_SENT)
        return;
    t->e->ctr->tcp_delayed_acks++;
    ss_tcp_send_ack(t);
}

static void on_keepalive(struct ss_tcb *t)
{
    struct ss_engine *e = t->e;
    if (!t->keepalive || (t->state != SS_TCP_ESTABLISHED && t->state != SS_TCP_CLOSE_WAIT &&
                          t->state != SS_TCP_FIN_WAIT_2))
        return;
    uint64_t idle_end = t->last_rcv_us + (uint64_t)t->ka_idle_ms * 1000;
    if (t->ka_sent == 0 && e->now_us < idle_end) {
        ss_tcp_timer_set(t, SS_T_KEEP, idle_end);
        return;
    }
    /* Data in flight has its own timer; keepalive waits for idleness. */
    if (t->snd_una != t->snd_max || t->sndbuf.len) {
        ss_tcp_timer_set(t, SS_T_KEEP, e->now_us + (uint64_t)t->ka_idle_ms * 1000);
        return;
    }
    if (t->ka_sent >= t->ka_probes) {
        /* Linux resets the peer when it gives up. */
        e->ctr->tcp_timeouts++;
        ss_tcp_send_rst(t);
        ss_tcp_done(t, timeout_error(t));
        return;
    }
    e->ctr->tcp_keepalive_probes++;
    t->ka_sent++;
    ss_tcp_send_keepalive(t);
    ss_tcp_timer_set(t, SS_T_KEEP, e->now_us + (uint64_t)t->ka_intvl_ms * 1000);
}

static void on_2msl(struct ss_tcb *t)
{
    if (t->state == SS_TCP_TIME_WAIT || t->state == SS_TCP_FIN_WAIT_2)
        ss_tcp_done(t, 0);
}

void ss_tcp_timers_run(struct ss_tcb *t)
{
    static void (*const handler[SS_T_COUNT])(struct ss_tcb *) = {
        [SS_T_RTX] = on_rtx,
        [SS_T_PERSIST] = on_persist,
        [SS_T_DELACK] = on_delack,
        [SS_T_KEEP] = on_keepalive,
        [SS_T_2MSL] = on_2msl,
    };
    uint64_t now = t->e->now_us;
    for (int i = 0; i < SS_T_COUNT; i++) {
        if (t->deadline[i] && t->deadline[i] <= now) {
            t->deadline[i] = 0;
            handler[i](t);
            if (t->state == SS_TCP_CLOSED)
                return;
        }
    }
    rearm(t);
}
