/*
 * libshardsock.so's private declarations, shared by its files:
 *   shim.c    interposition, start-up, the channel, the descriptor table
 *   sock.c    the socket calls on accelerated descriptors
 *   placeholder.c  the descriptors of accepted connections
 *   wait.c    poll, ppoll, select, pselect and epoll over both kinds
 */
#ifndef SS_SHIM_H
#define SS_SHIM_H

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <shardsock/channel.h>
#include <shardsock/engine.h>

#include "calls.h"

/* The next definition of every intercepted call (libc's). */
#define X(ret, name, params, args) extern ret(*ss_real_##name) params;
SS_CALLS(X)
#undef X
void ss_resolve(void);
#define REAL(name) (ss_real_##name ? ss_real_##name : (ss_resolve(), ss_real_##name))

/* The value the kernel would report for an option set on a socket whose
 * kernel socket is shared (placeholder.c). */
#define SS_OPT_SHADOW_MAX 64
struct ss_optshadow {
    struct ss_optshadow *next;
    int lvl, opt;
    socklen_t len;
    unsigned char val[SS_OPT_SHADOW_MAX];
};

/* An accelerated socket.  Its descriptor is a kernel socket the library
 * holds, or a duplicate of one shared by many (placeholder.c); several
 * descriptors (dup) share one of these. */
struct ss_sock {
    int refs;
    bool stack;          /* served by the instance; false: still undecided */
    uint32_t slot;       /* the channel's socket number, when stack */
    bool nonblock;
    bool listening;
    bool kernel_too;     /* a wildcard listener: its kernel socket listens as well */
    bool connecting;     /* connect returned EINPROGRESS */
    bool wr_shut;
    bool v6;             /* an AF_INET6 socket: IPv4 through mapped addresses (::ffff:a.b.c.d) */
    bool kernel_only;    /* an option the stack cannot honour was set: bind or connect leaves it to the kernel */
    bool shared;         /* its kernel socket is shared (placeholder.c): options live in shadow */
    bool unsettled;      /* requests posted for it may not be done yet: settle (before settle_end) */
    /* Its kernel socket's file-status flags, known from socket() on: a
     * change of O_NONBLOCK alone is the library's (no fcntl), and reaches
     * the kernel socket only when that socket serves (ss_sock_kernel_mode) */
    bool fl_known;
    bool kernel_nb;      /* O_NONBLOCK as the kernel socket has it */
    int fl_other;        /* its other flags a program set (O_APPEND, O_ASYNC...) */
    uint32_t settle_end;
    struct ss_optshadow *shadow;
    /* a listener's use by this process, which the instance counts (listen
     * spawn prefers listeners in use): accept, poll or select make it
     * used for good; epoll sets while they hold it (nginx's accept_mutex
     * takes listeners in and out of its set) */
    bool accepts;
    int epoll_regs;
    int backlog;         /* a listener's, for a forked child's local listener */
    int64_t rcvtimeo_ms, sndtimeo_ms; /* 0: none */
    /* options set before the stack socket exists, replayed on it */
    uint32_t opt_set;    /* bit per enum ss_tcp_opt */
    int opt_val[16];
};

#define SS_FD_MAX 65536
extern struct ss_sock *ss_fds[SS_FD_MAX];

/* The channel to the instance, attached on the first IPv4 TCP socket. */
enum {
    SS_CH_UNTRIED = 0,
    SS_CH_ATTACHED = 1,
    SS_CH_INHERITED = 3,    /* a forked child: adopts its parent's sockets at first use */
    SS_CH_NONE = -1,        /* no instance: everything is the kernel's */
    SS_CH_DEAD = -2,        /* the instance died */
};
struct ss_channel {
    pthread_mutex_t lock;   /* attaching */
    int state;              /* SS_CH_* */
    pid_t pid;              /* the process that attached */
    struct ss_chan_region *r;
    uint8_t *base;
    int ctl, app_bell, inst_bell;
};
extern struct ss_channel ss_ch;
void ss_adopt_inherited(void);
/* A call on fd in a process that has not adopted yet: adopts, unless the
 * adoption waits for the program's choice of core (--no-pin) and fd is
 * neither an accelerated socket nor an epoll set (nginx logs to a file
 * before it sets its workers' affinity). */
void ss_adopt_for(int fd);
bool ss_is_epoll(int fd);

static inline struct ss_sock *ss_lookup(int fd)
{
    if (__builtin_expect(ss_ch.state == SS_CH_INHERITED, 0))
        ss_adopt_for(fd);
    return fd >= 0 && fd < SS_FD_MAX ? __atomic_load_n(&ss_fds[fd], __ATOMIC_ACQUIRE) : NULL;
}

/* Accepted connections' descriptors (placeholder.c): a duplicate of the
 * family's idle master socket, the lowest free number, FD_CLOEXEC when
 * flags has SOCK_CLOEXEC; -1 with errno (EMFILE) as socket() would. */
int ss_placeholder_take(bool v6, int flags);
/* fd is closing or being replaced: if it is one of the library's own. */
void ss_placeholder_forget(int fd);
int ss_placeholder_setsockopt(struct ss_sock *s, int lvl, int opt, const void *v, socklen_t len);
int ss_placeholder_getsockopt(int fd, struct ss_sock *s, int lvl, int opt, void *v, socklen_t *len);
void ss_placeholder_free(struct ss_sock *s);

bool ss_attach(void);       /* true once attached */
/* The request ring (shardsock/channel.h): any thread, no lock.
 * ss_request waits for the answer: the result, >= 0 or a negative errno
 * (-ECONNRESET when the instance is gone). */
int ss_request(uint32_t op, uint32_t slot, int64_t a0, int64_t a1, int64_t *o0, int64_t *o1);
int ss_request_info(uint32_t slot, struct ss_tcp_info *ti);
/* Posts a request nobody waits for: the instance does it in ring order,
 * before anything asked after it.  more: another post follows at once, and
 * the last one wakes the instance.  The cell's position (for ss_settle),
 * or -ECONNRESET. */
int64_t ss_post(uint32_t op, uint32_t slot, int64_t a0, int64_t a1, bool more);
/* Waits until the instance has taken every request before position end
 * (ss_post's result + 1), or every one posted so far. */
void ss_settle(uint32_t end);
void ss_settle_all(void);
/* A free slot the instance granted ahead (SS_OP_SOCKET on it, posted), or
 * -1: none left, ask. */
int ss_take_grant(void);
void ss_kick(uint32_t slot);
/* Waits until the socket polls with a bit of events (its rings, not only
 * the instance's word, which lags what this process took), the deadline
 * passes (-ETIMEDOUT; deadline 0: none) or a signal's handler runs
 * (-EINTR; with no deadline, only a handler without SA_RESTART: the
 * kernel restarts the wait after one with it). */
int ss_wait(struct ss_sock *s, short events, uint64_t deadline_ms);
/* Sleeps until the instance's wake sequence moves past seen (read before
 * the caller last looked at the sockets, with app_sleeping raised), at
 * most timeout_ms (-1: forever).  -EINTR on a signal. */
int ss_sleep_since(uint32_t seen, int timeout_ms);
/* True when every signal handler the program installed has SA_RESTART:
 * where the library waits in poll, which no handler restarts, this is how
 * it tells whether the kernel would have restarted the call. */
bool ss_handlers_restart(void);
/* False once the instance is gone (its control connection closed). */
bool ss_instance_alive(void);
uint64_t ss_now_ms(void);
uint64_t ss_now_us(void);
void ss_verbose(const char *fmt, ...);
/* Loopback (127/8) between preloaded programs in the stack: on unless
 * SHARDSOCK_LOOPBACK=0. */
bool ss_loopback_on(void);
/* A socket left to the kernel: said (SHARDSOCK_VERBOSE) and counted. */
void ss_count_fallback(enum ss_fallback reason, const char *why);

static inline struct ss_chan_socket *ss_so(uint32_t slot) { return &ss_ch.r->sock[slot]; }

/* sock.c: calls on descriptors with an ss_sock */
int ss_sock_bind(int fd, struct ss_sock *s, const struct sockaddr *a, socklen_t len);
int ss_sock_listen(int fd, struct ss_sock *s, int backlog);
int ss_sock_accept(int fd, struct ss_sock *s, struct sockaddr *a, socklen_t *len, int flags);
int ss_sock_connect(int fd, struct ss_sock *s, const struct sockaddr *a, socklen_t len);
ssize_t ss_sock_send(int fd, struct ss_sock *s, const struct iovec *iov, int cnt, int flags);
ssize_t ss_sock_recv(int fd, struct ss_sock *s, const struct iovec *iov, int cnt, int flags);
int ss_sock_shutdown(int fd, struct ss_sock *s, int how);
int ss_sock_close(int fd, struct ss_sock *s);
int ss_sock_setsockopt(int fd, struct ss_sock *s, int lvl, int opt, const void *v, socklen_t len);
int ss_sock_getsockopt(int fd, struct ss_sock *s, int lvl, int opt, void *v, socklen_t *len);
int ss_sock_name(int fd, struct ss_sock *s, struct sockaddr *a, socklen_t *len, bool peer);
int ss_sock_fionread(struct ss_sock *s);
/* A listener the process accepts from or polls: in use for good. */
void ss_sock_activate(struct ss_sock *s);
/* A listener joins (+1) or leaves (-1) one of the process's epoll sets. */
void ss_sock_epoll_use(struct ss_sock *s, int delta);
/* Tells the instance whether the process uses the listener (after fork,
 * for the child's own share). */
void ss_sock_tell_use(struct ss_sock *s);
/* A forked child's local listener for the inherited listener s, bound to
 * ip:port with s's options and backlog, on the child's instance; s then
 * names it.  0 or a negative errno. */
int ss_sock_spawn(struct ss_sock *s, uint32_t ip, uint16_t port);
/* The kernel socket is about to serve (a fallback, a wildcard listener's
 * kernel side): it gets the O_NONBLOCK the program set. */
void ss_sock_kernel_mode(int fd, struct ss_sock *s);
/* Poll bits (POLLIN...) of an accelerated socket now. */
short ss_sock_revents(struct ss_sock *s, short events);

/* wait.c */
int ss_poll(struct pollfd *p, nfds_t n, int timeout_ms, const sigset_t *mask);
int ss_select(int n, fd_set *r, fd_set *w, fd_set *e, int timeout_ms, const sigset_t *mask);
int ss_epoll_ctl(int ep, int op, int fd, struct epoll_event *ev);
int ss_epoll_wait(int ep, struct epoll_event *ev, int max, int timeout_ms, const sigset_t *mask);
void ss_epoll_forget(int fd);   /* a descriptor closed: leave every interest list */
void ss_epoll_close(int ep);    /* an epoll descriptor closed */
void ss_epoll_created(int ep);  /* epoll_create made it */
/* A socket registered in epoll sets before bind or connect decided whose
 * it is (nginx adds its upstream sockets, then connects): its entries
 * become the stack's (the kernel registration goes, unless the kernel
 * socket listens too) or stay the kernel's alone. */
void ss_epoll_decided(struct ss_sock *s, bool stack);
/* After a forked child adopted its sockets: their new numbers, and the
 * child's doorbell in its (shared) epoll sets. */
void ss_epoll_after_fork(void);
void ss_poll_after_fork(void); /* the child of a fork: forget the parent's sleeping threads */

#endif
