/* ICMP messages (RFC 792). */
#include <string.h>

#include "wire.h"

int ss_icmp_parse(const uint8_t *buf, size_t len, struct ss_icmp_repr *r)
{
    if (len < SS_ICMP_HLEN)
        return SS_ICMP_SHORT;
    if (ss_csum_fold(ss_csum_add(0, buf, len)) != 0)
        return SS_ICMP_CHECKSUM;
    r->type = buf[0];
    r->code = buf[1];
    r->rest = ss_rd32(buf + 4);
    r->payload = buf + SS_ICMP_HLEN;
    r->payload_len = len - SS_ICMP_HLEN;
    return SS_ICMP_OK;
}

void ss_icmp_emit(uint8_t *buf, const struct ss_icmp_repr *r)
{
    buf[0] = r->type;
    buf[1] = r->code;
    buf[2] = buf[3] = 0;
    ss_wr32(buf + 4, r->rest);
    uint16_t c = ss_csum_fold(ss_csum_add(0, buf, SS_ICMP_HLEN + r->payload_len));
    memcpy(buf + 2, &c, 2);
}
