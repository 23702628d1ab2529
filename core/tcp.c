/*
 * TCP control blocks and the calls a user makes (RFC 9293 section 3.10.1-6).
 *
 * Read RFC 9293 (which obsoletes RFC 793 and folds in the TCP parts of
 * RFC 1122) before changing anything here.  Invariants:
 *   - every control block is either held by the user (sid >= 0), waiting in
 *     a listener's accept queue, or an orphan finishing its connection; an
 *     orphan that reaches CLOSED is put on the reap list and freed at the end
 *     of the engine call that closed it;
 *   - a connection with a 4-tuple (SYN-SENT onwards, until CLOSED) is in the
 *     flow table exactly once; a socket with a local port (accepted
 *     connections and TIME-WAIT orphans included, as in Linux) is in the
 *     bind table until freed; a listener is also in the listen table.
 * Errors returned are the Linux kernel's for the same misuse.
 */
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* ---- control blocks ---- */

struct ss_tcb *ss_tcb_alloc(struct ss_engine *e)
{
    struct ss_tcb *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->e = e;
    t->sid = -1;
    t->state = SS_TCP_CLOSED;
    ss_list_init(&t->flow_link);
    ss_list_init(&t->bind_link);
    ss_list_init(&t->listen_link);
    ss_list_init(&t->ev_link);
    ss_list_init(&t->reap_link);
    ss_list_init(&t->child_link);
    ss_list_init(&t->syn_q);
    ss_list_init(&t->accept_q);
    ss_timer_init(&t->timer);
    ss_ring_init(&t->sndbuf, e->cfg.sndbuf);
    ss_ring_init(&t->rcvbuf, e->cfg.rcvbuf);
    t->ka_idle_ms = e->cfg.keepalive_idle_ms;
    t->ka_intvl_ms = e->cfg.keepalive_intvl_ms;
    t->ka_probes = e->cfg.keepalive_probes;
    t->rto_us = e->cfg.rto_initial_ms * 1000;
    t->peer_mss = 536; /* RFC 9293 3.7.1: the default when no MSS option came */
    t->rcv_mss = 536;
    e->ntcb++;
    e->ctr->tcp_state[SS_TCP_CLOSED]++;
    return t;
}

static void leave_listen(struct ss_tcb *t);

static void unhash(struct ss_tcb *t)
{
    if (t->hashed) {
        ss_list_del(&t->flow_link);
        t->hashed = false;
        if (t->e->cfg.flow_publish)
            t->e->cfg.flow_publish(t->e->cfg.flow_ctx, t->rip, t->rport, t->lport, 0);
    }
}

static void release_sid(struct ss_tcb *t)
{
    if (t->sid < 0)
        return;
    struct ss_engine *e = t->e;
    e->socks[t->sid] = NULL;
    e->free_ids[e->nfree++] = t->sid;
    t->sid = -1;
    if (t->ev_pending) {
        ss_list_del(&t->ev_link);
        t->ev_pending = false;
    }
}

static void detach_from_listener(struct ss_tcb *t)
{
    struct ss_tcb *l = t->listener;
    if (!l)
        return;
    ss_list_del(&t->child_link);
    if (t->in_accept_q)
        l->accept_len--;
    else if (!t->cookie)
        l->syn_len--;
    t->in_accept_q = false;
    t->listener = NULL;
}

void ss_tcb_free(struct ss_tcb *t)
{
    struct ss_engine *e = t->e;
    ss_timer_cancel(&e->wheel, &t->timer);
    unhash(t);
    if (t->bound) {
        ss_list_del(&t->bind_link);
        t->bound = false;
    }
    if (t->state == SS_TCP_LISTEN)
        leave_listen(t);
    if (t->reaping)
        ss_list_del(&t->reap_link);
    detach_from_listener(t);
    /* A listener's children are closed by ss_tcp_close before it is freed;
     * on engine destruction they are simply detached. */
    while (!ss_list_empty(&t->syn_q))
        detach_from_listener(SS_CONTAINER_OF(t->syn_q.next, struct ss_tcb, child_link));
    while (!ss_list_empty(&t->accept_q))
        detach_from_listener(SS_CONTAINER_OF(t->accept_q.next, struct ss_tcb, child_link));
    release_sid(t);
    ss_ring_free(&t->sndbuf);
    ss_ring_free(&t->rcvbuf);
    e->ctr->tcp_state[t->state]--;
    e->ntcb--;
    free(t);
}

/* The group learns, per port, whether this engine has listeners and
 * whether one is in use: when a listener comes, goes, or is first used. */
static void publish_listen(struct ss_engine *e, uint16_t port)
{
    if (!e->cfg.listen_publish)
        return;
    int state = 0;
    struct ss_list *b = &e->listens[port & (SS_BIND_BUCKETS - 1)];
    for (struct ss_list *n = b->next; n != b; n = n->next) {
        struct ss_tcb *l = SS_CONTAINER_OF(n, struct ss_tcb, listen_link);
        if (l->lport == port)
            state = SS_MAX(state, l->active ? 2 : 1);
    }
    e->cfg.listen_publish(e->cfg.flow_ctx, port, state);
}

static void leave_listen(struct ss_tcb *t)
{
    ss_list_del(&t->listen_link);
    publish_listen(t->e, t->lport);
}

void ss_tcp_set_state(struct ss_tcb *t, int state)
{
    if (t->state == state)
        return;
    t->e->ctr->tcp_state[t->state]--;
    t->e->ctr->tcp_state[state]++;
    if (t->state == SS_TCP_LISTEN)
        leave_listen(t);
    t->state = (uint8_t)state;
    if (state == SS_TCP_LISTEN) {
        ss_list_add_tail(&t->e->listens[t->lport & (SS_BIND_BUCKETS - 1)], &t->listen_link);
        publish_listen(t->e, t->lport);
    }
    if (state == SS_TCP_CLOSED)
        unhash(t);
}

void ss_tcp_done(struct ss_tcb *t, int error)
{
    struct ss_engine *e = t->e;
    if (t->state == SS_TCP_SYN_SENT || t->state == SS_TCP_SYN_RECEIVED)
        e->ctr->tcp_attempt_fails++;
    if (error == -ECONNRESET)
        t->reset = true;
    if (error)
        t->error = error;
    ss_tcp_set_state(t, SS_TCP_CLOSED);
    for (int i = 0; i < SS_T_COUNT; i++)
        t->deadline[i] = 0;
    ss_timer_cancel(&e->wheel, &t->timer);
    t->rd_shut = t->wr_shut = true;
    ss_ring_free(&t->sndbuf);
    /* A half-open child is gone for good; an accepted-but-unclaimed one
     * stays queued so accept() returns it and its reader sees the error. */
    if (t->listener && !t->in_accept_q)
        detach_from_listener(t);
    if (t->sid < 0 && !t->in_accept_q && !t->reaping) {
        t->reaping = true;
        ss_list_add_tail(&e->reap, &t->reap_link);
    }
    ss_tcb_notify(t);
}

/* ---- flow table: 4-tuple -> control block, keyed hash, chained ---- */

static uint32_t flow_hash(const struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport)
{
    /* A keyed mix so a peer cannot aim all its flows at one bucket. */
    uint64_t h = ((uint64_t)rip << 32 | (uint64_t)rport << 16 | lport) ^ e->cfg.secret[0];
    h ^= (uint64_t)lip * 0x9e3779b97f4a7c15ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (uint32_t)h & e->flow_mask;
}

struct ss_tcb *ss_flow_lookup(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport)
{
    struct ss_list *b = &e->flows[flow_hash(e, lip, lport, rip, rport)];
    for (struct ss_list *n = b->next; n != b; n = n->next) {
        struct ss_tcb *t = SS_CONTAINER_OF(n, struct ss_tcb, flow_link);
        if (t->rip == rip && t->rport == rport && t->lport == lport && t->lip == lip)
            return t;
    }
    return NULL;
}

void ss_flow_insert(struct ss_tcb *t)
{
    struct ss_engine *e = t->e;
    ss_list_add_tail(&e->flows[flow_hash(e, t->lip, t->lport, t->rip, t->rport)], &t->flow_link);
    t->hashed = true;
    if (e->cfg.flow_publish)
        e->cfg.flow_publish(e->cfg.flow_ctx, t->rip, t->rport, t->lport, 1);
}

/* ---- bind table, which is also the listen table ---- */

static struct ss_list *bind_bucket(struct ss_engine *e, uint16_t port)
{
    return &e->binds[port & (SS_BIND_BUCKETS - 1)];
}

void ss_bind_insert(struct ss_tcb *t)
{
    ss_list_add_tail(bind_bucket(t->e, t->lport), &t->bind_link);
    t->bound = true;
}

/* The listener for a segment to lip:lport from rip:rport: one bound to
 * lip before a wildcard one, as Linux scores them; among SO_REUSEPORT
 * listeners of the same rank, the one a hash of the peer picks, the same
 * for every segment of a connection. */
struct ss_tcb *ss_listener_lookup(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport)
{
    struct ss_list *b = &e->listens[lport & (SS_BIND_BUCKETS - 1)];
    struct ss_tcb *best = NULL;
    uint32_t nbest = 0;
    /* the address's listeners, else the wildcard's; of those, the ones in
     * use if any (listen spawn) */
    for (int exact = 1; exact >= 0 && !best; exact--) {
        for (struct ss_list *n = b->next; n != b; n = n->next) {
            struct ss_tcb *t = SS_CONTAINER_OF(n, struct ss_tcb, listen_link);
            if (t->lport != lport || t->lip != (exact ? lip : 0))
                continue;
            if (best && best->active && !t->active)
                continue;
            if (!best || (t->active && !best->active)) {
                best = t;
                nbest = 0;
            }
            nbest++;
        }
    }
    if (nbest <= 1 || !(best->reuseport || best->spawned))
        return best;
    /* a shared port (SO_REUSEPORT, spawned listeners): a hash of the peer
     * picks one, the same for every segment of a connection */
    uint32_t pick = (rip * 2654435761u ^ rport * 40503u) % nbest;
    for (struct ss_list *n = b->next; n != b; n = n->next) {
        struct ss_tcb *t = SS_CONTAINER_OF(n, struct ss_tcb, listen_link);
        if (t->lport == lport && t->lip == best->lip && !t->active == !best->active && pick-- == 0)
            return t;
    }
    return best;
}

int ss_tcp_port_listened(struct ss_engine *e, uint16_t port)
{
    struct ss_list *b = &e->listens[port & (SS_BIND_BUCKETS - 1)];
    for (struct ss_list *n = b->next; n != b; n = n->next)
        if (SS_CONTAINER_OF(n, struct ss_tcb, listen_link)->lport == port)
            return 1;
    return e->cfg.listen_owner && e->cfg.listen_owner(e->cfg.flow_ctx, 0, 0, port, 0) >= 0;
}

/* Linux's rule: two sockets may share a port when their addresses differ
 * (neither a wildcard), when both set SO_REUSEADDR and neither listens, or
 * when both set SO_REUSEPORT;
 * a TIME-WAIT orphan yields to a socket that set SO_REUSEADDR. */
static bool bind_conflict(struct ss_engine *e, const struct ss_tcb *t, uint32_t ip, uint16_t port, bool listening)
{
    struct ss_list *b = bind_bucket(e, port);
    for (struct ss_list *n = b->next; n != b; n = n->next) {
        struct ss_tcb *o = SS_CONTAINER_OF(n, struct ss_tcb, bind_link);
        if (o == t || o->lport != port)
            continue;
        if (ip != 0 && o->lip != 0 && ip != o->lip)
            continue;
        if (o->state == SS_TCP_TIME_WAIT && o->sid < 0 && t->reuseaddr)
            continue;
        if (t->reuseport && o->reuseport)
            continue; /* SO_REUSEPORT on both: listening or not */
        if (t->spawned && o->spawned)
            continue; /* the local listeners of an inherited socket share its port */
        if (t->reuseaddr && o->reuseaddr && !listening && o->state != SS_TCP_LISTEN)
            continue;
        if (listening && o->state != SS_TCP_LISTEN && t->reuseaddr && o->reuseaddr)
            continue;
        return true;
    }
    return false;
}

static bool port_in_use(struct ss_engine *e, uint16_t port)
{
    struct ss_list *b = bind_bucket(e, port);
    for (struct ss_list *n = b->next; n != b; n = n->next)
        if (SS_CONTAINER_OF(n, struct ss_tcb, bind_link)->lport == port)
            return true;
    return false;
}

/* The ephemeral ports are those of port_lo..port_hi with
 * port % port_mod == port_rem: the ports whose return traffic the steering
 * rule sends to this instance.  They are numbered 0..count-1. */
static uint32_t ephemeral_count(const struct ss_engine *e)
{
    const struct ss_engine_config *c = &e->cfg;
    uint32_t first = c->port_lo + (c->port_rem + c->port_mod - c->port_lo % c->port_mod) % c->port_mod;
    return first > c->port_hi ? 0 : (c->port_hi - first) / c->port_mod + 1;
}

static uint16_t ephemeral_port(const struct ss_engine *e, uint32_t i)
{
    const struct ss_engine_config *c = &e->cfg;
    uint32_t first = c->port_lo + (c->port_rem + c->port_mod - c->port_lo % c->port_mod) % c->port_mod;
    return (uint16_t)(first + (i % ephemeral_count(e)) * c->port_mod);
}

/* An ephemeral port for bind(port 0) or listen() without bind. */
static int pick_free_port(struct ss_engine *e)
{
    uint32_t range = ephemeral_count(e);
    for (uint32_t i = 0; i < range; i++) {
        uint16_t port = ephemeral_port(e, e->port_next++);
        if (!port_in_use(e, port))
            return port;
    }
    return -EADDRINUSE;
}

/* Linux's tcp_tw_reuse (tcp_twsk_unique()): connect may take over a pair
 * this instance holds in TIME-WAIT when the old connection used
 * timestamps and the last one came at least a second ago.  Our timestamps
 * for the pair continue across connections (ss_tcp_ts_offset) and our
 * clock has moved on by a thousand ticks since we last answered the peer,
 * so the new SYN's TSval is newer than any TS.Recent the peer keeps for
 * the pair: its TIME-WAIT takes the SYN (RFC 6191), and old duplicates of
 * the old connection fail PAWS at either end (RFC 7323 5). */
static bool tw_reusable(const struct ss_engine *e, const struct ss_tcb *o)
{
    return o->state == SS_TCP_TIME_WAIT && o->ts_ok && e->now_us - o->ts_recent_us >= 1000000;
}

/* A source port for connect(): RFC 6056 algorithm 3, a keyed hash of the
 * destination as the starting offset, so a given peer sees unpredictable
 * ports; a port shared with other connections only if all are autobound
 * and the 4-tuple is free, or held by a TIME-WAIT that may be reused
 * (*tw; Linux's __inet_hash_connect takes the first port that is either). */
static int pick_connect_port(struct ss_engine *e, uint32_t lip, uint32_t rip, uint16_t rport, struct ss_tcb **tw)
{
    uint32_t key[2] = {rip, rport};
    uint32_t range = ephemeral_count(e);
    uint32_t offset = (uint32_t)ss_siphash(e->cfg.secret, key, sizeof key);
    for (uint32_t i = 0; i < range; i++) {
        uint16_t port = ephemeral_port(e, offset + e->port_next + i);
        struct ss_tcb *held = ss_flow_lookup(e, lip, port, rip, rport);
        if (held && !tw_reusable(e, held))
            continue;
        bool ok = true;
        struct ss_list *b = bind_bucket(e, port);
        for (struct ss_list *n = b->next; n != b && ok; n = n->next) {
            struct ss_tcb *o = SS_CONTAINER_OF(n, struct ss_tcb, bind_link);
            if (o->lport == port && !o->autobound)
                ok = false;
        }
        if (ok) {
            e->port_next += i + 1;
            *tw = held;
            return port;
        }
    }
    return -EADDRNOTAVAIL;
}

/* RFC 6528: ISN = M + F(localip, localport, remoteip, remoteport, secretkey),
 * M a 4-microsecond clock, F SipHash-2-4. */
uint32_t ss_tcp_isn(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport)
{
    uint32_t tuple[3] = {lip, rip, (uint32_t)lport << 16 | rport};
    return (uint32_t)(e->now_us / 4) + (uint32_t)ss_siphash(e->cfg.secret, tuple, sizeof tuple);
}

/* The offset of a connection's timestamp clock.  RFC 7323's security
 * considerations would not have every connection show the host's uptime;
 * but the timestamps of a new connection on a pair must continue from the
 * old one's, since the receiving TIME-WAIT takes the new SYN only when its
 * TSval is newer than the last it saw (RFC 6191), and a connect that
 * reuses a TIME-WAIT pair relies on the same (tcp_tw_reuse).  So the
 * offset is a keyed hash of the 4-tuple, as the ISN's F() in RFC 6528,
 * never of the connection: one drawn per connection made the new SYN
 * older than the TIME-WAIT's TS.Recent about half the time, and PAWS
 * refused it (issue 13).  The instances of a group share the key and the
 * clock, so a pair's timestamps grow whichever instance sends them. */
uint32_t ss_tcp_ts_offset(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport)
{
    uint32_t tuple[4] = {lip, rip, (uint32_t)lport << 16 | rport, 0x54537666u /* not the ISN's input */};
    return (uint32_t)ss_siphash(e->cfg.secret, tuple, sizeof tuple);
}

/* Called once the handshake has fixed the options. */
void ss_tcp_init_conn(struct ss_tcb *t)
{
    const struct ss_engine_config *c = &t->e->cfg;
    uint32_t mss = SS_MIN((uint32_t)t->peer_mss, c->mtu - 40);
    if (t->user_mss)
        mss = SS_MIN(mss, t->user_mss);
    /* RFC 9293 3.7.1: options in every segment come out of the MSS. */
    if (t->ts_ok)
        mss -= 12;
    t->smss = SS_MAX(mss, 64u);
    /* RFC 6928: IW = min(10*MSS, max(2*MSS, 14600)); configurable count. */
    t->cwnd = c->initial_cwnd * t->smss;
    if (c->initial_cwnd == 10)
        t->cwnd = SS_MIN(10 * t->smss, SS_MAX(2 * t->smss, 14600u));
    t->ssthresh = 0x7fffffff; /* RFC 5681 3.1: arbitrarily high */
    t->recover = t->iss;      /* RFC 6582 3.2 */
    t->max_snd_wnd = SS_MAX(t->max_snd_wnd, t->snd_wnd);
}

/* The window scale we ask for: the smallest that lets the whole receive
 * buffer be offered (RFC 7323 2.3, at most 14). */
static uint8_t choose_wscale(const struct ss_tcb *t)
{
    uint8_t ws = 0;
    while (ws < 14 && (65535u << ws) < t->rcvbuf.cap)
        ws++;
    return ws;
}

/* ---- user calls ---- */

static struct ss_tcb *get(struct ss_engine *e, int sid)
{
    if (sid < 0 || (uint32_t)sid >= e->cfg.max_sockets)
        return NULL;
    return e->socks[sid];
}

static int assign_sid(struct ss_tcb *t)
{
    struct ss_engine *e = t->e;
    if (!e->nfree)
        return -EMFILE;
    t->sid = e->free_ids[--e->nfree];
    e->socks[t->sid] = t;
    return t->sid;
}

int ss_tcp_socket(struct ss_engine *e)
{
    struct ss_tcb *t;
    if (!e->nfree)
        return -EMFILE;
    t = ss_tcb_alloc(e);
    if (!t)
        return -ENOBUFS;
    return assign_sid(t);
}

int ss_tcp_bind(struct ss_engine *e, int sid, uint32_t ip, uint16_t port)
{
    struct ss_tcb *t = get(e, sid);
    if (!t)
        return -EBADF;
    if (t->bound || t->state != SS_TCP_CLOSED)
        return -EINVAL;
    if (ip != 0 && ip != e->cfg.ip && !SS_IP_LOOPBACK(ip))
        return -EADDRNOTAVAIL;
    if (port == 0) {
        int p = pick_free_port(e);
        if (p < 0)
            return p;
        port = (uint16_t)p;
    } else if (bind_conflict(e, t, ip, port, false)) {
        return -EADDRINUSE;
    }
    t->lip = ip;
    t->lport = port;
    ss_bind_insert(t);
    return 0;
}

int ss_tcp_listen(struct ss_engine *e, int sid, int backlog)
{
    struct ss_tcb *t = get(e, sid);
    if (!t)
        return -EBADF;
    /* Linux: a negative or too large backlog means somaxconn. */
    if (backlog < 0 || (uint32_t)backlog > e->cfg.somaxconn)
        backlog = (int)e->cfg.somaxconn;
    if (t->state == SS_TCP_LISTEN) {
        t->backlog = (uint32_t)backlog;
        return 0;
    }
    if (t->state != SS_TCP_CLOSED || t->rip != 0 || t->rd_shut || t->wr_shut)
        return -EINVAL;
    if (!t->bound) {
        int r = ss_tcp_bind(e, sid, 0, 0);
        if (r < 0)
            return r;
    } else if (bind_conflict(e, t, t->lip, t->lport, true)) {
        return -EADDRINUSE;
    }
    t->backlog = (uint32_t)backlog;
    ss_tcp_set_state(t, SS_TCP_LISTEN);
    return 0;
}

int ss_tcp_accept(struct ss_engine *e, int sid, uint64_t now_us)
{
    struct ss_tcb *l = get(e, sid);
    e->now_us = now_us;
    if (!l)
        return -EBADF;
    if (l->state != SS_TCP_LISTEN)
        return -EINVAL;
    if (ss_list_empty(&l->accept_q))
        return -EAGAIN;
    struct ss_tcb *c = SS_CONTAINER_OF(l->accept_q.next, struct ss_tcb, child_link);
    if (!e->nfree)
        return -EMFILE;
    if (c->via_fallback)
        e->ctr->accept_global++;
    else
        e->ctr->accept_local++;
    detach_from_listener(c);
    int r = assign_sid(c);
    ss_tcb_notify(c);
    return r;
}

int ss_tcp_set_ahead(struct ss_engine *e, int sid, uint32_t n)
{
    struct ss_tcb *l = get(e, sid);
    if (!l)
        return -EBADF;
    if (l->state != SS_TCP_LISTEN)
        return -EINVAL;
    l->ahead = n;
    return 0;
}

int ss_tcp_unaccept(struct ss_engine *e, int lsid, int sid, const void *data, uint32_t len, uint64_t now_us)
{
    struct ss_tcb *l = get(e, lsid), *c = get(e, sid);
    e->now_us = now_us;
    if (!l || !c || c == l)
        return -EBADF;
    if (l->state != SS_TCP_LISTEN || c->listener || c->user_closed || c->state == SS_TCP_LISTEN)
        return -EINVAL;
    /* The bytes go back in front; out-of-order bytes held beyond the
     * in-order ones keep their place, so they must still fit behind.  What
     * the peer sends later and no longer fits is not taken (input trims
     * to the ring's space) and comes again, as after a shrunk window. */
    uint32_t beyond = c->nooo && SEQ_GT(c->rcv_adv, c->rcv_nxt) ? c->rcv_adv - c->rcv_nxt : 0;
    if (len && ((uint64_t)c->rcvbuf.len + len + beyond > c->rcvbuf.cap || ss_ring_unshift(&c->rcvbuf, data, len) < 0))
        return -ENOBUFS;
    release_sid(c);
    c->listener = l;
    c->in_accept_q = true;
    ss_list_add_tail(l->accept_q.next, &c->child_link); /* first in line again, as it was */
    l->accept_len++;
    ss_tcb_notify(l);
    return 0;
}

int ss_tcp_connect(struct ss_engine *e, int sid, uint32_t ip, uint16_t port, uint64_t now_us)
{
    struct ss_tcb *t = get(e, sid);
    e->now_us = now_us;
    if (!t)
        return -EBADF;
    switch (t->state) {
    case SS_TCP_CLOSED:
        break;
    case SS_TCP_SYN_SENT:
    case SS_TCP_SYN_RECEIVED:
        return -EALREADY;
    default:
        return -EISCONN; /* connected, closing, or listening: Linux's answer */
    }
    if (t->rip != 0 && (t->reset || t->fin_rcvd || t->fin_sent))
        return -EISCONN; /* a finished connection cannot be reused */
    if (port == 0)
        return -ECONNREFUSED;
    if (ip == 0 || ip == 0xffffffffu || ip >= 0xe0000000u)
        return -ENETUNREACH;
    if (!ss_ip_routable(e, ip))
        return -ENETUNREACH;
    /* the source address: the bound one, else 127.0.0.1 towards the
     * loopback net (Linux's choice on lo), else the stack's */
    uint32_t src = t->lip ? t->lip : SS_IP_LOOPBACK(ip) ? SS_IP_LOOPBACK_SRC : e->cfg.ip;
    if (SS_IP_LOOPBACK(src) && !SS_IP_LOOPBACK(ip))
        return -EINVAL; /* as Linux: a loopback source does not leave lo */
    struct ss_tcb *tw = NULL;
    if (!t->bound) {
        int p = pick_connect_port(e, src, ip, port, &tw);
        if (p < 0)
            return p;
        t->lport = (uint16_t)p;
        t->autobound = true;
        ss_bind_insert(t);
    } else if ((tw = ss_flow_lookup(e, src, t->lport, ip, port)) && !tw_reusable(e, tw)) {
        return -EADDRNOTAVAIL;
    }
    t->lip = src;
    t->rip = ip;
    t->rport = port;
    t->error = 0;
    t->rd_shut = t->wr_shut = false;
    t->iss = ss_tcp_isn(e, t->lip, t->lport, t->rip, t->rport);
    t->ts_recent = 0;
    t->ts_recent_us = 0;
    if (tw) {
        /* Taking over a TIME-WAIT pair (tw_reusable), as Linux's
         * tcp_twsk_unique(): the new sequence space starts above the old
         * one (RFC 1122 4.2.2.13), and TS.Recent carries over so PAWS
         * still knows the old connection's segments in SYN-SENT. */
        uint32_t min_iss = tw->snd_nxt + 65535 + 2;
        if (SEQ_LT(t->iss, min_iss))
            t->iss = min_iss;
        t->ts_recent = tw->ts_recent;
        t->ts_recent_us = tw->ts_recent_us;
        e->ctr->tcp_timewait_reuse_connect++;
        ss_tcp_done(tw, 0);
        ss_engine_reap(e);
    }
    t->snd_una = t->iss;
    t->snd_nxt = t->snd_max = t->iss + 1;
    t->buf_seq = t->iss + 1;
    t->rcv_wscale = choose_wscale(t);
    t->ts_offset = ss_tcp_ts_offset(e, t->lip, t->lport, t->rip, t->rport);
    ss_tcp_set_state(t, SS_TCP_SYN_SENT);
    ss_flow_insert(t);
    e->ctr->tcp_active_opens++;
    t->rtt_timing = true;
    t->rtt_start_us = now_us;
    t->rtt_seq = t->iss + 1;
    ss_tcp_send_syn(t);
    ss_tcp_arm_rtx(t);
    return -EINPROGRESS;
}

ssize_t ss_tcp_send(struct ss_engine *e, int sid, const void *buf, size_t len, uint64_t now_us)
{
    struct ss_tcb *t = get(e, sid);
    e->now_us = now_us;
    if (!t)
        return -EBADF;
    if (t->error) {
        int err = t->error;
        t->error = 0;
        return err;
    }
    if (t->wr_shut)
        return -EPIPE;
    if (t->state == SS_TCP_SYN_SENT || t->state == SS_TCP_SYN_RECEIVED)
        return -EAGAIN;
    if (t->state != SS_TCP_ESTABLISHED && t->state != SS_TCP_CLOSE_WAIT)
        return -EPIPE;
    if (len == 0)
        return 0;
    uint32_t n = ss_ring_push(&t->sndbuf, buf, (uint32_t)SS_MIN(len, (size_t)UINT32_MAX));
    if (n == 0)
        return ss_ring_space(&t->sndbuf) ? -ENOBUFS : -EAGAIN;
    t->in_send = true; /* MSG_MORE holds this send's output only */
    ss_tcp_output(t);
    t->in_send = false;
    return n;
}

/* Linux's rule for an unsolicited window update after a read: when the
 * window we offer has fallen to half its maximum or less and reading let it
 * at least double. */
static void maybe_window_update(struct ss_tcb *t)
{
    if (t->state != SS_TCP_ESTABLISHED && t->state != SS_TCP_FIN_WAIT_1 && t->state != SS_TCP_FIN_WAIT_2)
        return;
    uint32_t clamp = SS_MIN(t->rcvbuf.cap, 65535u << t->rcv_wscale);
    uint32_t now = SEQ_GT(t->rcv_adv, t->rcv_nxt) ? t->rcv_adv - t->rcv_nxt : 0;
    if (2 * now > clamp)
        return;
    uint32_t could = SS_MIN(ss_ring_space(&t->rcvbuf), clamp);
    if (could >= 2 * now && could - now >= SS_MIN(t->rcvbuf.cap / 2, t->rcv_mss))
        ss_tcp_send_ack(t);
}

ssize_t ss_tcp_recv(struct ss_engine *e, int sid, void *buf, size_t len, uint64_t now_us)
{
    struct ss_tcb *t = get(e, sid);
    e->now_us = now_us;
    if (!t)
        return -EBADF;
    if (t->state == SS_TCP_LISTEN)
        return -ENOTCONN;
    if (t->rcvbuf.len && len) {
        uint32_t n = (uint32_t)SS_MIN((size_t)t->rcvbuf.len, len);
        ss_ring_peek(&t->rcvbuf, 0, buf, n);
        ss_ring_drop(&t->rcvbuf, n);
        if (t->rcvbuf.len == 0 && t->nooo == 0)
            ss_ring_free(&t->rcvbuf);
        maybe_window_update(t);
        return n;
    }
    /* Linux tcp_recvmsg(): a FIN already received reads as end of stream
     * before any pending error, which is left for the next write. */
    if (len == 0 || t->fin_rcvd)
        return 0;
    if (t->error) {
        int err = t->error;
        t->error = 0;
        return err;
    }
    if (t->rd_shut)
        return 0;
    if (t->state == SS_TCP_CLOSED)
        return t->rip ? 0 : -ENOTCONN;
    return -EAGAIN;
}

/* Another listener for the same address and port, the one in use first:
 * where the connections queued on a closing listener can go. */
static struct ss_tcb *heir_of(struct ss_tcb *l)
{
    struct ss_list *b = &l->e->listens[l->lport & (SS_BIND_BUCKETS - 1)];
    struct ss_tcb *heir = NULL;
    for (struct ss_list *n = b->next; n != b; n = n->next) {
        struct ss_tcb *o = SS_CONTAINER_OF(n, struct ss_tcb, listen_link);
        if (o != l && o->lport == l->lport && o->lip == l->lip && (!heir || (o->active && !heir->active)))
            heir = o;
    }
    return heir;
}

static void close_listener(struct ss_tcb *l)
{
    /* Listen spawn: when a process's local listener goes (an nginx worker
     * exiting on reload) and another listener of the port remains here,
     * its queued connections move there instead of being reset: the
     * kernel's one shared queue would have kept them. */
    struct ss_tcb *heir = (l->spawned || l->active) ? heir_of(l) : NULL;
    while (heir && !ss_list_empty(&l->accept_q)) {
        struct ss_tcb *c = SS_CONTAINER_OF(l->accept_q.next, struct ss_tcb, child_link);
        ss_list_del(&c->child_link);
        l->accept_len--;
        ss_list_add_tail(&heir->accept_q, &c->child_link);
        heir->accept_len++;
        c->listener = heir;
        l->e->ctr->accept_queue_moved++;
        ss_tcb_notify(heir);
    }
    while (heir && !ss_list_empty(&l->syn_q)) {
        struct ss_tcb *c = SS_CONTAINER_OF(l->syn_q.next, struct ss_tcb, child_link);
        ss_list_del(&c->child_link);
        if (!c->cookie) {
            l->syn_len--;
            heir->syn_len++;
        }
        ss_list_add_tail(&heir->syn_q, &c->child_link);
        c->listener = heir;
    }
    /* Half-open children vanish; accepted-but-unclaimed ones are reset,
     * as Linux does when a listener closes. */
    while (!ss_list_empty(&l->syn_q)) {
        struct ss_tcb *c = SS_CONTAINER_OF(l->syn_q.next, struct ss_tcb, child_link);
        ss_tcp_done(c, 0);
    }
    while (!ss_list_empty(&l->accept_q)) {
        struct ss_tcb *c = SS_CONTAINER_OF(l->accept_q.next, struct ss_tcb, child_link);
        detach_from_listener(c);
        if (c->state != SS_TCP_CLOSED) {
            ss_tcp_send_rst(c);
            l->e->ctr->tcp_rst_on_close++;
        }
        ss_tcp_done(c, 0);
    }
    ss_tcp_set_state(l, SS_TCP_CLOSED);
}

int ss_tcp_shutdown(struct ss_engine *e, int sid, int how, uint64_t now_us)
{
    struct ss_tcb *t = get(e, sid);
    e->now_us = now_us;
    if (!t)
        return -EBADF;
    if (how < 0 || how > 2)
        return -EINVAL;
    switch (t->state) {
    case SS_TCP_CLOSED:
        return -ENOTCONN;
    case SS_TCP_LISTEN:
        /* Linux inet_shutdown(): only shutting the read side stops a
         * listener; SHUT_WR leaves it listening. */
        if (how == 1)
            return 0;
        close_listener(t);
        ss_engine_reap(e);
        return 0;
    case SS_TCP_SYN_SENT:
        ss_tcp_done(t, 0);
        return 0;
    default:
        break;
    }
    if (how != 1)
        t->rd_shut = true;
    if (how != 0 && !t->wr_shut) {
        t->wr_shut = true;
        if (t->state == SS_TCP_ESTABLISHED)
            ss_tcp_set_state(t, SS_TCP_FIN_WAIT_1);
        else if (t->state == SS_TCP_CLOSE_WAIT)
            ss_tcp_set_state(t, SS_TCP_LAST_ACK);
        ss_tcp_output(t);
    }
    ss_tcb_notify(t);
    ss_engine_reap(e);
    return 0;
}

int ss_tcp_close(struct ss_engine *e, int sid, uint64_t now_us)
{
    struct ss_tcb *t = get(e, sid);
    e->now_us = now_us;
    if (!t)
        return -EBADF;
    release_sid(t);
    t->user_closed = true;
    switch (t->state) {
    case SS_TCP_LISTEN:
        close_listener(t);
        ss_tcb_free(t);
        ss_engine_reap(e);
        return 0;
    case SS_TCP_CLOSED:
        ss_tcb_free(t);
        return 0;
    case SS_TCP_SYN_SENT:
        ss_tcp_done(t, 0);
        ss_engine_reap(e);
        return 0;
    default:
        break;
    }
    /* RFC 9293 3.10.4 / RFC 2525 2.17: closing with received data unread, or
     * with SO_LINGER zero, aborts with a reset instead of a FIN. */
    if (t->rcvbuf.len || t->linger_zero) {
        if (t->state != SS_TCP_TIME_WAIT) {
            ss_tcp_send_rst(t);
            e->ctr->tcp_rst_on_close++;
        }
        ss_tcp_done(t, 0);
        ss_engine_reap(e);
        return 0;
    }
    t->rd_shut = true;
    if (!t->wr_shut) {
        t->wr_shut = true;
        if (t->state == SS_TCP_ESTABLISHED || t->state == SS_TCP_SYN_RECEIVED)
            ss_tcp_set_state(t, SS_TCP_FIN_WAIT_1);
        else if (t->state == SS_TCP_CLOSE_WAIT)
            ss_tcp_set_state(t, SS_TCP_LAST_ACK);
        ss_tcp_output(t);
    }
    /* An orphan cannot wait in FIN-WAIT-2 for ever (Linux tcp_fin_timeout). */
    if (t->state == SS_TCP_FIN_WAIT_2)
        ss_tcp_timer_set(t, SS_T_2MSL, now_us + (uint64_t)e->cfg.fin_timeout_ms * 1000);
    ss_engine_reap(e);
    return 0;
}

int ss_tcp_setopt(struct ss_engine *e, int sid, int opt, int value, uint64_t now_us)
{
    struct ss_tcb *t = get(e, sid);
    e->now_us = now_us;
    if (!t)
        return -EBADF;
    switch (opt) {
    case SS_OPT_NODELAY:
        t->nodelay = value != 0;
        if (t->nodelay)
            ss_tcp_output(t); /* Linux pushes what Nagle held back */
        return 0;
    case SS_OPT_KEEPALIVE:
        t->keepalive = value != 0;
        if (t->keepalive && (t->state == SS_TCP_ESTABLISHED || t->state == SS_TCP_CLOSE_WAIT)) {
            t->last_rcv_us = now_us;
            ss_tcp_timer_set(t, SS_T_KEEP, now_us + (uint64_t)t->ka_idle_ms * 1000);
        } else if (!t->keepalive) {
            ss_tcp_timer_clear(t, SS_T_KEEP);
        }
        return 0;
    case SS_OPT_KEEPIDLE:
    case SS_OPT_KEEPINTVL:
        if (value < 1 || value > 32767)
            return -EINVAL;
        if (opt == SS_OPT_KEEPINTVL) {
            t->ka_intvl_ms = (uint32_t)value * 1000;
            return 0;
        }
        t->ka_idle_ms = (uint32_t)value * 1000;
        /* Linux re-arms a running keepalive from the last segment received. */
        if (t->keepalive && !t->ka_sent &&
            (t->state == SS_TCP_ESTABLISHED || t->state == SS_TCP_CLOSE_WAIT || t->state == SS_TCP_FIN_WAIT_2))
            ss_tcp_timer_set(t, SS_T_KEEP, SS_MAX(now_us, t->last_rcv_us + (uint64_t)t->ka_idle_ms * 1000));
        return 0;
    case SS_OPT_KEEPCNT:
        if (value < 1 || value > 127)
            return -EINVAL;
        t->ka_probes = (uint32_t)value;
        return 0;
    case SS_OPT_RCVBUF:
    case SS_OPT_SNDBUF: {
        /* Linux doubles the value for bookkeeping and reports the double. */
        uint32_t v = value < 1024 ? 2048u : SS_MIN((uint32_t)value * 2u, 1u << 30);
        struct ss_ring *r = opt == SS_OPT_RCVBUF ? &t->rcvbuf : &t->sndbuf;
        /* The size is fixed once data has passed through: a window already
         * offered must stay valid. */
        if (!r->buf && r->len == 0 && (opt == SS_OPT_SNDBUF || t->state == SS_TCP_CLOSED))
            ss_ring_init(r, v);
        return 0;
    }
    case SS_OPT_REUSEADDR:
        t->reuseaddr = value != 0;
        return 0;
    case SS_OPT_REUSEPORT:
        t->reuseport = value != 0;
        return 0;
    case SS_OPT_CORK: {
        bool was = t->cork != 0;
        t->cork = (uint8_t)(value & 3);
        if (was && !t->cork)
            ss_tcp_output(t); /* Linux pushes what the cork held */
        return 0;
    }
    case SS_OPT_DEFER_ACCEPT:
        t->defer_accept_s = value > 0 ? (uint32_t)value : 0;
        return 0;
    case SS_OPT_ACTIVE: {
        /* 1: one more process uses the listener, 0: one fewer */
        bool was = t->active != 0;
        if (value)
            t->active++;
        else if (t->active)
            t->active--;
        if (was != (t->active != 0) && t->state == SS_TCP_LISTEN)
            publish_listen(e, t->lport);
        return 0;
    }
    case SS_OPT_SPAWNED:
        if (t->bound)
            return -EINVAL; /* before bind: it decides whom the port is shared with */
        t->spawned = value != 0;
        return 0;
    case SS_OPT_LINGER_ZERO:
        t->linger_zero = value != 0;
        return 0;
    case SS_OPT_MAXSEG:
        /* Linux: 0 clears the user's limit; otherwise 88..32767. */
        if (value != 0 && (value < 88 || value > 32767))
            return -EINVAL;
        t->user_mss = (uint16_t)value;
        return 0;
    default:
        return -ENOPROTOOPT;
    }
}

int ss_tcp_getopt(struct ss_engine *e, int sid, int opt, int *value)
{
    struct ss_tcb *t = get(e, sid);
    if (!t)
        return -EBADF;
    switch (opt) {
    case SS_OPT_NODELAY: *value = t->nodelay; return 0;
    case SS_OPT_KEEPALIVE: *value = t->keepalive; return 0;
    case SS_OPT_KEEPIDLE: *value = (int)(t->ka_idle_ms / 1000); return 0;
    case SS_OPT_KEEPINTVL: *value = (int)(t->ka_intvl_ms / 1000); return 0;
    case SS_OPT_KEEPCNT: *value = (int)t->ka_probes; return 0;
    case SS_OPT_RCVBUF: *value = (int)t->rcvbuf.cap; return 0;
    case SS_OPT_SNDBUF: *value = (int)t->sndbuf.cap; return 0;
    case SS_OPT_REUSEADDR: *value = t->reuseaddr; return 0;
    case SS_OPT_REUSEPORT: *value = t->reuseport; return 0;
    case SS_OPT_CORK: *value = t->cork; return 0;
    case SS_OPT_DEFER_ACCEPT: *value = (int)t->defer_accept_s; return 0;
    case SS_OPT_ACTIVE: *value = t->active; return 0;
    case SS_OPT_SPAWNED: *value = t->spawned; return 0;
    case SS_OPT_LINGER_ZERO: *value = t->linger_zero; return 0;
    case SS_OPT_MAXSEG:
        *value = t->smss ? (int)t->smss : (t->user_mss ? t->user_mss : 536);
        return 0;
    case SS_OPT_ERROR:
        *value = t->error ? -t->error : (t->soft_error && t->state == SS_TCP_CLOSED ? t->soft_error : 0);
        t->error = 0;
        return 0;
    default:
        return -ENOPROTOOPT;
    }
}

int ss_tcp_info(struct ss_engine *e, int sid, struct ss_tcp_info *i)
{
    struct ss_tcb *t = get(e, sid);
    if (!t)
        return -EBADF;
    memset(i, 0, sizeof *i);
    i->state = t->state;
    i->local_ip = t->lip;
    i->remote_ip = t->rip;
    i->local_port = t->lport;
    i->remote_port = t->rport;
    i->iss = t->iss;
    i->irs = t->irs;
    i->snd_una = t->snd_una;
    i->snd_nxt = t->snd_nxt;
    i->snd_wnd = t->snd_wnd;
    i->rcv_nxt = t->rcv_nxt;
    i->rcv_wnd = SEQ_GT(t->rcv_adv, t->rcv_nxt) ? t->rcv_adv - t->rcv_nxt : 0;
    i->mss = t->smss;
    i->cwnd = t->cwnd;
    i->ssthresh = t->ssthresh;
    i->srtt_us = t->srtt_us;
    i->rto_us = t->rto_us;
    i->snd_queued = t->sndbuf.len;
    i->rcv_queued = t->rcvbuf.len;
    i->snd_wscale = t->snd_wscale;
    i->rcv_wscale = t->rcv_wscale;
    i->ts_ok = t->ts_ok;
    i->sack_ok = t->sack_ok;
    i->retransmits = t->backoff;
    i->accept_queued = t->state == SS_TCP_LISTEN ? t->accept_len + t->ahead : 0;
    i->backlog = t->state == SS_TCP_LISTEN ? t->backlog : 0;
    i->active = t->active != 0;
    return 0;
}

/* Readiness as Linux's tcp_poll() computes it. */
int ss_tcp_poll(struct ss_engine *e, int sid)
{
    struct ss_tcb *t = get(e, sid);
    if (!t)
        return -EBADF;
    if (t->state == SS_TCP_LISTEN)
        return ss_list_empty(&t->accept_q) ? 0 : SS_EV_IN;
    int mask = 0;
    bool rd_closed = t->fin_rcvd || t->rd_shut;
    if ((rd_closed && t->wr_shut) || t->state == SS_TCP_CLOSED)
        mask |= SS_EV_HUP;
    if (rd_closed)
        mask |= SS_EV_IN | SS_EV_RDHUP;
    if (t->state != SS_TCP_SYN_SENT && t->state != SS_TCP_SYN_RECEIVED) {
        if (t->rcvbuf.len)
            mask |= SS_EV_IN;
        /* Writable when at least a third of the buffer is free, as
         * sk_stream_is_writeable() judges; always once writing is shut. */
        if (t->wr_shut || ss_ring_space(&t->sndbuf) >= t->sndbuf.len / 2)
            mask |= SS_EV_OUT;
    }
    if (t->error)
        mask |= SS_EV_ERR;
    return mask;
}
