/*
 * Readiness over both kinds of descriptor: poll, ppoll, select, pselect and
 * epoll, for any mix of accelerated sockets and kernel descriptors.
 *
 * An accelerated socket's readiness is a word in the channel the instance
 * keeps current (sock.c ss_sock_revents); kernel descriptors are asked with
 * a zero timeout.  When nothing is ready the thread sleeps in the real
 * poll/epoll_wait on the kernel descriptors plus the channel's doorbell,
 * which the instance writes when it has news for a sleeping process.
 *
 * epoll: the program's epoll descriptor is a real one.  Kernel descriptors
 * are registered in it as they are; accelerated sockets live on lists here,
 * and the doorbell joins the real set under a reserved tag.  A readiness
 * change is posted once on the channel's event ring, so epoll_wait looks at
 * the sockets that changed and at those level-triggered ones it reported
 * ready last time: O(ready), not O(registered).
 *
 * An epoll descriptor inside another epoll set, or inside poll/select, is
 * ready when its accelerated sockets are or its kernel descriptors are.
 * The inner set is registered in the outer real set under a reserved tag,
 * edge-triggered, so that the kernel says when the inner one's kernel side
 * moved; an event on an inner socket queues the outer item too (watchers);
 * the outer item's own mode (LT, ET, ONESHOT) is applied here like any.
 */
#include "shim.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static int fail(int e)
{
    errno = e;
    return -1;
}

static int real_wait(struct pollfd *p, nfds_t n, int timeout_ms, const sigset_t *mask)
{
    if (!mask)
        return REAL(poll)(p, n, timeout_ms);
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000};
    return REAL(ppoll)(p, n, timeout_ms < 0 ? NULL : &ts, mask);
}

/* Threads asleep in poll or select with kernel descriptors, each also on
 * an eventfd of its own.  The kernel wakes every poller of the doorbell,
 * but the first to drain it leaves the others an empty eventfd, and they
 * sleep on: whoever drains the doorbell passes the wake-up on to each of
 * them.  (Threads in epoll_wait are woken through their set, queue_check;
 * threads waiting on the stack alone sleep on the wake sequence.)  The
 * list lives under its own lock, taken last. */
struct poll_waiter {
    int efd;
    struct poll_waiter *next;
};
static pthread_mutex_t pw_lock = PTHREAD_MUTEX_INITIALIZER;
static struct poll_waiter *poll_waiters;

static void waiter_add(struct poll_waiter *w)
{
    pthread_mutex_lock(&pw_lock);
    w->next = poll_waiters;
    poll_waiters = w;
    pthread_mutex_unlock(&pw_lock);
}

static void waiter_remove(struct poll_waiter *w)
{
    pthread_mutex_lock(&pw_lock);
    for (struct poll_waiter **pp = &poll_waiters; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    pthread_mutex_unlock(&pw_lock);
}

static void drain_bell(void)
{
    uint64_t x;
    if (REAL(read)(ss_ch.app_bell, &x, sizeof x) != sizeof x)
        return; /* nothing was there to take from anyone */
    pthread_mutex_lock(&pw_lock);
    for (struct poll_waiter *w = poll_waiters; w; w = w->next) {
        uint64_t one = 1;
        ssize_t r = REAL(write)(w->efd, &one, sizeof one);
        (void)r;
    }
    pthread_mutex_unlock(&pw_lock);
}

static void waiter_cancelled(void *arg)
{
    struct poll_waiter *w = arg;
    waiter_remove(w);
    REAL(close)(w->efd);
    ss_sleeper_leave(&ss_ch.r->app_bell_sleeping); /* a waiter sleeps with the doorbell */
}

/* poll is a cancellation point: a thread cancelled in it leaves the list */
static int waiter_wait(struct pollfd *kp, nfds_t n, int timeout_ms, const sigset_t *mask, struct poll_waiter *w)
{
    int r;
    pthread_cleanup_push(waiter_cancelled, w);
    r = real_wait(kp, n, timeout_ms, mask);
    pthread_cleanup_pop(0);
    return r;
}

/* The child of a fork has one thread: the others' entries are copies of
 * eventfds that only the parent's threads wait on. */
void ss_poll_after_fork(void)
{
    pthread_mutex_init(&pw_lock, NULL);
    for (struct poll_waiter *w = poll_waiters; w; w = w->next)
        REAL(close)(w->efd);
    poll_waiters = NULL;
}

static struct ss_sock *accelerated(int fd)
{
    struct ss_sock *s = ss_lookup(fd);
    return s && s->stack && ss_ch.state == SS_CH_ATTACHED ? s : NULL;
}


struct ep_set;
static struct ep_set *polled_set(int fd);
static bool events_waiting(void)
{
    uint32_t tail;
    return ss_idxq_peek(&ss_ch.r->eventq, &tail) != 0;
}

static void dispatch_events(void);
static short set_revents(struct ep_set *set, short events);

int ss_poll(struct pollfd *p, nfds_t n, int timeout_ms, const sigset_t *mask)
{
    nfds_t nacc = 0;
    for (nfds_t i = 0; i < n; i++)
        nacc += accelerated(p[i].fd) || polled_set(p[i].fd);
    if (!nacc)
        return real_wait(p, n, timeout_ms, mask);
    /* the kernel's share: kernel descriptors, the kernel side of wildcard
     * listeners, and the doorbell last */
    struct pollfd small[64], *kp = n + 2 <= 64 ? small : malloc((n + 2) * sizeof *kp);
    nfds_t *which = malloc((n + 2) * sizeof *which);
    if (!kp || !which) {
        if (kp != small)
            free(kp);
        free(which);
        return fail(ENOMEM);
    }
    uint64_t until = timeout_ms > 0 ? ss_now_ms() + (uint64_t)timeout_ms : 0;
    int total;
    for (;;) {
        nfds_t m = 0;
        total = 0;
        for (nfds_t i = 0; i < n; i++) {
            struct ss_sock *s = accelerated(p[i].fd);
            if (s && s->listening && !s->accepts)
                ss_sock_activate(s); /* waited on: in use */
            struct ep_set *inner = s ? NULL : polled_set(p[i].fd);
            p[i].revents = s ? ss_sock_revents(s, p[i].events) : inner ? set_revents(inner, p[i].events) : 0;
            total += p[i].revents != 0;
            /* an epoll set's descriptor too, to wake on its kernel side */
            if (!s || s->kernel_too) {
                kp[m] = (struct pollfd){.fd = p[i].fd, .events = p[i].events};
                which[m++] = i;
            }
        }
        bool sleep = total == 0 && timeout_ms != 0;
        bool on_bell = sleep && (m != 0 || mask); /* else on the wake sequence */
        struct poll_waiter me = {.efd = -1};
        uint32_t seen = __atomic_load_n(&ss_ch.r->app_wake_seq, __ATOMIC_ACQUIRE);
        uint32_t *flag = on_bell ? &ss_ch.r->app_bell_sleeping : &ss_ch.r->app_sleeping;
        if (sleep) {
            ss_sleeper_enter(flag);
            if (on_bell) {
                /* listed before the last look: a doorbell rung after
                 * it and drained by another thread is passed on to us */
                me.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
                if (me.efd >= 0)
                    waiter_add(&me);
            }
            for (nfds_t i = 0; i < n && !total; i++) {
                struct ss_sock *s = accelerated(p[i].fd);
                if (s && ss_sock_revents(s, p[i].events))
                    total = 1;
            }
            if (total) {
                if (me.efd >= 0) {
                    waiter_remove(&me);
                    REAL(close)(me.efd);
                }
                ss_sleeper_leave(flag);
                continue; /* it changed while we were looking: count again */
            }
        }
        int left = 0;
        if (sleep) {
            left = -1;
            if (until) {
                uint64_t now = ss_now_ms();
                left = now >= until ? 0 : (int)(until - now);
            }
            if (!on_bell) {
                /* Only the stack's sockets: sleep on the wake sequence,
                 * which cannot miss a wake-up however many threads wait. */
                int e = ss_sleep_since(seen, left < 0 || left > 1000 ? 1000 : left);
                ss_sleeper_leave(flag);
                if (!ss_instance_alive())
                    continue; /* its sockets now poll as the kernel's dead ones */
                if (e == -EINTR) {
                    total = -1;
                    errno = EINTR;
                    break;
                }
                if (until && ss_now_ms() >= until) {
                    total = 0;
                    for (nfds_t i = 0; i < n; i++) {
                        struct ss_sock *s = accelerated(p[i].fd);
                        if (s && (p[i].revents = ss_sock_revents(s, p[i].events)))
                            total++;
                    }
                    break;
                }
                continue;
            }
            /* Kernel descriptors too: the doorbell, and our own eventfd
             * in case another thread drains the doorbell first.  Without
             * one (out of descriptors) we look again every 100 ms. */
            kp[m] = (struct pollfd){.fd = ss_ch.app_bell, .events = POLLIN};
            kp[m + 1] = (struct pollfd){.fd = me.efd, .events = POLLIN};
            if (me.efd < 0 && (left < 0 || left > 100))
                left = 100;
        }
        int r = me.efd >= 0 ? waiter_wait(kp, m + 2, left, mask, &me) : real_wait(kp, m + (sleep ? 1 : 0), left, mask);
        int e = errno;
        if (me.efd >= 0) {
            waiter_remove(&me);
            REAL(close)(me.efd);
        }
        if (sleep)
            ss_sleeper_leave(flag);
        errno = e;
        if (r < 0) {
            total = -1;
            break;
        }
        if (sleep && (kp[m].revents || (me.efd >= 0 && kp[m + 1].revents))) {
            drain_bell();
            dispatch_events();
        }
        bool look_again = false;
        for (nfds_t j = 0; j < m; j++) {
            if (!kp[j].revents)
                continue;
            struct pollfd *q = &p[which[j]];
            if (polled_set(q->fd)) {
                look_again = true; /* the doorbell in it, or its kernel side: set_revents says */
                continue;
            }
            if (!q->revents)
                total++;
            q->revents |= kp[j].revents;
        }
        if (!sleep || total)
            break;
        if (look_again)
            continue;
        /* woken by the doorbell or a timeout: count again, then stop when
         * the time is up */
        if (r == 0 && left >= 0) {
            for (nfds_t i = 0; i < n; i++) {
                struct ss_sock *s = accelerated(p[i].fd);
                if (s && (p[i].revents = ss_sock_revents(s, p[i].events)))
                    total++;
            }
            if (total || (until && ss_now_ms() >= until))
                break;
        }
    }
    if (kp != small)
        free(kp);
    free(which);
    return total;
}

int ss_select(int n, fd_set *r, fd_set *w, fd_set *e, int timeout_ms, const sigset_t *mask)
{
    if (n < 0 || n > FD_SETSIZE)
        return fail(EINVAL);
    struct pollfd *p = malloc((size_t)(n ? n : 1) * sizeof *p);
    if (!p)
        return fail(ENOMEM);
    nfds_t m = 0;
    for (int fd = 0; fd < n; fd++) {
        short ev = (short)((r && FD_ISSET(fd, r) ? POLLIN : 0) | (w && FD_ISSET(fd, w) ? POLLOUT : 0) |
                           (e && FD_ISSET(fd, e) ? POLLPRI : 0));
        if (ev)
            p[m++] = (struct pollfd){.fd = fd, .events = ev};
    }
    int k = ss_poll(p, m, timeout_ms, mask);
    if (k < 0) {
        free(p);
        return -1;
    }
    for (nfds_t i = 0; i < m; i++)
        if (p[i].revents & POLLNVAL) {
            free(p);
            return fail(EBADF);
        }
    if (r)
        FD_ZERO(r);
    if (w)
        FD_ZERO(w);
    if (e)
        FD_ZERO(e);
    int bits = 0;
    for (nfds_t i = 0; i < m; i++) {
        short rv = p[i].revents;
        if (r && (p[i].events & POLLIN) && (rv & (POLLIN | POLLHUP | POLLERR))) {
            FD_SET(p[i].fd, r);
            bits++;
        }
        if (w && (p[i].events & POLLOUT) && (rv & (POLLOUT | POLLERR))) {
            FD_SET(p[i].fd, w);
            bits++;
        }
        if (e && (p[i].events & POLLPRI) && (rv & POLLPRI)) {
            FD_SET(p[i].fd, e);
            bits++;
        }
    }
    free(p);
    return bits;
}

/* ---- epoll ---- */

#define BELL_TAG 0x5353424c4c000000ull /* "SSBLL": the doorbell in a real epoll set */
#define WAKE_TAG 0x5353574b45000000ull /* "SSWKE": the set's own wake-up in its real epoll set */

struct ep_set;

struct ep_item {
    int ep, fd;
    struct ss_sock *s;        /* an accelerated socket, or */
    struct ep_set *inner;     /* an epoll set inside this one */
    uint32_t events;          /* EPOLLIN... | EPOLLET | EPOLLONESHOT */
    epoll_data_t data;
    bool disabled;            /* a ONESHOT that fired: until EPOLL_CTL_MOD */
    bool queued;              /* on its set's check list */
    bool pending;             /* s undecided: the kernel registration serves it until ss_epoll_decided */
    bool kernel_edge;         /* inner: the kernel reported its kernel side moved, not yet collected */
    struct ep_item *next_in_set, *next_check, *next_of_slot, *next_watcher;
};

struct ep_set {
    int ep;
    bool bell;                /* the doorbell is in the real set */
    int sleepers;             /* threads in epoll_wait on it with nothing to report (under ep_lock) */
    int wake;                 /* an eventfd in the real set (WAKE_TAG): wakes them; -1 until needed */
    bool wake_sent;           /* written since a thread last went to sleep on the set: once is enough */
    struct ep_item *items, *check;
    struct ep_item *watchers; /* the items that hold this set in other sets */
    struct ep_set *next;
};

#define NEST_TAG 0x5353455000000000ull /* "SSEP" | the inner set's descriptor */
#define NEST_MAX 4                     /* Linux's EP_MAX_NESTS */

/* Which descriptors are epoll sets (made by epoll_create here). */
static uint8_t epoll_fds[SS_FD_MAX / 8];

bool ss_is_epoll(int fd)
{
    return fd >= 0 && fd < SS_FD_MAX && (__atomic_load_n(&epoll_fds[fd / 8], __ATOMIC_RELAXED) & (1u << (fd % 8)));
}

void ss_epoll_created(int ep)
{
    if (ep >= 0 && ep < SS_FD_MAX)
        __atomic_or_fetch(&epoll_fds[ep / 8], (uint8_t)(1u << (ep % 8)), __ATOMIC_RELAXED);
}

static pthread_mutex_t ep_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ep_set *sets;
static struct ep_item *by_slot[SS_CHAN_SOCKETS];

static struct ep_set *find_set(int ep, bool create)
{
    for (struct ep_set *x = sets; x; x = x->next)
        if (x->ep == ep)
            return x;
    if (!create)
        return NULL;
    struct ep_set *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->ep = ep;
    x->wake = -1;
    x->next = sets;
    __atomic_store_n(&sets, x, __ATOMIC_RELEASE);
    return x;
}

/* The item may be ready: look at it at the next collect, and at the items
 * that hold its set in outer sets. */
static void queue_check(struct ep_set *set, struct ep_item *it)
{
    if (!it->queued) {
        it->queued = true;
        it->next_check = set->check;
        set->check = it;
    }
    /* Threads asleep on this set are woken (as the kernel wakes a set's
     * waiters): the doorbell that brought the news may have been drained by
     * a thread waiting on another set (memcached's workers each have one). */
    if (set->sleepers && set->wake >= 0 && !set->wake_sent) {
        uint64_t one = 1;
        ssize_t r = REAL(write)(set->wake, &one, sizeof one);
        (void)r;
        set->wake_sent = true; /* perf: wrk's two threads wrote it 3.9 times per connection */
    }
    for (struct ep_item *w = set->watchers; w; w = w->next_watcher) {
        struct ep_set *outer = find_set(w->ep, false);
        if (outer && outer != set)
            queue_check(outer, w); /* the kernel refuses loops (ELOOP) */
    }
}

static uint32_t item_revents(struct ep_item *it, int depth);

/* The set's kernel side: the real set polled with the doorbell drained,
 * so that only the program's descriptors count. */
static bool kernel_side_ready(struct ep_set *set)
{
    if (set->bell)
        drain_bell();
    struct pollfd p = {.fd = set->ep, .events = POLLIN};
    return REAL(poll)(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

/* Would epoll_wait on the set report anything?  Its accelerated sockets
 * as the check list has them, then (with kernel) its kernel side. */
static bool set_ready(struct ep_set *set, int depth, bool kernel)
{
    if (depth > NEST_MAX)
        return false;
    for (struct ep_item *it = set->check; it; it = it->next_check)
        if (!it->disabled && item_revents(it, depth + 1))
            return true;
    return kernel && kernel_side_ready(set);
}

/* An inner set's item, level-triggered, is ready whenever the set is.
 * Edge-triggered (and ONESHOT) it is queued by an edge from one of two
 * sources, and only that source's readiness counts: an event on an inner
 * accelerated socket (the watchers, and ADD/MOD as the kernel's own poll
 * at registration) looks at the accelerated side, the kernel's NEST_TAG
 * edge (kernel_edge) at the kernel side.  Otherwise one arrival on an
 * inner kernel descriptor, seen through a queued item before the kernel's
 * edge for it was taken, is reported a second time when that edge is. */
static uint32_t item_revents(struct ep_item *it, int depth)
{
    if (it->pending)
        return 0; /* the kernel reports it */
    if (it->s)
        return (uint32_t)ss_sock_revents(it->s, (short)it->events) & (it->events | EPOLLERR | EPOLLHUP);
    bool ready;
    if (!(it->events & (EPOLLET | EPOLLONESHOT)))
        ready = set_ready(it->inner, depth, true);
    else
        ready = set_ready(it->inner, depth, false) || (it->kernel_edge && kernel_side_ready(it->inner));
    return ready ? (EPOLLIN | EPOLLRDNORM) & it->events : 0;
}

static void take_events(void);

/* A thread that drained the doorbell hands the news on: the event ring's
 * entries queue the items of every set, waking the threads asleep on
 * those (queue_check).  Outside ep_lock. */
static void dispatch_events(void)
{
    if (!__atomic_load_n(&sets, __ATOMIC_ACQUIRE) || ss_ch.state != SS_CH_ATTACHED ||
        !events_waiting())
        return;
    pthread_mutex_lock(&ep_lock);
    take_events();
    pthread_mutex_unlock(&ep_lock);
}

/* An epoll descriptor in poll or select: the set, when it is one of ours. */
static struct ep_set *polled_set(int fd)
{
    if (!ss_is_epoll(fd) || !__atomic_load_n(&sets, __ATOMIC_ACQUIRE))
        return NULL;
    pthread_mutex_lock(&ep_lock);
    struct ep_set *set = find_set(fd, false);
    pthread_mutex_unlock(&ep_lock);
    return set;
}

static short set_revents(struct ep_set *set, short events)
{
    pthread_mutex_lock(&ep_lock);
    if (ss_ch.state == SS_CH_ATTACHED)
        take_events();
    bool ready = set_ready(set, 0, true);
    pthread_mutex_unlock(&ep_lock);
    return ready ? (short)((POLLIN | POLLRDNORM) & events) : 0;
}

static void unlink_item(struct ep_set *set, struct ep_item *it)
{
    for (struct ep_item **pp = &set->items; *pp; pp = &(*pp)->next_in_set)
        if (*pp == it) {
            *pp = it->next_in_set;
            break;
        }
    for (struct ep_item **pp = &set->check; *pp; pp = &(*pp)->next_check)
        if (*pp == it) {
            *pp = it->next_check;
            break;
        }
    if (it->s && !it->pending) {
        for (struct ep_item **pp = &by_slot[it->s->slot]; *pp; pp = &(*pp)->next_of_slot)
            if (*pp == it) {
                *pp = it->next_of_slot;
                break;
            }
        ss_sock_epoll_use(it->s, -1);
    }
    if (it->inner)
        for (struct ep_item **pp = &it->inner->watchers; *pp; pp = &(*pp)->next_watcher)
            if (*pp == it) {
                *pp = it->next_watcher;
                break;
            }
    free(it);
}

/* An epoll set added to, changed in or removed from another: the kernel
 * takes the inner descriptor under our tag (and checks everything: EEXIST,
 * ENOENT, ELOOP...), the item here keeps the program's events and data. */
static int nested_ctl(int ep, int op, int fd, struct epoll_event *ev)
{
    if (op != EPOLL_CTL_DEL && !ev)
        return fail(EFAULT);
    if (op != EPOLL_CTL_DEL && (ev->events & EPOLLEXCLUSIVE))
        return fail(EINVAL); /* Linux: not on an epoll descriptor */
    struct epoll_event tagged = {.events = EPOLLIN | EPOLLET, .data.u64 = NEST_TAG | (uint32_t)fd};
    if (REAL(epoll_ctl)(ep, op, fd, op == EPOLL_CTL_DEL ? NULL : &tagged) < 0)
        return -1;
    pthread_mutex_lock(&ep_lock);
    struct ep_set *set = find_set(ep, op == EPOLL_CTL_ADD);
    struct ep_item *it = NULL;
    for (it = set ? set->items : NULL; it && it->fd != fd; it = it->next_in_set)
        ;
    int rc = 0;
    if (op == EPOLL_CTL_ADD) {
        struct ep_set *inner = find_set(fd, true);
        it = set && inner ? calloc(1, sizeof *it) : NULL;
        if (!it) {
            rc = ENOMEM;
        } else {
            *it = (struct ep_item){.ep = ep, .fd = fd, .inner = inner, .events = ev->events, .data = ev->data};
            it->next_in_set = set->items;
            set->items = it;
            it->next_watcher = inner->watchers;
            inner->watchers = it;
            queue_check(set, it);
        }
    } else if (it && op == EPOLL_CTL_MOD) {
        it->events = ev->events;
        it->data = ev->data;
        it->disabled = false;
        it->kernel_edge = false; /* the kernel's MOD polled the set again: a new edge if ready */
        queue_check(set, it);
    } else if (it) {
        unlink_item(set, it);
    }
    pthread_mutex_unlock(&ep_lock);
    if (rc) {
        REAL(epoll_ctl)(ep, EPOLL_CTL_DEL, fd, NULL);
        return fail(rc);
    }
    return 0;
}

/* An undecided socket: the kernel holds the registration (and checks the
 * call); the item here remembers it for when the socket is decided. */
static int pending_ctl(int ep, int op, int fd, struct epoll_event *ev, struct ss_sock *u)
{
    if (REAL(epoll_ctl)(ep, op, fd, ev) < 0)
        return -1;
    pthread_mutex_lock(&ep_lock);
    struct ep_set *set = find_set(ep, op == EPOLL_CTL_ADD);
    struct ep_item *it = NULL;
    for (it = set ? set->items : NULL; it && it->fd != fd; it = it->next_in_set)
        ;
    if (op == EPOLL_CTL_ADD && set && !it && (it = calloc(1, sizeof *it))) {
        *it = (struct ep_item){.ep = ep, .fd = fd, .s = u, .events = ev->events, .data = ev->data, .pending = true};
        it->next_in_set = set->items;
        set->items = it;
    } else if (op == EPOLL_CTL_MOD && it) {
        it->events = ev->events;
        it->data = ev->data;
        it->disabled = false;
    } else if (op == EPOLL_CTL_DEL && it) {
        unlink_item(set, it);
    }
    pthread_mutex_unlock(&ep_lock);
    return 0;
}

void ss_epoll_decided(struct ss_sock *s, bool stack)
{
    if (!__atomic_load_n(&sets, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&ep_lock);
    for (struct ep_set *set = sets; set; set = set->next) {
        for (struct ep_item *it = set->items, *next; it; it = next) {
            next = it->next_in_set;
            if (it->s != s || !it->pending)
                continue;
            if (!stack) {
                unlink_item(set, it); /* the kernel's alone, registered there already */
                continue;
            }
            if (!s->kernel_too)
                REAL(epoll_ctl)(set->ep, EPOLL_CTL_DEL, it->fd, NULL);
            if (!set->bell) {
                struct epoll_event b = {.events = EPOLLIN, .data.u64 = BELL_TAG};
                if (REAL(epoll_ctl)(set->ep, EPOLL_CTL_ADD, ss_ch.app_bell, &b) == 0 || errno == EEXIST)
                    set->bell = true;
            }
            it->pending = false;
            it->next_of_slot = by_slot[s->slot];
            by_slot[s->slot] = it;
            queue_check(set, it);
        }
    }
    pthread_mutex_unlock(&ep_lock);
}

int ss_epoll_ctl(int ep, int op, int fd, struct epoll_event *ev)
{
    if (ss_is_epoll(fd) && ss_is_epoll(ep) && ep != fd)
        return nested_ctl(ep, op, fd, ev);
    struct ss_sock *s = accelerated(fd);
    if (!s) {
        struct ss_sock *u = ss_ch.state == SS_CH_ATTACHED ? ss_lookup(fd) : NULL;
        if (!u || u->stack)
            return REAL(epoll_ctl)(ep, op, fd, ev);
        return pending_ctl(ep, op, fd, ev, u);
    }
    /* ep itself is checked by the kernel when the doorbell joins it */
    if (op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD || op == EPOLL_CTL_DEL) {
        if (op != EPOLL_CTL_DEL && !ev)
            return fail(EFAULT);
    } else {
        return fail(EINVAL);
    }
    if (ep == fd)
        return fail(EINVAL);
    /* Linux: EPOLLEXCLUSIVE only on ADD, and not with EPOLLONESHOT.  Every
     * set that holds the socket is told of its readiness; exclusive wake-up
     * only thins the herd, and the kernel promises no more than one. */
    if (ev && (ev->events & EPOLLEXCLUSIVE) &&
        (op == EPOLL_CTL_MOD || (ev->events & EPOLLONESHOT)))
        return fail(EINVAL);
    pthread_mutex_lock(&ep_lock);
    struct ep_set *set = find_set(ep, op == EPOLL_CTL_ADD);
    struct ep_item *it = NULL;
    if (set)
        for (it = set->items; it && it->fd != fd; it = it->next_in_set)
            ;
    int rc = 0;
    switch (op) {
    case EPOLL_CTL_ADD:
        if (!set) {
            rc = ENOMEM;
            break;
        }
        if (it) {
            rc = EEXIST;
            break;
        }
        if (!set->bell) {
            struct epoll_event b = {.events = EPOLLIN, .data.u64 = BELL_TAG};
            if (REAL(epoll_ctl)(ep, EPOLL_CTL_ADD, ss_ch.app_bell, &b) < 0 && errno != EEXIST) {
                rc = errno; /* EBADF, EINVAL: ep is not an epoll descriptor */
                break;
            }
            set->bell = true;
        }
        it = calloc(1, sizeof *it);
        if (!it) {
            rc = ENOMEM;
            break;
        }
        it->ep = ep;
        it->fd = fd;
        it->s = s;
        it->events = ev->events;
        it->data = ev->data;
        it->next_in_set = set->items;
        set->items = it;
        it->next_of_slot = by_slot[s->slot];
        by_slot[s->slot] = it;
        queue_check(set, it);
        if (s->kernel_too)
            REAL(epoll_ctl)(ep, EPOLL_CTL_ADD, fd, ev);
        ss_sock_epoll_use(s, 1); /* a listener registered: in use */
        break;
    case EPOLL_CTL_MOD:
        if (!it) {
            rc = ENOENT;
            break;
        }
        if (it->events & EPOLLEXCLUSIVE) {
            rc = EINVAL; /* Linux: an exclusive registration cannot be modified */
            break;
        }
        it->events = ev->events;
        it->data = ev->data;
        it->disabled = false;
        queue_check(set, it);
        if (s->kernel_too)
            REAL(epoll_ctl)(ep, EPOLL_CTL_MOD, fd, ev);
        break;
    case EPOLL_CTL_DEL:
        if (!it) {
            rc = ENOENT;
            break;
        }
        if (s->kernel_too)
            REAL(epoll_ctl)(ep, EPOLL_CTL_DEL, fd, NULL);
        unlink_item(set, it);
        break;
    }
    pthread_mutex_unlock(&ep_lock);
    return rc ? fail(rc) : 0;
}

void ss_epoll_forget(int fd)
{
    /* As the kernel does when the last descriptor of a file closes: the
     * socket leaves every interest list. */
    pthread_mutex_lock(&ep_lock);
    for (struct ep_set *set = sets; set; set = set->next) {
        for (struct ep_item *it = set->items; it;) {
            struct ep_item *next = it->next_in_set;
            if (it->fd == fd)
                unlink_item(set, it);
            it = next;
        }
    }
    pthread_mutex_unlock(&ep_lock);
}

void ss_epoll_close(int ep)
{
    /* every close() of a kernel descriptor comes here: no lock unless the
     * program has an epoll set holding accelerated sockets at all */
    if (ep >= 0 && ep < SS_FD_MAX && ss_is_epoll(ep))
        __atomic_and_fetch(&epoll_fds[ep / 8], (uint8_t)~(1u << (ep % 8)), __ATOMIC_RELAXED);
    if (!__atomic_load_n(&sets, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&ep_lock);
    for (struct ep_set **pp = &sets; *pp; pp = &(*pp)->next) {
        struct ep_set *set = *pp;
        if (set->ep != ep)
            continue;
        while (set->items)
            unlink_item(set, set->items);
        /* the kernel drops a closed set from the sets that held it */
        while (set->watchers) {
            struct ep_item *w = set->watchers;
            struct ep_set *outer = find_set(w->ep, false);
            if (outer) {
                unlink_item(outer, w);
            } else {
                set->watchers = w->next_watcher;
                free(w);
            }
        }
        *pp = set->next;
        if (set->wake >= 0)
            REAL(close)(set->wake);
        free(set);
        break;
    }
    pthread_mutex_unlock(&ep_lock);
}

/* Takes the channel's event ring: each socket whose readiness changed is
 * checked in every set that holds it. */
static void take_events(void)
{
    uint32_t tail, n = ss_idxq_peek(&ss_ch.r->eventq, &tail);
    for (; n; n--, tail++) {
        uint32_t slot = ss_ch.r->events[tail & (SS_CHAN_EVENTS - 1)];
        if (slot >= SS_CHAN_SOCKETS)
            continue;
        __atomic_store_n(&ss_ch.r->sock[slot].evq, 0, __ATOMIC_RELEASE);
        for (struct ep_item *it = by_slot[slot]; it; it = it->next_of_slot) {
            struct ep_set *set = find_set(it->ep, false);
            if (set)
                queue_check(set, it);
        }
    }
    ss_idxq_release(&ss_ch.r->eventq, tail);
}

/* Reports the set's ready accelerated sockets into ev (the library's
 * buffer, never the program's: see put_events), each one's item into its;
 * level-triggered ones that stay ready are looked at again next time. */
static int collect(struct ep_set *set, struct epoll_event *ev, struct ep_item **its, int max)
{
    int n = 0;
    struct ep_item *again = NULL, *it = set->check;
    set->check = NULL;
    while (it) {
        struct ep_item *next = it->next_check;
        it->queued = false;
        uint32_t r = it->disabled || n >= max ? 0 : item_revents(it, 0);
        if (n < max || it->disabled)
            it->kernel_edge = false; /* looked at: the edge is spent */
        if (n >= max && !it->disabled) {
            it->queued = true; /* no room: keep it for the next call */
            it->next_check = again;
            again = it;
        } else if (r) {
            ev[n].events = r;
            ev[n].data = it->data;
            its[n++] = it;
            if (it->events & EPOLLONESHOT)
                it->disabled = true;
            else if (!(it->events & EPOLLET)) {
                it->queued = true;
                it->next_check = again;
                again = it;
            }
        }
        it = next;
    }
    set->check = again;
    return n;
}

/* The program's event array, as far as this thread has written to it:
 * whole pages, written once through the kernel, take a plain copy after. */
static __thread uintptr_t ev_ok_lo, ev_ok_hi;

/* Copies n collected events out to the program's array as the kernel
 * does (epoll_put_uevent): an array it cannot write to is EFAULT, not a
 * SIGSEGV inside the library.  (stress-ng's epoll stressor hands
 * epoll_wait a PROT_NONE page and expects EFAULT or 0; its SIGSEGV
 * handler siglongjmps, which left ep_lock held, and the process hung in
 * its next epoll call.)  Returns how many went out. */
static int put_events(struct epoll_event *to, const struct epoll_event *from, int n)
{
    size_t len = (size_t)n * sizeof *to;
    uintptr_t lo = (uintptr_t)to, hi = lo + len;
    if (lo >= ev_ok_lo && hi <= ev_ok_hi && hi > lo) {
        memcpy(to, from, len);
        return n;
    }
    static bool no_vm_write;
    if (__atomic_load_n(&no_vm_write, __ATOMIC_RELAXED)) {
        memcpy(to, from, len);
        return n;
    }
    int saved = errno;
    struct iovec l = {.iov_base = (void *)from, .iov_len = len}, r = {.iov_base = to, .iov_len = len};
    ssize_t w = process_vm_writev(getpid(), &l, 1, &r, 1, 0);
    if (w < 0 && errno != EFAULT) {
        /* not allowed here (seccomp: EPERM, ENOSYS): trust the array */
        __atomic_store_n(&no_vm_write, true, __ATOMIC_RELAXED);
        errno = saved;
        memcpy(to, from, len);
        return n;
    }
    errno = saved;
    if (w < 0)
        return 0;
    if ((size_t)w == len) {
        uintptr_t pg = (uintptr_t)getpagesize(), plo = lo & ~(pg - 1), phi = (hi + pg - 1) & ~(pg - 1);
        if (plo <= ev_ok_hi && phi >= ev_ok_lo && ev_ok_hi > ev_ok_lo) {
            ev_ok_lo = plo < ev_ok_lo ? plo : ev_ok_lo;
            ev_ok_hi = phi > ev_ok_hi ? phi : ev_ok_hi;
        } else {
            ev_ok_lo = plo;
            ev_ok_hi = phi;
        }
    }
    return (int)((size_t)w / sizeof *to);
}

/* Collected events the program's array did not take: as the kernel puts
 * such an item back on the ready list (and a ONESHOT one stays armed). */
static void put_back(int ep, struct ep_set *set, struct ep_item **its, int n)
{
    pthread_mutex_lock(&ep_lock);
    if (find_set(ep, false) == set)
        for (int i = 0; i < n; i++)
            for (struct ep_item *it = set->items; it; it = it->next_in_set)
                if (it == its[i]) {
                    it->disabled = false;
                    if (it->inner)
                        it->kernel_edge = true;
                    queue_check(set, it);
                    break;
                }
    pthread_mutex_unlock(&ep_lock);
}

static int epoll_loop(int ep, struct ep_set *set, struct epoll_event *ev, int max, int timeout_ms,
                      const sigset_t *mask, uint64_t until, struct epoll_event *got, struct ep_item **its,
                      int room);

/* The kernel could not write to the program's array (EFAULT), and keeps
 * what it could not report: the program's answer is EFAULT only when one
 * of its own descriptors is ready, not when the doorbell or the set's
 * wake-up rang (the kernel waits on in silence until the timeout). */
static bool program_ready(struct ep_set *set)
{
    int saved = errno;
    if (set->wake >= 0) {
        uint64_t x;
        ssize_t r = REAL(read)(set->wake, &x, sizeof x);
        (void)r;
    }
    if (set->bell)
        drain_bell();
    dispatch_events(); /* news for other sets too, as after a wait */
    pthread_mutex_lock(&ep_lock);
    if (ss_ch.state == SS_CH_ATTACHED)
        take_events();
    bool ready = set_ready(set, 0, true);
    pthread_mutex_unlock(&ep_lock);
    errno = saved;
    return ready;
}

#define EP_LOCAL 256 /* events collected on the stack; more in a buffer of the call's */

int ss_epoll_wait(int ep, struct epoll_event *ev, int max, int timeout_ms, const sigset_t *mask)
{
    if (max <= 0 || max > INT_MAX / (int)sizeof *ev)
        return fail(EINVAL); /* Linux: EP_MAX_EVENTS */
    pthread_mutex_lock(&ep_lock);
    struct ep_set *set = ss_ch.state == SS_CH_ATTACHED ? find_set(ep, false) : NULL;
    pthread_mutex_unlock(&ep_lock);
    if (!set)
        return mask ? REAL(epoll_pwait)(ep, ev, max, timeout_ms, mask) : REAL(epoll_wait)(ep, ev, max, timeout_ms);
    uint64_t until = timeout_ms > 0 ? ss_now_ms() + (uint64_t)timeout_ms : 0;
    struct epoll_event local[EP_LOCAL], *got = local;
    struct ep_item *local_its[EP_LOCAL], **its = local_its;
    int room = max < EP_LOCAL ? max : EP_LOCAL;
    void *big = NULL;
    if (max > EP_LOCAL && (big = malloc((size_t)max * (sizeof *got + sizeof *its)))) {
        its = big;
        got = (struct epoll_event *)(its + max);
        room = max;
    }
    int rc = epoll_loop(ep, set, ev, max, timeout_ms, mask, until, got, its, room);
    free(big);
    return rc;
}

static int epoll_loop(int ep, struct ep_set *set, struct epoll_event *ev, int max, int timeout_ms,
                      const sigset_t *mask, uint64_t until, struct epoll_event *got, struct ep_item **its,
                      int room)
{
    for (;;) {
        pthread_mutex_lock(&ep_lock);
        take_events();
        int n = collect(set, got, its, room);
        /* then the kernel's descriptors, without waiting when we have some */
        int left = 0;
        bool sleep = n == 0 && timeout_ms != 0;
        if (sleep) {
            /* From here on, under the same lock as the collect that found
             * nothing, whoever queues an item on this set wakes us. */
            if (set->wake < 0) {
                struct epoll_event w = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
                set->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
                if (set->wake >= 0 && REAL(epoll_ctl)(set->ep, EPOLL_CTL_ADD, set->wake, &w) < 0) {
                    REAL(close)(set->wake);
                    set->wake = -1;
                }
            }
            set->sleepers++;
            set->wake_sent = false;
        }
        pthread_mutex_unlock(&ep_lock);
        if (n) {
            /* out of the lock: a program's handler may longjmp from a fault */
            int put = put_events(ev, got, n);
            if (put < n) {
                put_back(ep, set, its + put, n - put);
                return put ? put : fail(EFAULT);
            }
        }
        if (sleep) {
            ss_sleeper_enter(&ss_ch.r->app_bell_sleeping); /* in the kernel's epoll, which holds the doorbell */
            if (events_waiting()) {
                ss_sleeper_leave(&ss_ch.r->app_bell_sleeping);
                continue;
            }
            left = -1;
            if (until) {
                uint64_t now = ss_now_ms();
                left = now >= until ? 0 : (int)(until - now);
            }
        }
        int k = mask ? REAL(epoll_pwait)(ep, ev + n, max - n, left, mask) : REAL(epoll_wait)(ep, ev + n, max - n, left);
        if (sleep) {
            ss_sleeper_leave(&ss_ch.r->app_bell_sleeping);
            pthread_mutex_lock(&ep_lock);
            set->sleepers--;
            pthread_mutex_unlock(&ep_lock);
        }
        if (k < 0) {
            if (!n && errno == EFAULT && !program_ready(set)) {
                if (until && ss_now_ms() >= until)
                    return 0;
                continue; /* only our doorbell or wake-up was there to write */
            }
            return n ? n : -1;
        }
        /* the doorbell and inner sets' tags are ours, not the program's */
        int out = n;
        bool rang = false, nested = false;
        for (int i = n; i < n + k; i++) {
            if (ev[i].data.u64 == BELL_TAG) {
                rang = true;
                continue;
            }
            if (ev[i].data.u64 == WAKE_TAG) {
                uint64_t x;
                ssize_t r = REAL(read)(set->wake, &x, sizeof x);
                (void)r;
                nested = true; /* as a nested set's edge: look at the check list again */
                continue;
            }
            if ((ev[i].data.u64 & ~0xffffffffull) == NEST_TAG) {
                /* The inner set's kernel side moved, or only the doorbell
                 * in it rang (its sockets' news reach us as events): an
                 * edge only when its own kernel descriptors are ready. */
                int fd = (int)(uint32_t)ev[i].data.u64;
                pthread_mutex_lock(&ep_lock);
                for (struct ep_item *it = set->items; it; it = it->next_in_set)
                    if (it->inner && it->fd == fd && kernel_side_ready(it->inner)) {
                        it->kernel_edge = true;
                        queue_check(set, it);
                    }
                pthread_mutex_unlock(&ep_lock);
                nested = true;
                continue;
            }
            ev[out++] = ev[i];
        }
        if (rang)
            drain_bell();
        if (out || !sleep || (left == 0 && !rang && !nested) || (until && ss_now_ms() >= until)) {
            dispatch_events(); /* news for other sets, if this thread took their doorbell */
            return out;
        }
    }
}

void ss_epoll_after_fork(void)
{
    pthread_mutex_init(&ep_lock, NULL);
    memset(by_slot, 0, sizeof by_slot);
    for (struct ep_set *set = sets; set; set = set->next) {
        for (struct ep_item *it = set->items; it; it = it->next_in_set) {
            if (it->s && !it->pending) {
                it->next_of_slot = by_slot[it->s->slot];
                by_slot[it->s->slot] = it;
            }
            queue_check(set, it);
        }
        /* The set is the parent's too (one kernel object): the child's
         * doorbell joins it beside the parent's. */
        struct epoll_event b = {.events = EPOLLIN, .data.u64 = BELL_TAG};
        if (set->bell)
            REAL(epoll_ctl)(set->ep, EPOLL_CTL_ADD, ss_ch.app_bell, &b);
    }
}
