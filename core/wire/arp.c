/* ARP packets (RFC 826) for Ethernet hardware and IPv4 protocol addresses. */
#include <string.h>

#include "wire.h"

int ss_arp_parse(const uint8_t *buf, size_t len, struct ss_arp_repr *r)
{
    if (len < SS_ARP_LEN)
        return -1;
    /* htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4: anything else is not ours to read. */
    if (ss_rd16(buf) != 1 || ss_rd16(buf + 2) != SS_ETHERTYPE_IPV4 || buf[4] != 6 || buf[5] != 4)
        return -1;
    r->op = ss_rd16(buf + 6);
    if (r->op != SS_ARP_REQUEST && r->op != SS_ARP_REPLY)
        return -1;
    memcpy(r->sha, buf + 8, 6);
    r->spa = ss_rd32(buf + 14);
    memcpy(r->tha, buf + 18, 6);
    r->tpa = ss_rd32(buf + 24);
    return 0;
}

void ss_arp_emit(uint8_t *buf, const struct ss_arp_repr *r)
{
    ss_wr16(buf, 1);
    ss_wr16(buf + 2, SS_ETHERTYPE_IPV4);
    buf[4] = 6;
    buf[5] = 4;
    ss_wr16(buf + 6, r->op);
    memcpy(buf + 8, r->sha, 6);
    ss_wr32(buf + 14, r->spa);
    memcpy(buf + 18, r->tha, 6);
    ss_wr32(buf + 24, r->tpa);
}
