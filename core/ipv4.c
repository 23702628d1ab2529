/*
 * IPv4 (RFC 791, host requirements RFC 1122 section 3).
 *
 * ss_ip_input: validate -> drop what a host must not accept -> ICMP or TCP.
 * ss_ip_output: header (DF set, RFC 1191 path MTU discovery) -> next hop -> ARP,
 *   or, to 127.0.0.0/8, the loopback queue: the engine's own lo, which
 *   ss_engine_poll feeds back to input (and so, by the flow directory, to
 *   whichever instance of the group holds the other end).
 */
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* RFC 1122 3.2.1.3: a host silently discards a datagram whose source is
 * zero, broadcast, multicast, class E, or loopback (martians). */
static bool bad_source(const struct ss_engine *e, uint32_t src)
{
    if (src == 0 || src == 0xffffffffu || src >= 0xe0000000u)
        return true;
    if (SS_IP_LOOPBACK(src))
        return !e->in_loopback && !e->in_forwarded; /* only from our own lo */
    uint32_t m = e->cfg.netmask;
    /* the directed broadcast of our own subnet */
    if (m != 0xffffffffu && (src & m) == (e->cfg.ip & m) && (src | m) == 0xffffffffu)
        return true;
    return false;
}

void ss_ip_input(struct ss_engine *e, const uint8_t *pkt, size_t len)
{
    struct ss_ip_repr ip;
    e->ctr->ip_rx_packets++;
    switch (ss_ip_parse(pkt, len, &ip)) {
    case SS_IP_OK:
        break;
    case SS_IP_SHORT:
        e->ctr->drop_ip_short++;
        return;
    case SS_IP_VERSION:
        e->ctr->drop_ip_version++;
        return;
    case SS_IP_HDRLEN:
        e->ctr->drop_ip_hdrlen++;
        return;
    case SS_IP_LEN:
        e->ctr->drop_ip_len++;
        return;
    default:
        e->ctr->drop_ip_checksum++;
        return;
    }
    bool looped = e->in_loopback || e->in_forwarded; /* forwarded: checked where it came in */
    if (ip.dst != e->cfg.ip && !(looped && SS_IP_LOOPBACK(ip.dst))) {
        e->ctr->drop_ip_not_ours++;
        return;
    }
    if (bad_source(e, ip.src)) {
        e->ctr->drop_ip_bad_src++;
        return;
    }
    /* No reassembly: a fragment is dropped and counted.  We set DF on what
     * we send, so peers doing PMTU discovery never fragment to us. */
    if ((ip.frag & SS_IP_MF) || (ip.frag & SS_IP_OFFMASK)) {
        e->ctr->drop_ip_fragment++;
        return;
    }
    if (ip.hdr_len > SS_IP_HLEN)
        e->ctr->ip_options_skipped++; /* RFC 1122 3.2.1.8: options are optional to act on */
    const uint8_t *payload = pkt + ip.hdr_len;
    size_t plen = ip.total_len - ip.hdr_len;
    switch (ip.proto) {
    case SS_IPPROTO_TCP: {
        struct ss_tcp_repr seg;
        switch (ss_tcp_parse(payload, plen, ip.src, ip.dst, &seg)) {
        case SS_TCP_OK:
            e->ctr->tcp_rx_segments++;
            ss_tcp_input(e, &ip, &seg);
            break;
        case SS_TCP_SHORT:
            e->ctr->drop_tcp_short++;
            break;
        case SS_TCP_DOFF:
            e->ctr->drop_tcp_doff++;
            break;
        case SS_TCP_CHECKSUM:
            e->ctr->drop_tcp_checksum++;
            break;
        case SS_TCP_OPTIONS:
            e->ctr->drop_tcp_options++;
            break;
        default:
            e->ctr->drop_tcp_flags++;
        }
        break;
    }
    case SS_IPPROTO_ICMP:
        ss_icmp_input(e, &ip, payload, plen);
        break;
    default:
        e->ctr->drop_ip_proto++;
    }
}

bool ss_ip_routable(const struct ss_engine *e, uint32_t dst)
{
    if (SS_IP_LOOPBACK(dst) || (dst & e->cfg.netmask) == (e->cfg.ip & e->cfg.netmask))
        return true;
    return e->cfg.gateway != 0;
}

/* To 127.0.0.0/8: the frame waits on the loopback queue, addressed to our
 * own MAC, until ss_engine_poll inputs it.  Not inline: output may run
 * inside input, and a segment looping straight back would re-enter it. */
static void loop_output(struct ss_engine *e, size_t ip_len)
{
    if (e->loop_len >= SS_LOOP_QUEUE_MAX) {
        e->ctr->drop_ip_loop_full++;
        return;
    }
    struct ss_pkt *p = malloc(sizeof *p + SS_ETH_HLEN + ip_len);
    if (!p) {
        e->ctr->drop_ip_loop_full++;
        return;
    }
    struct ss_eth_repr eth = {.type = SS_ETHERTYPE_IPV4};
    memcpy(eth.dst, e->cfg.mac, 6);
    memcpy(eth.src, e->cfg.mac, 6);
    ss_eth_emit(e->frame, &eth);
    p->next = NULL;
    p->len = (uint16_t)(SS_ETH_HLEN + ip_len);
    memcpy(p->data, e->frame, p->len);
    if (e->loop_tail)
        e->loop_tail->next = p;
    else
        e->loop_head = p;
    e->loop_tail = p;
    e->loop_len++;
    e->ctr->ip_loop_packets++;
}

/* Inputs what was queued before the call; what that sends to 127/8 in
 * turn waits for the next call (ss_engine_next_deadline says "now"). */
void ss_ip_loop_drain(struct ss_engine *e)
{
    struct ss_pkt *p = e->loop_head;
    e->loop_head = e->loop_tail = NULL;
    e->loop_len = 0;
    while (p) {
        struct ss_pkt *next = p->next;
        e->in_loopback = true;
        ss_engine_input_looped(e, p->data, p->len);
        e->in_loopback = false;
        free(p);
        p = next;
    }
}

int ss_ip_output(struct ss_engine *e, uint32_t src, uint32_t dst, uint8_t proto, size_t payload_len)
{
    uint32_t nh = dst;
    if (SS_IP_LOOPBACK(dst) || dst == e->cfg.ip) { /* local: through lo, as Linux routes it */
        struct ss_ip_repr ip = {.src = src, .dst = dst, .proto = proto, .ttl = 64, .id = e->ip_id++,
                                .frag = SS_IP_DF, .total_len = (uint16_t)(SS_IP_HLEN + payload_len)};
        ss_ip_emit(e->frame + SS_ETH_HLEN, &ip);
        e->ctr->ip_tx_packets++;
        loop_output(e, SS_IP_HLEN + payload_len);
        return 0;
    }
    if ((dst & e->cfg.netmask) != (e->cfg.ip & e->cfg.netmask)) {
        if (!e->cfg.gateway) {
            e->ctr->drop_ip_no_route++;
            return -ENETUNREACH;
        }
        nh = e->cfg.gateway;
    }
    struct ss_ip_repr ip = {
        .src = src,
        .dst = dst,
        .proto = proto,
        .ttl = 64,
        .id = e->ip_id++,
        .frag = SS_IP_DF,
        .total_len = (uint16_t)(SS_IP_HLEN + payload_len),
    };
    ss_ip_emit(e->frame + SS_ETH_HLEN, &ip);
    e->ctr->ip_tx_packets++;
    ss_arp_output(e, e->frame, SS_IP_HLEN + payload_len, nh);
    return 0;
}
