/*
 * ARP (RFC 826): answers for our address, learns senders that ask us,
 * resolves next hops with a bounded number of retries while holding a
 * bounded queue of packets for each, and expires learned entries.
 *
 * ss_arp_input -> (reply to a request for us) -> learn the sender
 *              -> flush the packets waiting for it
 * ss_arp_output -> cache hit: ethernet header + send
 *               -> miss: queue the packet, send a request, arm the retry timer
 */
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static struct ss_arp_entry *find(struct ss_engine *e, uint32_t ip)
{
    for (uint32_t i = 0; i < e->narp; i++)
        if (e->arp[i].ip == ip)
            return &e->arp[i];
    return NULL;
}

static void drop_queue(struct ss_arp_entry *a)
{
    while (a->queue) {
        struct ss_pkt *p = a->queue;
        a->queue = p->next;
        free(p);
    }
    a->queue_tail = &a->queue;
    a->queued = 0;
}

static void remove_entry(struct ss_engine *e, struct ss_arp_entry *a)
{
    drop_queue(a);
    struct ss_arp_entry *last = &e->arp[--e->narp];
    if (a != last) {
        *a = *last;
        if (!a->queue)
            a->queue_tail = &a->queue;
    }
}

/* A new entry, evicting the entry nearest to expiry among learned ones when
 * the cache is full; static and unresolved entries are never evicted. */
static struct ss_arp_entry *add_entry(struct ss_engine *e, uint32_t ip)
{
    if (e->narp == SS_ARP_ENTRIES) {
        struct ss_arp_entry *victim = NULL;
        for (uint32_t i = 0; i < e->narp; i++)
            if (e->arp[i].state == SS_ARP_REACHABLE &&
                (!victim || e->arp[i].deadline_us < victim->deadline_us))
                victim = &e->arp[i];
        if (!victim) {
            e->ctr->drop_arp_no_space++;
            return NULL;
        }
        remove_entry(e, victim);
    }
    struct ss_arp_entry *a = &e->arp[e->narp++];
    memset(a, 0, sizeof *a);
    a->ip = ip;
    a->queue_tail = &a->queue;
    return a;
}

static void send_arp(struct ss_engine *e, uint16_t op, const uint8_t *dst_mac, const uint8_t *tha, uint32_t tpa)
{
    uint8_t *f = e->frame;
    struct ss_eth_repr eth = {.type = SS_ETHERTYPE_ARP};
    memcpy(eth.dst, dst_mac, 6);
    memcpy(eth.src, e->cfg.mac, 6);
    ss_eth_emit(f, &eth);
    struct ss_arp_repr arp = {.op = op, .spa = e->cfg.ip, .tpa = tpa};
    memcpy(arp.sha, e->cfg.mac, 6);
    memcpy(arp.tha, tha, 6);
    ss_arp_emit(f + SS_ETH_HLEN, &arp);
    /* Pad to the 60-byte ethernet minimum. */
    memset(f + SS_ETH_HLEN + SS_ARP_LEN, 0, 60 - SS_ETH_HLEN - SS_ARP_LEN);
    if (op == SS_ARP_REQUEST)
        e->ctr->arp_tx_requests++;
    else
        e->ctr->arp_tx_replies++;
    ss_engine_tx(e, f, 60);
}

static void send_request(struct ss_engine *e, uint32_t ip)
{
    static const uint8_t zero[6];
    send_arp(e, SS_ARP_REQUEST, bcast, zero, ip);
}

static void arm_timer(struct ss_engine *e)
{
    uint64_t next = UINT64_MAX;
    for (uint32_t i = 0; i < e->narp; i++)
        if (e->arp[i].state == SS_ARP_INCOMPLETE && e->arp[i].deadline_us < next)
            next = e->arp[i].deadline_us;
    if (next == UINT64_MAX)
        ss_timer_cancel(&e->wheel, &e->arp_timer);
    else
        ss_timer_set(&e->wheel, &e->arp_timer, next);
}

static void send_frame_to(struct ss_engine *e, uint8_t *frame, size_t ip_len, const uint8_t *mac)
{
    struct ss_eth_repr eth = {.type = SS_ETHERTYPE_IPV4};
    memcpy(eth.dst, mac, 6);
    memcpy(eth.src, e->cfg.mac, 6);
    ss_eth_emit(frame, &eth);
    ss_engine_tx(e, frame, SS_ETH_HLEN + ip_len);
}

static void flush_queue(struct ss_engine *e, struct ss_arp_entry *a)
{
    struct ss_pkt *p = a->queue;
    uint8_t mac[6];
    memcpy(mac, a->mac, 6);
    a->queue = NULL;
    a->queue_tail = &a->queue;
    a->queued = 0;
    while (p) {
        struct ss_pkt *next = p->next;
        memcpy(e->frame + SS_ETH_HLEN, p->data, p->len);
        send_frame_to(e, e->frame, p->len, mac);
        free(p);
        p = next;
    }
}

/* RFC 826 "Packet Reception": update the sender if we know it, add it if we
 * are the target, answer a request for our address. */
void ss_arp_input(struct ss_engine *e, const uint8_t *pkt, size_t len, const struct ss_eth_repr *eth)
{
    struct ss_arp_repr r;
    (void)eth;
    e->ctr->arp_rx++;
    if (ss_arp_parse(pkt, len, &r) < 0) {
        e->ctr->drop_arp_malformed++;
        return;
    }
    /* A sender claiming our address, broadcast or zero is not learned. */
    bool learnable = r.spa != 0 && r.spa != e->cfg.ip && r.spa != 0xffffffffu &&
                     (r.sha[0] & 1) == 0;
    struct ss_arp_entry *a = learnable ? find(e, r.spa) : NULL;
    bool for_us = r.tpa == e->cfg.ip;
    if (learnable && (a || for_us)) {
        if (!a)
            a = add_entry(e, r.spa);
        if (a && a->state != SS_ARP_STATIC) {
            memcpy(a->mac, r.sha, 6);
            a->state = SS_ARP_REACHABLE;
            a->tries = 0;
            a->deadline_us = e->now_us + (uint64_t)e->cfg.arp_timeout_ms * 1000;
            e->ctr->arp_cache_updates++;
            if (e->cfg.neigh_learn)
                e->cfg.neigh_learn(e->cfg.neigh_ctx, a->ip, a->mac);
            flush_queue(e, a);
            arm_timer(e);
        }
    }
    if (!for_us) {
        e->ctr->drop_arp_not_ours++;
        return;
    }
    if (r.op == SS_ARP_REQUEST)
        send_arp(e, SS_ARP_REPLY, r.sha, r.sha, r.spa);
}

/* Another instance of the group may know the address: take it from the
 * shared table rather than asking the network. */
static bool from_shared(struct ss_engine *e, struct ss_arp_entry *a)
{
    uint8_t mac[6];
    if (!e->cfg.neigh_lookup || e->cfg.neigh_lookup(e->cfg.neigh_ctx, a->ip, mac) != 0)
        return false;
    memcpy(a->mac, mac, 6);
    a->state = SS_ARP_REACHABLE;
    a->tries = 0;
    a->deadline_us = e->now_us + (uint64_t)e->cfg.arp_timeout_ms * 1000;
    e->ctr->neigh_shared_hits++;
    return true;
}

void ss_arp_output(struct ss_engine *e, uint8_t *frame, size_t ip_len, uint32_t nh)
{
    struct ss_arp_entry *a = find(e, nh);
    if (a && a->state == SS_ARP_REACHABLE && a->deadline_us <= e->now_us) {
        /* Expired: resolve again, keeping the entry's place. */
        a->state = SS_ARP_INCOMPLETE;
        a->tries = 0;
        a->deadline_us = e->now_us;
    }
    if (a && (a->state == SS_ARP_REACHABLE || a->state == SS_ARP_STATIC)) {
        send_frame_to(e, frame, ip_len, a->mac);
        return;
    }
    if (!a) {
        a = add_entry(e, nh);
        if (!a)
            return;
        a->state = SS_ARP_INCOMPLETE;
        a->deadline_us = e->now_us;
    }
    if (a->queued == 0 && from_shared(e, a)) {
        send_frame_to(e, frame, ip_len, a->mac);
        return;
    }
    if (a->queued >= e->cfg.arp_queue_max) {
        e->ctr->drop_arp_queue_full++;
        return;
    }
    struct ss_pkt *p = malloc(sizeof *p + ip_len);
    if (!p) {
        e->ctr->drop_arp_queue_full++;
        return;
    }
    p->next = NULL;
    p->len = (uint16_t)ip_len;
    memcpy(p->data, frame + SS_ETH_HLEN, ip_len);
    *a->queue_tail = p;
    a->queue_tail = &p->next;
    a->queued++;
    if (a->tries == 0 && a->deadline_us <= e->now_us) {
        send_request(e, nh);
        a->tries = 1;
        a->deadline_us = e->now_us + (uint64_t)e->cfg.arp_retry_ms * 1000;
        arm_timer(e);
    }
}

void ss_arp_timer(struct ss_engine *e)
{
    for (uint32_t i = 0; i < e->narp;) {
        struct ss_arp_entry *a = &e->arp[i];
        if (a->state != SS_ARP_INCOMPLETE || a->deadline_us > e->now_us) {
            i++;
            continue;
        }
        if (from_shared(e, a)) {
            flush_queue(e, a);
            i++;
            continue;
        }
        if (a->tries >= e->cfg.arp_retries) {
            /* RFC 1122 2.3.2.2: give up, and drop what waited. */
            e->ctr->arp_resolve_failed++;
            e->ctr->drop_ip_no_route += a->queued;
            remove_entry(e, a);
            continue;
        }
        send_request(e, a->ip);
        a->tries++;
        a->deadline_us = e->now_us + (uint64_t)e->cfg.arp_retry_ms * 1000;
        i++;
    }
    arm_timer(e);
}

/* A gratuitous ARP request (RFC 5227 section 3) so neighbours learn us. */
void ss_arp_announce(struct ss_engine *e)
{
    static const uint8_t zero[6];
    send_arp(e, SS_ARP_REQUEST, bcast, zero, e->cfg.ip);
}

int ss_arp_add_static(struct ss_engine *e, uint32_t ip, const uint8_t mac[6])
{
    struct ss_arp_entry *a = find(e, ip);
    if (!a)
        a = add_entry(e, ip);
    if (!a)
        return -ENOSPC;
    memcpy(a->mac, mac, 6);
    a->state = SS_ARP_STATIC;
    flush_queue(e, a);
    arm_timer(e);
    return 0;
}

int ss_arp_lookup(struct ss_engine *e, uint32_t ip, uint8_t mac_out[6])
{
    struct ss_arp_entry *a = find(e, ip);
    if (!a || a->state == SS_ARP_INCOMPLETE ||
        (a->state == SS_ARP_REACHABLE && a->deadline_us <= e->now_us))
        return -ENOENT;
    memcpy(mac_out, a->mac, 6);
    return 0;
}

void ss_arp_destroy(struct ss_engine *e)
{
    for (uint32_t i = 0; i < e->narp; i++)
        drop_queue(&e->arp[i]);
    e->narp = 0;
}
