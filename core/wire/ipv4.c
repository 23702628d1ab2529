/* IPv4 headers (RFC 791). */
#include "wire.h"

int ss_ip_parse(const uint8_t *buf, size_t len, struct ss_ip_repr *r)
{
    if (len < SS_IP_HLEN)
        return SS_IP_SHORT;
    if ((buf[0] >> 4) != 4)
        return SS_IP_VERSION;
    r->hdr_len = (uint16_t)((buf[0] & 0x0f) * 4);
    if (r->hdr_len < SS_IP_HLEN || r->hdr_len > len)
        return SS_IP_HDRLEN;
    r->total_len = ss_rd16(buf + 2);
    if (r->total_len < SS_IP_HLEN || r->total_len > len)
        return SS_IP_LEN;
    /* The header runs past the packet: a header error, as Linux counts it. */
    if (r->hdr_len > r->total_len)
        return SS_IP_HDRLEN;
    if (ss_csum_fold(ss_csum_add(0, buf, r->hdr_len)) != 0)
        return SS_IP_CHECKSUM;
    r->tos = buf[1];
    r->id = ss_rd16(buf + 4);
    r->frag = ss_rd16(buf + 6);
    r->ttl = buf[8];
    r->proto = buf[9];
    r->src = ss_rd32(buf + 12);
    r->dst = ss_rd32(buf + 16);
    return SS_IP_OK;
}

void ss_ip_emit(uint8_t *buf, const struct ss_ip_repr *r)
{
    buf[0] = 0x45;
    buf[1] = r->tos;
    ss_wr16(buf + 2, r->total_len);
    ss_wr16(buf + 4, r->id);
    ss_wr16(buf + 6, r->frag);
    buf[8] = r->ttl;
    buf[9] = r->proto;
    buf[10] = buf[11] = 0;
    ss_wr32(buf + 12, r->src);
    ss_wr32(buf + 16, r->dst);
    uint16_t c = ss_csum_fold(ss_csum_add(0, buf, SS_IP_HLEN));
    __builtin_memcpy(buf + 10, &c, 2);
}
