/*
 * TCP output: building segments, and deciding what may be sent now.
 *
 * ss_tcp_output -> next_segment (window, cwnd, Nagle, sender SWS)
 *               -> emit -> ss_ip_output
 * Every segment carries our current ACK and window; one that does clears
 * the delayed-ACK state.
 */
#include <string.h>

#include "engine_int.h"

static uint32_t ts_now(const struct ss_tcb *t) { return (uint32_t)(t->e->now_us / 1000) + t->ts_offset; }

static uint32_t sack_blocks(const struct ss_tcb *t)
{
    if (!t->sack_ok || !t->nooo)
        return 0;
    return SS_MIN(t->nooo, t->ts_ok ? 3u : 4u);
}

/* RFC 9293 3.7.1: the options a segment carries come out of its payload.
 * smss already leaves room for timestamps; SACK blocks, present while
 * out-of-order data waits, take 4 + 8 bytes each on top. */
static uint32_t mss_now(const struct ss_tcb *t)
{
    uint32_t n = sack_blocks(t);
    uint32_t opt = n ? 4 + 8 * n : 0;
    return t->smss > opt + 64 ? t->smss - opt : 64;
}

/* The window field for an outgoing segment.  RFC 9293 3.8.6.2.2: the right
 * edge never moves left, and (receiver SWS avoidance) moves right only in
 * steps of at least min(buffer / 2, MSS). */
static uint16_t select_window(struct ss_tcb *t)
{
    uint32_t ws = t->rcv_wscale;
    uint32_t space = ss_ring_space(&t->rcvbuf);
    uint32_t win = SS_MIN(space, 65535u << ws);
    uint32_t cur = SEQ_GT(t->rcv_adv, t->rcv_nxt) ? t->rcv_adv - t->rcv_nxt : 0;
    if (win > cur && win - cur < SS_MIN(t->rcvbuf.cap / 2, t->e->cfg.mtu - 40))
        win = cur;
    if (win < cur)
        win = cur;
    uint32_t field = win >> ws;
    if ((field << ws) < cur)
        field++; /* scaling must not shrink the edge we offered */
    if (field > 65535)
        field = 65535;
    if (SEQ_GT(t->rcv_nxt + (field << ws), t->rcv_adv))
        t->rcv_adv = t->rcv_nxt + (field << ws);
    return (uint16_t)field;
}

/* Sends one segment of this connection: flags, sequence number, and len
 * bytes of the send buffer starting at sequence number seq (the bytes
 * beyond the buffer are never asked for). */
static void emit(struct ss_tcb *t, uint8_t flags, uint32_t seq, uint32_t len)
{
    struct ss_engine *e = t->e;
    struct ss_tcp_repr r;
    memset(&r, 0, sizeof r);
    r.sport = t->lport;
    r.dport = t->rport;
    r.seq = seq;
    r.flags = flags;
    r.len = len;
    if (flags & SS_TH_ACK)
        r.ack = t->rcv_nxt;
    if (flags & SS_TH_SYN) {
        /* RFC 7323 2.2: the window of a SYN is never scaled. */
        uint32_t w = SS_MIN(ss_ring_space(&t->rcvbuf), 65535u);
        r.wnd = (uint16_t)w;
        if (flags & SS_TH_ACK)
            t->rcv_adv = t->rcv_nxt + w;
        r.has_mss = 1;
        r.mss = (uint16_t)(e->cfg.mtu - 40);
        if (t->user_mss && t->user_mss < r.mss)
            r.mss = t->user_mss;
        bool active = t->state == SS_TCP_SYN_SENT;
        if (active || t->ws_ok) {
            r.has_ws = 1;
            r.ws = t->rcv_wscale;
        }
        r.sack_ok = active || t->sack_ok;
        if (active || t->ts_ok) {
            r.has_ts = 1;
            r.tsval = ts_now(t);
            r.tsecr = (flags & SS_TH_ACK) ? t->ts_recent : 0;
        }
    } else if (!(flags & SS_TH_RST) || (flags & SS_TH_ACK)) {
        r.wnd = select_window(t);
        if (t->ts_ok) {
            r.has_ts = 1;
            r.tsval = ts_now(t);
            r.tsecr = t->ts_recent;
        }
        /* RFC 2018 4: the first block reports the most recent arrival; room
         * for three beside timestamps, four without. */
        if (flags & SS_TH_ACK) {
            uint32_t max = sack_blocks(t);
            for (uint32_t i = 0; i < max; i++) {
                r.sack[r.nsack][0] = t->ooo[i][0];
                r.sack[r.nsack][1] = t->ooo[i][1];
                r.nsack++;
            }
        }
    }
    size_t hl = ss_tcp_hdr_len(&r);
    uint8_t *th = e->frame + SS_ETH_HLEN + SS_IP_HLEN;
    if (len)
        ss_ring_peek(&t->sndbuf, seq - t->buf_seq, th + hl, len);
    uint32_t src = t->lip ? t->lip : e->cfg.ip;
    ss_tcp_emit(th, &r, src, t->rip);
    if (flags & SS_TH_ACK) {
        t->last_ack_sent = t->rcv_nxt;
        t->unacked_segs = 0;
        t->ack_now = false;
        ss_tcp_timer_clear(t, SS_T_DELACK);
    }
    if (flags & SS_TH_RST)
        e->ctr->tcp_rst_tx++;
    e->ctr->tcp_tx_segments++;
    ss_ip_output(e, src, t->rip, SS_IPPROTO_TCP, hl + len);
}

static uint32_t data_end(const struct ss_tcb *t) { return t->buf_seq + t->sndbuf.len; }


/* Sends a data and/or FIN segment at seq, at most max bytes, and updates the
 * send sequence space.  Returns the sequence space it consumed. */
static uint32_t send_data(struct ss_tcb *t, uint32_t seq, uint32_t max)
{
    uint32_t end = data_end(t);
    uint32_t len = SEQ_LT(seq, end) ? SS_MIN(max, end - seq) : 0;
    uint8_t flags = SS_TH_ACK;
    if (len && seq + len == end)
        flags |= SS_TH_PSH;
    /* Our FIN follows the last byte once writing is shut (RFC 9293 3.10.4). */
    if (t->wr_shut && seq + len == end) {
        flags |= SS_TH_FIN;
        t->fin_sent = true;
        t->snd_fin = end;
    }
    if (SEQ_LT(seq, t->snd_max))
        t->e->ctr->tcp_retransmits++;
    else if (!t->rtt_timing && len) {
        /* RFC 6298 3 / Karn: time one new segment at a time. */
        t->rtt_timing = true;
        t->rtt_seq = seq + len;
        t->rtt_start_us = t->e->now_us;
    }
    emit(t, flags, seq, len);
    return len + ((flags & SS_TH_FIN) ? 1 : 0);
}

/* SACK-based loss recovery, RFC 6675 section 5 step (C): while the window
 * has room beside what is still in the network, send by NextSeg(): a lost
 * hole (rule 1), else new data (rule 2), else any hole below the highest
 * SACK (rule 3).  Returns whether anything was sent. */
static bool send_recovery(struct ss_tcb *t)
{
    bool sent = false;
    uint32_t mss = mss_now(t);
    uint32_t pipe = ss_sack_pipe(t);
    while (pipe + t->smss <= t->cwnd) {
        uint32_t seq, len = ss_sack_next_hole(t, mss, true, &seq);
        if (!len) {
            uint32_t end = data_end(t);
            uint32_t avail = SEQ_LT(t->snd_max, end) ? end - t->snd_max : 0;
            uint32_t right = t->snd_una + t->snd_wnd;
            uint32_t room = SEQ_LT(t->snd_max, right) ? right - t->snd_max : 0;
            bool fin_due = t->wr_shut && !t->fin_sent && t->snd_max == end;
            if ((avail && room) || fin_due) {
                uint32_t used = send_data(t, t->snd_max, SS_MIN(avail, SS_MIN(room, mss)));
                t->snd_max += used;
                t->snd_nxt = t->snd_max;
                pipe += used;
                sent = true;
                continue;
            }
            len = ss_sack_next_hole(t, mss, false, &seq);
            if (!len)
                break;
        }
        send_data(t, seq, len);
        t->high_rxt = seq + len;
        pipe += len;
        sent = true;
    }
    return sent;
}

/* Sends what the windows, Nagle and SWS avoidance allow (RFC 9293 3.8.6.2.1,
 * RFC 1122 4.2.3.4, RFC 896, RFC 5681). */
void ss_tcp_output(struct ss_tcb *t)
{
    switch (t->state) {
    case SS_TCP_ESTABLISHED:
    case SS_TCP_CLOSE_WAIT:
    case SS_TCP_FIN_WAIT_1:
    case SS_TCP_CLOSING:
    case SS_TCP_LAST_ACK:
        break;
    default:
        return;
    }
    bool sent = false;
    if (t->in_recovery && t->sack_recovery)
        sent = send_recovery(t);
    else for (;;) {
        uint32_t end = data_end(t);
        bool fin_due = t->wr_shut && (!t->fin_sent || SEQ_LEQ(t->snd_nxt, t->snd_fin));
        uint32_t avail = SEQ_LT(t->snd_nxt, end) ? end - t->snd_nxt : 0;
        if (!avail && !(fin_due && t->snd_nxt == end))
            break;
        uint32_t span = UINT32_MAX;
        if (SEQ_LT(t->snd_nxt, t->snd_max) && t->nsacked) {
            /* going back after a timeout: what the peer SACKed is skipped */
            span = ss_sack_resend_span(t, &t->snd_nxt);
            if (SEQ_GT(t->snd_nxt, t->snd_max))
                t->snd_nxt = t->snd_max;
            avail = SEQ_LT(t->snd_nxt, end) ? end - t->snd_nxt : 0;
            if (!avail && !(fin_due && t->snd_nxt == end))
                break;
        }
        uint32_t flight = t->snd_nxt - t->snd_una;
        /* What the peer SACKed has left the network: the congestion window
         * counts only what may still be in it, as Linux's packets in flight
         * do.  New data then goes out on each SACK around a loss (RFC
         * 3042's limited transmit, generalised), and those segments bring
         * the SACKs that let RFC 6675 see the loss, even in a small window. */
        uint32_t in_net = flight - SS_MIN(flight, ss_sack_bytes(t, t->snd_nxt));
        uint32_t usable = SS_MIN(t->cwnd > in_net ? t->cwnd - in_net : 0, t->snd_wnd > flight ? t->snd_wnd - flight : 0);
        uint32_t mss = mss_now(t);
        uint32_t len = SS_MIN(SS_MIN(avail, span), SS_MIN(usable, mss));
        if (avail) {
            /* TCP_CORK holds partial segments back until the cork goes, the
             * FIN, or the persist timer (Linux's probe timer); MSG_MORE
             * only the send that carried it, as Linux's tcp_push: the next
             * ACK sends them under Nagle's rule. */
            bool corked = (t->cork & 1) || ((t->cork & 2) && t->in_send);
            bool ok = len == mss || SEQ_LT(t->snd_nxt, t->snd_max) || (len == avail && t->wr_shut) ||
                      (!corked && ((len == avail && (t->nodelay || flight == 0)) ||
                                   (len && t->max_snd_wnd && len >= t->max_snd_wnd / 2)));
            if (!len || !ok)
                break;
        } else if (t->snd_wnd == 0 && flight) {
            break; /* a bare FIN waits like data when nothing can be sent */
        }
        uint32_t used = send_data(t, t->snd_nxt, len);
        t->snd_nxt += used;
        if (SEQ_GT(t->snd_nxt, t->snd_max))
            t->snd_max = t->snd_nxt;
        sent = true;
        if (!used)
            break;
    }
    if (sent && !t->deadline[SS_T_RTX])
        ss_tcp_arm_rtx(t); /* RFC 6298 5.1 */
    /* Data waits behind a window too small for it and nothing is in flight to
     * bring an update: probe (RFC 9293 3.8.6.1). */
    uint32_t pending = SEQ_LT(t->snd_nxt, data_end(t)) ? data_end(t) - t->snd_nxt : 0;
    if (pending && t->snd_nxt == t->snd_una && !t->deadline[SS_T_RTX]) {
        if (!t->deadline[SS_T_PERSIST]) {
            t->persist_backoff = 0;
            ss_tcp_timer_set(t, SS_T_PERSIST, t->e->now_us + SS_MAX(t->rto_us, t->e->cfg.rto_min_ms * 1000u));
        }
    } else if (t->deadline[SS_T_PERSIST] && (sent || !pending)) {
        ss_tcp_timer_clear(t, SS_T_PERSIST);
    }
}

/* A segment without data carries SND.MAX, not SND.NXT: after a timeout
 * rewinds SND.NXT, the peer's RCV.NXT may already be past it, and it would
 * discard the ACK as an old duplicate (BSD does the same). */
void ss_tcp_send_ack(struct ss_tcb *t) { emit(t, SS_TH_ACK, t->snd_max, 0); }

/* RFC 5961 section 7: challenge ACKs are limited per second per instance,
 * so they cannot be used to amplify or to probe. */
void ss_tcp_send_challenge_ack(struct ss_tcb *t)
{
    struct ss_engine *e = t->e;
    if (e->now_us - e->challenge_window_us >= 1000000) {
        e->challenge_window_us = e->now_us;
        e->challenge_count = 0;
    }
    if (e->challenge_count >= e->cfg.challenge_ack_limit) {
        e->ctr->tcp_challenge_ack_limited++;
        return;
    }
    e->challenge_count++;
    e->ctr->tcp_challenge_acks++;
    ss_tcp_send_ack(t);
}

void ss_tcp_send_syn(struct ss_tcb *t)
{
    if (t->state == SS_TCP_SYN_SENT)
        emit(t, SS_TH_SYN, t->iss, 0);
    else
        emit(t, SS_TH_SYN | SS_TH_ACK, t->iss, 0);
}

/* RFC 9293 3.10.4 ABORT: <SEQ=SND.NXT><CTL=RST>, with the ACK Linux adds;
 * SND.MAX for the reason given at ss_tcp_send_ack. */
void ss_tcp_send_rst(struct ss_tcb *t) { emit(t, SS_TH_RST | SS_TH_ACK, t->snd_max, 0); }

/* RFC 1122 4.2.3.6: a keepalive is SEG.SEQ = SND.NXT - 1 with no data; the
 * peer must answer with an ACK.  We use SND.UNA - 1, as Linux does, which is
 * the same when nothing is in flight. */
void ss_tcp_send_keepalive(struct ss_tcb *t) { emit(t, SS_TH_ACK, t->snd_una - 1, 0); }

/* The persist timer fired with data waiting.  RFC 1122 4.2.3.4: when the
 * window has room, the override timeout sends what it allows; when it is
 * zero, RFC 9293 3.8.6.1: a probe of one byte of new data.  The probe byte
 * is not counted as sent, but an ACK for it is acceptable (SND.MAX). */
void ss_tcp_send_probe(struct ss_tcb *t)
{
    uint32_t end = data_end(t);
    if (!SEQ_LT(t->snd_nxt, end)) {
        ss_tcp_send_ack(t);
        return;
    }
    uint32_t flight = t->snd_nxt - t->snd_una;
    uint32_t usable = t->snd_wnd > flight ? t->snd_wnd - flight : 0;
    if (usable) {
        t->snd_nxt += send_data(t, t->snd_nxt, SS_MIN(usable, mss_now(t)));
        if (SEQ_GT(t->snd_nxt, t->snd_max))
            t->snd_max = t->snd_nxt;
        ss_tcp_arm_rtx(t);
        return;
    }
    emit(t, SS_TH_ACK, t->snd_nxt, 1);
    if (SEQ_GT(t->snd_nxt + 1, t->snd_max))
        t->snd_max = t->snd_nxt + 1;
}

/* Resends the first unacknowledged segment (fast retransmit, partial ACK). */
uint32_t ss_tcp_retransmit_first(struct ss_tcb *t)
{
    if (t->state == SS_TCP_SYN_SENT || t->state == SS_TCP_SYN_RECEIVED) {
        ss_tcp_send_syn(t);
        return 1;
    }
    uint32_t used = send_data(t, t->snd_una, mss_now(t));
    if (SEQ_LT(t->snd_nxt, t->snd_una + used))
        t->snd_nxt = t->snd_una + used;
    if (SEQ_GT(t->snd_nxt, t->snd_max))
        t->snd_max = t->snd_nxt;
    return used;
}

/* RFC 9293 3.10.7.1: the reset answering a segment for no connection.
 * If the segment has an ACK, <SEQ=SEG.ACK><CTL=RST>; else
 * <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.  Never answer a reset. */
void ss_tcp_send_rst_for(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_tcp_repr *seg)
{
    if (seg->flags & SS_TH_RST)
        return;
    struct ss_tcp_repr r;
    memset(&r, 0, sizeof r);
    r.sport = seg->dport;
    r.dport = seg->sport;
    if (seg->flags & SS_TH_ACK) {
        r.seq = seg->ack;
        r.flags = SS_TH_RST;
    } else {
        r.ack = seg->seq + seg->len + ((seg->flags & SS_TH_SYN) ? 1 : 0) + ((seg->flags & SS_TH_FIN) ? 1 : 0);
        r.flags = SS_TH_RST | SS_TH_ACK;
    }
    uint8_t *th = e->frame + SS_ETH_HLEN + SS_IP_HLEN;
    size_t hl = ss_tcp_emit(th, &r, ip->dst, ip->src);
    e->ctr->tcp_rst_tx++;
    e->ctr->tcp_tx_segments++;
    ss_ip_output(e, ip->dst, ip->src, SS_IPPROTO_TCP, hl);
}

/* A SYN-ACK that keeps no state: its ISN is the cookie, and it offers only
 * the MSS, since window scaling, SACK and timestamps would need state
 * (RFC 4987 3.6). */
void ss_tcp_send_cookie_synack(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_tcp_repr *seg,
                               uint32_t cookie, uint16_t mss)
{
    struct ss_tcp_repr r;
    memset(&r, 0, sizeof r);
    r.sport = seg->dport;
    r.dport = seg->sport;
    r.seq = cookie;
    r.ack = seg->seq + 1;
    r.flags = SS_TH_SYN | SS_TH_ACK;
    r.wnd = (uint16_t)SS_MIN(e->cfg.rcvbuf, 65535u);
    r.has_mss = 1;
    r.mss = mss;
    uint8_t *th = e->frame + SS_ETH_HLEN + SS_IP_HLEN;
    size_t hl = ss_tcp_emit(th, &r, ip->dst, ip->src);
    e->ctr->tcp_tx_segments++;
    ss_ip_output(e, ip->dst, ip->src, SS_IPPROTO_TCP, hl);
}
