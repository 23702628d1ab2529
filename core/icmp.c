/*
 * ICMP (RFC 792, RFC 1122 3.2.2): echo replies, and destination-unreachable
 * messages about our TCP connections handed to TCP.
 */
#include <string.h>

#include "engine_int.h"

static void echo_reply(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_icmp_repr *req)
{
    size_t room = sizeof e->frame - SS_ETH_HLEN - SS_IP_HLEN - SS_ICMP_HLEN;
    size_t n = req->payload_len;
    if (n > room || SS_IP_HLEN + SS_ICMP_HLEN + n > e->cfg.mtu)
        return; /* larger than we could send without fragmenting */
    uint8_t *icmp = e->frame + SS_ETH_HLEN + SS_IP_HLEN;
    memmove(icmp + SS_ICMP_HLEN, req->payload, n);
    struct ss_icmp_repr rep = {
        .type = SS_ICMP_ECHO_REPLY, .code = 0, .rest = req->rest, .payload = icmp + SS_ICMP_HLEN, .payload_len = n};
    ss_icmp_emit(icmp, &rep);
    if (ss_ip_output(e, ip->dst, ip->src, SS_IPPROTO_ICMP, SS_ICMP_HLEN + n) == 0)
        e->ctr->icmp_echo_replies++;
}

/* The payload of an error is the offending datagram's IP header and at least
 * its first 8 bytes (RFC 792): for TCP, the ports and the sequence number. */
static void dest_unreach(struct ss_engine *e, const struct ss_icmp_repr *m)
{
    struct ss_ip_repr inner;
    const uint8_t *p = m->payload;
    size_t n = m->payload_len;
    if (n < SS_IP_HLEN || (p[0] >> 4) != 4 || (size_t)(p[0] & 0xf) * 4 + 8 > n) {
        e->ctr->drop_icmp_short++;
        return;
    }
    inner.hdr_len = (uint16_t)((p[0] & 0xf) * 4);
    inner.proto = p[9];
    inner.src = ss_rd32(p + 12);
    inner.dst = ss_rd32(p + 16);
    if (inner.proto != SS_IPPROTO_TCP || inner.src != e->cfg.ip) {
        e->ctr->drop_icmp_no_conn++;
        return;
    }
    const uint8_t *th = p + inner.hdr_len;
    e->ctr->icmp_dest_unreach++;
    /* RFC 1191 section 4: the next-hop MTU is the low 16 bits of "rest". */
    ss_tcp_icmp_error(e, inner.src, ss_rd16(th), inner.dst, ss_rd16(th + 2), ss_rd32(th + 4), m->code,
                      (uint16_t)(m->rest & 0xffff));
}

void ss_icmp_input(struct ss_engine *e, const struct ss_ip_repr *ip, const uint8_t *pkt, size_t len)
{
    struct ss_icmp_repr m;
    e->ctr->icmp_rx++;
    switch (ss_icmp_parse(pkt, len, &m)) {
    case SS_ICMP_SHORT:
        e->ctr->drop_icmp_short++;
        return;
    case SS_ICMP_CHECKSUM:
        e->ctr->drop_icmp_checksum++;
        return;
    default:
        break;
    }
    switch (m.type) {
    case SS_ICMP_ECHO_REQUEST:
        echo_reply(e, ip, &m);
        break;
    case SS_ICMP_DEST_UNREACH:
        dest_unreach(e, &m);
        break;
    default:
        e->ctr->drop_icmp_type++;
    }
}
