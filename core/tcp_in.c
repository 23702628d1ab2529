/*
 * TCP input: RFC 9293 section 3.10.7 "SEGMENT ARRIVES", step by step.
 *
 * ss_tcp_input -> flow lookup
 *   no connection: listener ? ss_tcp_listen_input : reset (3.10.7.1)
 *   SYN-SENT: syn_sent_input (3.10.7.3)
 *   otherwise: segment_arrives (3.10.7.4): PAWS, sequence check, RST, SYN,
 *              ACK, text, FIN
 * then ss_tcp_output and the ACK decision (immediate or delayed).
 *
 * RFC 5961 hardens the RST, SYN and ACK checks; RFC 7323 adds PAWS.
 */
#include <string.h>

#include "engine_int.h"

static uint32_t seg_len(const struct ss_tcp_repr *s)
{
    return s->len + ((s->flags & SS_TH_SYN) ? 1 : 0) + ((s->flags & SS_TH_FIN) ? 1 : 0);
}

static uint32_t rcv_wnd(const struct ss_tcb *t)
{
    return SEQ_GT(t->rcv_adv, t->rcv_nxt) ? t->rcv_adv - t->rcv_nxt : 0;
}

/* The options of a SYN we accept, from either side of the handshake. */
static void take_syn_options(struct ss_tcb *t, const struct ss_tcp_repr *s)
{
    t->peer_mss = s->has_mss ? (s->mss ? s->mss : 536) : 536;
    /* RFC 7323 2.2: scaling only if both sides sent the option. */
    t->ws_ok = s->has_ws;
    if (t->ws_ok)
        t->snd_wscale = s->ws > 14 ? 14 : s->ws; /* RFC 7323 2.3: above 14 means 14 */
    else
        t->snd_wscale = t->rcv_wscale = 0;
    t->sack_ok = s->sack_ok;
    t->ts_ok = s->has_ts;
    if (t->ts_ok) {
        t->ts_recent = s->tsval;
        t->ts_recent_us = t->e->now_us;
    }
}

/* ---- listening (RFC 9293 3.10.7.2) ---- */

void ss_tcp_child_established(struct ss_tcb *c)
{
    struct ss_tcb *l = c->listener;
    ss_list_del(&c->child_link);
    if (!c->cookie)
        l->syn_len--;
    ss_list_add_tail(&l->accept_q, &c->child_link);
    l->accept_len++;
    c->in_accept_q = true;
    ss_tcb_notify(l);
}

static struct ss_tcb *new_child(struct ss_tcb *l, const struct ss_ip_repr *ip, const struct ss_tcp_repr *s)
{
    struct ss_engine *e = l->e;
    struct ss_tcb *c = ss_tcb_alloc(e);
    if (!c)
        return NULL;
    c->lip = ip->dst;
    c->lport = s->dport;
    c->rip = ip->src;
    c->rport = s->sport;
    c->listener = l;
    c->nodelay = l->nodelay;
    c->keepalive = l->keepalive;
    c->ka_idle_ms = l->ka_idle_ms;
    c->ka_intvl_ms = l->ka_intvl_ms;
    c->ka_probes = l->ka_probes;
    c->user_mss = l->user_mss;
    c->linger_zero = l->linger_zero;
    c->reuseaddr = l->reuseaddr;
    c->reuseport = l->reuseport;
    c->spawned = l->spawned; /* a new local listener of the port may still bind beside it */
    c->cork = l->cork & 1;
    c->syn_us = e->now_us;
    c->via_fallback = e->in_forwarded;
    ss_ring_init(&c->rcvbuf, l->rcvbuf.cap);
    ss_ring_init(&c->sndbuf, l->sndbuf.cap);
    return c;
}

void ss_tcp_listen_input(struct ss_tcb *l, const struct ss_ip_repr *ip, struct ss_tcp_repr *s, uint32_t min_iss)
{
    struct ss_engine *e = l->e;
    if (s->flags & SS_TH_RST) {
        e->ctr->drop_tcp_state++; /* "an incoming RST should be ignored" */
        return;
    }
    if (s->flags & SS_TH_ACK) {
        /* Only an ACK can complete a cookie handshake; check cookies only
         * while we have been sending them (two cookie periods). */
        uint16_t mss = 0;
        if (!(s->flags & SS_TH_SYN) && e->last_cookie_us && e->now_us - e->last_cookie_us < 128000000ull) {
            mss = ss_syncookie_check(e, ip, s);
            if (!mss)
                e->ctr->tcp_syncookies_failed++;
        }
        if (!mss) {
            e->ctr->drop_tcp_no_socket++;
            ss_tcp_send_rst_for(e, ip, s); /* "any acknowledgment is bad" */
            return;
        }
        if (l->accept_len + l->ahead > l->backlog) {
            e->ctr->drop_tcp_accept_overflow++;
            return;
        }
        struct ss_tcb *c = new_child(l, ip, s);
        if (!c)
            return;
        c->cookie = true;
        c->iss = s->ack - 1;
        c->snd_una = c->iss;
        c->snd_nxt = c->snd_max = c->buf_seq = s->ack;
        c->irs = s->seq - 1;
        c->rcv_nxt = s->seq;
        c->rcv_adv = c->rcv_nxt + SS_MIN(c->rcvbuf.cap, 65535u);
        c->peer_mss = mss;
        c->snd_wnd = s->wnd;
        c->snd_wl1 = s->seq - 1;
        c->snd_wl2 = c->iss;
        ss_tcp_set_state(c, SS_TCP_SYN_RECEIVED);
        ss_list_add_tail(&l->syn_q, &c->child_link);
        ss_flow_insert(c);
        ss_bind_insert(c);
        e->ctr->tcp_syncookies_ok++;
        e->ctr->tcp_passive_opens++;
        ss_tcp_input(e, ip, s); /* now the flow exists: the ACK completes it */
        return;
    }
    if (!(s->flags & SS_TH_SYN)) {
        e->ctr->drop_tcp_state++;
        return;
    }
    /* Linux's overflow rule: the accept queue may hold backlog + 1. */
    if (l->accept_len + l->ahead > l->backlog) {
        e->ctr->drop_tcp_listen_overflow++;
        return;
    }
    if (l->syn_len >= e->cfg.syn_backlog) {
        /* RFC 4987 3.6: the SYN queue is full; answer statelessly. */
        uint16_t mss = s->has_mss ? s->mss : 536;
        uint32_t cookie = ss_syncookie_make(e, ip, s, &mss);
        ss_tcp_send_cookie_synack(e, ip, s, cookie, (uint16_t)(e->cfg.mtu - 40));
        e->last_cookie_us = e->now_us ? e->now_us : 1;
        e->ctr->tcp_syncookies_sent++;
        return;
    }
    struct ss_tcb *c = new_child(l, ip, s);
    if (!c)
        return;
    c->irs = s->seq;
    c->rcv_nxt = s->seq + 1;
    c->iss = ss_tcp_isn(e, c->lip, c->lport, c->rip, c->rport);
    /* RFC 9293 3.6.1 / RFC 1122 4.2.2.13: a reused TIME-WAIT pair must
     * start above the old connection's sequence space. */
    if (min_iss && SEQ_LT(c->iss, min_iss))
        c->iss = min_iss;
    c->snd_una = c->iss;
    c->snd_nxt = c->snd_max = c->buf_seq = c->iss + 1;
    c->rcv_wscale = 0;
    uint8_t ws = 0;
    while (ws < 14 && (65535u << ws) < c->rcvbuf.cap)
        ws++;
    c->rcv_wscale = ws;
    take_syn_options(c, s);
    c->ts_offset = ss_tcp_ts_offset(e, c->lip, c->lport, c->rip, c->rport);
    c->snd_wnd = s->wnd; /* RFC 7323 2.2: a SYN's window is not scaled */
    c->snd_wl1 = s->seq;
    c->snd_wl2 = c->iss;
    ss_tcp_set_state(c, SS_TCP_SYN_RECEIVED);
    ss_list_add_tail(&l->syn_q, &c->child_link);
    l->syn_len++;
    ss_flow_insert(c);
    ss_bind_insert(c); /* an accepted connection holds its port, as in Linux */
    e->ctr->tcp_passive_opens++;
    c->rtt_timing = true;
    c->rtt_start_us = e->now_us;
    c->rtt_seq = c->iss + 1;
    ss_tcp_send_syn(c);
    ss_tcp_arm_rtx(c);
}

/* ---- SYN-SENT (RFC 9293 3.10.7.3) ---- */

static void syn_sent_input(struct ss_tcb *t, const struct ss_ip_repr *ip, struct ss_tcp_repr *s)
{
    struct ss_engine *e = t->e;
    bool ack_ok = false;
    if (s->flags & SS_TH_ACK) {
        if (SEQ_LEQ(s->ack, t->iss) || SEQ_GT(s->ack, t->snd_max)) {
            e->ctr->drop_tcp_bad_ack++;
            ss_tcp_send_rst_for(e, ip, s);
            /* Most likely the peer's TIME-WAIT (or an old incarnation)
             * refused our SYN with an ACK; our reset ends it, so the SYN
             * goes again at once rather than after the initial RTO, as
             * Linux does (tcp_rcv_synsent_state_process, TCP_TIMEOUT_MIN),
             * and only before any retransmission. */
            if (t->backoff == 0)
                ss_tcp_timer_set(t, SS_T_RTX, e->now_us + SS_SYN_RETRY_SOON_US);
            return;
        }
        ack_ok = true;
    }
    if (s->flags & SS_TH_RST) {
        /* RFC 5961 3.2: in SYN-SENT a reset counts only with an ACK of our SYN. */
        if (!ack_ok) {
            e->ctr->drop_tcp_bad_rst++;
            return;
        }
        e->ctr->tcp_rst_rx++;
        ss_tcp_done(t, -ECONNREFUSED);
        return;
    }
    if (!(s->flags & SS_TH_SYN)) {
        e->ctr->drop_tcp_state++;
        return;
    }
    /* A SYN without ACK (simultaneous open) when connect took over a
     * TIME-WAIT pair: TS.Recent came from the old connection, and a SYN
     * older than it belongs to the past (RFC 7323 5.3; Linux checks it
     * here too).  With an ACK, the ACK check above decides. */
    if (!ack_ok && t->ts_recent_us && s->has_ts && (int32_t)(s->tsval - t->ts_recent) < 0) {
        e->ctr->drop_tcp_paws++;
        return;
    }
    t->irs = s->seq;
    t->rcv_nxt = s->seq + 1;
    take_syn_options(t, s);
    t->snd_wnd = s->wnd; /* unscaled in a SYN (RFC 7323 2.2) */
    t->snd_wl1 = s->seq;
    t->snd_wl2 = s->ack;
    if (ack_ok) {
        t->snd_una = s->ack;
        if (t->rtt_timing && t->backoff == 0)
            ss_tcp_rtt_sample(t, (uint32_t)(e->now_us - t->rtt_start_us));
        t->rtt_timing = false;
        ss_tcp_handshake_rto(t);
        t->backoff = 0;
        /* Our SYN advertised an unscaled window; that is the edge the peer
         * may fill until our first ACK says more (RFC 7323 2.2). */
        t->rcv_adv = t->rcv_nxt + SS_MIN(ss_ring_space(&t->rcvbuf), 65535u);
        ss_tcp_timer_clear(t, SS_T_RTX);
        ss_tcp_set_state(t, SS_TCP_ESTABLISHED);
        ss_tcp_init_conn(t);
        t->last_rcv_us = e->now_us;
        if (t->keepalive)
            ss_tcp_timer_set(t, SS_T_KEEP, e->now_us + (uint64_t)t->ka_idle_ms * 1000);
        ss_tcp_send_ack(t);
        ss_tcb_notify(t);
        ss_tcp_output(t);
        return;
    }
    /* Simultaneous open (RFC 9293 figure 7): SYN-RECEIVED, answer SYN-ACK. */
    t->rtt_timing = false;
    ss_tcp_set_state(t, SS_TCP_SYN_RECEIVED);
    ss_tcp_send_syn(t);
    ss_tcp_arm_rtx(t);
}

/* ---- out-of-order ranges (RFC 2018 SACK blocks come from here) ---- */

/* Records [l, r) as received out of order, most recent first, merging
 * ranges that touch.  Returns false when there is no room for it. */
static bool ooo_add(struct ss_tcb *t, uint32_t l, uint32_t r)
{
    uint32_t nl = l, nr = r;
    uint32_t keep[SS_OOO_MAX][2];
    uint32_t n = 0;
    for (uint32_t i = 0; i < t->nooo; i++) {
        uint32_t a = t->ooo[i][0], b = t->ooo[i][1];
        if (SEQ_LEQ(a, nr) && SEQ_LEQ(nl, b)) {
            if (SEQ_LT(a, nl))
                nl = a;
            if (SEQ_GT(b, nr))
                nr = b;
        } else {
            keep[n][0] = a;
            keep[n][1] = b;
            n++;
        }
    }
    if (n == SS_OOO_MAX)
        return false;
    t->ooo[0][0] = nl;
    t->ooo[0][1] = nr;
    memcpy(&t->ooo[1], keep, n * sizeof keep[0]);
    t->nooo = n + 1;
    return true;
}

/* rcv_nxt moved: bytes already waiting right after it join the stream. */
static void ooo_advance(struct ss_tcb *t)
{
    bool moved = true;
    while (moved) {
        moved = false;
        for (uint32_t i = 0; i < t->nooo; i++) {
            uint32_t a = t->ooo[i][0], b = t->ooo[i][1];
            if (SEQ_LEQ(a, t->rcv_nxt)) {
                if (SEQ_GT(b, t->rcv_nxt)) {
                    ss_ring_commit(&t->rcvbuf, b - t->rcv_nxt);
                    t->rcv_nxt = b;
                }
                memmove(&t->ooo[i], &t->ooo[i + 1], (t->nooo - i - 1) * sizeof t->ooo[0]);
                t->nooo--;
                moved = true;
                break;
            }
        }
    }
}

/* ---- ACK processing (RFC 9293 3.10.7.4 fifth step, RFC 5681, RFC 6582) ---- */

static uint32_t flight_size(const struct ss_tcb *t) { return t->snd_max - t->snd_una; }

static void new_ack(struct ss_tcb *t, uint32_t ack)
{
    struct ss_engine *e = t->e;
    uint32_t acked = ack - t->snd_una;
    if (t->rtt_timing && SEQ_GEQ(ack, t->rtt_seq)) {
        ss_tcp_rtt_sample(t, (uint32_t)(e->now_us - t->rtt_start_us));
        t->rtt_timing = false;
    }
    uint32_t end = t->buf_seq + t->sndbuf.len;
    uint32_t upto = SEQ_LT(ack, end) ? ack : end;
    if (SEQ_GT(upto, t->buf_seq)) {
        ss_ring_drop(&t->sndbuf, upto - t->buf_seq);
        t->buf_seq = upto;
        if (t->sndbuf.len == 0)
            ss_ring_free(&t->sndbuf);
    }
    t->snd_una = ack;
    if (SEQ_LT(t->snd_nxt, ack))
        t->snd_nxt = ack;
    if (SEQ_LT(t->high_rxt, ack))
        t->high_rxt = ack;
    ss_sack_prune(t);
    t->backoff = 0;
    if (t->in_recovery) {
        if (SEQ_GEQ(ack, t->recover)) {
            /* RFC 6582 3.2 step 3, full acknowledgment (RFC 6675 leaves
             * the exit to it too). */
            t->cwnd = SS_MIN(t->ssthresh, SS_MAX(flight_size(t), t->smss) + t->smss);
            t->in_recovery = false;
            t->sack_recovery = false;
            t->dupacks = 0;
        } else if (t->sack_recovery) {
            /* RFC 6675: the holes are resent by ss_tcp_output, by NextSeg */
        } else {
            /* Step 3, partial acknowledgment: resend the next hole, deflate. */
            e->ctr->tcp_partial_acks++;
            ss_tcp_retransmit_first(t);
            t->cwnd = t->cwnd > acked ? t->cwnd - acked : 0;
            if (acked >= t->smss)
                t->cwnd += t->smss;
            t->cwnd = SS_MAX(t->cwnd, t->smss);
            if (!t->partial_ack_seen) {
                t->partial_ack_seen = true;
                ss_tcp_arm_rtx(t);
            }
        }
    } else {
        t->dupacks = 0;
        /* Appropriate byte counting (RFC 3465): growth follows the bytes
         * acknowledged, not the number of ACKs, so a peer's delayed ACKs
         * (one per two segments) do not halve it.  Slow start takes up to
         * L = 2 SMSS per ACK (3465 2.2); congestion avoidance one SMSS per
         * cwnd of bytes acknowledged (RFC 5681 3.1 (3)'s other form). */
        if (t->cwnd < t->ssthresh) {
            t->cwnd += SS_MIN(acked, 2 * t->smss);
        } else {
            t->bytes_acked += acked;
            if (t->bytes_acked >= t->cwnd) {
                t->bytes_acked -= t->cwnd;
                t->cwnd += t->smss;
            }
        }
        if (t->cwnd > (1u << 30))
            t->cwnd = 1u << 30;
    }
    /* RFC 6298 5.2 and 5.3. */
    if (t->snd_una == t->snd_max)
        ss_tcp_timer_clear(t, SS_T_RTX);
    else if (!t->in_recovery || t->sack_recovery || !t->partial_ack_seen)
        ss_tcp_arm_rtx(t);
    ss_tcb_notify(t);
}

/* RFC 6675 section 5: with SACK, a duplicate is any ACK that SACKs new
 * data, data-carrying or not, and recovery starts at the third, or as soon
 * as the scoreboard shows SND.UNA lost (IsLost(HighACK + 1)); never inside
 * the window of the previous recovery or timeout (RecoveryPoint). */
static void sack_loss_check(struct ss_tcb *t, bool dup)
{
    struct ss_engine *e = t->e;
    if (dup) {
        e->ctr->tcp_dup_acks_rx++;
        t->dupacks++;
    }
    if (t->in_recovery || t->snd_una == t->snd_max || SEQ_LT(t->snd_una, t->recover) ||
        t->snd_nxt != t->snd_max || (t->dupacks < 3 && !ss_sack_is_lost(t, t->snd_una)))
        return;
    e->ctr->tcp_fast_retransmits++;
    e->ctr->tcp_sack_recoveries++;
    t->recover = t->snd_max;
    t->ssthresh = SS_MAX(flight_size(t) / 2, 2 * t->smss); /* RFC 6675 (4.2), RFC 5681 (4) */
    t->cwnd = t->ssthresh;
    t->rtt_timing = false; /* Karn */
    t->in_recovery = true;
    t->sack_recovery = true;
    t->partial_ack_seen = false;
    /* (4.3): the segment at HighACK + 1 goes now, whatever pipe says */
    t->high_rxt = t->snd_una + ss_tcp_retransmit_first(t);
    if (!t->deadline[SS_T_RTX])
        ss_tcp_arm_rtx(t);
}

static void dup_ack(struct ss_tcb *t, uint32_t ack)
{
    struct ss_engine *e = t->e;
    e->ctr->tcp_dup_acks_rx++;
    t->dupacks++;
    if (t->in_recovery) {
        t->cwnd += t->smss; /* RFC 6582 3.2 step 4: inflate */
        return;
    }
    /* RFC 6582 3.2 step 2: only when the ACK covers more than recover. */
    if (t->dupacks == 3 && SEQ_GT(ack, t->recover)) {
        e->ctr->tcp_fast_retransmits++;
        t->recover = t->snd_max;
        t->ssthresh = SS_MAX(flight_size(t) / 2, 2 * t->smss); /* RFC 5681 (4) */
        t->rtt_timing = false; /* Karn */
        ss_tcp_retransmit_first(t);
        t->cwnd = t->ssthresh + 3 * t->smss;
        t->in_recovery = true;
        t->partial_ack_seen = false;
        if (!t->deadline[SS_T_RTX])
            ss_tcp_arm_rtx(t);
    }
}

/* Returns false when processing of the segment must stop. */
static bool process_ack(struct ss_tcb *t, const struct ss_tcp_repr *s)
{
    struct ss_engine *e = t->e;
    uint32_t ack = s->ack;
    if (SEQ_GT(ack, t->snd_max)) {
        /* RFC 9293: an ACK for something not yet sent: ACK, drop. */
        e->ctr->drop_tcp_bad_ack++;
        ss_tcp_send_ack(t);
        return false;
    }
    /* RFC 5961 5.2: acceptable only within SND.UNA - MAX.SND.WND. */
    if (SEQ_LT(ack, t->snd_una - t->max_snd_wnd)) {
        e->ctr->drop_tcp_bad_ack++;
        ss_tcp_send_challenge_ack(t);
        return false;
    }
    uint32_t old_wnd = t->snd_wnd;
    uint32_t wnd = (uint32_t)s->wnd << t->snd_wscale;
    /* RFC 9293: update the send window only from a newer segment. */
    bool wnd_update = SEQ_LT(t->snd_wl1, s->seq) || (t->snd_wl1 == s->seq && SEQ_LEQ(t->snd_wl2, ack));
    uint32_t newly_sacked = t->sack_ok && s->nsack ? ss_sack_update(t, s) : 0;
    /* RFC 5681 2: outstanding data, no data, no SYN/FIN, same ACK and
     * window.  Answers to zero-window probes are not duplicates: the probe
     * byte is not in flight (SND.NXT does not cover it), and a zero window
     * cannot take a retransmission. */
    bool classic_dup = ack == t->snd_una && s->len == 0 && !(s->flags & (SS_TH_SYN | SS_TH_FIN)) &&
                       wnd == old_wnd && wnd != 0 && t->snd_nxt != t->snd_una;
    bool sack_dup = ack == t->snd_una && t->snd_nxt != t->snd_una && (classic_dup || newly_sacked);
    if (SEQ_GT(ack, t->snd_una))
        new_ack(t, ack);
    if (t->sack_ok)
        sack_loss_check(t, sack_dup);
    else if (classic_dup)
        dup_ack(t, ack);
    if (wnd_update) {
        t->snd_wnd = wnd;
        t->snd_wl1 = s->seq;
        t->snd_wl2 = ack;
        if (wnd > t->max_snd_wnd)
            t->max_snd_wnd = wnd;
        if (wnd > old_wnd)
            ss_tcb_notify(t);
    }
    /* Our FIN acknowledged: the closing states move on. */
    bool fin_acked = t->fin_sent && SEQ_GT(t->snd_una, t->snd_fin);
    if (fin_acked) {
        switch (t->state) {
        case SS_TCP_FIN_WAIT_1:
            ss_tcp_set_state(t, SS_TCP_FIN_WAIT_2);
            if (t->user_closed)
                ss_tcp_timer_set(t, SS_T_2MSL, e->now_us + (uint64_t)e->cfg.fin_timeout_ms * 1000);
            ss_tcb_notify(t);
            break;
        case SS_TCP_CLOSING:
            ss_tcp_set_state(t, SS_TCP_TIME_WAIT);
            ss_tcp_timer_set(t, SS_T_2MSL, e->now_us + 2ull * e->cfg.msl_ms * 1000);
            break;
        case SS_TCP_LAST_ACK:
            ss_tcp_done(t, 0);
            return false;
        default:
            break;
        }
    }
    return true;
}

/* ---- text and FIN (sixth to eighth steps) ---- */

static void enter_fin(struct ss_tcb *t)
{
    struct ss_engine *e = t->e;
    t->rcv_nxt++;
    t->fin_rcvd = true;
    t->ooo_fin = false;
    t->ack_now = true;
    switch (t->state) {
    case SS_TCP_SYN_RECEIVED:
    case SS_TCP_ESTABLISHED:
        ss_tcp_set_state(t, SS_TCP_CLOSE_WAIT);
        break;
    case SS_TCP_FIN_WAIT_1:
        /* Our FIN unacknowledged (else we would be in FIN-WAIT-2). */
        ss_tcp_set_state(t, SS_TCP_CLOSING);
        break;
    case SS_TCP_FIN_WAIT_2:
        ss_tcp_set_state(t, SS_TCP_TIME_WAIT);
        ss_tcp_timer_clear(t, SS_T_KEEP);
        ss_tcp_timer_set(t, SS_T_2MSL, e->now_us + 2ull * e->cfg.msl_ms * 1000);
        break;
    default:
        break;
    }
    ss_tcb_notify(t);
}

static void process_text(struct ss_tcb *t, struct ss_tcp_repr *s)
{
    struct ss_engine *e = t->e;
    uint32_t seq = s->seq;
    const uint8_t *data = s->payload;
    uint32_t len = s->len;
    bool fin = s->flags & SS_TH_FIN;
    /* Trim what we already have (the front) ... */
    if (SEQ_LT(seq, t->rcv_nxt)) {
        uint32_t skip = t->rcv_nxt - seq;
        if (skip > len) {
            skip = len;
        }
        data += skip;
        len -= skip;
        seq += skip;
    }
    /* ... and what lies beyond the window we offered (the back). */
    uint32_t room = SS_MIN(rcv_wnd(t), ss_ring_space(&t->rcvbuf));
    uint32_t off = seq - t->rcv_nxt;
    if (off > room) {
        len = 0;
        fin = false;
    } else if (len > room - off) {
        len = room - off;
        fin = false;
    }
    if (len && t->rcvbuf.len + off + len > t->rcvbuf.cap)
        len = 0; /* cannot happen while the window is honoured; never overrun */
    if (len) {
        t->last_rcv_us = e->now_us;
        if (len > t->rcv_mss)
            t->rcv_mss = SS_MIN(len, e->cfg.mtu - 40);
        if (off == 0) {
            bool had_gap = t->nooo != 0;
            if (ss_ring_write_at(&t->rcvbuf, 0, data, len) < 0) {
                e->ctr->drop_tcp_ooo_full++;
                return;
            }
            ss_ring_commit(&t->rcvbuf, len);
            t->rcv_nxt += len;
            if (had_gap) {
                ooo_advance(t);
                t->ack_now = true; /* RFC 5681 4.2: ACK at once when a gap fills */
            }
            if (len >= t->rcv_mss && ++t->unacked_segs >= 2)
                t->ack_now = true; /* every second full-sized segment */
            ss_tcb_notify(t);
        } else {
            e->ctr->tcp_ooo_segments++;
            if (ss_ring_write_at(&t->rcvbuf, off, data, len) < 0 || !ooo_add(t, seq, seq + len))
                e->ctr->drop_tcp_ooo_full++;
            t->ack_now = true; /* RFC 5681 4.2: a dup ACK for out-of-order data */
        }
    } else if (s->len && !fin) {
        t->ack_now = true; /* nothing new: tell the peer where we are */
    }
    if (fin) {
        uint32_t fin_seq = seq + len;
        if (fin_seq == t->rcv_nxt)
            enter_fin(t);
        else if (SEQ_GT(fin_seq, t->rcv_nxt)) {
            t->ooo_fin = true;
            t->ooo_fin_seq = fin_seq;
            t->ack_now = true;
        }
    }
    if (t->ooo_fin && t->ooo_fin_seq == t->rcv_nxt && !t->fin_rcvd)
        enter_fin(t);
}

/* ---- synchronized states (RFC 9293 3.10.7.4) ---- */

/* SYN-RECEIVED -> ESTABLISHED: the ACK of our SYN (RFC 9293 3.10.7.4,
 * fifth step).  The SYN's sequence number is accounted here, so congestion
 * control (new_ack) sees only data acknowledged. */
static void syn_received_established(struct ss_tcb *t, const struct ss_tcp_repr *s)
{
    struct ss_engine *e = t->e;
    if (t->rtt_timing && t->backoff == 0)
        ss_tcp_rtt_sample(t, (uint32_t)(e->now_us - t->rtt_start_us));
    t->rtt_timing = false; /* Karn: no sample from a retransmitted SYN-ACK */
    ss_tcp_handshake_rto(t);
    t->backoff = 0;
    t->snd_una = t->iss + 1;
    ss_tcp_timer_clear(t, SS_T_RTX);
    t->snd_wnd = (uint32_t)s->wnd << t->snd_wscale;
    t->snd_wl1 = s->seq;
    t->snd_wl2 = s->ack;
    ss_tcp_set_state(t, t->wr_shut ? SS_TCP_FIN_WAIT_1 : SS_TCP_ESTABLISHED);
    ss_tcp_init_conn(t);
    t->last_rcv_us = e->now_us;
    if (t->keepalive)
        ss_tcp_timer_set(t, SS_T_KEEP, e->now_us + (uint64_t)t->ka_idle_ms * 1000);
    if (t->listener)
        ss_tcp_child_established(t);
    else
        ss_tcb_notify(t);
}

/* The acceptability test of RFC 9293 3.10.7.4, table 6. */
static bool acceptable(const struct ss_tcb *t, const struct ss_tcp_repr *s)
{
    uint32_t len = seg_len(s);
    uint32_t wnd = rcv_wnd(t);
    uint32_t nxt = t->rcv_nxt;
    if (len == 0 && wnd == 0)
        return s->seq == nxt;
    if (len == 0)
        return SEQ_LEQ(nxt, s->seq) && SEQ_LT(s->seq, nxt + wnd);
    if (wnd == 0)
        return false;
    uint32_t last = s->seq + len - 1;
    return (SEQ_LEQ(nxt, s->seq) && SEQ_LT(s->seq, nxt + wnd)) || (SEQ_LEQ(nxt, last) && SEQ_LT(last, nxt + wnd));
}

static void segment_arrives(struct ss_tcb *t, const struct ss_ip_repr *ip, struct ss_tcp_repr *s)
{
    struct ss_engine *e = t->e;
    (void)ip;
    /* SYN-RECEIVED and the peer retransmitted its SYN: our SYN-ACK was lost. */
    if (t->state == SS_TCP_SYN_RECEIVED && (s->flags & (SS_TH_SYN | SS_TH_ACK | SS_TH_RST)) == SS_TH_SYN &&
        s->seq == t->irs) {
        ss_tcp_send_syn(t);
        return;
    }
    /* Simultaneous open (RFC 9293 figure 7, line 6): the peer's SYN-ACK
     * <SEQ=IRS><ACK=ISS+1> crosses ours.  It repeats the SYN the sequence
     * check would reject, but its ACK completes the handshake; Linux (since
     * 6.11) accepts it the same way, answering nothing. */
    if (t->state == SS_TCP_SYN_RECEIVED && !t->listener &&
        (s->flags & (SS_TH_SYN | SS_TH_ACK | SS_TH_RST)) == (SS_TH_SYN | SS_TH_ACK) && s->seq == t->irs &&
        s->ack == t->iss + 1) {
        syn_received_established(t, s);
        return;
    }
    /* RFC 7323 5.3 PAWS: a timestamp older than TS.Recent marks an old
     * duplicate.  TS.Recent older than 24 days is no longer trusted. */
    if (t->ts_ok && s->has_ts && !(s->flags & SS_TH_RST) && (int32_t)(s->tsval - t->ts_recent) < 0 &&
        e->now_us - t->ts_recent_us < 24ull * 86400 * 1000000) {
        e->ctr->drop_tcp_paws++;
        ss_tcp_send_ack(t);
        return;
    }
    /* First: sequence number. */
    if (!acceptable(t, s)) {
        if (s->flags & SS_TH_RST) {
            e->ctr->drop_tcp_bad_rst++; /* RFC 5961 3.2: out of window, silently */
            return;
        }
        e->ctr->drop_tcp_out_of_window++;
        if (s->flags & SS_TH_SYN) {
            /* RFC 5961 4.2: a SYN gets a challenge ACK "irrespective of the
             * sequence number", under the rate limit. */
            ss_tcp_send_challenge_ack(t);
            return;
        }
        if (t->state == SS_TCP_TIME_WAIT && (s->flags & SS_TH_FIN))
            ss_tcp_timer_set(t, SS_T_2MSL, e->now_us + 2ull * e->cfg.msl_ms * 1000);
        ss_tcp_send_ack(t);
        return;
    }
    /* RFC 7323 4.3: remember the timestamp of an in-order segment. */
    if (t->ts_ok && s->has_ts && SEQ_LEQ(s->seq, t->last_ack_sent) && (int32_t)(s->tsval - t->ts_recent) >= 0) {
        t->ts_recent = s->tsval;
        t->ts_recent_us = e->now_us;
    }
    /* Second: RST (RFC 5961 3.2: exactly RCV.NXT, else a challenge ACK). */
    if (s->flags & SS_TH_RST) {
        if (s->seq != t->rcv_nxt) {
            e->ctr->drop_tcp_bad_rst++;
            ss_tcp_send_challenge_ack(t);
            return;
        }
        e->ctr->tcp_rst_rx++;
        switch (t->state) {
        case SS_TCP_SYN_RECEIVED:
            /* Passive: the half-open connection just goes; active
             * (simultaneous open): connection refused. */
            ss_tcp_done(t, t->listener ? 0 : -ECONNREFUSED);
            break;
        case SS_TCP_CLOSE_WAIT:
            /* Linux tcp_reset(): the peer had finished; writing now is a
             * broken pipe. */
            e->ctr->tcp_estab_resets++;
            ss_tcp_done(t, -EPIPE);
            break;
        case SS_TCP_ESTABLISHED:
            e->ctr->tcp_estab_resets++;
            ss_tcp_done(t, -ECONNRESET);
            break;
        case SS_TCP_TIME_WAIT:
            ss_tcp_done(t, 0);
            break;
        default:
            ss_tcp_done(t, -ECONNRESET);
        }
        return;
    }
    /* Fourth: SYN in a synchronized state (RFC 5961 4.2: challenge ACK). */
    if (s->flags & SS_TH_SYN) {
        e->ctr->drop_tcp_state++;
        ss_tcp_send_challenge_ack(t);
        return;
    }
    /* Fifth: ACK. */
    if (!(s->flags & SS_TH_ACK)) {
        e->ctr->drop_tcp_state++;
        return;
    }
    if (t->state == SS_TCP_SYN_RECEIVED) {
        if (!SEQ_LT(t->snd_una, s->ack) || SEQ_GT(s->ack, t->snd_max)) {
            /* The peer's SYN drew a cookie while the SYN queue was full, a
             * duplicate of it made this half-open connection later, and the
             * peer answers the cookie: its connection wins, as in Linux
             * (tcp_check_req leaves such an ACK to the listener's cookie
             * check). */
            struct ss_tcb *l = t->listener;
            if (l && !t->cookie && e->last_cookie_us && e->now_us - e->last_cookie_us < 128000000ull &&
                ss_syncookie_check(e, ip, s)) {
                ss_tcp_done(t, 0);
                ss_tcp_listen_input(l, ip, s, 0);
                return;
            }
            e->ctr->drop_tcp_bad_ack++;
            ss_tcp_send_rst_for(e, ip, s);
            return;
        }
        /* TCP_DEFER_ACCEPT as Linux has it: a bare ACK leaves the
         * connection half-open while the listener defers; data completes
         * it, and so does the ACK that answers a SYN-ACK retransmitted
         * once the time has passed. */
        if (t->listener && t->listener->defer_accept_s && !t->cookie && !s->len && !(s->flags & SS_TH_FIN) &&
            e->now_us - t->syn_us < (uint64_t)t->listener->defer_accept_s * 1000000) {
            e->ctr->tcp_defer_accept_drops++;
            return;
        }
        if (t->listener && t->listener->accept_len + t->listener->ahead > t->listener->backlog) {
            /* Linux without tcp_abort_on_overflow: ignore the ACK; the
             * SYN-ACK is retransmitted and the peer's next ACK may fit. */
            e->ctr->drop_tcp_accept_overflow++;
            if (t->cookie)
                ss_tcp_done(t, 0);
            return;
        }
        syn_received_established(t, s);
    }
    if (!process_ack(t, s))
        return;
    /* Sixth: URG is not supported; urgent data is delivered in line.
     * Seventh: text. */
    switch (t->state) {
    case SS_TCP_ESTABLISHED:
    case SS_TCP_FIN_WAIT_1:
    case SS_TCP_FIN_WAIT_2:
        if (t->user_closed && s->len && SEQ_GT(s->seq + s->len, t->rcv_nxt)) {
            /* Data for an application that has closed: nobody will read it.
             * Linux resets, and so do we (RFC 9293 3.10.7.4 leaves it open). */
            e->ctr->tcp_rst_on_close++;
            ss_tcp_send_rst(t);
            ss_tcp_done(t, 0);
            return;
        }
        process_text(t, s);
        break;
    default:
        /* CLOSE-WAIT onwards the peer has sent its FIN: more text is
         * ignored; its retransmitted FIN was answered by the window test. */
        break;
    }
}

void ss_tcp_input(struct ss_engine *e, const struct ss_ip_repr *ip, struct ss_tcp_repr *s)
{
    struct ss_tcb *t = ss_flow_lookup(e, ip->dst, s->dport, ip->src, s->sport);
    uint32_t min_iss = 0;
    if (t && t->state == SS_TCP_TIME_WAIT && (s->flags & (SS_TH_SYN | SS_TH_ACK | SS_TH_RST)) == SS_TH_SYN) {
        /* A new SYN for a pair in TIME-WAIT may reopen it: RFC 6191 with
         * timestamps, RFC 1122 4.2.2.13 by sequence number without.  It
         * goes on as a SYN for no connection, to a listener here or in
         * another instance of the group (one in use first, as any SYN);
         * with none anywhere the TIME-WAIT stays and answers it below with
         * an ACK, as Linux's does. */
        bool newer = (t->ts_ok && s->has_ts) ? (int32_t)(s->tsval - t->ts_recent) > 0 : SEQ_GT(s->seq, t->rcv_nxt);
        bool listener = ss_listener_lookup(e, ip->dst, s->dport, ip->src, s->sport) ||
                        (!e->in_forwarded && e->cfg.listen_owner &&
                         e->cfg.listen_owner(e->cfg.flow_ctx, ip->src, s->sport, s->dport, 0) >= 0);
        if (newer && listener) {
            min_iss = t->snd_nxt + 128 * 1024;
            if (!min_iss)
                min_iss = 1;
            e->ctr->tcp_timewait_reuse++;
            ss_tcp_done(t, 0);
            t = NULL;
        }
    }
    if (!t) {
        /* Another instance of the group may own it (the device steered one
         * of its segments here): then it goes there, unanswered. */
        if (!min_iss && ss_engine_forward(e, ip->src, s->sport, s->dport, SS_FWD_FLOW))
            return;
        bool syn = (s->flags & (SS_TH_SYN | SS_TH_ACK | SS_TH_RST)) == SS_TH_SYN;
        struct ss_tcb *l = ss_listener_lookup(e, ip->dst, s->dport, ip->src, s->sport);
        /* Listen spawn: a connection goes to a listener a process uses,
         * here first, else in another instance (the global fallback); an
         * unused one here takes it only when none is used anywhere. */
        if (l && !l->active && syn && ss_engine_forward(e, ip->src, s->sport, s->dport, SS_FWD_ACTIVE))
            return;
        if (l) {
            ss_tcp_listen_input(l, ip, s, min_iss);
            return;
        }
        if (syn && ss_engine_forward(e, ip->src, s->sport, s->dport, SS_FWD_LISTENER))
            return;
        /* RFC 9293 3.10.7.1: CLOSED, a reset answers anything but a reset. */
        e->ctr->drop_tcp_no_socket++;
        ss_tcp_send_rst_for(e, ip, s);
        return;
    }
    if (t->state == SS_TCP_SYN_SENT)
        syn_sent_input(t, ip, s);
    else
        segment_arrives(t, ip, s);
    if (t->state == SS_TCP_CLOSED)
        return;
    /* The peer is alive: keepalive counts idleness from here (RFC 1122
     * 4.2.3.6: no probe while data or ACKs arrive). */
    t->last_rcv_us = e->now_us;
    t->ka_sent = 0;
    ss_tcp_output(t);
    if (t->ack_now)
        ss_tcp_send_ack(t);
    else if (t->last_ack_sent != t->rcv_nxt && !t->deadline[SS_T_DELACK])
        ss_tcp_timer_set(t, SS_T_DELACK, e->now_us + (uint64_t)e->cfg.delack_ms * 1000);
}

/* ICMP destination unreachable for one of our connections (RFC 1122
 * 4.2.3.9, RFC 1191, hardened by RFC 5927). */
void ss_tcp_icmp_error(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport,
                       uint32_t seq, uint8_t code, uint16_t mtu)
{
    struct ss_tcb *t = ss_flow_lookup(e, lip, lport, rip, rport);
    /* RFC 5927 4.1: believe it only if it quotes a sequence number in flight. */
    if (!t || t->state == SS_TCP_TIME_WAIT || SEQ_LT(seq, t->snd_una) || SEQ_GEQ(seq, t->snd_max)) {
        e->ctr->drop_icmp_no_conn++;
        return;
    }
    switch (code) {
    case SS_ICMP_CODE_FRAG_NEEDED: {
        /* RFC 1191 6.1: lower the segment size to the reported MTU and
         * resend; an MTU below 68 (RFC 791's minimum) is bogus. */
        if (mtu < 68) {
            e->ctr->drop_icmp_no_conn++;
            return;
        }
        uint32_t mss = (uint32_t)mtu - 40 - (t->ts_ok ? 12 : 0);
        mss = SS_MAX(mss, 64u);
        if (t->smss && mss < t->smss) {
            t->smss = mss;
            e->ctr->icmp_frag_needed++;
            t->snd_nxt = t->snd_una; /* resend what was too big, now */
            t->rtt_timing = false;
            ss_tcp_output(t);
        }
        return;
    }
    case SS_ICMP_CODE_PROTO_UNREACH:
    case SS_ICMP_CODE_PORT_UNREACH:
        /* RFC 1122 4.2.3.9: hard errors.  A connection being opened is
         * aborted; an established one only records it, as RFC 5927 7 and
         * Linux do, since an ICMP message is easily forged. */
        if (t->state == SS_TCP_SYN_SENT || t->state == SS_TCP_SYN_RECEIVED) {
            e->ctr->icmp_hard_errors++;
            ss_tcp_done(t, -ECONNREFUSED);
            ss_engine_reap(e);
        } else {
            t->soft_error = ECONNREFUSED;
        }
        return;
    default:
        /* Net or host unreachable: soft errors, reported if the
         * connection later times out (RFC 1122 4.2.3.9). */
        t->soft_error = code == 0 ? ENETUNREACH : EHOSTUNREACH;
        return;
    }
}
