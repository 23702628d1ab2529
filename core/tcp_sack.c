/*
 * The sender's side of SACK (RFC 2018): the scoreboard of what the peer
 * holds above SND.UNA, and the loss recovery of RFC 6675 that uses it.
 *
 * Why: NewReno repairs one hole per round trip, and counts as duplicates
 * only ACKs without data (RFC 5681 2), so a connection carrying data both
 * ways never sees three duplicates and waits for a timeout on every loss.
 * RFC 6675 counts any ACK that SACKs new data, declares a segment lost once
 * enough is SACKed above it, and resends every lost segment in one round
 * trip, sending as much as the congestion window allows beside the
 * estimate of what is still in the network ("pipe").
 *
 * The scoreboard is a short sorted list of disjoint ranges; when it is full
 * the highest range is forgotten, which only makes the sender more
 * conservative (fewer bytes counted as SACKed).
 */
#include <string.h>

#include "engine_int.h"

/* Forgets what SND.UNA has passed.  An ACK that stops exactly where a
 * SACKed range starts means the receiver dropped what it had SACKed
 * (reneging, RFC 2018 8): the whole scoreboard goes, as in Linux's
 * tcp_check_sack_reneging.  (The ACK of a hole's retransmission moves past
 * the SACKed data that follows it, so this is never the normal case.) */
void ss_sack_prune(struct ss_tcb *t)
{
    for (uint32_t i = 0; i < t->nsacked; i++) {
        if (t->sacked[i][0] == t->snd_una) {
            t->e->ctr->tcp_sack_reneging++;
            t->nsacked = 0;
            /* Going back after a timeout had skipped the SACKed data:
             * go back again, over it.  Otherwise the next timeout will. */
            if (SEQ_LT(t->snd_nxt, t->snd_max))
                t->snd_nxt = t->snd_una;
            return;
        }
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < t->nsacked; i++) {
        if (SEQ_LEQ(t->sacked[i][1], t->snd_una))
            continue;
        t->sacked[k][0] = SEQ_LT(t->sacked[i][0], t->snd_una) ? t->snd_una : t->sacked[i][0];
        t->sacked[k][1] = t->sacked[i][1];
        k++;
    }
    t->nsacked = k;
}

uint32_t ss_sack_bytes(const struct ss_tcb *t, uint32_t upto)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < t->nsacked && SEQ_LT(t->sacked[i][0], upto); i++)
        n += (SEQ_LT(upto, t->sacked[i][1]) ? upto : t->sacked[i][1]) - t->sacked[i][0];
    return n;
}

uint32_t ss_sack_resend_span(const struct ss_tcb *t, uint32_t *seq)
{
    for (uint32_t i = 0; i < t->nsacked; i++) {
        if (SEQ_LT(*seq, t->sacked[i][0]))
            return t->sacked[i][0] - *seq;
        if (SEQ_LT(*seq, t->sacked[i][1]))
            *seq = t->sacked[i][1];
    }
    return UINT32_MAX;
}

/* Inserts [l, r) keeping the list sorted and disjoint. */
static void add_range(struct ss_tcb *t, uint32_t l, uint32_t r)
{
    uint32_t i = 0;
    while (i < t->nsacked && SEQ_LT(t->sacked[i][1], l))
        i++;
    /* ranges i.. that touch [l, r) merge into it */
    uint32_t j = i;
    while (j < t->nsacked && SEQ_LEQ(t->sacked[j][0], r)) {
        if (SEQ_LT(t->sacked[j][0], l))
            l = t->sacked[j][0];
        if (SEQ_GT(t->sacked[j][1], r))
            r = t->sacked[j][1];
        j++;
    }
    uint32_t removed = j - i;
    if (removed == 0) {
        if (t->nsacked == SS_SACK_MAX) {
            if (i == SS_SACK_MAX)
                return; /* above everything kept, and no room: forget it */
            t->nsacked--; /* the highest range makes room */
        }
        memmove(&t->sacked[i + 1], &t->sacked[i], (t->nsacked - i) * sizeof t->sacked[0]);
        t->nsacked++;
    } else if (removed > 1) {
        memmove(&t->sacked[i + 1], &t->sacked[j], (t->nsacked - j) * sizeof t->sacked[0]);
        t->nsacked -= removed - 1;
    }
    t->sacked[i][0] = l;
    t->sacked[i][1] = r;
}

uint32_t ss_sack_update(struct ss_tcb *t, const struct ss_tcp_repr *s)
{
    struct ss_engine *e = t->e;
    uint32_t before = ss_sack_bytes(t, t->snd_max);
    for (uint32_t i = 0; i < s->nsack; i++) {
        uint32_t l = s->sack[i][0], r = s->sack[i][1];
        /* RFC 2883: a block below the cumulative ACK reports a duplicate
         * (D-SACK); it says nothing about holes. */
        if (SEQ_LEQ(r, s->ack) || SEQ_LT(l, t->snd_una)) {
            e->ctr->tcp_dsack_rx++;
            continue;
        }
        /* A block for data never sent, or empty, is a broken peer's. */
        if (!SEQ_LT(l, r) || SEQ_GT(r, t->snd_max)) {
            e->ctr->drop_tcp_bad_sack++;
            continue;
        }
        add_range(t, l, r);
    }
    uint32_t after = ss_sack_bytes(t, t->snd_max);
    return after > before ? after - before : 0;
}

/* The sequence number below which every unSACKed byte is lost by RFC 6675's
 * IsLost(): DupThresh (3) SACKed ranges, or more than 2 * SMSS SACKed
 * bytes, above it.  IsLost falls as the sequence rises, so one boundary
 * serves every hole.  SND.UNA when nothing is lost. */
static uint32_t lost_below(const struct ss_tcb *t)
{
    uint32_t bytes = 0;
    for (uint32_t i = t->nsacked; i-- > 0;) {
        bytes += t->sacked[i][1] - t->sacked[i][0];
        if (bytes > 2 * t->smss || t->nsacked - i >= 3)
            return t->sacked[i][0];
    }
    return t->snd_una;
}

bool ss_sack_is_lost(const struct ss_tcb *t, uint32_t seq) { return SEQ_LT(seq, lost_below(t)); }

/* Unsacked bytes of [snd_una, upto) */
static uint32_t holes_below(const struct ss_tcb *t, uint32_t upto)
{
    uint32_t n = 0, from = t->snd_una;
    for (uint32_t i = 0; i <= t->nsacked; i++) {
        uint32_t to = i < t->nsacked ? t->sacked[i][0] : t->snd_max;
        if (SEQ_LT(upto, to))
            to = upto;
        if (SEQ_LT(from, to))
            n += to - from;
        if (i < t->nsacked)
            from = t->sacked[i][1];
        if (!SEQ_LT(from, upto))
            break;
    }
    return n;
}

/* RFC 6675 SetPipe(): every unSACKed byte not lost counts once, and once
 * more if it was retransmitted. */
uint32_t ss_sack_pipe(const struct ss_tcb *t)
{
    uint32_t unsacked = holes_below(t, t->snd_max);
    uint32_t lost = holes_below(t, lost_below(t));
    uint32_t rexmit = SEQ_GT(t->high_rxt, t->snd_una) ? holes_below(t, t->high_rxt) : 0;
    return unsacked - lost + rexmit;
}

/* RFC 6675 NextSeg() rules 1 and 3: the first unSACKed byte above HighRxt
 * below the highest SACKed byte, lost ones first (rule 1), then any (rule
 * 3).  Rule 2, new data, is the caller's, between the two.  Returns the
 * length (at most mss, never into a SACKed range) and sets *seq; 0: none. */
uint32_t ss_sack_next_hole(const struct ss_tcb *t, uint32_t mss, bool lost_only, uint32_t *seq)
{
    uint32_t limit = lost_only ? lost_below(t) : (t->nsacked ? t->sacked[t->nsacked - 1][0] : t->snd_una);
    uint32_t from = t->snd_una;
    for (uint32_t i = 0; i < t->nsacked; i++) {
        uint32_t to = t->sacked[i][0];
        uint32_t s = SEQ_GT(t->high_rxt, from) ? t->high_rxt : from;
        if (!SEQ_LT(s, limit))
            return 0;
        if (SEQ_LT(s, to)) {
            *seq = s;
            return SS_MIN(mss, to - s);
        }
        from = t->sacked[i][1];
    }
    return 0;
}
