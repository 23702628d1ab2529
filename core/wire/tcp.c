/* TCP headers and options (RFC 9293 section 3.1, RFC 7323, RFC 2018). */
#include <string.h>

#include "wire.h"

enum { OPT_EOL = 0, OPT_NOP = 1, OPT_MSS = 2, OPT_WS = 3, OPT_SACK_OK = 4, OPT_SACK = 5, OPT_TS = 8 };

/* RFC 9293 3.1: an option is either one byte (EOL, NOP) or kind, length,
 * data with length >= 2 covering kind and length.  A length that is zero,
 * one, or runs past the header is malformed; RFC 1122 4.2.2.5 asks us to
 * survive it, and we drop the segment rather than guess. */
static int parse_options(const uint8_t *p, size_t n, struct ss_tcp_repr *r)
{
    size_t i = 0;
    while (i < n) {
        uint8_t kind = p[i];
        if (kind == OPT_EOL)
            break;
        if (kind == OPT_NOP) {
            i++;
            continue;
        }
        if (i + 1 >= n)
            return -1;
        uint8_t olen = p[i + 1];
        if (olen < 2 || i + olen > n)
            return -1;
        const uint8_t *d = p + i + 2;
        switch (kind) {
        case OPT_MSS:
            if (olen != 4)
                return -1;
            r->has_mss = 1;
            r->mss = ss_rd16(d);
            break;
        case OPT_WS:
            if (olen != 3)
                return -1;
            r->has_ws = 1;
            r->ws = d[0];
            break;
        case OPT_SACK_OK:
            if (olen != 2)
                return -1;
            r->sack_ok = 1;
            break;
        case OPT_SACK:
            if (olen < 10 || (olen - 2) % 8 != 0)
                return -1;
            for (int b = 0; b < (olen - 2) / 8 && r->nsack < SS_TCP_MAX_SACK; b++) {
                r->sack[r->nsack][0] = ss_rd32(d + 8 * b);
                r->sack[r->nsack][1] = ss_rd32(d + 8 * b + 4);
                r->nsack++;
            }
            break;
        case OPT_TS:
            if (olen != 10)
                return -1;
            r->has_ts = 1;
            r->tsval = ss_rd32(d);
            r->tsecr = ss_rd32(d + 4);
            break;
        default:
            break; /* RFC 9293 3.1: unknown options are skipped by their length */
        }
        i += olen;
    }
    return 0;
}

int ss_tcp_parse(const uint8_t *buf, size_t len, uint32_t src, uint32_t dst, struct ss_tcp_repr *r)
{
    memset(r, 0, sizeof *r);
    if (len < SS_TCP_HLEN)
        return SS_TCP_SHORT;
    r->hdr_len = (uint16_t)((buf[12] >> 4) * 4);
    if (r->hdr_len < SS_TCP_HLEN || r->hdr_len > len)
        return SS_TCP_DOFF;
    uint64_t sum = ss_csum_pseudo(src, dst, SS_IPPROTO_TCP, (uint16_t)len);
    if (ss_csum_fold(ss_csum_add(sum, buf, len)) != 0)
        return SS_TCP_CHECKSUM;
    r->sport = ss_rd16(buf);
    r->dport = ss_rd16(buf + 2);
    r->seq = ss_rd32(buf + 4);
    r->ack = ss_rd32(buf + 8);
    r->flags = buf[13] & 0x3f;
    r->wnd = ss_rd16(buf + 14);
    r->urp = ss_rd16(buf + 18);
    if (parse_options(buf + SS_TCP_HLEN, r->hdr_len - SS_TCP_HLEN, r) < 0)
        return SS_TCP_OPTIONS;
    /* SYN with FIN or RST has no meaning in any state; ports are never 0. */
    if ((r->flags & SS_TH_SYN) && (r->flags & (SS_TH_FIN | SS_TH_RST)))
        return SS_TCP_FLAGS;
    if (r->sport == 0 || r->dport == 0)
        return SS_TCP_FLAGS;
    r->payload = buf + r->hdr_len;
    r->len = (uint32_t)(len - r->hdr_len);
    return SS_TCP_OK;
}

size_t ss_tcp_hdr_len(const struct ss_tcp_repr *r)
{
    size_t n = SS_TCP_HLEN;
    if (r->has_mss)
        n += 4;
    if (r->has_ts || r->sack_ok)
        n += r->has_ts ? 12 : 4; /* SACK-permitted rides in the timestamp's NOPs */
    if (r->has_ws)
        n += 4;
    if (r->nsack)
        n += 4 + 8u * r->nsack;
    return n;
}

size_t ss_tcp_emit(uint8_t *buf, const struct ss_tcp_repr *r, uint32_t src, uint32_t dst)
{
    size_t hl = ss_tcp_hdr_len(r);
    ss_wr16(buf, r->sport);
    ss_wr16(buf + 2, r->dport);
    ss_wr32(buf + 4, r->seq);
    ss_wr32(buf + 8, r->ack);
    buf[12] = (uint8_t)((hl / 4) << 4);
    buf[13] = r->flags;
    ss_wr16(buf + 14, r->wnd);
    buf[16] = buf[17] = 0;
    ss_wr16(buf + 18, r->urp);
    /* Option layout follows Linux, so captures look familiar: every option
     * 4-byte aligned by NOPs. */
    uint8_t *o = buf + SS_TCP_HLEN;
    if (r->has_mss) {
        o[0] = OPT_MSS;
        o[1] = 4;
        ss_wr16(o + 2, r->mss);
        o += 4;
    }
    if (r->has_ts) {
        if (r->sack_ok) {
            o[0] = OPT_SACK_OK;
            o[1] = 2;
        } else {
            o[0] = OPT_NOP;
            o[1] = OPT_NOP;
        }
        o[2] = OPT_TS;
        o[3] = 10;
        ss_wr32(o + 4, r->tsval);
        ss_wr32(o + 8, r->tsecr);
        o += 12;
    } else if (r->sack_ok) {
        o[0] = OPT_NOP;
        o[1] = OPT_NOP;
        o[2] = OPT_SACK_OK;
        o[3] = 2;
        o += 4;
    }
    if (r->has_ws) {
        o[0] = OPT_NOP;
        o[1] = OPT_WS;
        o[2] = 3;
        o[3] = r->ws;
        o += 4;
    }
    if (r->nsack) {
        o[0] = OPT_NOP;
        o[1] = OPT_NOP;
        o[2] = OPT_SACK;
        o[3] = (uint8_t)(2 + 8 * r->nsack);
        o += 4;
        for (int b = 0; b < r->nsack; b++) {
            ss_wr32(o, r->sack[b][0]);
            ss_wr32(o + 4, r->sack[b][1]);
            o += 8;
        }
    }
    size_t seglen = hl + r->len;
    uint64_t sum = ss_csum_pseudo(src, dst, SS_IPPROTO_TCP, (uint16_t)seglen);
    uint16_t c = ss_csum_fold(ss_csum_add(sum, buf, seglen));
    memcpy(buf + 16, &c, 2);
    return hl;
}
