/*
 * The instance's side of the application channels (chan.h; the layout and
 * its rules are in shardsock/channel.h).
 *
 * Nothing the application writes is trusted: request fields, kick entries
 * and ring indices are checked before use, and a channel whose indices make
 * no sense is detached (its sockets closed) as if the process had died.
 */
#include "chan.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct slot {
    int32_t sid;       /* engine socket id; -1: free */
    int16_t next_chan; /* the next holder of the same engine socket (fork); -1: none */
    uint16_t next_slot;
    bool listener;
    bool connected;    /* the engine said writable once: established */
    bool eof;          /* the peer's FIN was moved to the rx ring */
    bool shut_pending; /* SHUT_WR once the tx ring is drained */
    bool close_pending;
    bool zombie;       /* closed by its process, kept for a child to adopt */
    bool more;         /* MSG_MORE held the engine's cork (SS_OPT_CORK bit 1) */
    bool active_ref;   /* this process uses the listener: one of its SS_OPT_ACTIVE */
    uint16_t pins;     /* fork tickets that keep it for a child */
    uint16_t ahead_of; /* accepted ahead by listener slot ahead_of - 1 (0: not) */
    bool granted;      /* on the grant ring or taken from it, its SS_OP_SOCKET not yet done
                        * (sid -1), or done and failed (sid -1, the error in its word) */
};

/* A forked child's claim on its parent's sockets, or an exec'd image's on
 * its old image's, for as long as its control connection stays open. */
struct ss_fork_ticket {
    int fd;
    int chan;
    uint64_t token;    /* the channel's: it is still the same channel */
    struct ss_fork_ticket *next;
    uint32_t n;        /* the slots it pins */
    uint16_t slot[];
};

struct ss_chan_host {
    int idx;
    int pid;           /* the attached process (SO_PEERCRED), for netstat and procs */
    int ctl, app_bell, inst_bell, memfd;
    uint64_t token;
    struct ss_chan_region *r;
    uint8_t *base;
    uint32_t req_tail, kick_tail; /* the rings' consumer positions: the instance's own */
    uint32_t granted;  /* slots granted and not yet made sockets */
    bool news;
    bool gone;         /* its process exec'd or ended: kept only for the sockets tickets pin */
    struct slot s[SS_CHAN_SOCKETS];
    /* When each free slot whose buffers still hold pages was freed (0: none) */
    uint64_t freed_us[SS_CHAN_SOCKETS];
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

void ss_chans_listen_bump(void *ctx, uint16_t port, int state)
{
    (void)port;
    (void)state;
    __atomic_add_fetch((uint32_t *)ctx, 1, __ATOMIC_RELEASE);
}

/* The channel's listen_gen: never 0, so a process's cache of answers
 * starts stale. */
static uint32_t listen_gen_of(const struct ss_chans *cs)
{
    uint32_t g = cs->listen_gen ? __atomic_load_n(cs->listen_gen, __ATOMIC_ACQUIRE) : 0;
    return g + 1 ? g + 1 : 1;
}

int ss_chans_init(struct ss_chans *cs, struct ss_engine *e, struct ss_counters *ctr, uint32_t max_sockets,
                  uint32_t instance, uint32_t stack_ip, uint32_t stack_netmask, int epfd)
{
    memset(cs, 0, sizeof *cs);
    cs->e = e;
    cs->ctr = ctr;
    cs->max_sockets = max_sockets;
    cs->instance = instance;
    cs->stack_ip = stack_ip;
    cs->stack_netmask = stack_netmask;
    cs->epfd = epfd;
    cs->sid_chan = malloc(max_sockets * sizeof *cs->sid_chan);
    cs->sid_slot = calloc(max_sockets, sizeof *cs->sid_slot);
    if (!cs->sid_chan || !cs->sid_slot)
        return -1;
    for (uint32_t i = 0; i < max_sockets; i++)
        cs->sid_chan[i] = -1;
    return 0;
}

/* ---- slots ---- */

/* The holders of an engine socket form a chain from sid_chan/sid_slot; the
 * first one receives the bytes. */
static struct slot *slot_of(struct ss_chans *cs, int chan, uint32_t k) { return &cs->c[chan]->s[k]; }

/* The slot's shared state starts clean when it is given out: here, or when
 * it was granted (grant), since when the process may have written to it. */
static void clean_slot(struct ss_chan_host *c, uint32_t k)
{
    struct ss_chan_socket *so = &c->r->sock[k];
    memset(so, 0, sizeof *so);
    so->in_use = 1;
}

static void map_slot(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k, int sid)
{
    bool granted = c->s[k].granted;
    memset(&c->s[k], 0, sizeof c->s[k]);
    c->freed_us[k] = 0; /* its buffers' pages, if still there, serve again */
    c->s[k].sid = sid;
    c->s[k].next_chan = -1;
    if (granted)
        c->granted--;
    else
        clean_slot(c, k);
    if (cs->sid_chan[sid] < 0) {
        cs->sid_chan[sid] = (int16_t)c->idx;
        cs->sid_slot[sid] = (uint16_t)k;
        return;
    }
    /* another holder: at the end of the chain */
    struct slot *x = slot_of(cs, cs->sid_chan[sid], cs->sid_slot[sid]);
    while (x->next_chan >= 0)
        x = slot_of(cs, x->next_chan, x->next_slot);
    x->next_chan = (int16_t)c->idx;
    x->next_slot = (uint16_t)k;
}

static bool is_reader(const struct ss_chans *cs, const struct ss_chan_host *c, uint32_t k)
{
    int sid = c->s[k].sid;
    return cs->sid_chan[sid] == c->idx && cs->sid_slot[sid] == k;
}

/* Takes holder (c, k) off its socket's chain; true when others remain.
 * Bytes it received and left unread go to the next reader. */
static bool unchain(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k)
{
    struct slot *me = &c->s[k];
    int sid = me->sid;
    if (is_reader(cs, c, k)) {
        cs->sid_chan[sid] = me->next_chan;
        cs->sid_slot[sid] = me->next_slot;
        if (me->next_chan < 0)
            return false;
        struct ss_chan_host *n = cs->c[me->next_chan];
        uint32_t nk = me->next_slot;
        struct ss_chan_socket *from = &c->r->sock[k], *to = &n->r->sock[nk];
        uint32_t tail = __atomic_load_n(&from->rx.tail, __ATOMIC_ACQUIRE), head = from->rx.head;
        uint32_t th = to->rx.head, tt = __atomic_load_n(&to->rx.tail, __ATOMIC_ACQUIRE);
        const uint8_t *src = c->base + SS_CHAN_RX_OFF(k);
        uint8_t *dst = n->base + SS_CHAN_RX_OFF(nk);
        for (; head - tail <= SS_CHAN_RXBUF && tail != head && th - tt < SS_CHAN_RXBUF; tail++, th++)
            dst[th & (SS_CHAN_RXBUF - 1)] = src[tail & (SS_CHAN_RXBUF - 1)];
        __atomic_store_n(&to->rx.head, th, __ATOMIC_RELEASE);
        from->rx.tail = from->rx.head; /* handed over: not unread here */
        n->s[nk].eof |= me->eof;
        return true;
    }
    struct slot *x = slot_of(cs, cs->sid_chan[sid], cs->sid_slot[sid]);
    while (x->next_chan >= 0 && !(x->next_chan == c->idx && x->next_slot == k))
        x = slot_of(cs, x->next_chan, x->next_slot);
    x->next_chan = me->next_chan;
    x->next_slot = me->next_slot;
    return true;
}

static int free_slot(const struct ss_chan_host *c)
{
    for (uint32_t k = 0; k < SS_CHAN_SOCKETS; k++)
        if (c->s[k].sid < 0 && !c->s[k].granted)
            return (int)k;
    return -1;
}

static void post_event(struct ss_chan_host *c, uint32_t k)
{
    struct ss_chan_socket *so = &c->r->sock[k];
    c->news = true;
    if (__atomic_exchange_n(&so->evq, 1, __ATOMIC_ACQ_REL))
        return; /* already queued, not yet taken */
    /* never full: at most one entry per socket, and the ring is larger
     * (unless the process wrote its tail wrong: then it loses events) */
    ss_idxq_push(&c->r->eventq, c->r->events, SS_CHAN_EVENTS, k);
}

/* Tops the grant ring up: free slots the process's threads may make
 * sockets on with no round trip (SS_OP_SOCKET, posted).  Lowest first, as
 * free_slot, so warm buffers serve again. */
static void grant(struct ss_chan_host *c)
{
    uint32_t queued = ss_idxq_count(&c->r->grantq, SS_CHAN_GRANTS);
    if (queued >= SS_CHAN_GRANT_AHEAD)
        return; /* enough, or a corrupt tail: then no more grants, and sockets ask (SS_OP_SOCKET) */
    for (uint32_t k = 0; k < SS_CHAN_SOCKETS && queued < SS_CHAN_GRANT_AHEAD && c->granted < SS_CHAN_GRANTS; k++) {
        if (c->s[k].sid >= 0 || c->s[k].granted)
            continue;
        c->s[k].granted = true;
        c->granted++;
        c->freed_us[k] = 0;
        clean_slot(c, k);
        if (!ss_idxq_push(&c->r->grantq, c->r->grants, SS_CHAN_GRANTS, k)) {
            c->s[k].granted = false;
            c->granted--;
            break;
        }
        queued++;
    }
}

/* A granted slot the process closed before it became a socket, or whose
 * SS_OP_SOCKET failed: free again. */
static void ungrant(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k);

static void fill_names(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k)
{
    struct ss_tcp_info ti;
    if (ss_tcp_info(cs->e, c->s[k].sid, &ti) < 0)
        return;
    struct ss_chan_socket *so = &c->r->sock[k];
    so->local_ip = ti.local_ip ? ti.local_ip : 0;
    so->local_port = ti.local_port;
    so->remote_ip = ti.remote_ip;
    so->remote_port = ti.remote_port;
}

static bool pump(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k);

static void set_active(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k, bool on)
{
    if (c->s[k].active_ref != on) {
        c->s[k].active_ref = on;
        ss_tcp_setopt(cs->e, c->s[k].sid, SS_OPT_ACTIVE, on, now_us());
    }
}

/* The slot is free again (its engine socket closed or went elsewhere). */
static void vacate(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k)
{
    c->s[k].sid = -1;
    __atomic_store_n(&c->r->sock[k].in_use, 0, __ATOMIC_RELEASE);
    /* The buffers' pages go back to the system once the slot has stayed
     * free for SS_CHANS_COLD_US (ss_chans_sweep): a closed socket costs
     * nothing for long, while a program that opens and closes connections
     * all the time reuses warm pages (free_slot takes the lowest free
     * slot) instead of paying a hole punch, with the TLB shootdown in
     * every process that maps the channel, and page faults per connection. */
    uint64_t t = now_us();
    c->freed_us[k] = t;
    if (!cs->sweep_at_us)
        cs->sweep_at_us = t + SS_CHANS_COLD_US;
}

static void ungrant(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k)
{
    c->s[k].granted = false;
    c->granted--;
    vacate(cs, c, k);
}

static struct ss_chan_accepted *accepted_ring(struct ss_chan_host *c, uint32_t k)
{
    return (struct ss_chan_accepted *)(c->base + SS_CHAN_RX_OFF(k));
}

/* The connections listener slot k accepted ahead and its process has not
 * taken go back to the engine's queue, with the bytes already moved to
 * their rings: the listener is closing here, or another process now
 * accepts on it too; they belong to whoever accepts on it next (another
 * holder, listen spawn's heir) or are reset with its queue, as Linux
 * resets a closed listener's.  Each record is claimed as the library
 * claims one (a compare-and-swap of the tail): a thread of the process
 * may be taking the same one at this moment. */
static void undo_ahead(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k)
{
    struct ss_chan_socket *so = &c->r->sock[k];
    uint32_t head = so->rx.head, tail = __atomic_load_n(&so->rx.tail, __ATOMIC_ACQUIRE);
    if (head == tail)
        return;
    if (head - tail > SS_CHAN_ACCEPTED) {
        so->rx.tail = head; /* a corrupt tail: the connections stay the channel's, and close with it */
        return;
    }
    uint64_t t = now_us();
    int lsid = c->s[k].sid;
    uint8_t *bytes = NULL;
    while (tail != head) {
        uint32_t f = accepted_ring(c, k)[tail % SS_CHAN_ACCEPTED].slot;
        if (!__atomic_compare_exchange_n(&so->rx.tail, &tail, tail + 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            if (head - tail > SS_CHAN_ACCEPTED)
                break; /* the process moved its tail off the ring */
            continue; /* the process took it: tail is the next one now */
        }
        tail++;
        /* the record is in memory the process can write: it must name a
         * connection this listener accepted ahead, held by nobody else */
        if (f >= SS_CHAN_SOCKETS || f == k || c->s[f].sid < 0 || c->s[f].ahead_of != k + 1 || c->s[f].close_pending ||
            !is_reader(cs, c, f) || c->s[f].next_chan >= 0)
            continue;
        struct ss_chan_socket *fo = &c->r->sock[f];
        uint32_t rh = fo->rx.head, rt = fo->rx.tail, n = rh - rt;
        int sid = c->s[f].sid;
        if (n > SS_CHAN_RXBUF)
            n = 0, rt = rh;
        if (n && !bytes && !(bytes = malloc(SS_CHAN_RXBUF)))
            n = UINT32_MAX; /* no memory: reset it */
        const uint8_t *rx = c->base + SS_CHAN_RX_OFF(f);
        for (uint32_t i = 0; n != UINT32_MAX && i < n; i++)
            bytes[i] = rx[(rt + i) & (SS_CHAN_RXBUF - 1)];
        cs->sid_chan[sid] = -1;
        if (n != UINT32_MAX && ss_tcp_unaccept(cs->e, lsid, sid, bytes, n, t) == 0) {
            cs->ctr->accept_ahead_undone++;
        } else {
            cs->ctr->accept_ahead_reset++;
            ss_tcp_setopt(cs->e, sid, SS_OPT_LINGER_ZERO, 1, t);
            ss_tcp_close(cs->e, sid, t);
        }
        vacate(cs, c, f);
    }
    free(bytes);
    ss_tcp_set_ahead(cs->e, lsid, 0);
}

static void release(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k)
{
    struct ss_chan_socket *so = &c->r->sock[k];
    int sid = c->s[k].sid;
    if (c->s[k].listener)
        undo_ahead(cs, c, k);
    set_active(cs, c, k, false); /* closed here: this process no longer uses it */
    if (c->s[k].pins) {
        c->s[k].zombie = true; /* a forked child may still adopt it */
        return;
    }
    c->s[k].zombie = false;
    int16_t next_chan = is_reader(cs, c, k) ? c->s[k].next_chan : -1;
    uint16_t next_slot = c->s[k].next_slot;
    if (unchain(cs, c, k)) {
        /* another process still holds it: the connection lives on */
        if (next_chan >= 0 && cs->c[next_chan])
            pump(cs, cs->c[next_chan], next_slot); /* the new reader's readiness */
    } else {
        /* Unread data at close resets the connection, as on Linux. */
        if (so->rx.head != so->rx.tail)
            ss_tcp_setopt(cs->e, sid, SS_OPT_LINGER_ZERO, 1, now_us());
        ss_tcp_close(cs->e, sid, now_us());
    }
    vacate(cs, c, k);
}

void ss_chans_sweep(struct ss_chans *cs, uint64_t t)
{
    if (!cs->sweep_at_us || t < cs->sweep_at_us)
        return;
    uint64_t oldest = 0;
    for (int i = 0; i < SS_MAX_CHANNELS; i++) {
        struct ss_chan_host *c = cs->c[i];
        if (!c)
            continue;
        for (uint32_t k = 0; k < SS_CHAN_SOCKETS; k++) {
            uint64_t f = c->freed_us[k];
            if (!f)
                continue;
            if (t - f < SS_CHANS_COLD_US) {
                if (!oldest || f < oldest)
                    oldest = f;
                continue;
            }
            fallocate(c->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)SS_CHAN_RX_OFF(k),
                      SS_CHAN_RXBUF + SS_CHAN_TXBUF);
            c->freed_us[k] = 0;
        }
    }
    cs->sweep_at_us = oldest ? oldest + SS_CHANS_COLD_US : 0;
}

static void set_more(struct ss_chans *cs, struct slot *st, int sid, bool more, uint64_t t)
{
    int cork = 0;
    ss_tcp_getopt(cs->e, sid, SS_OPT_CORK, &cork);
    st->more = more;
    ss_tcp_setopt(cs->e, sid, SS_OPT_CORK, (cork & 1) | (more ? 2 : 0), t);
}

/* Accept-ahead (shardsock/channel.h): only into the one holder of the
 * listener that uses it (accepts, polls or has it in an epoll set).  A
 * holder that never accepts (nginx's master, which forked the workers)
 * must not get connections; with two that accept, either may be the one
 * that asks, so the engine's queue serves them as the kernel's would. */
static bool may_accept_ahead(const struct ss_chans *cs, const struct ss_chan_host *c, uint32_t k)
{
    const struct slot *st = &c->s[k];
    if (!st->active_ref || st->close_pending || st->zombie || c->gone)
        return false;
    int chan = cs->sid_chan[st->sid];
    uint32_t j = cs->sid_slot[st->sid];
    while (chan >= 0) {
        const struct slot *h = &cs->c[chan]->s[j];
        if (h->active_ref && h != st)
            return false;
        chan = h->next_chan;
        j = h->next_slot;
    }
    return true;
}

/* A listener: its connections accepted ahead into the record ring, as
 * many as the backlog allows, and its readiness.  False: a corrupt ring. */
static bool pump_listener(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k)
{
    struct slot *st = &c->s[k];
    struct ss_chan_socket *so = &c->r->sock[k];
    uint32_t head = so->rx.head, head0 = head, tail = __atomic_load_n(&so->rx.tail, __ATOMIC_ACQUIRE);
    if (head - tail > SS_CHAN_ACCEPTED)
        return false;
    /* Whether the process uses it, as its word says now: a word and a kick,
     * not a request, so an epoll set that drops a listener and adds it back
     * at once (nginx reorders its exclusive waiters so) changes nothing,
     * and costs the process no round trip. */
    bool uses = __atomic_load_n(&so->uses, __ATOMIC_ACQUIRE) != 0;
    if (uses != st->active_ref && !st->close_pending && !st->zombie) {
        set_active(cs, c, k, uses); /* once per process, undone when it closes or dies */
        /* Another process accepts on it now (a forked child, a second
         * worker): what the others hold ahead goes back to the one queue
         * every holder accepts from, as the kernel's is. */
        for (int chan = cs->sid_chan[st->sid], j = cs->sid_slot[st->sid]; uses && chan >= 0;) {
            struct ss_chan_host *h = cs->c[chan];
            if (h != c || (uint32_t)j != k)
                undo_ahead(cs, h, (uint32_t)j);
            chan = h->s[j].next_chan;
            j = h->s[j].next_slot;
        }
    }
    struct ss_tcp_info li;
    if (may_accept_ahead(cs, c, k) && ss_tcp_info(cs->e, st->sid, &li) == 0) {
        /* Linux's accept queue holds backlog + 1 */
        uint32_t limit = li.backlog + 1 < SS_CHAN_ACCEPTED ? li.backlog + 1 : SS_CHAN_ACCEPTED;
        uint64_t t = now_us();
        while (head - tail < limit) {
            int f = free_slot(c);
            if (f < 0)
                break;
            int n = ss_tcp_accept(cs->e, st->sid, t);
            if (n < 0)
                break;
            map_slot(cs, c, (uint32_t)f, n);
            c->s[f].connected = true; /* accepted: established, whatever came since */
            c->s[f].ahead_of = (uint16_t)(k + 1);
            fill_names(cs, c, (uint32_t)f);
            accepted_ring(c, k)[head % SS_CHAN_ACCEPTED] = (struct ss_chan_accepted){
                .slot = (uint32_t)f, .remote_ip = c->r->sock[f].remote_ip, .remote_port = c->r->sock[f].remote_port};
            head++;
            cs->ctr->accept_ahead++;
            pump(cs, c, (uint32_t)f); /* the bytes that came before, and its readiness */
        }
        __atomic_store_n(&so->rx.head, head, __ATOMIC_RELEASE);
    }
    ss_tcp_set_ahead(cs->e, st->sid, head - tail);
    /* the word's SS_EV_IN: connections beyond the ring, in the engine */
    int ev = ss_tcp_poll(cs->e, st->sid);
    uint32_t ready = ev < 0 ? SS_EV_ERR | SS_EV_HUP : (uint32_t)ev & (SS_EV_IN | SS_EV_ERR);
    if (ready != __atomic_load_n(&so->ready, __ATOMIC_RELAXED) || head != head0) {
        __atomic_store_n(&so->ready, ready, __ATOMIC_RELEASE);
        post_event(c, k);
    }
    return true;
}

/* Gives the engine the tx ring's bytes from tail up to head, as many as it
 * takes; publishes and returns the new tail. */
static uint32_t tx_move(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k, uint32_t head, uint32_t tail,
                        uint64_t t)
{
    struct ss_chan_socket *so = &c->r->sock[k];
    const uint8_t *tx = c->base + SS_CHAN_TX_OFF(k);
    while (head != tail) {
        uint32_t off = tail & (SS_CHAN_TXBUF - 1);
        uint32_t n = head - tail < SS_CHAN_TXBUF - off ? head - tail : SS_CHAN_TXBUF - off;
        ssize_t w = ss_tcp_send(cs->e, c->s[k].sid, tx + off, n, t);
        if (w <= 0) {
            if (w < 0 && w != -EAGAIN) {
                tail = head; /* the connection failed: what is left cannot go */
                so->error = (int32_t)w;
            }
            break;
        }
        tail += (uint32_t)w;
        if ((uint32_t)w < n)
            break;
    }
    __atomic_store_n(&so->tx.tail, tail, __ATOMIC_RELEASE);
    return tail;
}

/* Moves bytes between the socket's rings and the engine, then publishes
 * its readiness.  False: the application corrupted the rings. */
static bool pump(struct ss_chans *cs, struct ss_chan_host *c, uint32_t k)
{
    struct slot *st = &c->s[k];
    struct ss_chan_socket *so = &c->r->sock[k];
    int sid = st->sid;
    if (sid < 0)
        return true;
    uint64_t t = now_us();
    /* application -> engine */
    uint32_t head = __atomic_load_n(&so->tx.head, __ATOMIC_ACQUIRE), tail = so->tx.tail, tail0 = tail;
    if (head - tail > SS_CHAN_TXBUF)
        return false;
    /* MSG_MORE: corked before its bytes go in, uncorked after the bytes
     * of a send without it, which pushes them out */
    bool more = __atomic_load_n(&so->more, __ATOMIC_ACQUIRE) == 1;
    if (more && !st->more)
        set_more(cs, st, sid, true, t);
    tail = tx_move(cs, c, k, head, tail, t);
    if (!more && st->more)
        set_more(cs, st, sid, false, t);
    if (head == tail && st->shut_pending) {
        st->shut_pending = false;
        ss_tcp_shutdown(cs->e, sid, 1, t);
    }
    if (head == tail && st->close_pending) {
        release(cs, c, k);
        return true;
    }
    if (st->listener)
        return pump_listener(cs, c, k);
    /* engine -> application */
    uint32_t rh = so->rx.head, rt = __atomic_load_n(&so->rx.tail, __ATOMIC_ACQUIRE), rh0 = rh;
    if (rh - rt > SS_CHAN_RXBUF)
        return false;
    uint8_t *rx = c->base + SS_CHAN_RX_OFF(k);
    while (!st->eof && rh - rt < SS_CHAN_RXBUF && is_reader(cs, c, k)) {
        uint32_t off = rh & (SS_CHAN_RXBUF - 1);
        uint32_t room = SS_CHAN_RXBUF - (rh - rt);
        uint32_t n = room < SS_CHAN_RXBUF - off ? room : SS_CHAN_RXBUF - off;
        ssize_t r = ss_tcp_recv(cs->e, sid, rx + off, n, t);
        if (r > 0) {
            rh += (uint32_t)r;
            continue;
        }
        if (r == 0)
            st->eof = true;
        else if (r != -EAGAIN && r != -ENOTCONN) {
            st->eof = true;
            so->error = (int32_t)r;
        }
        break;
    }
    __atomic_store_n(&so->rx.head, rh, __ATOMIC_RELEASE);
    /* readiness */
    int ev = ss_tcp_poll(cs->e, sid);
    uint32_t ready = 0;
    if (ev < 0)
        ev = SS_EV_ERR | SS_EV_HUP;
    {
        /* Established once the engine says writable -- but a socket that
         * never connected polls writable and hung up, as on Linux (a kick
         * left on the ring by the slot's last socket pumps a fresh one) */
        if ((ev & SS_EV_OUT) && !(ev & SS_EV_HUP))
            st->connected = true;
        if (rh != rt || st->eof)
            ready |= SS_EV_IN;
        if (st->eof)
            ready |= SS_CHAN_EV_EOF | SS_EV_RDHUP;
        if (st->connected && (head - tail < SS_CHAN_TXBUF) && !(ev & (SS_EV_ERR | SS_EV_HUP)))
            ready |= SS_EV_OUT;
        if (st->connected)
            ready |= SS_CHAN_EV_CONNECTED;
        /* Hung up only once the application has been given every byte:
         * the engine says HUP when the FIN arrives, but the ring may still
         * be full with data before it. */
        uint32_t hup = st->eof ? (uint32_t)ev & SS_EV_HUP : 0;
        ready |= ((uint32_t)ev & SS_EV_ERR) | hup;
        if (hup)
            ready |= SS_EV_OUT; /* as on Linux: a dead socket polls writable too */
    }
    /* An event for every edge: a new state, new bytes, or room made (the
     * library's epoll in edge-triggered mode reports each). */
    if (ready != __atomic_load_n(&so->ready, __ATOMIC_RELAXED) || rh != rh0 || tail != tail0) {
        __atomic_store_n(&so->ready, ready, __ATOMIC_RELEASE);
        post_event(c, k);
    }
    return true;
}

/* ---- requests ---- */

/* A posted request failed: the socket's error and readiness say so, as
 * the kernel's socket says an asynchronous connect's failure. */
static void posted_failed(struct ss_chan_host *c, uint32_t k, int64_t res)
{
    if (k >= SS_CHAN_SOCKETS)
        return;
    struct ss_chan_socket *so = &c->r->sock[k];
    int32_t none = 0;
    __atomic_compare_exchange_n(&so->error, &none, (int32_t)res, false, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    __atomic_store_n(&so->ready, SS_EV_ERR | SS_EV_HUP | SS_EV_OUT, __ATOMIC_RELEASE);
    post_event(c, k);
}

static void tell_listen_gen(struct ss_chans *cs);

/* The request in cell q (its position pos): answered in the cell, or, when
 * posted, its failure put where the kernel would report it. */
static void handle_request(struct ss_chans *cs, struct ss_chan_host *c, struct ss_chan_request *q, uint32_t pos)
{
    struct ss_chan_request rq;
    memcpy(&rq, q, sizeof rq); /* once: the process may write the cell meanwhile */
    bool posted = rq.flags & SS_REQ_POSTED;
    uint64_t t = now_us();
    int64_t res = 0, a0 = 0, a1 = 0;
    uint32_t k = rq.slot;
    bool on_grant = rq.op == SS_OP_SOCKET && rq.a0 == 1;
    bool any = (rq.op == SS_OP_SOCKET && !on_grant) || rq.op == SS_OP_ADOPT || rq.op == SS_OP_FALLBACK ||
               rq.op == SS_OP_LISTENED; /* no slot of their own */
    bool valid = any || (k < SS_CHAN_SOCKETS && c->s[k].sid >= 0 && !c->s[k].close_pending && !c->s[k].zombie);
    int sid = valid && !any ? c->s[k].sid : -1;
    if (k < SS_CHAN_SOCKETS && c->s[k].granted && c->s[k].sid < 0 && (on_grant || rq.op == SS_OP_CLOSE)) {
        if (rq.op == SS_OP_CLOSE) {
            ungrant(cs, c, k); /* closed before it was made, or after making it failed */
            goto out;
        }
        int n = ss_tcp_socket(cs->e);
        if (n < 0) {
            res = n; /* the slot stays granted, failed, until the process closes it */
            goto out;
        }
        map_slot(cs, c, k, n);
        goto out;
    }
    if (!valid || on_grant) {
        res = -EBADF;
        goto out;
    }
    switch (rq.op) {
    case SS_OP_SOCKET: {
        int f = free_slot(c);
        if (f < 0) {
            res = -EMFILE;
            break;
        }
        int s = ss_tcp_socket(cs->e);
        if (s < 0) {
            res = s;
            break;
        }
        map_slot(cs, c, (uint32_t)f, s);
        res = f;
        break;
    }
    case SS_OP_BIND:
        if (rq.a0 < 0 || rq.a0 > UINT32_MAX || rq.a1 < 0 || rq.a1 > 65535) {
            res = -EINVAL;
            break;
        }
        res = ss_tcp_bind(cs->e, sid, (uint32_t)rq.a0, (uint16_t)rq.a1);
        if (res == 0)
            fill_names(cs, c, k);
        break;
    case SS_OP_LISTEN:
        res = ss_tcp_listen(cs->e, sid, rq.a0 < 0 || rq.a0 > INT_MAX ? INT_MAX : (int)rq.a0);
        if (res == 0) {
            c->s[k].listener = true;
            fill_names(cs, c, k);
            pump(cs, c, k);
        }
        break;
    case SS_OP_ACCEPT: {
        int f = free_slot(c);
        if (f < 0) {
            res = -EMFILE;
            break;
        }
        int n = ss_tcp_accept(cs->e, sid, t);
        if (n < 0) {
            res = n;
            pump(cs, c, k); /* readiness: the queue may be empty now */
            break;
        }
        map_slot(cs, c, (uint32_t)f, n);
        c->s[f].connected = true; /* accepted: established, whatever came since */
        fill_names(cs, c, (uint32_t)f);
        a0 = c->r->sock[f].remote_ip;
        a1 = c->r->sock[f].remote_port;
        res = f;
        pump(cs, c, (uint32_t)f);
        pump(cs, c, k);
        break;
    }
    case SS_OP_CONNECT:
        if (rq.a0 < 0 || rq.a0 > UINT32_MAX || rq.a1 < 0 || rq.a1 > 65535) {
            res = -EINVAL;
            break;
        }
        res = ss_tcp_connect(cs->e, sid, (uint32_t)rq.a0, (uint16_t)rq.a1, t);
        fill_names(cs, c, k);
        pump(cs, c, k);
        break;
    case SS_OP_SHUTDOWN:
        if (rq.a0 < 0 || rq.a0 > 2) {
            res = -EINVAL;
            break;
        }
        if (rq.a0 != 0) {
            /* the write side closes after what the application wrote */
            c->s[k].shut_pending = true;
        }
        res = rq.a0 == 1 ? 0 : ss_tcp_shutdown(cs->e, sid, 0, t);
        if (res == -ENOTCONN)
            c->s[k].shut_pending = false;
        pump(cs, c, k);
        break;
    case SS_OP_CLOSE:
        c->s[k].close_pending = true;
        pump(cs, c, k);
        break;
    case SS_OP_ADOPT: {
        uint32_t pidx = (uint32_t)((uint64_t)rq.a0 >> 32), pk = (uint32_t)rq.a0;
        struct ss_chan_host *p = pidx < SS_MAX_CHANNELS ? cs->c[pidx] : NULL;
        int f = free_slot(c);
        if (!p || p == c || (uint64_t)rq.a1 != p->token || pk >= SS_CHAN_SOCKETS || p->s[pk].sid < 0 ||
            (p->s[pk].close_pending && !p->s[pk].zombie)) {
            res = -EBADF;
            break;
        }
        if (f < 0) {
            res = -EMFILE;
            break;
        }
        map_slot(cs, c, (uint32_t)f, p->s[pk].sid);
        c->s[f].listener = p->s[pk].listener;
        c->s[f].connected = p->s[pk].connected;
        c->s[f].eof = p->s[pk].eof;
        c->r->sock[f].local_ip = p->r->sock[pk].local_ip;
        c->r->sock[f].local_port = p->r->sock[pk].local_port;
        c->r->sock[f].remote_ip = p->r->sock[pk].remote_ip;
        c->r->sock[f].remote_port = p->r->sock[pk].remote_port;
        pump(cs, c, (uint32_t)f);
        res = f;
        break;
    }
    case SS_OP_SETOPT:
        if (rq.a0 == SS_OPT_ACTIVE) { /* the socket's uses word says it (pump_listener) */
            res = -EINVAL;
            break;
        }
        if (rq.a0 == SS_OPT_CORK) /* TCP_CORK: bit 0; bit 1 is MSG_MORE's, kept by pump */
            rq.a1 = (rq.a1 != 0) | (c->s[k].more ? 2 : 0);
        {
            /* In the thread's order: the bytes it wrote before it set the
             * option go out without it (TCP_CORK, SO_SNDBUF), those after
             * with it.  The kick of the first may come after this request. */
            struct ss_chan_socket *so = &c->r->sock[k];
            uint32_t head = __atomic_load_n(&so->tx.head, __ATOMIC_ACQUIRE), tail = so->tx.tail;
            if (rq.tx_mark - tail <= head - tail && head - tail <= SS_CHAN_TXBUF)
                tx_move(cs, c, k, rq.tx_mark, tail, t);
        }
        res = ss_tcp_setopt(cs->e, sid, (int)rq.a0, (int)rq.a1, t);
        pump(cs, c, k); /* and the bytes after */
        break;
    case SS_OP_GETOPT: {
        int v = 0;
        res = ss_tcp_getopt(cs->e, sid, (int)rq.a0, &v);
        a1 = v;
        if (rq.a0 == SS_OPT_ERROR)
            c->r->sock[k].error = 0;
        break;
    }
    case SS_OP_INFO: {
        struct ss_tcp_info ti;
        _Static_assert(sizeof ti <= sizeof q->info, "tcp_info fits the reply");
        res = ss_tcp_info(cs->e, sid, &ti);
        memcpy(q->info, &ti, sizeof ti);
        break;
    }
    case SS_OP_LISTENED:
        res = rq.a0 > 0 && rq.a0 < 65536 && ss_tcp_port_listened(cs->e, (uint16_t)rq.a0);
        break;
    case SS_OP_FALLBACK: {
        uint64_t *ctr[] = {
            [SS_FB_ADDRESS] = &cs->ctr->fallback_address,
            [SS_FB_PORT] = &cs->ctr->fallback_port,
            [SS_FB_LISTEN_UNBOUND] = &cs->ctr->fallback_listen_unbound,
            [SS_FB_DESTINATION] = &cs->ctr->fallback_destination,
            [SS_FB_FD_TABLE] = &cs->ctr->fallback_fd_table,
            [SS_FB_NOT_TCP] = &cs->ctr->fallback_not_tcp,
            [SS_FB_OPTION] = &cs->ctr->fallback_option,
        };
        if (rq.a0 < 0 || (uint64_t)rq.a0 >= sizeof ctr / sizeof ctr[0])
            res = -EINVAL;
        else
            (*ctr[rq.a0])++;
        break;
    }
    default:
        res = -EOPNOTSUPP;
    }
out:
    c->news = true;
    if (posted) {
        /* what the process goes on with: a failed socket or connect shows
         * on the socket; a failed option or close changes nothing it sees
         * (the kernel socket checked the arguments) */
        if (res < 0 && res != -EINPROGRESS && (rq.op == SS_OP_SOCKET || rq.op == SS_OP_CONNECT))
            posted_failed(c, k, res);
        ss_cellq_free(c->r->req, sizeof *q, SS_CHAN_REQS, pos);
        return;
    }
    q->result = (int32_t)res;
    q->r0 = a0;
    q->r1 = a1;
    tell_listen_gen(cs); /* a listen answered: the processes' caches stale before it returns */
    ss_answer(&q->done, pos);
}

/* ---- attach and detach ---- */

int ss_chans_attach(struct ss_chans *cs, int fd)
{
    int idx = -1;
    for (int i = 0; i < SS_MAX_CHANNELS && idx < 0; i++)
        if (!cs->c[i])
            idx = i;
    if (idx < 0)
        return -1;
    struct ss_chan_host *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    c->idx = idx;
    c->ctl = fd;
    c->app_bell = c->inst_bell = -1;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    c->pid = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 ? cred.pid : 0;
    c->memfd = memfd_create("shardsock-channel", MFD_CLOEXEC);
    c->app_bell = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->inst_bell = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->memfd < 0 || c->app_bell < 0 || c->inst_bell < 0 || ftruncate(c->memfd, (off_t)SS_CHAN_SIZE) < 0)
        goto fail;
    c->base = mmap(NULL, SS_CHAN_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, c->memfd, 0);
    if (c->base == MAP_FAILED) {
        c->base = NULL;
        goto fail;
    }
    c->r = (struct ss_chan_region *)c->base;
    c->r->version = SS_CHAN_VERSION;
    c->r->size = (uint32_t)SS_CHAN_SIZE;
    c->r->nsockets = SS_CHAN_SOCKETS;
    c->r->instance = cs->instance;
    c->r->core = cs->core;
    c->r->ninstances = cs->ninstances;
    c->r->stack_ip = cs->stack_ip;
    c->r->stack_netmask = cs->stack_netmask;
    ss_cellq_init(&c->r->reqq, c->r->req, sizeof c->r->req[0], SS_CHAN_REQS);
    ss_cellq_init(&c->r->kickq, c->r->kicks, sizeof c->r->kicks[0], SS_CHAN_KICKS);
    for (uint32_t k = 0; k < SS_CHAN_SOCKETS; k++)
        c->s[k].sid = -1;
    grant(c);
    c->r->listen_gen = listen_gen_of(cs);
    __atomic_store_n(&c->r->magic, SS_CHAN_MAGIC, __ATOMIC_RELEASE);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c->inst_bell};
    struct epoll_event hup = {.events = EPOLLRDHUP, .data.fd = fd};
    if (epoll_ctl(cs->epfd, EPOLL_CTL_ADD, c->inst_bell, &ev) < 0 || epoll_ctl(cs->epfd, EPOLL_CTL_ADD, fd, &hup) < 0)
        goto fail;
    char msg[64];
    if (getrandom(&c->token, sizeof c->token, 0) != sizeof c->token)
        goto fail;
    c->r->token = c->token;
    c->r->channel = (uint32_t)idx;
    int n = snprintf(msg, sizeof msg, "ok %u %u\n", (unsigned)SS_CHAN_SIZE, cs->instance);
    int fds[3] = {c->memfd, c->app_bell, c->inst_bell};
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = msg, .iov_len = (size_t)n};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cm), fds, sizeof fds);
    if (sendmsg(fd, &mh, MSG_NOSIGNAL) != n) {
        epoll_ctl(cs->epfd, EPOLL_CTL_DEL, c->inst_bell, NULL);
        epoll_ctl(cs->epfd, EPOLL_CTL_DEL, fd, NULL);
        goto fail;
    }
    cs->c[idx] = c;
    cs->ctr->chan_attaches++;
    return 0;
fail:
    if (c->base)
        munmap(c->base, SS_CHAN_SIZE);
    int mine[3] = {c->memfd, c->app_bell, c->inst_bell};
    for (int i = 0; i < 3; i++)
        if (mine[i] >= 0)
            close(mine[i]);
    free(c);
    return -1;
}

static void free_channel(struct ss_chans *cs, struct ss_chan_host *c)
{
    close(c->memfd);
    munmap(c->base, SS_CHAN_SIZE);
    cs->c[c->idx] = NULL;
    free(c);
}

/* A gone channel whose sockets all closed. */
static void free_if_empty(struct ss_chans *cs, struct ss_chan_host *c)
{
    for (uint32_t k = 0; k < SS_CHAN_SOCKETS; k++)
        if (c->s[k].sid >= 0)
            return;
    free_channel(cs, c);
}

/* The process is gone (or broke the rules): its sockets close as the
 * kernel closes a dead process's sockets, after what it had written.
 * Those a ticket pins stay, and with them the channel, until the child or
 * the exec'd image that holds the ticket adopted them: a parent may exit
 * (daemons do) or exec before then. */
static void detach(struct ss_chans *cs, struct ss_chan_host *c)
{
    bool kept = false;
    /* Listeners first: the connections they accepted ahead and the process
     * never took go back to the engine (undo_ahead), not down with it. */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t k = 0; k < SS_CHAN_SOCKETS; k++) {
            if (c->s[k].sid < 0 || c->s[k].listener != (pass == 0))
                continue;
            c->s[k].close_pending = true;
            if (!pump(cs, c, k)) {
                /* corrupt rings: nothing of them can be trusted */
                struct ss_chan_socket *so = &c->r->sock[k];
                so->tx.tail = so->tx.head;
                c->s[k].pins = 0;
                release(cs, c, k);
            }
            /* What the engine could not take yet stays in the ring and goes as
             * ACKs make room (ss_chans_event pumps it), then the FIN: the kernel
             * too sends a dead process's last bytes (nginx's workers exit right
             * after handing the end of a file to close()). */
            kept |= c->s[k].sid >= 0;
        }
    }
    if (!c->gone) {
        epoll_ctl(cs->epfd, EPOLL_CTL_DEL, c->inst_bell, NULL);
        epoll_ctl(cs->epfd, EPOLL_CTL_DEL, c->ctl, NULL);
        close(c->ctl);
        close(c->app_bell);
        close(c->inst_bell);
        c->ctl = c->app_bell = c->inst_bell = -1;
        c->gone = true;
        cs->ctr->chan_detaches++;
    }
    if (!kept)
        free_channel(cs, c);
}

/* "fork CHAN TOKEN [SLOT...]": pins the listed slots (an exec keeps only
 * the descriptors without FD_CLOEXEC), or every live one (a fork). */
int ss_chans_fork_ticket(struct ss_chans *cs, int fd, const char *req)
{
    unsigned idx;
    unsigned long long token;
    int used = 0;
    if (sscanf(req, "fork %u %llu%n", &idx, &token, &used) != 2 || idx >= SS_MAX_CHANNELS || !cs->c[idx] ||
        cs->c[idx]->token != token || cs->c[idx]->gone)
        return -1;
    struct ss_chan_host *c = cs->c[idx];
    struct ss_fork_ticket *t = calloc(1, sizeof *t + SS_CHAN_SOCKETS * sizeof t->slot[0]);
    if (!t)
        return -1;
    const char *p = req + used;
    unsigned k;
    int n;
    bool listed = false;
    while (sscanf(p, " %u%n", &k, &n) == 1) {
        p += n;
        listed = true;
        if (k < SS_CHAN_SOCKETS && c->s[k].sid >= 0 && t->n < SS_CHAN_SOCKETS)
            t->slot[t->n++] = (uint16_t)k;
    }
    for (k = 0; !listed && k < SS_CHAN_SOCKETS; k++)
        if (c->s[k].sid >= 0)
            t->slot[t->n++] = (uint16_t)k;
    struct epoll_event ev = {.events = EPOLLRDHUP, .data.fd = fd};
    if (epoll_ctl(cs->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 || send(fd, "ok\n", 3, MSG_NOSIGNAL) != 3) {
        epoll_ctl(cs->epfd, EPOLL_CTL_DEL, fd, NULL);
        free(t);
        return -1;
    }
    t->fd = fd;
    t->chan = (int)idx;
    t->token = token;
    t->next = cs->tickets;
    cs->tickets = t;
    for (uint32_t i = 0; i < t->n; i++)
        c->s[t->slot[i]].pins++;
    return 0;
}

/* The child adopted what it wanted, exec'd or died: what its parent
 * closed meanwhile closes now. */
static void ticket_done(struct ss_chans *cs, struct ss_fork_ticket *t)
{
    struct ss_chan_host *c = cs->c[t->chan];
    if (c && c->token == t->token) {
        for (uint32_t i = 0; i < t->n; i++) {
            uint32_t k = t->slot[i];
            if (c->s[k].sid < 0 || !c->s[k].pins)
                continue;
            if (--c->s[k].pins == 0 && c->s[k].zombie)
                release(cs, c, k);
        }
        if (c->gone)
            detach(cs, c); /* frees it once nothing is pinned */
    }
    epoll_ctl(cs->epfd, EPOLL_CTL_DEL, t->fd, NULL);
    close(t->fd);
}

bool ss_chans_owns_fd(struct ss_chans *cs, int fd)
{
    for (struct ss_fork_ticket **pp = &cs->tickets; *pp; pp = &(*pp)->next) {
        struct ss_fork_ticket *t = *pp;
        if (t->fd != fd)
            continue;
        char b[16];
        ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            *pp = t->next;
            ticket_done(cs, t);
            free(t);
        }
        return true;
    }
    for (int i = 0; i < SS_MAX_CHANNELS; i++) {
        struct ss_chan_host *c = cs->c[i];
        if (!c || c->gone)
            continue;
        if (fd == c->inst_bell) {
            uint64_t x;
            if (read(fd, &x, sizeof x) < 0 && errno != EAGAIN)
                cs->ctr->dev_rx_errors++;
            return true;
        }
        if (fd == c->ctl) {
            char b[16];
            ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                detach(cs, c);
            return true;
        }
    }
    return false;
}

static void corrupt(struct ss_chans *cs, struct ss_chan_host *c)
{
    cs->ctr->chan_corrupt++;
    detach(cs, c);
}

/* Every channel's listen_gen, when the group's moved. */
static void tell_listen_gen(struct ss_chans *cs)
{
    uint32_t gen = listen_gen_of(cs);
    if (gen == cs->listen_gen_seen)
        return;
    cs->listen_gen_seen = gen;
    for (int i = 0; i < SS_MAX_CHANNELS; i++)
        if (cs->c[i])
            __atomic_store_n(&cs->c[i]->r->listen_gen, gen, __ATOMIC_RELEASE);
}

bool ss_chans_poll(struct ss_chans *cs)
{
    bool work = false;
    /* Before the requests: an answer given in this pass is at least as
     * new as the generation the process reads with it.  And after them:
     * a listen done in this pass goes stale in the caches at once. */
    tell_listen_gen(cs);
    for (int i = 0; i < SS_MAX_CHANNELS; i++) {
        struct ss_chan_host *c = cs->c[i];
        if (!c || c->gone)
            continue;
        /* The requests before the kicks: a socket's requests are in its
         * threads' order (a posted SS_OP_SOCKET before the kick of the
         * bytes written to it); the bytes written before a request go
         * first when it needs them to (its tx_mark); a close sends
         * everything written before it. */
        for (uint32_t j = 0; j < SS_CHAN_REQS && ss_cellq_ready(c->r->req, sizeof c->r->req[0], SS_CHAN_REQS, c->req_tail);
             j++) {
            uint32_t pos = c->req_tail++;
            handle_request(cs, c, &c->r->req[pos & (SS_CHAN_REQS - 1)], pos);
            work = true;
        }
        ss_cellq_taken(&c->r->reqq, c->req_tail);
        bool bad = false;
        uint32_t kt = c->kick_tail;
        for (uint32_t j = 0; j < SS_CHAN_KICKS && ss_cellq_ready(c->r->kicks, sizeof c->r->kicks[0], SS_CHAN_KICKS, kt);
             j++, kt++) {
            uint32_t k = __atomic_load_n(&c->r->kicks[kt & (SS_CHAN_KICKS - 1)].slot, __ATOMIC_RELAXED);
            ss_cellq_free(c->r->kicks, sizeof c->r->kicks[0], SS_CHAN_KICKS, kt);
            if (k >= SS_CHAN_SOCKETS) {
                bad = true;
                break;
            }
            __atomic_store_n(&c->r->sock[k].kicked, 0, __ATOMIC_RELEASE);
            work = true;
            if (!pump(cs, c, k)) {
                bad = true;
                break;
            }
        }
        if (bad) {
            corrupt(cs, c);
            continue;
        }
        c->kick_tail = kt;
        ss_cellq_taken(&c->r->kickq, kt);
        grant(c);
    }
    tell_listen_gen(cs);
    return work;
}

bool ss_chans_event(struct ss_chans *cs, int sid)
{
    if (sid < 0 || (uint32_t)sid >= cs->max_sockets || cs->sid_chan[sid] < 0)
        return false;
    /* every holder: the reader takes the bytes, all see the state */
    int chan = cs->sid_chan[sid];
    uint32_t k = cs->sid_slot[sid];
    while (chan >= 0) {
        struct ss_chan_host *c = cs->c[chan];
        int next = c->s[k].next_chan;
        uint32_t nk = c->s[k].next_slot;
        if (!pump(cs, c, k)) {
            corrupt(cs, c);
            return true; /* the chain changed under us: the next event resumes */
        }
        if (c->gone && c->s[k].sid < 0)
            free_if_empty(cs, c); /* its last bytes went: a gone channel ends with its last socket */
        chan = next;
        k = nk;
    }
    return true;
}

void ss_chans_flush(struct ss_chans *cs)
{
    for (int i = 0; i < SS_MAX_CHANNELS; i++) {
        struct ss_chan_host *c = cs->c[i];
        if (!c || !c->news)
            continue;
        c->news = false;
        if (c->gone)
            continue; /* nobody to wake */
        /* one system call for the kind of sleep the threads are in */
        bool futex = ss_wake_needed(&c->r->app_sleeping);
        bool bell = __atomic_load_n(&c->r->app_bell_sleeping, __ATOMIC_RELAXED) != 0; /* after the fence above */
        if (futex || bell)
            __atomic_add_fetch(&c->r->app_wake_seq, 1, __ATOMIC_RELEASE);
        if (futex)
            syscall(SYS_futex, &c->r->app_wake_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        if (bell) {
            uint64_t one = 1;
            if (write(c->app_bell, &one, sizeof one) < 0)
                cs->ctr->dev_tx_errors++;
        }
    }
}

bool ss_chans_may_sleep(struct ss_chans *cs)
{
    bool ok = true;
    for (int i = 0; i < SS_MAX_CHANNELS; i++) {
        struct ss_chan_host *c = cs->c[i];
        if (!c || c->gone)
            continue;
        ss_sleeper_set(&c->r->inst_sleeping, true);
        if (ss_cellq_ready(c->r->req, sizeof c->r->req[0], SS_CHAN_REQS, c->req_tail) ||
            ss_cellq_ready(c->r->kicks, sizeof c->r->kicks[0], SS_CHAN_KICKS, c->kick_tail))
            ok = false;
    }
    /* the listeners changed at another instance (after our sleeping flag
     * went up: ss_fwd_may_sleep): tell our processes first */
    if (listen_gen_of(cs) != cs->listen_gen_seen)
        ok = false;
    if (!ok)
        ss_chans_awake(cs);
    return ok;
}

void ss_chans_awake(struct ss_chans *cs)
{
    for (int i = 0; i < SS_MAX_CHANNELS; i++)
        if (cs->c[i])
            ss_sleeper_set(&cs->c[i]->r->inst_sleeping, false);
}

int ss_chans_describe(struct ss_chans *cs, int sid, char *buf, size_t len)
{
    if (sid < 0 || (uint32_t)sid >= cs->max_sockets || cs->sid_chan[sid] < 0)
        return 0;
    size_t n = 0;
    int chan = cs->sid_chan[sid];
    uint32_t k = cs->sid_slot[sid];
    /* every holder is counted, written or not (as snprintf): the caller
     * grows its buffer to the length returned */
    for (int hops = 0; chan >= 0 && hops < SS_MAX_CHANNELS; hops++) {
        struct ss_chan_host *c = cs->c[chan];
        struct ss_chan_socket *so = &c->r->sock[k];
        int w = snprintf(n < len ? buf + n : NULL, n < len ? len - n : 0,
                         " proc=%d/%u pid=%d rx=%u/%u tx=%u/%u ready=%#x kicked=%u evq=%u app_sleeping=%u%s%s", chan,
                         k, c->pid, so->rx.head, so->rx.tail, so->tx.head, so->tx.tail, so->ready, so->kicked, so->evq,
                         c->r->app_sleeping, c->s[k].zombie ? " zombie" : "", c->s[k].eof ? " eof" : "");
        if (w < 0)
            break;
        n += (size_t)w;
        int next = c->s[k].next_chan;
        k = c->s[k].next_slot;
        chan = next;
    }
    return (int)n;
}

int ss_chans_procs(struct ss_chans *cs, char *buf, size_t len)
{
    size_t n = 0;
    for (int i = 0; i < SS_MAX_CHANNELS && n < len; i++) {
        struct ss_chan_host *c = cs->c[i];
        if (!c)
            continue;
        unsigned socks = 0, listeners = 0;
        for (uint32_t k = 0; k < SS_CHAN_SOCKETS; k++)
            if (c->s[k].sid >= 0 && !c->s[k].zombie) {
                socks++;
                listeners += c->s[k].listener;
            }
        int w = snprintf(buf + n, len - n, "proc=%d pid=%d sockets=%u listeners=%u gone=%d\n", i, c->pid, socks,
                         listeners, c->gone);
        if (w < 0)
            break;
        n += (size_t)w;
    }
    return n < len ? (int)n : (int)len - 1;
}

void ss_chans_destroy(struct ss_chans *cs)
{
    while (cs->tickets) {
        struct ss_fork_ticket *t = cs->tickets;
        cs->tickets = t->next;
        ticket_done(cs, t);
        free(t);
    }
    for (int i = 0; i < SS_MAX_CHANNELS; i++)
        if (cs->c[i])
            detach(cs, cs->c[i]);
    free(cs->sid_chan);
    free(cs->sid_slot);
}
