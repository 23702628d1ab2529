/*
 * libshardsock.so: serves the IPv4 TCP sockets of an unmodified program
 * from a shardsock instance; every other descriptor is the kernel's,
 * untouched (DESIGN.md, The shim).
 *
 * Every hook does three things: make sure the library is set up, look the
 * descriptor up, and either call libc (a kernel descriptor) or the socket's
 * operation (sock.c).  Nothing happens at load time: the channel is made on
 * the first IPv4 stream socket, so a program that opens none pays only the
 * table lookup.  With no instance reachable the program runs on the kernel,
 * and SHARDSOCK_VERBOSE=1 says why.
 *
 * Environment (set by `shardsock run`):
 *   SHARDSOCK_RUN_DIR    the group's run directory, holding instance-K.sock
 *   SHARDSOCK_INSTANCE   which instance to attach to (default 0)
 *   SHARDSOCK_VERBOSE    1: say on stderr why a socket is not accelerated
 */
#include "shim.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#define X(ret, name, params, args) ret(*ss_real_##name) params;
SS_CALLS(X)
#undef X

struct ss_sock *ss_fds[SS_FD_MAX];
struct ss_channel ss_ch = {.lock = PTHREAD_MUTEX_INITIALIZER, .ctl = -1, .app_bell = -1, .inst_bell = -1};
static pthread_mutex_t fd_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- start-up ---- */

static pthread_once_t resolved = PTHREAD_ONCE_INIT;

static void resolve_all(void)
{
    /* dlsym allocates with malloc, which is not intercepted: no recursion */
#define X(ret, name, params, args) ss_real_##name = (ret(*) params)dlsym(RTLD_NEXT, #name);
    SS_CALLS(X)
#undef X
}

void ss_resolve(void) { pthread_once(&resolved, resolve_all); }

/* The library's settings, read once when it is loaded: a program may
 * empty its environment later (nginx keeps only TZ), and its forked
 * workers must still find the instances, and the images it execs the
 * library (ss_exec_env). */
#define SS_SETTINGS(X)                                                                          \
    X(run_dir, 256, "SHARDSOCK_RUN_DIR")                                                        \
    X(instance, 16, "SHARDSOCK_INSTANCE")                                                       \
    X(verbose, 8, "SHARDSOCK_VERBOSE")                                                          \
    X(loopback, 8, "SHARDSOCK_LOOPBACK") /* "0": 127/8 always the kernel's */                  \
    X(pin, 8, "SHARDSOCK_PIN")           /* "0": placement follows the CPU, no pinning */       \
    X(poll_us, 16, "SHARDSOCK_POLL_US")  /* busy-poll this long before sleeping (EF_POLL_USEC) */
static struct {
#define X(field, size, env) char field[size];
    SS_SETTINGS(X)
#undef X
    char path[PATH_MAX]; /* this library's file, for LD_PRELOAD */
} conf;

static void copy_env(char *dst, size_t len, const char *name)
{
    const char *v = getenv(name);
    if (v && strlen(v) < len)
        strcpy(dst, v);
}

static void inherited_at_exec(void);

__attribute__((constructor)) static void load(void)
{
#define X(field, size, env) copy_env(conf.field, sizeof conf.field, env);
    SS_SETTINGS(X)
#undef X
    Dl_info info;
    if (dladdr((void *)load, &info) && info.dli_fname && strlen(info.dli_fname) < sizeof conf.path)
        strcpy(conf.path, info.dli_fname);
    inherited_at_exec();
}

static bool verbose(void) { return conf.verbose[0] && conf.verbose[0] != '0'; }

bool ss_loopback_on(void) { return strcmp(conf.loopback, "0") != 0; }

void ss_verbose(const char *fmt, ...)
{
    if (!verbose())
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t r = REAL(write)(2, buf, (size_t)n);
    (void)r;
}

void ss_count_fallback(enum ss_fallback reason, const char *why)
{
    if (why)
        ss_verbose("shardsock: a socket stays on the kernel: %s", why);
    if (ss_ch.state == SS_CH_ATTACHED)
        ss_request(SS_OP_FALLBACK, 0, reason, 0, NULL, NULL);
}

uint64_t ss_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t ss_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- the channel ---- */

/* A connection to instance k's control socket; -1 when there is none. */
static int control_connect(int k)
{
    const char *dir = conf.run_dir;
    if (!*dir) {
        ss_verbose("shardsock: SHARDSOCK_RUN_DIR is not set; everything runs on the kernel "
                   "(start programs with 'shardsock run -- CMD')");
        return -1;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int n = snprintf(a.sun_path, sizeof a.sun_path, "%s/instance-%d.sock", dir, k);
    if (n < 0 || (size_t)n >= sizeof a.sun_path)
        return -1;
    int fd = REAL(socket)(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (REAL(connect)(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        ss_verbose("shardsock: no instance at %s (%s); everything runs on the kernel", a.sun_path, strerror(errno));
        REAL(close)(fd);
        return -1;
    }
    return fd;
}

/* One request to instance k's control socket and its one-line answer. */
static int control_ask(int k, const char *req, char *rep, size_t len)
{
    int fd = control_connect(k);
    if (fd < 0)
        return -1;
    ssize_t n = -1;
    if (REAL(send)(fd, req, strlen(req), MSG_NOSIGNAL) == (ssize_t)strlen(req))
        n = REAL(recv)(fd, rep, len - 1, 0);
    REAL(close)(fd);
    if (n <= 0)
        return -1;
    rep[n] = 0;
    return 0;
}

static bool placed(void) { return !conf.instance[0]; }

/* The instance a process attaches to (spawn placement, DESIGN.md): the
 * one SHARDSOCK_INSTANCE names; else, pinning, the next in instance 0's
 * round-robin; else (SHARDSOCK_PIN=0) the one on the CPU the process runs
 * on, the round-robin's if none is. */
static int home_instance(void)
{
    if (!placed())
        return atoi(conf.instance);
    char rep[64];
    unsigned k, n;
    if (control_ask(0, "place", rep, sizeof rep) < 0 || sscanf(rep, "place %u %u", &k, &n) != 2)
        return 0;
    if (strcmp(conf.pin, "0") != 0)
        return (int)k;
    int cpu = sched_getcpu();
    for (unsigned i = 0; i < n; i++) {
        int pid, inst, core;
        if (control_ask((int)i, "ping", rep, sizeof rep) == 0 && sscanf(rep, "pong %d %d %d", &pid, &inst, &core) == 3 &&
            core == cpu)
            return (int)i;
    }
    return (int)k;
}

/* A placed process runs on its instance's core. */
static void pin_to_instance(void)
{
    if (!placed() || strcmp(conf.pin, "0") == 0 || ss_ch.r->core < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(ss_ch.r->core, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        ss_verbose("shardsock: cannot run on core %d: %s", ss_ch.r->core, strerror(errno));
}

/* What an attach gives a process: the channel's mapping and descriptors. */
struct chan_map {
    struct ss_chan_region *r;
    uint8_t *base;
    int ctl, app_bell, inst_bell;
};

/* Attaches a channel of instance k into m (m->r NULL when refused). */
static bool attach_map(int k, struct chan_map *m)
{
    m->r = NULL;
    int fd = control_connect(k);
    if (fd < 0)
        return false;
    char msg[64];
    int fds[3] = {-1, -1, -1};
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = msg, .iov_len = sizeof msg - 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    ssize_t got = -1;
    if (REAL(send)(fd, "attach", 6, MSG_NOSIGNAL) == 6)
        got = REAL(recvmsg)(fd, &mh, MSG_CMSG_CLOEXEC);
    struct cmsghdr *cm = got > 0 ? CMSG_FIRSTHDR(&mh) : NULL;
    if (got < 2 || memcmp(msg, "ok", 2) != 0 || !cm || cm->cmsg_type != SCM_RIGHTS ||
        cm->cmsg_len != CMSG_LEN(sizeof fds)) {
        if (got > 0)
            msg[got] = 0;
        ss_verbose("shardsock: the instance refused to attach (%s); everything runs on the kernel",
                   got > 0 ? msg : strerror(errno));
        REAL(close)(fd);
        return false;
    }
    memcpy(fds, CMSG_DATA(cm), sizeof fds);
    void *base = mmap(NULL, SS_CHAN_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    REAL(close)(fds[0]);
    struct ss_chan_region *r = base;
    if (base == MAP_FAILED || r->magic != SS_CHAN_MAGIC || r->version != SS_CHAN_VERSION ||
        r->size != SS_CHAN_SIZE) {
        ss_verbose("shardsock: the instance's channel is of another version; everything runs on the kernel");
        if (base != MAP_FAILED)
            munmap(base, SS_CHAN_SIZE);
        REAL(close)(fds[1]);
        REAL(close)(fds[2]);
        REAL(close)(fd);
        return false;
    }
    *m = (struct chan_map){.r = r, .base = base, .ctl = fd, .app_bell = fds[1], .inst_bell = fds[2]};
    return true;
}

/* Gives a channel back: the instance frees it when its connection closes. */
static void release_map(struct chan_map *m)
{
    if (!m->r)
        return;
    munmap(m->base, SS_CHAN_SIZE);
    REAL(close)(m->ctl);
    REAL(close)(m->app_bell);
    REAL(close)(m->inst_bell);
    m->r = NULL;
}

/* Makes m the process's channel. */
static void use_map(const struct chan_map *m)
{
    ss_ch.base = m->base;
    ss_ch.r = m->r;
    ss_ch.ctl = m->ctl;
    ss_ch.app_bell = m->app_bell;
    ss_ch.inst_bell = m->inst_bell;
    ss_ch.pid = getpid();
    pin_to_instance();
    ss_verbose("shardsock: pid %d attached to instance %u (core %d)", (int)ss_ch.pid, m->r->instance, m->r->core);
}

static bool attach_locked(int k)
{
    struct chan_map m;
    if (!attach_map(k, &m))
        return false;
    use_map(&m);
    return true;
}

bool ss_attach(void)
{
    if (__atomic_load_n(&ss_ch.state, __ATOMIC_ACQUIRE) == SS_CH_INHERITED)
        ss_adopt_inherited();
    if (__atomic_load_n(&ss_ch.state, __ATOMIC_ACQUIRE) != SS_CH_UNTRIED)
        return ss_ch.state == SS_CH_ATTACHED;
    pthread_mutex_lock(&ss_ch.lock);
    if (ss_ch.state == SS_CH_UNTRIED)
        __atomic_store_n(&ss_ch.state, attach_locked(home_instance()) ? SS_CH_ATTACHED : SS_CH_NONE,
                         __ATOMIC_RELEASE);
    pthread_mutex_unlock(&ss_ch.lock);
    return ss_ch.state == SS_CH_ATTACHED;
}

static void wake_instance(void)
{
    if (ss_wake_claim(&ss_ch.r->inst_sleeping)) {
        uint64_t one = 1;
        ssize_t r = REAL(write)(ss_ch.inst_bell, &one, sizeof one);
        (void)r;
    }
}

/* The instance's control connection closes when it dies: then every
 * accelerated call fails instead of waiting forever. */
bool ss_instance_alive(void)
{
    if (ss_ch.state == SS_CH_DEAD)
        return false;
    struct pollfd p = {.fd = ss_ch.ctl, .events = POLLRDHUP};
    if (REAL(poll)(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
        ss_ch.state = SS_CH_DEAD;
        ss_verbose("shardsock: the instance is gone; its sockets fail with ECONNRESET");
        return false;
    }
    return true;
}

/* Sleeps on the wake sequence until the instance bumps it, or timeout.
 *
 * A signal's handler ends the sleep the way it ends the kernel's own
 * socket waits (signal(7)): a call with no SO_RCVTIMEO/SO_SNDTIMEO is
 * restarted when the handler has SA_RESTART and fails with EINTR when it
 * has not; a call with a timeout, and poll/select/epoll, always fail with
 * EINTR.  The kernel makes that choice itself for us: futex_waitv takes an
 * absolute deadline and so is restarted (-ERESTARTSYS) exactly when the
 * handler has SA_RESTART, while FUTEX_WAIT with a timeout never is. */
static int sleep_on_instance(uint32_t seen, int timeout_ms, bool restartable)
{
    struct timespec ts, *tp = NULL;
    long r;
    /* SHARDSOCK_POLL_US (run --profile latency): watch the sequence this
     * long first; the instance's next wake-up then costs no futex wake
     * and no scheduler round trip, at the price of a busy core. */
    long poll_us = atol(conf.poll_us);
    if (poll_us > 0 && timeout_ms != 0) {
        uint64_t end = ss_now_us() + (uint64_t)poll_us;
        for (unsigned i = 0;; i++) {
            if (__atomic_load_n(&ss_ch.r->app_wake_seq, __ATOMIC_ACQUIRE) != seen)
                return 0;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            if ((i & 63) == 63 && ss_now_us() >= end)
                break;
        }
    }
    if (restartable && timeout_ms >= 0) {
        struct futex_waitv w = {.val = seen, .uaddr = (uintptr_t)&ss_ch.r->app_wake_seq, .flags = FUTEX_32};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        r = syscall(SYS_futex_waitv, &w, 1, 0, &ts, CLOCK_MONOTONIC);
    } else {
        if (timeout_ms >= 0) {
            ts.tv_sec = timeout_ms / 1000;
            ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000;
            tp = &ts;
        }
        r = syscall(SYS_futex, &ss_ch.r->app_wake_seq, FUTEX_WAIT, seen, tp, NULL, 0);
    }
    return r < 0 ? -errno : 0;
}

/* Waits until done(arg) says true: spins a little (the instance may be
 * running on another core), then sleeps on the instance's wake sequence,
 * looking now and then whether it is still alive.  False: it died. */
static bool await_instance(bool (*done)(const void *), const void *arg)
{
    struct ss_chan_region *r = ss_ch.r;
    for (int spins = 0;; spins++) {
        if (done(arg))
            return true;
        if (spins < 2000)
            continue;
        uint32_t seen = __atomic_load_n(&r->app_wake_seq, __ATOMIC_ACQUIRE);
        ss_sleeper_enter(&r->app_sleeping);
        if (!done(arg))
            sleep_on_instance(seen, 100, true);
        ss_sleeper_leave(&r->app_sleeping);
        if (!done(arg) && !ss_instance_alive())
            return false;
    }
}

/* done() may be asked again after it said true: claiming must happen once. */
struct claim {
    struct ss_cellq *q;
    void *cells;
    size_t stride;
    uint32_t n;
    uint32_t *pos;
    bool got;
};
static bool claimed(const void *arg)
{
    struct claim *c = (struct claim *)arg;
    return c->got || (c->got = ss_cellq_claim(c->q, c->cells, c->stride, c->n, c->pos));
}

struct answer {
    const struct ss_chan_request *q;
    uint32_t pos;
};
static bool answered(const void *arg)
{
    const struct answer *a = arg;
    return ss_answered(&a->q->done, a->pos);
}

struct passed {
    const struct ss_cellq *q;
    uint32_t pos;
};
static bool passed(const void *arg)
{
    const struct passed *p = arg;
    return ss_cellq_passed(p->q, p->pos);
}

/* A cell of the request ring for this thread, filled and published; its
 * position, or -1 when the instance died before one came free. */
static int64_t put_request(uint32_t op, uint32_t slot, uint32_t flags, int64_t a0, int64_t a1)
{
    struct ss_chan_region *r = ss_ch.r;
    uint32_t pos;
    struct claim c = {&r->reqq, r->req, sizeof r->req[0], SS_CHAN_REQS, &pos, false};
    if (!await_instance(claimed, &c))
        return -1;
    struct ss_chan_request *q = &r->req[pos & (SS_CHAN_REQS - 1)];
    q->op = op;
    q->slot = slot;
    q->flags = flags;
    q->a0 = a0;
    q->a1 = a1;
    q->tx_mark = slot < SS_CHAN_SOCKETS ? __atomic_load_n(&r->sock[slot].tx.head, __ATOMIC_RELAXED) : 0;
    ss_cellq_publish(r->req, sizeof r->req[0], SS_CHAN_REQS, pos);
    return pos;
}

static int request(uint32_t op, uint32_t slot, int64_t a0, int64_t a1, int64_t *o0, int64_t *o1, void *info,
                   size_t info_len)
{
    if (ss_ch.state != SS_CH_ATTACHED)
        return -ECONNRESET;
    int64_t pos = put_request(op, slot, 0, a0, a1);
    if (pos < 0)
        return -ECONNRESET;
    wake_instance();
    struct ss_chan_request *q = &ss_ch.r->req[pos & (SS_CHAN_REQS - 1)];
    struct answer a = {q, (uint32_t)pos};
    if (!await_instance(answered, &a))
        return -ECONNRESET; /* the cell stays taken: nothing will answer it */
    int res = q->result;
    if (o0)
        *o0 = q->r0;
    if (o1)
        *o1 = q->r1;
    if (info)
        memcpy(info, q->info, info_len < sizeof q->info ? info_len : sizeof q->info);
    ss_cellq_free(ss_ch.r->req, sizeof q[0], SS_CHAN_REQS, (uint32_t)pos);
    return res;
}

int ss_request(uint32_t op, uint32_t slot, int64_t a0, int64_t a1, int64_t *o0, int64_t *o1)
{
    return request(op, slot, a0, a1, o0, o1, NULL, 0);
}

int ss_request_info(uint32_t slot, struct ss_tcp_info *ti)
{
    return request(SS_OP_INFO, slot, 0, 0, NULL, NULL, ti, sizeof *ti);
}

int64_t ss_post(uint32_t op, uint32_t slot, int64_t a0, int64_t a1, bool more)
{
    if (ss_ch.state != SS_CH_ATTACHED)
        return -ECONNRESET;
    int64_t pos = put_request(op, slot, SS_REQ_POSTED, a0, a1);
    if (pos < 0)
        return -ECONNRESET;
    if (!more)
        wake_instance();
    return pos;
}

void ss_settle(uint32_t end)
{
    if (ss_ch.state != SS_CH_ATTACHED)
        return;
    struct passed p = {&ss_ch.r->reqq, end};
    await_instance(passed, &p);
}

void ss_settle_all(void)
{
    if (ss_ch.state == SS_CH_ATTACHED)
        ss_settle(__atomic_load_n(&ss_ch.r->reqq.head, __ATOMIC_ACQUIRE));
}

int ss_take_grant(void)
{
    uint32_t k;
    if (ss_ch.state != SS_CH_ATTACHED || !ss_idxq_take(&ss_ch.r->grantq, ss_ch.r->grants, SS_CHAN_GRANTS, &k) ||
        k >= SS_CHAN_SOCKETS)
        return -1;
    return (int)k;
}

void ss_kick(uint32_t slot)
{
    struct ss_chan_socket *so = ss_so(slot);
    if (__atomic_exchange_n(&so->kicked, 1, __ATOMIC_ACQ_REL))
        return; /* one is waiting already */
    struct ss_chan_region *r = ss_ch.r;
    uint32_t pos;
    /* never full (one kick per socket, and more cells than sockets), but
     * the instance may be slow to free the cells */
    struct claim c = {&r->kickq, r->kicks, sizeof r->kicks[0], SS_CHAN_KICKS, &pos, false};
    if (!await_instance(claimed, &c))
        return;
    r->kicks[pos & (SS_CHAN_KICKS - 1)].slot = slot;
    ss_cellq_publish(r->kicks, sizeof r->kicks[0], SS_CHAN_KICKS, pos);
    wake_instance();
}

int ss_wait(struct ss_sock *s, short events, uint64_t deadline_ms)
{
    struct ss_chan_region *r = ss_ch.r;
    for (int spins = 0;; spins++) {
        if (ss_sock_revents(s, events))
            return 0;
        if (spins < 2000)
            continue;
        uint64_t now = ss_now_ms();
        if (deadline_ms && now >= deadline_ms)
            return -ETIMEDOUT;
        /* Slices, to see a dead instance within a second.  A signal
         * that lands between two slices rather than in one is taken as
         * restarted: slices are long so that this window stays small. */
        int slice = 1000;
        if (deadline_ms && deadline_ms - now < (uint64_t)slice)
            slice = (int)(deadline_ms - now);
        uint32_t seen = __atomic_load_n(&r->app_wake_seq, __ATOMIC_ACQUIRE);
        ss_sleeper_enter(&r->app_sleeping);
        int e = 0;
        if (!ss_sock_revents(s, events))
            e = sleep_on_instance(seen, slice, deadline_ms == 0);
        ss_sleeper_leave(&r->app_sleeping);
        if (e == -EINTR)
            return -EINTR;
        if (!ss_instance_alive())
            return -ECONNRESET;
    }
}

bool ss_handlers_restart(void)
{
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) != 0)
            continue; /* glibc's own signals */
        bool caught = (sa.sa_flags & SA_SIGINFO) || (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN);
        if (caught && !(sa.sa_flags & SA_RESTART))
            return false;
    }
    return true;
}

int ss_sleep_since(uint32_t seen, int timeout_ms) { return sleep_on_instance(seen, timeout_ms, false); }

/* ---- the descriptor table ---- */

static void fd_set_sock(int fd, struct ss_sock *s)
{
    if (fd >= 0 && fd < SS_FD_MAX)
        __atomic_store_n(&ss_fds[fd], s, __ATOMIC_RELEASE);
}

/* The descriptor leaves the table; its socket closes with its last holder. */
static void fd_drop(int fd)
{
    pthread_mutex_lock(&fd_lock);
    struct ss_sock *s = ss_lookup(fd);
    fd_set_sock(fd, NULL);
    bool last = s && --s->refs == 0;
    pthread_mutex_unlock(&fd_lock);
    if (s) {
        ss_epoll_forget(fd);
        if (last) {
            ss_sock_close(fd, s);
            ss_placeholder_free(s);
            free(s);
        }
    }
}

static void fd_share(int from, int to)
{
    pthread_mutex_lock(&fd_lock);
    struct ss_sock *s = ss_lookup(from);
    if (s)
        s->refs++;
    pthread_mutex_unlock(&fd_lock);
    if (ss_lookup(to))
        fd_drop(to);
    fd_set_sock(to, s);
}

/* ---- hooks ---- */

static int hook_socket(int domain, int type, int protocol)
{
    int fd = REAL(socket)(domain, type, protocol);
    int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    /* IPv4 stream sockets, and IPv6 ones, which reach IPv4 through mapped
     * addresses (a dual-stack wildcard listener, as Python's http.server
     * makes); what they do with real IPv6 stays the kernel's. */
    if (fd < 0 || (domain != AF_INET && domain != AF_INET6) || base != SOCK_STREAM ||
        (protocol != 0 && protocol != IPPROTO_TCP)) {
        if (fd >= 0 && ss_ch.state == SS_CH_ATTACHED)
            ss_count_fallback(SS_FB_NOT_TCP, NULL);
        return fd;
    }
    if (fd >= SS_FD_MAX || !ss_attach()) {
        if (fd >= SS_FD_MAX)
            ss_count_fallback(SS_FB_FD_TABLE, "descriptor number beyond the table");
        return fd;
    }
    /* Undecided until bind or connect says where it goes. */
    struct ss_sock *s = calloc(1, sizeof *s);
    if (!s)
        return fd;
    s->refs = 1;
    s->nonblock = s->kernel_nb = (type & SOCK_NONBLOCK) != 0;
    s->fl_known = true; /* a new socket's flags: O_RDWR, and O_NONBLOCK as asked */
    s->v6 = domain == AF_INET6;
    fd_set_sock(fd, s);
    return fd;
}

static int hook_socketpair(int domain, int type, int protocol, int sv[2])
{
    int r = REAL(socketpair)(domain, type, protocol, sv); /* AF_UNIX only on Linux: the kernel's */
    if (r == 0 && ss_ch.state == SS_CH_ATTACHED)
        ss_count_fallback(SS_FB_NOT_TCP, NULL);
    return r;
}

static int hook_bind(int fd, const struct sockaddr *a, socklen_t len)
{
    struct ss_sock *s = ss_lookup(fd);
    return s ? ss_sock_bind(fd, s, a, len) : REAL(bind)(fd, a, len);
}

static int hook_listen(int fd, int backlog)
{
    struct ss_sock *s = ss_lookup(fd);
    return s && s->stack ? ss_sock_listen(fd, s, backlog) : REAL(listen)(fd, backlog);
}

static int hook_accept4(int fd, struct sockaddr *a, socklen_t *len, int flags)
{
    struct ss_sock *s = ss_lookup(fd);
    return s && s->stack ? ss_sock_accept(fd, s, a, len, flags) : REAL(accept4)(fd, a, len, flags);
}

static int hook_accept(int fd, struct sockaddr *a, socklen_t *len) { return hook_accept4(fd, a, len, 0); }

static int hook_connect(int fd, const struct sockaddr *a, socklen_t len)
{
    struct ss_sock *s = ss_lookup(fd);
    return s ? ss_sock_connect(fd, s, a, len) : REAL(connect)(fd, a, len);
}

/* The descriptor is about to close (close, close_range, or dup2 onto it). */
static void fd_closing(int fd)
{
    ss_placeholder_forget(fd);
    if (ss_lookup(fd))
        fd_drop(fd);
    else
        ss_epoll_close(fd);
}

static int hook_close(int fd)
{
    fd_closing(fd);
    return REAL(close)(fd);
}

static int hook_close_range(unsigned first, unsigned last, int flags)
{
    if (!(flags & CLOSE_RANGE_CLOEXEC))
        for (unsigned fd = first; fd <= last && fd < SS_FD_MAX; fd++)
            fd_closing((int)fd);
    return REAL(close_range)(first, last, flags);
}

static int hook_shutdown(int fd, int how)
{
    struct ss_sock *s = ss_lookup(fd);
    return s && s->stack ? ss_sock_shutdown(fd, s, how) : REAL(shutdown)(fd, how);
}

static ssize_t hook_read(int fd, void *buf, size_t n)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(read)(fd, buf, n);
    struct iovec v = {buf, n};
    return ss_sock_recv(fd, s, &v, 1, 0);
}

static ssize_t hook_readv(int fd, const struct iovec *iov, int cnt)
{
    struct ss_sock *s = ss_lookup(fd);
    return s && s->stack ? ss_sock_recv(fd, s, iov, cnt, 0) : REAL(readv)(fd, iov, cnt);
}

static ssize_t hook_write(int fd, const void *buf, size_t n)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(write)(fd, buf, n);
    struct iovec v = {(void *)buf, n};
    return ss_sock_send(fd, s, &v, 1, 0);
}

static ssize_t hook_writev(int fd, const struct iovec *iov, int cnt)
{
    struct ss_sock *s = ss_lookup(fd);
    return s && s->stack ? ss_sock_send(fd, s, iov, cnt, 0) : REAL(writev)(fd, iov, cnt);
}

static ssize_t hook_recv(int fd, void *buf, size_t n, int flags)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(recv)(fd, buf, n, flags);
    struct iovec v = {buf, n};
    return ss_sock_recv(fd, s, &v, 1, flags);
}

static ssize_t hook_recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *a, socklen_t *len)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(recvfrom)(fd, buf, n, flags, a, len);
    struct iovec v = {buf, n};
    ssize_t r = ss_sock_recv(fd, s, &v, 1, flags);
    if (r >= 0 && a && len)
        *len = 0; /* a connected stream: no address, as on Linux */
    return r;
}

static ssize_t hook_recvmsg(int fd, struct msghdr *m, int flags)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(recvmsg)(fd, m, flags);
    ssize_t r = ss_sock_recv(fd, s, m->msg_iov, (int)m->msg_iovlen, flags);
    if (r >= 0) {
        m->msg_namelen = 0;
        m->msg_controllen = 0;
        m->msg_flags = 0;
    }
    return r;
}

static int hook_recvmmsg(int fd, struct mmsghdr *v, unsigned n, int flags, struct timespec *t)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(recvmmsg)(fd, v, n, flags, t);
    unsigned i = 0;
    for (; i < n; i++) {
        ssize_t r = hook_recvmsg(fd, &v[i].msg_hdr, i ? flags | MSG_DONTWAIT : flags);
        if (r < 0)
            return i ? (int)i : -1;
        v[i].msg_len = (unsigned)r;
        if (r == 0)
            return (int)i + 1;
    }
    return (int)i;
}

static ssize_t hook_send(int fd, const void *buf, size_t n, int flags)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(send)(fd, buf, n, flags);
    struct iovec v = {(void *)buf, n};
    return ss_sock_send(fd, s, &v, 1, flags);
}

static ssize_t hook_sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *a, socklen_t len)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(sendto)(fd, buf, n, flags, a, len);
    if (a && len && !s->listening) {
        /* A connected stream ignores the address unless it is unconnected:
         * then Linux answers EPIPE for a stream that never connected. */
        if (!(ss_so(s->slot)->ready & SS_CHAN_EV_CONNECTED) && !s->connecting) {
            errno = EPIPE;
            return -1;
        }
    }
    struct iovec v = {(void *)buf, n};
    return ss_sock_send(fd, s, &v, 1, flags);
}

static ssize_t hook_sendmsg(int fd, const struct msghdr *m, int flags)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(sendmsg)(fd, m, flags);
    return ss_sock_send(fd, s, m->msg_iov, (int)m->msg_iovlen, flags);
}

static int hook_sendmmsg(int fd, struct mmsghdr *v, unsigned n, int flags)
{
    struct ss_sock *s = ss_lookup(fd);
    if (!s || !s->stack)
        return REAL(sendmmsg)(fd, v, n, flags);
    unsigned i = 0;
    for (; i < n; i++) {
        ssize_t r = hook_sendmsg(fd, &v[i].msg_hdr, flags);
        if (r < 0)
            return i ? (int)i : -1;
        v[i].msg_len = (unsigned)r;
    }
    return (int)i;
}

/* sendfile to an accelerated socket: read the file, send the bytes. */
static ssize_t file_to_sock(int out, struct ss_sock *s, int in, off64_t *off, size_t n)
{
    char buf[65536];
    size_t done = 0;
    while (done < n) {
        size_t want = n - done < sizeof buf ? n - done : sizeof buf;
        ssize_t r = off ? pread64(in, buf, want, *off) : REAL(read)(in, buf, want);
        if (r <= 0) {
            if (r < 0 && !done)
                return -1;
            break;
        }
        struct iovec v = {buf, (size_t)r};
        ssize_t w = ss_sock_send(out, s, &v, 1, done ? MSG_DONTWAIT : 0);
        if (w < 0) {
            if (!done)
                return -1;
            break;
        }
        if (!off && w < r)
            lseek(in, w - r, SEEK_CUR); /* give back what did not fit */
        done += (size_t)w;
        if (off)
            *off += w;
        if (w < r)
            break;
    }
    return (ssize_t)done;
}

static ssize_t hook_sendfile(int out, int in, off_t *off, size_t n)
{
    struct ss_sock *s = ss_lookup(out);
    if (!s || !s->stack)
        return REAL(sendfile)(out, in, off, n);
    off64_t o = off ? *off : 0;
    ssize_t r = file_to_sock(out, s, in, off ? &o : NULL, n);
    if (off)
        *off = (off_t)o;
    return r;
}

static ssize_t hook_sendfile64(int out, int in, off64_t *off, size_t n)
{
    struct ss_sock *s = ss_lookup(out);
    return s && s->stack ? file_to_sock(out, s, in, off, n) : REAL(sendfile64)(out, in, off, n);
}

static ssize_t hook_splice(int in, off64_t *ioff, int out, off64_t *ooff, size_t n, unsigned flags)
{
    struct ss_sock *a = ss_lookup(in), *b = ss_lookup(out);
    if ((a && a->stack) || (b && b->stack)) {
        errno = EINVAL; /* as for a socket type splice cannot serve */
        return -1;
    }
    return REAL(splice)(in, ioff, out, ooff, n, flags);
}

static int hook_getsockopt(int fd, int lvl, int opt, void *v, socklen_t *len)
{
    struct ss_sock *s = ss_lookup(fd);
    return s && s->stack ? ss_sock_getsockopt(fd, s, lvl, opt, v, len) : REAL(getsockopt)(fd, lvl, opt, v, len);
}

static int hook_setsockopt(int fd, int lvl, int opt, const void *v, socklen_t len)
{
    struct ss_sock *s = ss_lookup(fd);
    return s ? ss_sock_setsockopt(fd, s, lvl, opt, v, len) : REAL(setsockopt)(fd, lvl, opt, v, len);
}

static int hook_getsockname(int fd, struct sockaddr *a, socklen_t *len)
{
    struct ss_sock *s = ss_lookup(fd);
    return s && s->stack ? ss_sock_name(fd, s, a, len, false) : REAL(getsockname)(fd, a, len);
}

static int hook_getpeername(int fd, struct sockaddr *a, socklen_t *len)
{
    struct ss_sock *s = ss_lookup(fd);
    return s && s->stack ? ss_sock_name(fd, s, a, len, true) : REAL(getpeername)(fd, a, len);
}

/* Flags F_SETFL changes on a socket (fcntl(2); the access mode is fixed). */
#define SETFL_MASK (O_APPEND | O_ASYNC | O_DIRECT | O_NOATIME | O_NONBLOCK)

static int fcntl_common(int (*real)(int, int, long), int fd, int cmd, long arg)
{
    struct ss_sock *s = ss_lookup(fd);
    /* A program's switch to non-blocking mode (wrk: F_GETFL, then F_SETFL
     * per connection) is the library's alone while the stack serves: two
     * system calls fewer per connection.  The kernel socket gets it when it
     * serves (ss_sock_kernel_mode). */
    if (s && s->fl_known && !s->shared) {
        if (cmd == F_GETFL)
            return O_RDWR | s->fl_other | (s->nonblock ? O_NONBLOCK : 0);
        if (cmd == F_SETFL && ((int)arg & SETFL_MASK & ~O_NONBLOCK) == s->fl_other) {
            s->nonblock = (arg & O_NONBLOCK) != 0;
            if (s->kernel_too)
                ss_sock_kernel_mode(fd, s); /* its kernel side serves host clients */
            return 0;
        }
    }
    int r = real(fd, cmd, arg);
    if (r >= 0 && s && s->fl_known && cmd == F_SETFL) {
        s->fl_other = (int)arg & SETFL_MASK & ~O_NONBLOCK;
        s->kernel_nb = (arg & O_NONBLOCK) != 0;
    }
    if (r < 0 || !s)
        return r;
    switch (cmd) {
    case F_GETFL:
        /* a shared placeholder's file-status flags are everyone's: the
         * socket's own mode is the library's */
        if (s->shared)
            r = (r & ~O_NONBLOCK) | (s->nonblock ? O_NONBLOCK : 0);
        break;
    case F_SETFL:
        s->nonblock = (arg & O_NONBLOCK) != 0;
        break;
    case F_DUPFD:
    case F_DUPFD_CLOEXEC:
        fd_share(fd, r);
        break;
    default:
        break;
    }
    return r;
}

static int hook_fcntl(int fd, int cmd, long arg) { return fcntl_common(REAL(fcntl), fd, cmd, arg); }
static int hook_fcntl64(int fd, int cmd, long arg) { return fcntl_common(REAL(fcntl64), fd, cmd, arg); }

static int hook_ioctl(int fd, unsigned long req, long arg)
{
    struct ss_sock *s = ss_lookup(fd);
    if (s && req == FIONBIO) {
        /* undecided sockets too: the mode must survive the decision */
        int r = REAL(ioctl)(fd, req, arg);
        if (r == 0)
            s->nonblock = s->kernel_nb = *(int *)arg != 0;
        return r;
    }
    if (!s || !s->stack)
        return REAL(ioctl)(fd, req, arg);
    switch (req) {
    case FIONREAD: /* also SIOCINQ */
        if (s->listening) {
            errno = EINVAL;
            return -1;
        }
        *(int *)arg = ss_sock_fionread(s);
        return 0;
    case TIOCOUTQ: { /* SIOCOUTQ: bytes not yet acknowledged, ours included */
        int64_t v = 0;
        struct ss_chan_socket *so = ss_so(s->slot);
        uint32_t ring = so->tx.head - so->tx.tail;
        struct ss_tcp_info ti;
        if (ss_request_info(s->slot, &ti) == 0)
            v = ti.snd_queued;
        *(int *)arg = (int)(v + ring);
        return 0;
    }
    default:
        return REAL(ioctl)(fd, req, arg);
    }
}

static int hook_dup(int fd)
{
    int r = REAL(dup)(fd);
    if (r >= 0 && ss_lookup(fd))
        fd_share(fd, r);
    return r;
}

/* dup2 and dup3 close their target only when the source is open */
static bool fcntl_ok(int fd) { return REAL(fcntl)(fd, F_GETFD, 0) >= 0; }

static int hook_dup3(int fd, int to, int flags)
{
    if (fd != to && fcntl_ok(fd))
        fd_closing(to);
    int r = REAL(dup3)(fd, to, flags);
    if (r >= 0 && ss_lookup(fd))
        fd_share(fd, r);
    return r;
}

static int hook_dup2(int fd, int to)
{
    if (fd == to)
        return REAL(dup2)(fd, to);
    if (fcntl_ok(fd))
        fd_closing(to);
    int r = REAL(dup2)(fd, to);
    if (r >= 0 && ss_lookup(fd))
        fd_share(fd, r);
    return r;
}

static int ts_ms(const struct timespec *t)
{
    if (!t)
        return -1;
    int64_t ms = (int64_t)t->tv_sec * 1000 + (t->tv_nsec + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

static int hook_poll(struct pollfd *p, nfds_t n, int timeout) { return ss_poll(p, n, timeout, NULL); }

static int hook_ppoll(struct pollfd *p, nfds_t n, const struct timespec *t, const sigset_t *m)
{
    return ss_poll(p, n, ts_ms(t), m);
}

static int hook_select(int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *t)
{
    int ms = -1;
    if (t)
        ms = (int)((int64_t)t->tv_sec * 1000 + (t->tv_usec + 999) / 1000);
    return ss_select(n, r, w, e, ms, NULL);
}

static int hook_pselect(int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *t, const sigset_t *m)
{
    return ss_select(n, r, w, e, ts_ms(t), m);
}

static int hook_epoll_create(int size)
{
    int ep = REAL(epoll_create)(size);
    ss_epoll_created(ep);
    return ep;
}

static int hook_epoll_create1(int flags)
{
    int ep = REAL(epoll_create1)(flags);
    ss_epoll_created(ep);
    return ep;
}
static int hook_epoll_ctl(int ep, int op, int fd, struct epoll_event *ev) { return ss_epoll_ctl(ep, op, fd, ev); }

static int hook_epoll_wait(int ep, struct epoll_event *ev, int max, int timeout)
{
    return ss_epoll_wait(ep, ev, max, timeout, NULL);
}

static int hook_epoll_pwait(int ep, struct epoll_event *ev, int max, int timeout, const sigset_t *m)
{
    return ss_epoll_wait(ep, ev, max, timeout, m);
}

static int hook_epoll_pwait2(int ep, struct epoll_event *ev, int max, const struct timespec *t, const sigset_t *m)
{
    return ss_epoll_wait(ep, ev, max, ts_ms(t), m);
}

/* fork: the child must not speak on its parent's channel (one mailbox per
 * process).  It attaches a channel of its own and adopts every socket it
 * inherited (SS_OP_ADOPT) before fork returns in it: a child may give up
 * its privileges next (nginx's workers become www-data), after which the
 * instance's control socket would refuse it.  Each socket then closes with
 * its last holder. */
static struct {
    struct chan_map m;
    int ticket;    /* keeps the parent's sockets for the child until it adopted them */
} parent;
static pthread_mutex_t adopt_lock = PTHREAD_MUTEX_INITIALIZER;

/* --no-pin (SHARDSOCK_PIN=0): a child that inherited only listeners goes
 * to the instance of the core it runs on when it first uses them, and
 * the program often chooses that core after fork, once it gave up its
 * privileges (nginx's worker_cpu_affinity).  So it attaches a channel of
 * every instance at fork, while the control sockets still let it, keeps
 * the one of its core at first use and gives the others back. */
enum { SS_STANDBY_MAX = 64 };
static struct {
    struct chan_map m[SS_STANDBY_MAX];
    int n;        /* instances in the group (0: no standby channels) */
    int fallback; /* the round-robin's instance, for a core without one */
} standby;

static bool inherited_only_listeners(void)
{
    bool any = false;
    for (int fd = 0; fd < SS_FD_MAX; fd++) {
        struct ss_sock *s = ss_fds[fd];
        if (s && s->stack) {
            if (!s->listening)
                return false;
            any = true;
        }
    }
    return any;
}

static void attach_standby(void)
{
    char rep[64];
    unsigned k, n;
    if (control_ask(0, "place", rep, sizeof rep) < 0 || sscanf(rep, "place %u %u", &k, &n) != 2 || n < 2 ||
        n > SS_STANDBY_MAX)
        return;
    standby.fallback = (int)k;
    standby.n = (int)n;
    for (int i = 0; i < standby.n; i++)
        attach_map(i, &standby.m[i]);
}

/* The standby channel of the core the process runs on now, the others
 * given back; -1 if it has none. */
static int take_standby(void)
{
    int cpu = sched_getcpu(), home = -1;
    for (int i = 0; i < standby.n; i++)
        if (standby.m[i].r && standby.m[i].r->core == cpu)
            home = i;
    if (home < 0 && standby.fallback < standby.n && standby.m[standby.fallback].r)
        home = standby.fallback;
    for (int i = 0; home < 0 && i < standby.n; i++)
        if (standby.m[i].r)
            home = i;
    for (int i = 0; i < standby.n; i++)
        if (i != home)
            release_map(&standby.m[i]);
    if (home >= 0)
        use_map(&standby.m[home]);
    standby.n = 0;
    return home;
}

/* Asks the instance to keep the channel's sockets alive while the
 * returned connection is open, whatever the parent closes meanwhile:
 * those of slots (" SLOT SLOT..."), or all (NULL). */
static int fork_ticket(const char *slots)
{
    /* the instance pins the sockets it has: those whose making is still
     * on the request ring must be made first */
    ss_settle_all();
    int fd = control_connect((int)ss_ch.r->instance);
    if (fd < 0)
        return -1;
    char req[8192], rep[16];
    int n = snprintf(req, sizeof req, "fork %u %llu%s", ss_ch.r->channel, (unsigned long long)ss_ch.r->token,
                     slots ? slots : "");
    if (n >= (int)sizeof req)
        n = snprintf(req, sizeof req, "fork %u %llu", ss_ch.r->channel, (unsigned long long)ss_ch.r->token);
    if (REAL(send)(fd, req, (size_t)n, MSG_NOSIGNAL) != n || REAL(recv)(fd, rep, sizeof rep, 0) < 2 ||
        memcmp(rep, "ok", 2) != 0) {
        REAL(close)(fd);
        return -1;
    }
    return fd;
}

static pid_t hook_fork(void)
{
    if (ss_ch.state == SS_CH_INHERITED)
        ss_adopt_inherited(); /* a child's child adopts from its own parent */
    int ticket = ss_ch.state == SS_CH_ATTACHED ? fork_ticket(NULL) : -1;
    pid_t p = REAL(fork)();
    if (p != 0) {
        if (ticket >= 0)
            REAL(close)(ticket); /* the child's copy holds it */
        return p;
    }
    ss_poll_after_fork();
    if (ss_ch.state != SS_CH_ATTACHED)
        return 0;
    parent.ticket = ticket;
    /* the child: one thread, locks as the fork found them */
    pthread_mutex_init(&ss_ch.lock, NULL);
    pthread_mutex_init(&fd_lock, NULL);
    pthread_mutex_init(&adopt_lock, NULL);
    parent.m = (struct chan_map){
        .r = ss_ch.r, .base = ss_ch.base, .ctl = ss_ch.ctl, .app_bell = ss_ch.app_bell, .inst_bell = ss_ch.inst_bell};
    __atomic_store_n(&ss_ch.state, SS_CH_INHERITED, __ATOMIC_RELEASE);
    int e = errno;
    if (placed() && strcmp(conf.pin, "0") == 0 && inherited_only_listeners())
        attach_standby();
    if (!standby.n)
        ss_adopt_inherited();
    errno = e;
    return 0;
}

/* exec: the new image's library finds the accelerated sockets that
 * survive exec (no FD_CLOEXEC) in SHARDSOCK_INHERIT, written by the old
 * image's exec hook: "TICKET INSTANCE CHAN TOKEN FD:SLOT:FLAGS:RCVTIMEO:SNDTIMEO ...".
 * The ticket, a fork ticket whose descriptor survives exec too, keeps the
 * sockets in the instance after the old image's channel closes, until the
 * new image adopted them, at its first socket call. */
#define SS_INHERIT_ENV "SHARDSOCK_INHERIT"
enum { INH_NONBLOCK = 1, INH_LISTENING = 2, INH_KERNEL_TOO = 4, INH_CONNECTING = 8, INH_WR_SHUT = 16, INH_V6 = 32,
       INH_SHARED = 64 };
struct inherited {
    int fd;
    uint32_t slot, flags;
    long long rcvtimeo_ms, sndtimeo_ms;
};
static struct {
    int ticket;
    uint32_t instance, chan;
    uint64_t token;
    int n;
    struct inherited *e;
} exec_from = {.ticket = -1};

static void inherited_at_exec(void)
{
    const char *v = getenv(SS_INHERIT_ENV);
    if (!v)
        return;
    unsigned long long token;
    int used = 0;
    if (sscanf(v, "%d %u %u %llu%n", &exec_from.ticket, &exec_from.instance, &exec_from.chan, &token, &used) == 4) {
        exec_from.token = token;
        size_t cap = 0;
        for (const char *p = v + used; (p = strchr(p, ':')); p++)
            cap++;
        exec_from.e = calloc(cap / 4 + 1, sizeof *exec_from.e);
        const char *p = v + used;
        struct inherited in;
        int k;
        while (exec_from.e && sscanf(p, " %d:%u:%u:%lld:%lld%n", &in.fd, &in.slot, &in.flags, &in.rcvtimeo_ms,
                                     &in.sndtimeo_ms, &k) == 5) {
            if (in.fd >= 0 && in.fd < SS_FD_MAX && (size_t)exec_from.n < cap / 4 + 1)
                exec_from.e[exec_from.n++] = in;
            p += k;
        }
        if (exec_from.n)
            ss_ch.state = SS_CH_INHERITED;
    }
    if (ss_ch.state != SS_CH_INHERITED && exec_from.ticket >= 0) {
        REAL(close)(exec_from.ticket);
        exec_from.ticket = -1;
    }
    unsetenv(SS_INHERIT_ENV); /* this image's children learn it from this image */
}

/* Adopts what an exec left: a socket per distinct slot, shared by the
 * descriptors that named it. */
static void adopt_after_exec(bool ok)
{
    for (int i = 0; i < exec_from.n; i++) {
        struct inherited *in = &exec_from.e[i];
        struct stat st;
        if (!ok || fstat(in->fd, &st) < 0 || !S_ISSOCK(st.st_mode))
            continue;
        struct ss_sock *s = NULL;
        for (int j = 0; j < i && !s; j++)
            if (exec_from.e[j].slot == in->slot && exec_from.e[j].fd != in->fd)
                s = ss_fds[exec_from.e[j].fd];
        if (s) {
            s->refs++;
            fd_set_sock(in->fd, s);
            continue;
        }
        int slot = ss_request(SS_OP_ADOPT, 0, (int64_t)((uint64_t)exec_from.chan << 32 | in->slot),
                              (int64_t)exec_from.token, NULL, NULL);
        if (slot < 0 || !(s = calloc(1, sizeof *s))) {
            ss_verbose("shardsock: descriptor %d, inherited across exec, stays the kernel's: %s", in->fd,
                       strerror(slot < 0 ? -slot : ENOMEM));
            continue;
        }
        *s = (struct ss_sock){.refs = 1, .stack = true, .slot = (uint32_t)slot,
                              .nonblock = in->flags & INH_NONBLOCK, .listening = in->flags & INH_LISTENING,
                              .kernel_too = in->flags & INH_KERNEL_TOO, .connecting = in->flags & INH_CONNECTING,
                              .wr_shut = in->flags & INH_WR_SHUT, .v6 = in->flags & INH_V6,
                              .shared = in->flags & INH_SHARED,
                              .rcvtimeo_ms = in->rcvtimeo_ms, .sndtimeo_ms = in->sndtimeo_ms};
        fd_set_sock(in->fd, s);
    }
    free(exec_from.e);
    exec_from.e = NULL;
    exec_from.n = 0;
    REAL(close)(exec_from.ticket);
    exec_from.ticket = -1;
}

/* The parent's channel, as the fork left it in the child: gone now. */
static void drop_parent_channel(void)
{
    release_map(&parent.m);
    if (parent.ticket >= 0)
        REAL(close)(parent.ticket); /* adopted: the parent's closes are its own again */
}

/* A forked child takes its share of what it inherited.  Listen spawn
 * (DESIGN.md): a child that inherited only listening sockets is placed
 * like any process, on its own instance, and makes a local listener there
 * for each (one on its parent's instance shares the parent's); a child
 * that inherited connections stays on its parent's instance, which holds
 * them; one that inherited nothing attaches when it first needs to. */
static void adopt_after_fork(void)
{
    bool any = false, conns = false;
    for (int fd = 0; fd < SS_FD_MAX; fd++) {
        struct ss_sock *s = ss_fds[fd];
        if (s && s->stack) {
            any = true;
            conns |= !s->listening;
        }
    }
    if (!any) {
        drop_parent_channel();
        __atomic_store_n(&ss_ch.state, SS_CH_UNTRIED, __ATOMIC_RELEASE);
        return;
    }
    int from_inst = (int)parent.m.r->instance;
    int home;
    bool ok;
    pthread_mutex_lock(&ss_ch.lock);
    if (standby.n) {
        home = take_standby();
        ok = home >= 0;
    } else {
        home = conns ? from_inst : home_instance();
        ok = attach_locked(home);
    }
    pthread_mutex_unlock(&ss_ch.lock);
    __atomic_store_n(&ss_ch.state, ok ? SS_CH_ATTACHED : SS_CH_DEAD, __ATOMIC_RELEASE);
    uint64_t from = (uint64_t)parent.m.r->channel << 32, token = parent.m.r->token;
    /* each socket once, whatever number of descriptors share it */
    static const uint32_t moved = 0x80000000u;
    for (int fd = 0; ok && fd < SS_FD_MAX; fd++) {
        struct ss_sock *s = ss_fds[fd];
        if (!s || !s->stack || (s->slot & moved))
            continue;
        int slot;
        if (home == from_inst) {
            slot = ss_request(SS_OP_ADOPT, 0, (int64_t)(from | s->slot), (int64_t)token, NULL, NULL);
        } else {
            struct ss_chan_socket *so = &parent.m.r->sock[s->slot];
            slot = ss_sock_spawn(s, so->local_ip, so->local_port);
            slot = slot < 0 ? slot : (int)s->slot;
        }
        if (slot < 0) {
            ss_verbose("shardsock: a forked child could not take its share of a socket: %s", strerror(-slot));
            s->stack = false; /* its kernel socket answers from now on */
            ss_sock_kernel_mode(fd, s);
            continue;
        }
        s->slot = (uint32_t)slot | moved;
    }
    for (int fd = 0; fd < SS_FD_MAX; fd++) {
        struct ss_sock *s = ss_fds[fd];
        if (s && (s->slot & moved)) {
            s->slot &= ~moved;
            /* The child's share is in use once the child accepts or waits
             * on it (or through the epoll sets it inherited): a handler
             * child of a forking server, which never accepts, must not
             * count as a second acceptor (the instance would take back
             * the parent's connections accepted ahead). */
            s->accepts = false;
            ss_sock_tell_use(s);
        }
    }
    drop_parent_channel();
    if (ok)
        ss_epoll_after_fork();
}

void ss_adopt_inherited(void)
{
    pthread_mutex_lock(&adopt_lock);
    if (ss_ch.state == SS_CH_INHERITED) {
        if (parent.m.r) {
            adopt_after_fork();
        } else {
            pthread_mutex_lock(&ss_ch.lock);
            bool ok = attach_locked((int)exec_from.instance);
            pthread_mutex_unlock(&ss_ch.lock);
            __atomic_store_n(&ss_ch.state, ok ? SS_CH_ATTACHED : SS_CH_DEAD, __ATOMIC_RELEASE);
            adopt_after_exec(ok);
        }
    }
    pthread_mutex_unlock(&adopt_lock);
}

void ss_adopt_for(int fd)
{
    if (standby.n && !(fd >= 0 && fd < SS_FD_MAX && ss_fds[fd] && ss_fds[fd]->stack) && !ss_is_epoll(fd))
        return;
    ss_adopt_inherited();
}

/* A process about to give up root (memcached -u, a daemon's setuid)
 * attaches now, while the instance's control socket (0660, root's) still
 * lets it; its sockets made later are then the stack's.  Only then: a
 * process that never changes uid attaches at its first socket. */
static void attach_before_root_goes(uid_t to)
{
    if (to != (uid_t)-1 && to != 0 && geteuid() == 0 && ss_ch.state == SS_CH_UNTRIED)
        ss_attach();
}

static int hook_setuid(uid_t uid)
{
    attach_before_root_goes(uid);
    return REAL(setuid)(uid);
}

static int hook_seteuid(uid_t uid)
{
    attach_before_root_goes(uid);
    return REAL(seteuid)(uid);
}

static int hook_setreuid(uid_t r, uid_t e)
{
    attach_before_root_goes(e != (uid_t)-1 ? e : r);
    return REAL(setreuid)(r, e);
}

static int hook_setresuid(uid_t r, uid_t e, uid_t s)
{
    attach_before_root_goes(e != (uid_t)-1 ? e : r);
    return REAL(setresuid)(r, e, s);
}

/* vfork's child shares the parent's memory and may only exec or _exit:
 * run it as a fork, which is always correct where vfork is. */
static pid_t hook_vfork(void) { return hook_fork(); }

/* The environment an exec gets: envp without an old SHARDSOCK_INHERIT,
 * with the library and its settings put back if the program dropped them
 * (nginx empties its children's environment), and the sockets that
 * survive the exec with a ticket that keeps them.  NULL: exec as asked.
 * *ticket: the ticket's descriptor, to close if the exec fails. */
static char **exec_env(char *const envp[], int *ticket)
{
    *ticket = -1;
    if (ss_ch.state == SS_CH_INHERITED)
        ss_adopt_inherited();
    /* the sockets that stay open: " FD:SLOT:FLAGS:RCVTIMEO:SNDTIMEO" each,
     * and their slots for the ticket (" SLOT" each) */
    size_t cap = 256, len = 0, slen = 0;
    char *inherit = malloc(cap), *slots = malloc(cap);
    for (int fd = 0; inherit && slots && ss_ch.state == SS_CH_ATTACHED && fd < SS_FD_MAX; fd++) {
        struct ss_sock *s = ss_fds[fd];
        int fl;
        if (!s || !s->stack || (fl = REAL(fcntl)(fd, F_GETFD, 0)) < 0 || (fl & FD_CLOEXEC))
            continue;
        if (cap - len < 96) {
            cap *= 2;
            char *bigger = realloc(inherit, cap), *more = bigger ? realloc(slots, cap) : NULL;
            inherit = bigger ? bigger : inherit;
            slots = more ? more : slots;
            if (!bigger || !more)
                break;
        }
        slen += (size_t)snprintf(slots + slen, cap - slen, " %u", s->slot);
        unsigned flags = (s->nonblock ? INH_NONBLOCK : 0) | (s->listening ? INH_LISTENING : 0) |
                         (s->kernel_too ? INH_KERNEL_TOO : 0) | (s->connecting ? INH_CONNECTING : 0) |
                         (s->wr_shut ? INH_WR_SHUT : 0) | (s->v6 ? INH_V6 : 0) | (s->shared ? INH_SHARED : 0);
        len += (size_t)snprintf(inherit + len, cap - len, " %d:%u:%u:%lld:%lld", fd, s->slot, flags,
                                (long long)s->rcvtimeo_ms, (long long)s->sndtimeo_ms);
    }
    if (!inherit || !slots) {
        free(inherit);
        free(slots);
        return NULL;
    }
    char *head = NULL;
    if (len) {
        *ticket = fork_ticket(slots);
        int fl = *ticket >= 0 ? REAL(fcntl)(*ticket, F_GETFD, 0) : -1;
        if (fl < 0 || REAL(fcntl)(*ticket, F_SETFD, (long)(fl & ~FD_CLOEXEC)) < 0) {
            ss_verbose("shardsock: no ticket for the sockets an exec inherits: they stay the kernel's");
            if (*ticket >= 0)
                REAL(close)(*ticket);
            *ticket = -1;
        } else if ((head = malloc(len + 96))) {
            snprintf(head, len + 96, SS_INHERIT_ENV "=%d %u %u %llu%s", *ticket, ss_ch.r->instance,
                     ss_ch.r->channel, (unsigned long long)ss_ch.r->token, inherit);
        }
    }
    free(inherit);
    free(slots);
    /* the new environment */
#define X(field, size, env) env,
    static const char *const keep[] = {SS_SETTINGS(X) "LD_PRELOAD"};
#undef X
#define X(field, size, env) conf.field,
    const char *vals[] = {SS_SETTINGS(X) conf.path};
#undef X
    enum { NKEEP = sizeof keep / sizeof keep[0], PRELOAD = NKEEP - 1 };
    size_t n = 0;
    while (envp && envp[n])
        n++;
    char **env = malloc((n + NKEEP + 2) * sizeof *env);
    char *added[NKEEP] = {NULL};
    if (!env) {
        free(head);
        return NULL;
    }
    size_t m = 0;
    bool have[NKEEP] = {false};
    for (size_t i = 0; i < n; i++) {
        if (!strncmp(envp[i], SS_INHERIT_ENV "=", sizeof SS_INHERIT_ENV))
            continue;
        for (int k = 0; k < NKEEP; k++) {
            size_t kl = strlen(keep[k]);
            if (!strncmp(envp[i], keep[k], kl) && envp[i][kl] == '=')
                have[k] = k != PRELOAD || strstr(envp[i], conf.path) != NULL;
        }
        env[m++] = envp[i];
    }
    for (int k = 0; k < NKEEP; k++) {
        if (have[k] || !*vals[k])
            continue;
        if (k == PRELOAD) {
            /* LD_PRELOAD without the library: put it first, keep the rest */
            const char *old = NULL;
            for (size_t i = 0; i < m; i++)
                if (!strncmp(env[i], "LD_PRELOAD=", 11))
                    old = env[i] + 11;
            size_t al = strlen(conf.path) + (old ? strlen(old) : 0) + 16;
            if ((added[k] = malloc(al))) {
                snprintf(added[k], al, "LD_PRELOAD=%s%s%s", conf.path, old && *old ? ":" : "", old ? old : "");
                for (size_t i = 0; i < m; i++)
                    if (!strncmp(env[i], "LD_PRELOAD=", 11))
                        env[i] = added[k], added[k] = NULL;
                if (added[k])
                    env[m++] = added[k];
            }
            continue;
        }
        size_t al = strlen(keep[k]) + strlen(vals[k]) + 2;
        if ((added[k] = malloc(al))) {
            snprintf(added[k], al, "%s=%s", keep[k], vals[k]);
            env[m++] = added[k];
        }
    }
    if (head)
        env[m++] = head;
    env[m] = NULL;
    return env; /* exec replaces the image; on failure the caller frees nothing it still needs */
}

/* The exec failed: the ticket goes, the sockets are this image's still,
 * and what exec_env allocated is freed (the strings not from envp). */
static int exec_failed(char **env, char *const envp[], int ticket)
{
    int e = errno;
    if (ticket >= 0)
        REAL(close)(ticket);
    for (size_t i = 0; env && env[i]; i++) {
        bool theirs = false;
        for (size_t j = 0; envp && envp[j] && !theirs; j++)
            theirs = env[i] == envp[j];
        if (!theirs)
            free(env[i]);
    }
    free(env);
    errno = e;
    return -1;
}

extern char **environ;

static int hook_execve(const char *path, char *const argv[], char *const envp[])
{
    int ticket;
    char **env = exec_env(envp, &ticket);
    REAL(execve)(path, argv, env ? env : envp);
    return exec_failed(env, envp, ticket);
}

static int hook_execv(const char *path, char *const argv[]) { return hook_execve(path, argv, environ); }

static int hook_execvpe(const char *file, char *const argv[], char *const envp[])
{
    int ticket;
    char **env = exec_env(envp, &ticket);
    REAL(execvpe)(file, argv, env ? env : envp);
    return exec_failed(env, envp, ticket);
}

static int hook_execvp(const char *file, char *const argv[]) { return hook_execvpe(file, argv, environ); }

static int hook_fexecve(int fd, char *const argv[], char *const envp[])
{
    int ticket;
    char **env = exec_env(envp, &ticket);
    REAL(fexecve)(fd, argv, env ? env : envp);
    return exec_failed(env, envp, ticket);
}

static ssize_t hook___read_chk(int fd, void *buf, size_t n, size_t buflen)
{
    if (n > buflen)
        return REAL(__read_chk)(fd, buf, n, buflen); /* libc reports the overflow */
    return hook_read(fd, buf, n);
}

static ssize_t hook___recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags)
{
    if (n > buflen)
        return REAL(__recv_chk)(fd, buf, n, buflen, flags);
    return hook_recv(fd, buf, n, flags);
}

static ssize_t hook___recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *a,
                                   socklen_t *len)
{
    if (n > buflen)
        return REAL(__recvfrom_chk)(fd, buf, n, buflen, flags, a, len);
    return hook_recvfrom(fd, buf, n, flags, a, len);
}

static int hook___poll_chk(struct pollfd *p, nfds_t n, int timeout, size_t plen)
{
    if (plen / sizeof *p < n)
        return REAL(__poll_chk)(p, n, timeout, plen);
    return hook_poll(p, n, timeout);
}

static int hook___ppoll_chk(struct pollfd *p, nfds_t n, const struct timespec *t, const sigset_t *m, size_t plen)
{
    if (plen / sizeof *p < n)
        return REAL(__ppoll_chk)(p, n, t, m, plen);
    return hook_ppoll(p, n, t, m);
}

/* ---- the exported definitions, one per intercepted call ---- */

#define X(ret, name, params, args)                                                                                \
    __attribute__((visibility("default"))) ret name params { return hook_##name args; }
SS_CALLS_PLAIN(X)
#undef X

__attribute__((visibility("default"))) int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return hook_fcntl(fd, cmd, arg);
}

__attribute__((visibility("default"))) int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return hook_fcntl64(fd, cmd, arg);
}

/* The arguments after arg, up to the NULL, into argv (n + 2 entries). */
#define GATHER_ARGS(arg, ap, argv, n)                                                                          \
    size_t n = 0;                                                                                              \
    va_list count_;                                                                                            \
    va_copy(count_, ap);                                                                                       \
    while (va_arg(count_, char *))                                                                             \
        n++;                                                                                                   \
    va_end(count_);                                                                                            \
    char *argv[n + 2];                                                                                         \
    argv[0] = (char *)(arg);                                                                                   \
    for (size_t i_ = 1; i_ <= n + 1; i_++)                                                                     \
        argv[i_] = va_arg(ap, char *);

__attribute__((visibility("default"))) int execl(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    GATHER_ARGS(arg, ap, argv, n)
    va_end(ap);
    return hook_execv(path, argv);
}

__attribute__((visibility("default"))) int execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    GATHER_ARGS(arg, ap, argv, n)
    va_end(ap);
    return hook_execvp(file, argv);
}

__attribute__((visibility("default"))) int execle(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    GATHER_ARGS(arg, ap, argv, n)
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    return hook_execve(path, argv, envp);
}

__attribute__((visibility("default"))) int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    va_start(ap, req);
    long arg = va_arg(ap, long);
    va_end(ap);
    return hook_ioctl(fd, req, arg);
}
