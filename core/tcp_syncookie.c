/*
 * SYN cookies (RFC 4987 section 3.6): when a listener's SYN queue is full,
 * the SYN-ACK's ISN carries what we need to rebuild the connection from the
 * final ACK, and no state is kept.
 *
 * cookie = t (5 bits: a 64-second counter) | m (3 bits: MSS index)
 *        | s (24 bits: SipHash of the 4-tuple, t and the client's ISN)
 */
#include "engine_int.h"

static const uint16_t mss_table[8] = {536, 1024, 1200, 1300, 1360, 1400, 1440, 1460};

static uint32_t cookie_mac(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_tcp_repr *s,
                           uint32_t client_isn, uint64_t count)
{
    uint32_t data[6] = {ip->src, ip->dst, (uint32_t)s->sport << 16 | s->dport, client_isn, (uint32_t)count,
                        (uint32_t)(count >> 32)};
    return (uint32_t)ss_siphash(e->cfg.secret, data, sizeof data) & 0xffffff;
}

uint32_t ss_syncookie_make(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_tcp_repr *s,
                           uint16_t *mss_inout)
{
    uint64_t count = e->now_us / 64000000ull;
    uint32_t idx = 0;
    for (uint32_t i = 0; i < 8; i++)
        if (mss_table[i] <= *mss_inout)
            idx = i;
    *mss_inout = mss_table[idx];
    return (uint32_t)(count & 31) << 27 | idx << 24 | cookie_mac(e, ip, s, s->seq, count);
}

uint16_t ss_syncookie_check(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_tcp_repr *s)
{
    uint32_t cookie = s->ack - 1;
    uint64_t count = e->now_us / 64000000ull;
    /* Valid for the current period and the one before: up to two minutes. */
    for (uint64_t age = 0; age < 2 && age <= count; age++) {
        uint64_t c = count - age;
        if ((c & 31) != cookie >> 27)
            continue;
        if (cookie_mac(e, ip, s, s->seq - 1, c) == (cookie & 0xffffff))
            return mss_table[(cookie >> 24) & 7];
    }
    return 0;
}
