/*
 * The instance: configuration, the one input function, timers, counters and
 * readiness events.  Everything an engine owns hangs off struct ss_engine.
 */
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

void ss_engine_config_init(struct ss_engine_config *c)
{
    memset(c, 0, sizeof *c);
    c->netmask = 0xffffff00u;
    c->mtu = 1500;
    c->rcvbuf = 262144;
    c->sndbuf = 262144;
    c->rto_min_ms = 200;
    c->rto_max_ms = 60000;
    c->rto_initial_ms = 1000;
    c->syn_retries = 6;
    c->synack_retries = 5;
    c->retries = 15;
    c->delack_ms = 40;
    c->msl_ms = 30000;
    c->fin_timeout_ms = 60000;
    c->keepalive_idle_ms = 7200000;
    c->keepalive_intvl_ms = 75000;
    c->keepalive_probes = 9;
    c->syn_backlog = 256;
    c->somaxconn = 4096;
    c->max_sockets = 65536;
    c->challenge_ack_limit = 1000;
    c->initial_cwnd = 10;
    c->port_lo = 32768;
    c->port_hi = 60999;
    c->port_mod = 1;
    c->port_rem = 0;
    c->arp_timeout_ms = 60000;
    c->arp_retry_ms = 1000;
    c->arp_retries = 3;
    c->arp_queue_max = 8;
}

/* Names the first field that is out of range, so a bad configuration is
 * reported by key rather than by a crash later. */
const char *ss_engine_config_check(const struct ss_engine_config *c)
{
    if (c->ip == 0)
        return "ip: the stack needs an address";
    if (c->mtu < 576 || c->mtu > 9000)
        return "mtu: must be 576..9000";
    if (c->rcvbuf < 2048 || c->rcvbuf > (1u << 30))
        return "rcvbuf: must be 2048..1073741824";
    if (c->sndbuf < 2048 || c->sndbuf > (1u << 30))
        return "sndbuf: must be 2048..1073741824";
    if (c->rto_min_ms == 0 || c->rto_min_ms > c->rto_max_ms)
        return "rto_min_ms: must be > 0 and <= rto_max_ms";
    if (c->rto_initial_ms < c->rto_min_ms || c->rto_initial_ms > c->rto_max_ms)
        return "rto_initial_ms: must lie between rto_min_ms and rto_max_ms";
    if (c->delack_ms == 0 || c->delack_ms >= 500)
        return "delack_ms: must be 1..499 (RFC 1122 4.2.3.2)";
    if (c->msl_ms == 0)
        return "msl_ms: must be > 0";
    if (c->max_sockets == 0 || c->max_sockets > (1u << 24))
        return "max_sockets: must be 1..16777216";
    if (c->port_lo == 0 || c->port_lo > c->port_hi)
        return "port_lo/port_hi: need 0 < port_lo <= port_hi";
    if (c->port_mod == 0 || c->port_rem >= c->port_mod || c->port_mod > c->port_hi - c->port_lo + 1)
        return "port_mod/port_rem: need port_rem < port_mod <= the number of ephemeral ports";
    if (c->syn_backlog == 0 || c->somaxconn == 0)
        return "syn_backlog/somaxconn: must be > 0";
    if (c->initial_cwnd == 0)
        return "initial_cwnd: must be > 0";
    if (c->arp_retries == 0 || c->arp_retry_ms == 0 || c->arp_queue_max == 0)
        return "arp_retries/arp_retry_ms/arp_queue_max: must be > 0";
    if (!c->tx)
        return "tx: a transmit callback is required";
    if (!c->flow_owner != !c->forward || (c->listen_owner && !c->forward))
        return "flow_owner/forward: set both (forwarding to a flow's owner) or neither; listen_owner needs forward";
    return NULL;
}

struct ss_engine *ss_engine_create(const struct ss_engine_config *cfg, uint64_t now_us)
{
    if (ss_engine_config_check(cfg)) {
        errno = EINVAL;
        return NULL;
    }
    struct ss_engine *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->cfg = *cfg;
    e->now_us = now_us;
    e->ctr = cfg->counters ? cfg->counters : &e->own_ctr;
    uint32_t buckets = 1;
    while (buckets < cfg->max_sockets && buckets < (1u << 20))
        buckets <<= 1;
    e->flows = malloc(buckets * sizeof *e->flows);
    e->socks = calloc(cfg->max_sockets, sizeof *e->socks);
    e->free_ids = malloc(cfg->max_sockets * sizeof *e->free_ids);
    if (!e->flows || !e->socks || !e->free_ids) {
        free(e->flows);
        free(e->socks);
        free(e->free_ids);
        free(e);
        errno = ENOMEM;
        return NULL;
    }
    e->flow_mask = buckets - 1;
    for (uint32_t i = 0; i < buckets; i++)
        ss_list_init(&e->flows[i]);
    for (int i = 0; i < SS_BIND_BUCKETS; i++) {
        ss_list_init(&e->binds[i]);
        ss_list_init(&e->listens[i]);
    }
    /* Lowest ids are handed out first, as the kernel does with descriptors. */
    for (uint32_t i = 0; i < cfg->max_sockets; i++)
        e->free_ids[i] = (int)(cfg->max_sockets - 1 - i);
    e->nfree = cfg->max_sockets;
    ss_list_init(&e->events);
    ss_list_init(&e->reap);
    ss_wheel_init(&e->wheel, now_us);
    ss_timer_init(&e->arp_timer);
    e->port_next = (uint32_t)ss_siphash(cfg->secret, "ports", 5);
    e->ip_id = (uint16_t)ss_siphash(cfg->secret, "ipid", 4);
    ss_arp_announce(e);
    return e;
}

void ss_engine_destroy(struct ss_engine *e)
{
    if (!e)
        return;
    ss_engine_reap(e);
    for (uint32_t i = 0; i <= e->flow_mask; i++) {
        while (!ss_list_empty(&e->flows[i])) {
            ss_tcb_free(SS_CONTAINER_OF(e->flows[i].next, struct ss_tcb, flow_link));
        }
    }
    for (uint32_t i = 0; i < e->cfg.max_sockets; i++)
        if (e->socks[i])
            ss_tcb_free(e->socks[i]);
    ss_arp_destroy(e);
    while (e->loop_head) {
        struct ss_pkt *p = e->loop_head;
        e->loop_head = p->next;
        free(p);
    }
    free(e->flows);
    free(e->socks);
    free(e->free_ids);
    free(e);
}

void ss_engine_tx(struct ss_engine *e, const uint8_t *frame, size_t len)
{
    e->ctr->eth_tx_frames++;
    e->ctr->eth_tx_bytes += len;
    e->cfg.tx(e->cfg.tx_ctx, frame, len);
}

static void input(struct ss_engine *e, const uint8_t *frame, size_t len, uint64_t now_us)
{
    static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    struct ss_eth_repr eth;
    e->now_us = now_us;
    e->in_frame = frame;
    e->in_len = len;
    if (ss_eth_parse(frame, len, &eth) < 0) {
        e->ctr->drop_eth_short++;
        return;
    }
    if (memcmp(eth.dst, e->cfg.mac, 6) != 0 && memcmp(eth.dst, bcast, 6) != 0) {
        e->ctr->drop_eth_not_ours++;
        return;
    }
    switch (eth.type) {
    case SS_ETHERTYPE_ARP:
        ss_arp_input(e, frame + SS_ETH_HLEN, len - SS_ETH_HLEN, &eth);
        break;
    case SS_ETHERTYPE_IPV4:
        ss_ip_input(e, frame + SS_ETH_HLEN, len - SS_ETH_HLEN);
        ss_engine_reap(e);
        break;
    default:
        e->ctr->drop_eth_type++;
    }
    e->in_frame = NULL;
}

void ss_engine_input(struct ss_engine *e, const uint8_t *frame, size_t len, uint64_t now_us)
{
    e->ctr->eth_rx_frames++;
    e->ctr->eth_rx_bytes += len;
    e->in_forwarded = false;
    input(e, frame, len, now_us);
}

void ss_engine_input_looped(struct ss_engine *e, const uint8_t *frame, size_t len)
{
    input(e, frame, len, e->now_us);
}

void ss_engine_input_forwarded(struct ss_engine *e, const uint8_t *frame, size_t len, uint64_t now_us)
{
    /* Counted once on the device, by the instance that received it. */
    e->ctr->fwd_rx_frames++;
    e->in_forwarded = true;
    input(e, frame, len, now_us);
    e->in_forwarded = false;
}

bool ss_engine_forward(struct ss_engine *e, uint32_t rip, uint16_t rport, uint16_t lport, int mode)
{
    if (!e->cfg.flow_owner || e->in_forwarded || !e->in_frame)
        return false;
    int owner = mode == SS_FWD_FLOW ? e->cfg.flow_owner(e->cfg.flow_ctx, rip, rport, lport)
                : e->cfg.listen_owner ? e->cfg.listen_owner(e->cfg.flow_ctx, rip, rport, lport, mode == SS_FWD_ACTIVE)
                                      : -1;
    if (owner < 0)
        return false;
    if (e->cfg.forward(e->cfg.flow_ctx, owner, e->in_frame, e->in_len) == 0) {
        e->ctr->fwd_frames++;
        if (mode == SS_FWD_ACTIVE)
            e->ctr->fwd_syn_fallback++;
    }
    else
        e->ctr->drop_fwd_full++;
    return true;
}

void ss_engine_poll(struct ss_engine *e, uint64_t now_us)
{
    struct ss_list due;
    e->now_us = now_us;
    ss_list_init(&due);
    ss_ip_loop_drain(e);
    ss_wheel_collect(&e->wheel, now_us, &due);
    while (!ss_list_empty(&due)) {
        struct ss_timer *tm = SS_CONTAINER_OF(due.next, struct ss_timer, link);
        ss_list_del(&tm->link);
        if (tm == &e->arp_timer)
            ss_arp_timer(e);
        else
            ss_tcp_timers_run(SS_CONTAINER_OF(tm, struct ss_tcb, timer));
    }
    ss_engine_reap(e);
}

void ss_engine_reap(struct ss_engine *e)
{
    while (!ss_list_empty(&e->reap)) {
        struct ss_tcb *t = SS_CONTAINER_OF(e->reap.next, struct ss_tcb, reap_link);
        ss_tcb_free(t);
    }
}

uint64_t ss_engine_next_deadline(struct ss_engine *e)
{
    return e->loop_head ? e->now_us : ss_wheel_next(&e->wheel); /* looped packets: at once */
}

const struct ss_counters *ss_engine_counters(const struct ss_engine *e) { return e->ctr; }

/* Queues a socket whose readiness may have changed; each socket is queued at
 * most once until taken, which coalesces the events of a burst. */
void ss_tcb_notify(struct ss_tcb *t)
{
    if (t->ev_pending || t->sid < 0)
        return;
    t->ev_pending = true;
    ss_list_add_tail(&t->e->events, &t->ev_link);
}

int ss_engine_take_events(struct ss_engine *e, int *sids, int max)
{
    int n = 0;
    while (n < max && !ss_list_empty(&e->events)) {
        struct ss_tcb *t = SS_CONTAINER_OF(e->events.next, struct ss_tcb, ev_link);
        ss_list_del(&t->ev_link);
        t->ev_pending = false;
        sids[n++] = t->sid;
    }
    return n;
}

const char *ss_tcp_state_name(int state)
{
    static const char *const names[] = {
#define SS_X_NAME(name) #name,
        SS_TCP_STATES(SS_X_NAME)
#undef SS_X_NAME
    };
    if (state < 0 || state >= SS_TCP_NSTATES)
        return "?";
    return names[state];
}
