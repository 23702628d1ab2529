/*
 * The socket calls on accelerated descriptors, errno for errno as Linux
 * answers them.  Bytes go through the socket's rings in the channel with no
 * request (shardsock/channel.h); everything else is a request to the
 * instance.  A call that would block waits for the socket's readiness.
 */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(int e)
{
    errno = e;
    return -1;
}

static uint64_t deadline(int64_t timeout_ms) { return timeout_ms > 0 ? ss_now_ms() + (uint64_t)timeout_ms : 0; }

static size_t iov_total(const struct iovec *iov, int cnt)
{
    size_t n = 0;
    for (int i = 0; i < cnt; i++)
        n += iov[i].iov_len;
    return n;
}

/* ---- deciding where a socket lives ---- */

static const int opt_of_bit[] = {SS_OPT_NODELAY,      SS_OPT_KEEPALIVE, SS_OPT_KEEPIDLE,  SS_OPT_KEEPINTVL,
                                 SS_OPT_KEEPCNT,      SS_OPT_RCVBUF,    SS_OPT_SNDBUF,    SS_OPT_REUSEADDR,
                                 SS_OPT_LINGER_ZERO,  SS_OPT_MAXSEG,    SS_OPT_CORK,      SS_OPT_DEFER_ACCEPT,
                                 SS_OPT_REUSEPORT};

/* Posts a request for s that nobody waits for (shardsock/channel.h);
 * more: the caller posts or asks again at once. */
static int post(struct ss_sock *s, uint32_t op, int64_t a0, int64_t a1, bool more)
{
    int64_t pos = ss_post(op, s->slot, a0, a1, more);
    if (pos < 0)
        return (int)pos; /* the instance is gone */
    s->unsettled = true;
    s->settle_end = (uint32_t)pos + 1;
    return 0;
}

/* What the instance did with the requests posted for s is visible. */
static void settle(struct ss_sock *s)
{
    if (s->unsettled) {
        ss_settle(s->settle_end);
        s->unsettled = false;
    }
}

/* The stack socket is made when the first bind or connect says the socket
 * is the stack's; options set before that are replayed on it.  On a slot
 * the instance granted ahead, nothing waits: the caller's next request
 * (bind's, connect's) follows these in the ring, and wakes the instance.
 * Should the instance fail to make the socket (it has no room), that
 * request fails, and the socket's error says why (stack_error). */
static int make_stack(struct ss_sock *s)
{
    int slot = ss_take_grant();
    bool granted = slot >= 0;
    if (!granted && (slot = ss_request(SS_OP_SOCKET, 0, 0, 0, NULL, NULL)) < 0)
        return slot;
    s->slot = (uint32_t)slot;
    s->stack = true;
    if (granted)
        post(s, SS_OP_SOCKET, 1, 0, true);
    for (unsigned b = 0; b < sizeof opt_of_bit / sizeof opt_of_bit[0]; b++)
        if (s->opt_set & (1u << b))
            post(s, SS_OP_SETOPT, opt_of_bit[b], s->opt_val[b], true);
    ss_epoll_decided(s, true);
    return 0;
}

/* A request on a socket made on a granted slot said EBADF: the making
 * failed, and the socket's error says why. */
static int stack_error(struct ss_sock *s, int e)
{
    if (e == -EBADF) {
        int32_t why = __atomic_load_n(&ss_so(s->slot)->error, __ATOMIC_ACQUIRE);
        if (why < 0)
            return why;
    }
    return e;
}

void ss_sock_kernel_mode(int fd, struct ss_sock *s)
{
    if (s->fl_known && s->kernel_nb != s->nonblock &&
        REAL(fcntl)(fd, F_SETFL, O_RDWR | s->fl_other | (s->nonblock ? O_NONBLOCK : 0)) == 0)
        s->kernel_nb = s->nonblock;
}

/* The socket is the kernel's for good: it leaves the table. */
static void to_kernel(int fd, struct ss_sock *s, enum ss_fallback reason, const char *why)
{
    ss_sock_kernel_mode(fd, s);
    ss_epoll_decided(s, false);
    if (ss_lookup(fd) == s) {
        __atomic_store_n(&ss_fds[fd], NULL, __ATOMIC_RELEASE);
        free(s);
    }
    ss_count_fallback(reason, why);
}

/* Whether a stack listener in the group holds the port: the instance's
 * answer, kept until the group's listeners change (the channel's
 * listen_gen, which the instance moves before it answers anything after
 * a change), so a client's connect to 127.0.0.1 asks once per port, not
 * once per connection.  By port: the generation (31 bits) << 1 | answer. */
static uint32_t listened[65536];

static bool stack_listens(uint16_t port)
{
    uint32_t gen = __atomic_load_n(&ss_ch.r->listen_gen, __ATOMIC_ACQUIRE) & 0x7fffffffu;
    uint32_t v = __atomic_load_n(&listened[port], __ATOMIC_RELAXED);
    if (gen && v >> 1 == gen)
        return v & 1;
    bool yes = ss_request(SS_OP_LISTENED, 0, port, 0, NULL, NULL) == 1;
    __atomic_store_n(&listened[port], gen << 1 | yes, __ATOMIC_RELAXED);
    return yes;
}

/* The IPv4 address and port a call names: 0, a negative errno for a
 * malformed address (the kernel socket will say which), or 1 for a good
 * one the stack cannot serve (IPv6 proper). */
static int parse_addr(const struct ss_sock *s, const struct sockaddr *a, socklen_t len, uint32_t *ip,
                      uint16_t *port)
{
    if (!a)
        return -EFAULT;
    if (len >= sizeof(sa_family_t) && a->sa_family == AF_UNSPEC)
        return -EAFNOSUPPORT; /* disconnecting, or Linux's AF_UNSPEC bind: the kernel's */
    if (!s->v6) {
        if (len < sizeof(struct sockaddr_in))
            return -EINVAL;
        if (a->sa_family != AF_INET)
            return -EAFNOSUPPORT;
        const struct sockaddr_in *in = (const struct sockaddr_in *)a;
        *ip = ntohl(in->sin_addr.s_addr);
        *port = ntohs(in->sin_port);
        return 0;
    }
    if (len < sizeof(struct sockaddr_in6))
        return -EINVAL;
    if (a->sa_family != AF_INET6)
        return -EAFNOSUPPORT;
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)a;
    *port = ntohs(in6->sin6_port);
    if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) {
        *ip = 0;
        return 0;
    }
    if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
        return 1;
    memcpy(ip, &in6->sin6_addr.s6_addr[12], 4);
    *ip = ntohl(*ip);
    return 0;
}

int ss_sock_bind(int fd, struct ss_sock *s, const struct sockaddr *a, socklen_t len)
{
    if (s->stack)
        return fail(EINVAL); /* bound already, as Linux says */
    if (s->kernel_only) {
        to_kernel(fd, s, SS_FB_OPTION, "an option the stack cannot honour was set");
        return REAL(bind)(fd, a, len);
    }
    uint32_t ip = 0;
    uint16_t port = 0;
    int e = parse_addr(s, a, len, &ip, &port);
    if (e < 0) {
        /* the kernel names the mistake; the socket stays undecided */
        int r = REAL(bind)(fd, a, len);
        if (r == 0)
            to_kernel(fd, s, SS_FB_ADDRESS, "bound with an address that is not IPv4");
        return r;
    }
    int v6only = 0;
    socklen_t vl = sizeof v6only;
    if (e == 1 || (s->v6 && ip == INADDR_ANY &&
                   (REAL(getsockopt)(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &vl) < 0 || v6only))) {
        to_kernel(fd, s, SS_FB_ADDRESS, "bound to an IPv6 address");
        return REAL(bind)(fd, a, len);
    }
    bool loopback = (ip >> 24) == 127 && ss_loopback_on();
    if (ip == INADDR_ANY || loopback) {
        /* A wildcard socket is the kernel's too: host and loopback clients
         * that are not preloaded still reach it, and so is one bound to
         * 127/8, which preloaded clients reach inside the stack.  The
         * kernel also picks the port when none is given, and says
         * EADDRINUSE as it would. */
        if (REAL(bind)(fd, a, len) < 0)
            return -1;
        struct sockaddr_in6 got;
        socklen_t gl = sizeof got;
        if (REAL(getsockname)(fd, (struct sockaddr *)&got, &gl) == 0)
            port = ntohs(got.sin6_port); /* where sin_port is too */
        s->kernel_too = true;
        ss_sock_kernel_mode(fd, s); /* its kernel side accepts host clients */
    } else if (ip != ss_ch.r->stack_ip) {
        to_kernel(fd, s, SS_FB_ADDRESS, "bound to an address that is not the stack's");
        return REAL(bind)(fd, a, len);
    }
    e = make_stack(s);
    if (e == 0)
        e = stack_error(s, ss_request(SS_OP_BIND, s->slot, ip, port, NULL, NULL));
    if (e < 0) {
        if (s->stack)
            post(s, SS_OP_CLOSE, 0, 0, false);
        s->stack = false;
        if (s->kernel_too) {
            to_kernel(fd, s, SS_FB_PORT, "the stack could not bind the port");
            return 0; /* the kernel socket is bound: it serves alone */
        }
        return fail(-e);
    }
    return 0;
}

int ss_sock_listen(int fd, struct ss_sock *s, int backlog)
{
    if (!s->stack) {
        to_kernel(fd, s, SS_FB_LISTEN_UNBOUND, "listen without bind (the kernel picks the port)");
        return REAL(listen)(fd, backlog);
    }
    int e = ss_request(SS_OP_LISTEN, s->slot, backlog, 0, NULL, NULL);
    if (e < 0)
        return fail(-e);
    s->backlog = backlog;
    if (s->kernel_too && REAL(listen)(fd, backlog) < 0)
        s->kernel_too = false; /* the stack listens alone */
    s->listening = true;
    return 0;
}

/* An address as the socket's family writes it: IPv4, or IPv4-mapped IPv6
 * (the wildcard as ::). */
static void fill_addr(const struct ss_sock *s, struct sockaddr *a, socklen_t *len, uint32_t ip, uint16_t port)
{
    if (!a || !len)
        return;
    union {
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } u;
    socklen_t size;
    memset(&u, 0, sizeof u);
    if (s->v6) {
        u.in6.sin6_family = AF_INET6;
        u.in6.sin6_port = htons(port);
        if (ip) {
            u.in6.sin6_addr.s6_addr[10] = u.in6.sin6_addr.s6_addr[11] = 0xff;
            uint32_t n = htonl(ip);
            memcpy(&u.in6.sin6_addr.s6_addr[12], &n, 4);
        }
        size = sizeof u.in6;
    } else {
        u.in.sin_family = AF_INET;
        u.in.sin_port = htons(port);
        u.in.sin_addr.s_addr = htonl(ip);
        size = sizeof u.in;
    }
    socklen_t n = *len < size ? *len : size;
    memcpy(a, &u, (size_t)n);
    *len = size;
}

/* A connection the instance accepted ahead (shardsock/channel.h): the
 * record at the listener's ring tail, claimed with a compare-and-swap so
 * threads accepting at once each take their own.  The descriptor comes
 * first, as in Linux's accept: at the limit, EMFILE and the record stays.
 * -EAGAIN when the ring is empty. */
static int take_ahead(struct ss_sock *s, struct sockaddr *a, socklen_t *len, int flags)
{
    struct ss_chan_socket *so = ss_so(s->slot);
    const struct ss_chan_accepted *rec = (const void *)(ss_ch.base + SS_CHAN_RX_OFF(s->slot));
    uint32_t tail = __atomic_load_n(&so->rx.tail, __ATOMIC_ACQUIRE);
    if (__atomic_load_n(&so->rx.head, __ATOMIC_ACQUIRE) == tail)
        return -EAGAIN;
    int nfd = ss_placeholder_take(s->v6, flags);
    if (nfd < 0)
        return -errno;
    struct ss_sock *c = nfd < SS_FD_MAX ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        REAL(close)(nfd);
        return -ENOMEM;
    }
    struct ss_chan_accepted got;
    do {
        if (__atomic_load_n(&so->rx.head, __ATOMIC_ACQUIRE) == tail) {
            free(c);
            REAL(close)(nfd);
            return -EAGAIN; /* another thread took the last one */
        }
        got = rec[tail % SS_CHAN_ACCEPTED];
    } while (!__atomic_compare_exchange_n(&so->rx.tail, &tail, tail + 1, false, __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE));
    /* The engine counts what waits in the ring against the backlog (and
     * netstat shows it), and more may wait beyond it: the instance looks
     * again (a kick: no system call while it runs, one doorbell for all
     * the kicks of a pass while it sleeps). */
    ss_kick(s->slot);
    if (got.slot >= SS_CHAN_SOCKETS) { /* the instance wrote it: never */
        free(c);
        REAL(close)(nfd);
        return -EIO;
    }
    c->refs = 1;
    c->stack = true;
    c->slot = got.slot;
    c->nonblock = (flags & SOCK_NONBLOCK) != 0;
    c->v6 = s->v6;
    c->shared = true;
    __atomic_store_n(&ss_fds[nfd], c, __ATOMIC_RELEASE);
    fill_addr(c, a, len, got.remote_ip, got.remote_port);
    return nfd;
}

int ss_sock_accept(int fd, struct ss_sock *s, struct sockaddr *a, socklen_t *len, int flags)
{
    if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC))
        return fail(EINVAL);
    if (a && len && (int)*len < 0)
        return fail(EINVAL);
    if (!s->listening)
        return fail(EINVAL);
    if (s->epoll_regs == 0)
        ss_sock_activate(s); /* no epoll set says when it waits: in use for good */
    uint64_t until = deadline(s->rcvtimeo_ms);
    for (;;) {
        int64_t rip = 0, rport = 0;
        int slot = take_ahead(s, a, len, flags);
        if (slot >= 0)
            return slot;
        if (slot != -EAGAIN)
            return fail(-slot);
        /* An empty queue, as the instance's word says, needs no round trip
         * (a connection queued since is announced like any readiness). */
        if (ss_sock_revents(s, POLLIN) & POLLIN) {
            /* The descriptor first, as Linux's accept does: at the limit
             * the call fails with EMFILE and the connection stays queued. */
            int nfd = ss_placeholder_take(s->v6, flags);
            if (nfd < 0)
                return -1;
            struct ss_sock *c = nfd < SS_FD_MAX ? calloc(1, sizeof *c) : NULL;
            if (!c) {
                REAL(close)(nfd);
                return fail(ENOMEM);
            }
            slot = ss_request(SS_OP_ACCEPT, s->slot, 0, 0, &rip, &rport);
            if (slot < 0) {
                free(c);
                REAL(close)(nfd);
                /* the instance may have just moved the connection to the
                 * ring (it takes kicks, such as "in use", before requests) */
                if (slot == -EAGAIN && (slot = take_ahead(s, a, len, flags)) >= 0)
                    return slot;
                if (slot != -EAGAIN)
                    return fail(-slot);
            } else {
                c->refs = 1;
                c->stack = true;
                c->slot = (uint32_t)slot;
                c->nonblock = (flags & SOCK_NONBLOCK) != 0;
                c->v6 = s->v6;
                c->shared = true;
                __atomic_store_n(&ss_fds[nfd], c, __ATOMIC_RELEASE);
                fill_addr(c, a, len, (uint32_t)rip, (uint16_t)rport);
                return nfd;
            }
        }
        if (slot != -EAGAIN)
            return fail(-slot);
        if (s->kernel_too) {
            /* the kernel side of a wildcard listener: a host client */
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (REAL(poll)(&p, 1, 0) == 1)
                return REAL(accept4)(fd, a, len, flags);
        }
        if (s->nonblock)
            return fail(EAGAIN);
        if (!s->kernel_too) {
            int w = ss_wait(s, POLLIN, until);
            if (w < 0)
                return fail(w == -ETIMEDOUT ? EAGAIN : -w);
            continue;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = -1;
        if (until) {
            uint64_t now = ss_now_ms();
            if (now >= until)
                return fail(EAGAIN);
            left = (int)(until - now);
        }
        /* Both queues: poll, which a signal always interrupts.  Linux
         * restarts accept after a handler with SA_RESTART (but not with
         * SO_RCVTIMEO): do so when every handler the program has has it. */
        if (ss_poll(&p, 1, left, NULL) < 0 && (errno != EINTR || until || !ss_handlers_restart()))
            return -1;
    }
}

/* Whether a connection to ip:port is the stack's: a destination in the
 * stack's subnet other than the stack itself (a connection to its own
 * address goes through the kernel and the device, as a host client's
 * would), or 127/8 when a stack listener holds the port in the group
 * (otherwise a kernel program does, or nobody: the kernel answers). */
static bool routed_through_stack(uint32_t ip, uint16_t port)
{
    if ((ip >> 24) == 127)
        return ss_loopback_on() && stack_listens(port);
    uint32_t mask = ss_ch.r->stack_netmask;
    return ip != ss_ch.r->stack_ip && (ip & mask) == (ss_ch.r->stack_ip & mask) && ip != (ss_ch.r->stack_ip | ~mask);
}

static int pending_error(struct ss_sock *s)
{
    struct ss_chan_socket *so = ss_so(s->slot);
    int32_t err = __atomic_exchange_n(&so->error, 0, __ATOMIC_ACQ_REL);
    return err;
}

static int connect_result(struct ss_sock *s)
{
    uint32_t ready = __atomic_load_n(&ss_so(s->slot)->ready, __ATOMIC_ACQUIRE);
    if (ready & SS_CHAN_EV_CONNECTED) {
        s->connecting = false;
        return 0;
    }
    if (ready & (SS_EV_ERR | SS_EV_HUP)) {
        /* the instance moved the engine's error to the word (pump), or
         * the engine still holds it */
        int64_t err = pending_error(s);
        if (!err)
            ss_request(SS_OP_GETOPT, s->slot, SS_OPT_ERROR, 0, NULL, &err);
        s->connecting = false;
        return err ? (int)err : -ECONNREFUSED;
    }
    return -EINPROGRESS;
}

int ss_sock_connect(int fd, struct ss_sock *s, const struct sockaddr *a, socklen_t len)
{
    uint32_t ip = 0;
    uint16_t port = 0;
    int e = parse_addr(s, a, len, &ip, &port);
    if (e == 0 && ip == 0)
        ip = 0x7f000001; /* Linux connects to 0.0.0.0 as to the local host (ip_route_connect), as stress-ng does */
    if (!s->stack && s->kernel_only) {
        to_kernel(fd, s, SS_FB_OPTION, "an option the stack cannot honour was set");
        return REAL(connect)(fd, a, len);
    }
    if (!s->stack) {
        if (e != 0 || !routed_through_stack(ip, port)) {
            to_kernel(fd, s, SS_FB_DESTINATION, "the destination is not behind the stack");
            return REAL(connect)(fd, a, len);
        }
        if ((e = make_stack(s)) < 0)
            return fail(-e);
    } else if (e != 0) {
        return fail(e < 0 ? -e : ENETUNREACH);
    }
    if (s->listening)
        return fail(EISCONN);
    if (s->connecting) {
        /* Linux: the first connect after the handshake ends says 0 (or
         * the error), later ones EISCONN */
        e = connect_result(s);
        if (e == -EINPROGRESS)
            return fail(EALREADY);
        return e == 0 ? 0 : fail(-e);
    }
    if (__atomic_load_n(&ss_so(s->slot)->ready, __ATOMIC_ACQUIRE) & SS_CHAN_EV_CONNECTED)
        return fail(EISCONN);
    /* Posted: the kernel's non-blocking connect says EINPROGRESS and tells
     * the outcome by readiness and SO_ERROR, and so does this one, failures
     * of the instance's included (no room for a socket or a local port:
     * Linux says EADDRNOTAVAIL at once; here it comes as SO_ERROR).  A
     * blocking connect waits for the outcome either way. */
    if ((e = post(s, SS_OP_CONNECT, ip, port, false)) < 0)
        return fail(-e);
    s->connecting = true;
    if (s->nonblock)
        return fail(EINPROGRESS);
    int w = ss_wait(s, POLLOUT, deadline(s->sndtimeo_ms));
    if (w == -ETIMEDOUT)
        return fail(EINPROGRESS);
    if (w < 0)
        return fail(-w);
    e = connect_result(s);
    return e == 0 ? 0 : fail(-e);
}

/* ---- bytes ---- */

/* An iovec being filled or emptied, and how far. */
struct iov_cursor {
    const struct iovec *iov;
    int cnt, i;
    size_t off;
};

/* Copies up to n bytes between a byte ring (size a power of two, from
 * position pos) and the cursor's buffers; returns how many moved. */
static uint32_t ring_copy(uint8_t *ring, uint32_t size, uint32_t pos, uint32_t n, struct iov_cursor *c,
                          bool into_ring)
{
    uint32_t moved = 0;
    while (moved < n && c->i < c->cnt) {
        size_t chunk = c->iov[c->i].iov_len - c->off;
        if (!chunk) {
            c->i++;
            c->off = 0;
            continue;
        }
        uint32_t off = (pos + moved) & (size - 1);
        uint32_t k = size - off;
        if (k > n - moved)
            k = n - moved;
        if (k > chunk)
            k = (uint32_t)chunk;
        uint8_t *user = (uint8_t *)c->iov[c->i].iov_base + c->off;
        if (into_ring)
            memcpy(ring + off, user, k);
        else
            memcpy(user, ring + off, k);
        moved += k;
        c->off += k;
    }
    return moved;
}


static ssize_t broken_pipe(int flags)
{
    if (!(flags & MSG_NOSIGNAL))
        raise(SIGPIPE);
    return fail(EPIPE);
}

ssize_t ss_sock_send(int fd, struct ss_sock *s, const struct iovec *iov, int cnt, int flags)
{
    (void)fd;
    if (s->listening)
        return broken_pipe(flags);
    struct ss_chan_socket *so = ss_so(s->slot);
    size_t total = iov_total(iov, cnt), done = 0;
    bool nonblock = s->nonblock || (flags & MSG_DONTWAIT);
    uint64_t until = deadline(s->sndtimeo_ms);
    uint8_t *ring = ss_ch.base + SS_CHAN_TX_OFF(s->slot);
    struct iov_cursor cur = {.iov = iov, .cnt = cnt};
    for (;;) {
        uint32_t ready = __atomic_load_n(&so->ready, __ATOMIC_ACQUIRE);
        if (s->wr_shut)
            return done ? (ssize_t)done : broken_pipe(flags);
        if (ready & (SS_EV_ERR | SS_EV_HUP)) {
            if (done)
                return (ssize_t)done;
            int err = pending_error(s);
            return err ? fail(-err) : broken_pipe(flags);
        }
        if (!(ready & SS_CHAN_EV_CONNECTED)) {
            if (!s->connecting)
                return broken_pipe(flags); /* never connected: Linux says EPIPE */
        } else {
            uint32_t head = so->tx.head, tail = __atomic_load_n(&so->tx.tail, __ATOMIC_ACQUIRE);
            uint32_t space = SS_CHAN_TXBUF - (head - tail);
            uint32_t want = total - done < space ? (uint32_t)(total - done) : space;
            uint32_t n = ring_copy(ring, SS_CHAN_TXBUF, head, want, &cur, true);
            head += n;
            done += n;
            uint32_t more = (flags & MSG_MORE) != 0;
            if (n && __atomic_load_n(&so->more, __ATOMIC_RELAXED) != more)
                __atomic_store_n(&so->more, more, __ATOMIC_RELAXED); /* published with head */
            __atomic_store_n(&so->tx.head, head, __ATOMIC_RELEASE);
            if (done)
                ss_kick(s->slot);
            if (done == total)
                return (ssize_t)total;
        }
        if (nonblock)
            return done ? (ssize_t)done : fail(EAGAIN);
        int w = ss_wait(s, POLLOUT, until);
        if (w < 0)
            return done ? (ssize_t)done : fail(w == -ETIMEDOUT ? EAGAIN : -w);
        if (!(__atomic_load_n(&so->ready, __ATOMIC_ACQUIRE) & SS_EV_OUT) && !(so->ready & (SS_EV_ERR | SS_EV_HUP))) {
            /* woken for another reason: look again */
        }
    }
}

ssize_t ss_sock_recv(int fd, struct ss_sock *s, const struct iovec *iov, int cnt, int flags)
{
    (void)fd;
    if (flags & MSG_OOB)
        return fail(EINVAL); /* no urgent data is kept, as with SO_OOBINLINE off and none sent */
    struct ss_chan_socket *so = ss_so(s->slot);
    if (s->listening || (!s->connecting && !(so->ready & SS_CHAN_EV_CONNECTED) && !(so->ready & SS_CHAN_EV_EOF)))
        return fail(ENOTCONN);
    size_t total = iov_total(iov, cnt), done = 0;
    bool nonblock = s->nonblock || (flags & MSG_DONTWAIT);
    bool peek = flags & MSG_PEEK, waitall = (flags & MSG_WAITALL) && !peek;
    uint64_t until = deadline(s->rcvtimeo_ms);
    uint8_t *ring = ss_ch.base + SS_CHAN_RX_OFF(s->slot);
    struct iov_cursor cur = {.iov = iov, .cnt = cnt};
    if (total == 0)
        return 0;
    for (;;) {
        uint32_t head = __atomic_load_n(&so->rx.head, __ATOMIC_ACQUIRE), tail = so->rx.tail;
        uint32_t avail = head - tail;
        if (avail) {
            bool was_full = avail == SS_CHAN_RXBUF;
            uint32_t want = total - done < avail ? (uint32_t)(total - done) : avail;
            uint32_t t = tail + ring_copy(ring, SS_CHAN_RXBUF, tail, want, &cur, false);
            done += t - tail;
            if (peek)
                return (ssize_t)done;
            __atomic_store_n(&so->rx.tail, t, __ATOMIC_RELEASE);
            /* the instance stops filling a full ring: tell it there is room */
            if (was_full)
                ss_kick(s->slot);
            if (done == total || !waitall)
                return (ssize_t)done;
            continue;
        }
        uint32_t ready = __atomic_load_n(&so->ready, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&so->rx.head, __ATOMIC_ACQUIRE) != tail)
            continue; /* data came with the state */
        if (ready & SS_CHAN_EV_EOF) {
            int err = done ? 0 : pending_error(s);
            return err ? fail(-err) : (ssize_t)done;
        }
        if (done && (!waitall || (ready & (SS_EV_ERR | SS_EV_HUP))))
            return (ssize_t)done;
        if (ready & (SS_EV_ERR | SS_EV_HUP)) {
            int err = pending_error(s);
            return err ? fail(-err) : 0;
        }
        if (nonblock)
            return done ? (ssize_t)done : fail(EAGAIN); /* MSG_WAITALL with MSG_DONTWAIT: what there is */
        int w = ss_wait(s, POLLIN, until);
        if (w < 0)
            return done ? (ssize_t)done : fail(w == -ETIMEDOUT ? EAGAIN : -w);
    }
}

int ss_sock_fionread(struct ss_sock *s)
{
    struct ss_chan_socket *so = ss_so(s->slot);
    return (int)(__atomic_load_n(&so->rx.head, __ATOMIC_ACQUIRE) - so->rx.tail);
}

int ss_sock_shutdown(int fd, struct ss_sock *s, int how)
{
    (void)fd;
    if (how < SHUT_RD || how > SHUT_RDWR)
        return fail(EINVAL);
    uint32_t ready = ss_so(s->slot)->ready;
    if (!s->listening && !(ready & (SS_CHAN_EV_CONNECTED | SS_CHAN_EV_EOF)) && !s->connecting)
        return fail(ENOTCONN);
    int e = stack_error(s, ss_request(SS_OP_SHUTDOWN, s->slot, how, 0, NULL, NULL));
    if (e < 0 && e != -ENOTCONN)
        return fail(-e);
    if (how != SHUT_RD)
        s->wr_shut = true;
    return 0;
}

/* Posted: nothing the instance could say would change what close
 * returns.  It closes the socket after the bytes written before (their
 * kick comes first), and frees the slot when they went. */
int ss_sock_close(int fd, struct ss_sock *s)
{
    (void)fd;
    if (s->stack && ss_ch.state == SS_CH_ATTACHED) {
        if (s->listening) /* its port may be nobody's now: ask again */
            __atomic_store_n(&listened[ss_so(s->slot)->local_port], 0, __ATOMIC_RELAXED);
        post(s, SS_OP_CLOSE, 0, 0, false);
    }
    return 0;
}

/* ---- options ---- */

static int opt_bit(int opt)
{
    for (unsigned b = 0; b < sizeof opt_of_bit / sizeof opt_of_bit[0]; b++)
        if (opt_of_bit[b] == opt)
            return (int)b;
    return -1;
}

/* Recorded always: replayed on the stack socket when it is made, and on a
 * forked child's local listener (ss_sock_spawn). */
static void stack_opt(struct ss_sock *s, int opt, int value)
{
    int b = opt_bit(opt);
    s->opt_set |= 1u << b;
    s->opt_val[b] = value;
    if (s->stack)
        post(s, SS_OP_SETOPT, opt, value, false); /* the kernel socket checked it (ss_sock_setsockopt) */
}

static bool in_use(const struct ss_sock *s) { return s->accepts || s->epoll_regs > 0; }

void ss_sock_tell_use(struct ss_sock *s)
{
    if (!s->listening || !s->stack)
        return;
    /* a word and a kick (shardsock/channel.h): no round trip */
    __atomic_store_n(&ss_so(s->slot)->uses, in_use(s), __ATOMIC_RELEASE);
    ss_kick(s->slot);
}

void ss_sock_activate(struct ss_sock *s)
{
    if (s->listening && !s->accepts) {
        bool was = in_use(s);
        s->accepts = true;
        if (!was)
            ss_sock_tell_use(s);
    }
}

void ss_sock_epoll_use(struct ss_sock *s, int delta)
{
    if (!s->listening)
        return;
    bool was = in_use(s);
    s->epoll_regs += delta;
    if (s->epoll_regs < 0)
        s->epoll_regs = 0;
    if (was != in_use(s))
        ss_sock_tell_use(s);
}

int ss_sock_spawn(struct ss_sock *s, uint32_t ip, uint16_t port)
{
    int slot = ss_request(SS_OP_SOCKET, 0, 0, 0, NULL, NULL);
    if (slot < 0)
        return slot;
    for (unsigned b = 0; b < sizeof opt_of_bit / sizeof opt_of_bit[0]; b++)
        if (s->opt_set & (1u << b))
            ss_request(SS_OP_SETOPT, (uint32_t)slot, opt_of_bit[b], s->opt_val[b], NULL, NULL);
    int e = ss_request(SS_OP_SETOPT, (uint32_t)slot, SS_OPT_SPAWNED, 1, NULL, NULL);
    if (e == 0)
        e = ss_request(SS_OP_BIND, (uint32_t)slot, ip, port, NULL, NULL);
    if (e == 0)
        e = ss_request(SS_OP_LISTEN, (uint32_t)slot, s->backlog, 0, NULL, NULL);
    if (e < 0) {
        ss_request(SS_OP_CLOSE, (uint32_t)slot, 0, 0, NULL, NULL);
        return e;
    }
    s->slot = (uint32_t)slot;
    ss_sock_tell_use(s);
    return 0;
}

static int64_t tv_ms(const void *v)
{
    const struct timeval *tv = v;
    return (int64_t)tv->tv_sec * 1000 + (tv->tv_usec + 999) / 1000;
}

/* Options whose effect only the kernel's TCP has: a socket that sets one
 * before bind or connect stays the kernel's (set later, the kernel socket
 * keeps them and they change nothing the stack does). */
static bool kernel_only_option(int lvl, int opt)
{
    if (lvl == SOL_SOCKET)
        return opt == SO_BINDTODEVICE || opt == SO_MARK || opt == SO_ATTACH_FILTER || opt == SO_ATTACH_BPF ||
               opt == SO_ATTACH_REUSEPORT_CBPF || opt == SO_ATTACH_REUSEPORT_EBPF;
    if (lvl == IPPROTO_IP)
        return opt == IP_TRANSPARENT || opt == IP_FREEBIND;
    if (lvl == IPPROTO_TCP)
        return opt == TCP_FASTOPEN || opt == TCP_FASTOPEN_CONNECT || opt == TCP_MD5SIG || opt == TCP_CONGESTION ||
               opt == TCP_REPAIR || opt == TCP_SAVE_SYN || opt == TCP_ULP;
    return false;
}

int ss_sock_setsockopt(int fd, struct ss_sock *s, int lvl, int opt, const void *v, socklen_t len)
{
    /* The kernel socket takes every option first: it checks the arguments
     * (EINVAL, EFAULT, ENOPROTOOPT) exactly as Linux does, keeps the value
     * getsockopt reports, and is ready should the socket stay the kernel's. */
    if ((s->shared ? ss_placeholder_setsockopt(s, lvl, opt, v, len) : REAL(setsockopt)(fd, lvl, opt, v, len)) < 0)
        return -1;
    if (!s->stack && kernel_only_option(lvl, opt))
        s->kernel_only = true;
    int iv = len >= (socklen_t)sizeof(int) ? *(const int *)v : 0;
    if (lvl == SOL_SOCKET) {
        switch (opt) {
        case SO_REUSEADDR: stack_opt(s, SS_OPT_REUSEADDR, iv != 0); break;
        case SO_REUSEPORT: stack_opt(s, SS_OPT_REUSEPORT, iv != 0); break;
        case SO_KEEPALIVE: stack_opt(s, SS_OPT_KEEPALIVE, iv != 0); break;
        case SO_RCVBUF: stack_opt(s, SS_OPT_RCVBUF, iv); break;
        case SO_SNDBUF: stack_opt(s, SS_OPT_SNDBUF, iv); break;
        case SO_LINGER: {
            const struct linger *l = v;
            stack_opt(s, SS_OPT_LINGER_ZERO, l->l_onoff && l->l_linger == 0);
            break;
        }
        case SO_RCVTIMEO: s->rcvtimeo_ms = tv_ms(v); break;
        case SO_SNDTIMEO: s->sndtimeo_ms = tv_ms(v); break;
        default: break;
        }
    } else if (lvl == IPPROTO_TCP) {
        switch (opt) {
        case TCP_NODELAY: stack_opt(s, SS_OPT_NODELAY, iv != 0); break;
        case TCP_KEEPIDLE: stack_opt(s, SS_OPT_KEEPIDLE, iv); break;
        case TCP_KEEPINTVL: stack_opt(s, SS_OPT_KEEPINTVL, iv); break;
        case TCP_KEEPCNT: stack_opt(s, SS_OPT_KEEPCNT, iv); break;
        case TCP_MAXSEG: stack_opt(s, SS_OPT_MAXSEG, iv); break;
        case TCP_CORK: stack_opt(s, SS_OPT_CORK, iv != 0); break;
        case TCP_DEFER_ACCEPT: stack_opt(s, SS_OPT_DEFER_ACCEPT, iv); break;
        default: break; /* the kernel socket holds the rest: they change nothing the stack does */
        }
    }
    return 0;
}

int ss_sock_getsockopt(int fd, struct ss_sock *s, int lvl, int opt, void *v, socklen_t *len)
{
    if (lvl == SOL_SOCKET && opt == SO_ERROR && v && len && *len >= (socklen_t)sizeof(int)) {
        int64_t err = 0;
        int own = pending_error(s);
        /* The instance moves the engine's error to the socket's word
         * (pump) with the readiness that announces it, so only a socket
         * whose word says SS_EV_ERR may hold one there still (its rx ring
         * was full): no round trip per connect() for the rest. */
        if (!own && (__atomic_load_n(&ss_so(s->slot)->ready, __ATOMIC_ACQUIRE) & SS_EV_ERR))
            ss_request(SS_OP_GETOPT, s->slot, SS_OPT_ERROR, 0, NULL, &err);
        *(int *)v = own ? -own : err ? (int)-err : 0;
        *len = sizeof(int);
        return 0;
    }
    if (lvl == SOL_SOCKET && opt == SO_ACCEPTCONN && v && len && *len >= (socklen_t)sizeof(int)) {
        *(int *)v = s->listening;
        *len = sizeof(int);
        return 0;
    }
    if (lvl == IPPROTO_TCP && opt == TCP_INFO && v && len) {
        struct tcp_info out;
        memset(&out, 0, sizeof out);
        struct ss_tcp_info ti;
        if (ss_request_info(s->slot, &ti) == 0) {
            /* the engine's states (counters.h order) as Linux's TCP_* numbers */
            static const uint8_t linux_state[] = {7, 10, 2, 3, 1, 4, 5, 8, 11, 9, 6};
            out.tcpi_state = ti.state < (int)sizeof linux_state ? linux_state[ti.state] : 7;
            out.tcpi_rto = ti.rto_us;
            out.tcpi_rtt = ti.srtt_us;
            out.tcpi_snd_mss = ti.mss;
            out.tcpi_snd_cwnd = ti.mss ? ti.cwnd / ti.mss : 0;
            out.tcpi_snd_ssthresh = ti.mss ? ti.ssthresh / ti.mss : 0;
            out.tcpi_retransmits = (uint8_t)ti.retransmits;
            out.tcpi_snd_wscale = ti.snd_wscale & 15;
            out.tcpi_rcv_wscale = ti.rcv_wscale & 15;
            out.tcpi_options = (ti.ts_ok ? TCPI_OPT_TIMESTAMPS : 0) | (ti.sack_ok ? TCPI_OPT_SACK : 0) |
                               (ti.snd_wscale || ti.rcv_wscale ? TCPI_OPT_WSCALE : 0);
        }
        socklen_t n = *len < (socklen_t)sizeof out ? *len : (socklen_t)sizeof out;
        memcpy(v, &out, (size_t)n);
        *len = n;
        return 0;
    }
    return s->shared ? ss_placeholder_getsockopt(fd, s, lvl, opt, v, len) : REAL(getsockopt)(fd, lvl, opt, v, len);
}

int ss_sock_name(int fd, struct ss_sock *s, struct sockaddr *a, socklen_t *len, bool peer)
{
    (void)fd;
    if (!len || (int)*len < 0)
        return fail(len ? EINVAL : EFAULT);
    settle(s); /* a posted connect chose the local port */
    struct ss_chan_socket *so = ss_so(s->slot);
    if (peer) {
        if (s->listening || !(so->ready & (SS_CHAN_EV_CONNECTED | SS_CHAN_EV_EOF | SS_EV_HUP)))
            return fail(ENOTCONN);
        fill_addr(s, a, len, so->remote_ip, so->remote_port);
    } else {
        fill_addr(s, a, len, so->local_ip, so->local_port);
    }
    return 0;
}

short ss_sock_revents(struct ss_sock *s, short events)
{
    if (!s->stack)
        return (short)(POLLOUT & events) | POLLHUP; /* an unconnected socket, as on Linux */
    struct ss_chan_socket *so = ss_so(s->slot);
    uint32_t ready = __atomic_load_n(&so->ready, __ATOMIC_ACQUIRE);
    if (!s->listening && !s->connecting && !(ready & (SS_CHAN_EV_CONNECTED | SS_CHAN_EV_EOF | SS_EV_ERR)))
        return (short)(POLLOUT & events) | POLLHUP;
    short r = (short)(ready & (POLLERR | POLLHUP | POLLRDHUP));
    /* Linux: POLLERR while an error waits for SO_ERROR (or a call) to take
     * it; the instance may have moved it from the engine to the word */
    if (__atomic_load_n(&so->error, __ATOMIC_ACQUIRE))
        r |= POLLERR;
    if (s->listening) {
        /* connections accepted ahead, or waiting in the engine beyond them */
        if ((ready & POLLIN) || __atomic_load_n(&so->rx.head, __ATOMIC_ACQUIRE) != so->rx.tail)
            r |= POLLIN;
    } else {
        /* The rings say now what the instance's word said when it last
         * looked: the bytes this process took or wrote since count. */
        bool data = __atomic_load_n(&so->rx.head, __ATOMIC_ACQUIRE) != so->rx.tail;
        bool room = SS_CHAN_TXBUF - (so->tx.head - __atomic_load_n(&so->tx.tail, __ATOMIC_ACQUIRE)) > 0;
        if (data || (ready & (SS_CHAN_EV_EOF | SS_EV_ERR | SS_EV_HUP)))
            r |= POLLIN;
        /* Linux: writable when there is room, and for good after SHUT_WR */
        if (((ready & SS_CHAN_EV_CONNECTED) && room && !(ready & SS_EV_ERR)) || s->wr_shut || (ready & SS_EV_HUP))
            r |= POLLOUT;
    }
    return (short)(r & (events | POLLERR | POLLHUP));
}
