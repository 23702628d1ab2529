/* Ethernet II framing. */
#include <string.h>

#include "wire.h"

int ss_eth_parse(const uint8_t *buf, size_t len, struct ss_eth_repr *r)
{
    if (len < SS_ETH_HLEN)
        return -1;
    memcpy(r->dst, buf, 6);
    memcpy(r->src, buf + 6, 6);
    r->type = ss_rd16(buf + 12);
    return 0;
}

void ss_eth_emit(uint8_t *buf, const struct ss_eth_repr *r)
{
    memcpy(buf, r->dst, 6);
    memcpy(buf + 6, r->src, 6);
    ss_wr16(buf + 12, r->type);
}
