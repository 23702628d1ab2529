/*
 * shardsockd: one stack instance, pinned to one core, owning one queue of a
 * device.  Started by `shardsock up`, one per core.
 *
 * The loop is one list of phases:
 *   receive burst (the device's, then frames other instances forwarded for
 *   flows this one owns, fwd.c) -> timers -> the applications' requests and
 *   kicks (chan.c) -> engine events to the applications' sockets and the
 *   services -> wake sleeping applications -> transmit flush -> adaptive
 *   wait
 * The engine hands each frame to the backend as it is made; a backend with
 * a transmit ring queues it and the flush phase kicks the device once per
 * pass (the tap backend writes at once).  The wait spins for --spin-us after the last
 * work, then sleeps on one epoll of the device fd, the control socket, a
 * signalfd and a timerfd set to the engine's next deadline: an idle instance
 * wakes only for a timer that is really due.
 *
 * It says "ready" on --ready-fd once its queue is attached, its stats page
 * published and its control socket listening, and stops cleanly on SIGTERM:
 * it stops accepting, resets its connections, releases the queue and
 * removes its shared memory and socket.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <shardsock/engine.h>
#include <shardsock/stats.h>

#include "chan.h"
#include "fwd.h"
#include "netdev/netdev.h"

enum role { ROLE_NONE, ROLE_ECHO_LISTEN, ROLE_DISCARD_LISTEN, ROLE_ECHO, ROLE_DISCARD };

struct options {
    const char *group, *backend, *ifname, *run_dir, *doorbells;
    int core, instance, ninstances, ready_fd;
    uint32_t ip, netmask, gateway, peer_ip;
    uint8_t mac[6], peer_mac[6];
    bool have_peer_mac;
    int echo_port, discard_port;
    uint32_t spin_us;
    long read_gid;       /* members may ask the read-only requests (netstat, procs, ping); -1: none */
};

struct instance {
    struct options opt;
    struct ss_engine *e;
    struct ss_netdev dev;
    struct ss_instance_stats *stats;
    struct ss_neigh_table *neigh;
    struct ss_chans chans; /* the attached application processes */
    struct ss_fwd fwd;  /* forwarding to the owners of flows; with two instances or more */
    bool fwd_on;
    uint32_t listen_gen; /* alone in the group: the listeners' generation (chan.h) */
    char stats_path[128], neigh_path[128], sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int epfd, tfd, sfd, ctl;
    uint64_t tfd_armed;  /* the deadline the timerfd holds (0: none armed; UINT64_MAX: disarmed) */
    bool stopping;
    uint8_t *role; /* by socket id */
    uint32_t max_sockets;
    uint32_t place_next; /* instance 0: where the next placed process goes */
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void die(const char *what)
{
    fprintf(stderr, "shardsockd: %s\n", what);
    exit(1);
}

/* ---- the device ---- */

static int tx_frame(void *ctx, const uint8_t *frame, size_t len)
{
    struct instance *in = ctx;
    if (in->dev.ops->tx(&in->dev, frame, len) < 0) {
        in->stats->counters.dev_tx_errors++;
        return -1;
    }
    return 0;
}

/* ---- the group's neighbour table ---- */

static uint32_t neigh_slot(uint32_t ip, uint32_t k) { return (ip * 2654435761u + k) % SS_NEIGH_ENTRIES; }

static void neigh_learn(void *ctx, uint32_t ip, const uint8_t mac[6])
{
    struct instance *in = ctx;
    uint64_t expires = now_us() + 60000000ull;
    for (uint32_t k = 0; k < SS_NEIGH_PROBE; k++) {
        struct ss_neigh_entry *x = &in->neigh->e[neigh_slot(ip, k)];
        uint32_t cur = __atomic_load_n(&x->ip, __ATOMIC_ACQUIRE);
        if (cur != 0 && cur != ip && x->expires_us > now_us())
            continue;
        uint32_t seq = __atomic_load_n(&x->seq, __ATOMIC_ACQUIRE);
        /* Take the entry's writer lock (an odd sequence); a busy entry is
         * simply skipped: another instance is writing the same news. */
        if ((seq & 1) || !__atomic_compare_exchange_n(&x->seq, &seq, seq + 1, false, __ATOMIC_ACQ_REL,
                                                      __ATOMIC_ACQUIRE))
            return;
        __atomic_store_n(&x->ip, ip, __ATOMIC_RELAXED);
        memcpy(x->mac, mac, 6);
        x->expires_us = expires;
        __atomic_store_n(&x->seq, seq + 2, __ATOMIC_RELEASE);
        return;
    }
}

static int neigh_lookup(void *ctx, uint32_t ip, uint8_t mac_out[6])
{
    struct instance *in = ctx;
    for (uint32_t k = 0; k < SS_NEIGH_PROBE; k++) {
        struct ss_neigh_entry *x = &in->neigh->e[neigh_slot(ip, k)];
        for (int tries = 0; tries < 4; tries++) {
            uint32_t s1 = __atomic_load_n(&x->seq, __ATOMIC_ACQUIRE);
            if (s1 & 1)
                continue;
            uint32_t got = x->ip;
            uint8_t mac[6];
            memcpy(mac, x->mac, 6);
            uint64_t exp = x->expires_us;
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (__atomic_load_n(&x->seq, __ATOMIC_RELAXED) != s1)
                continue;
            if (got == ip && exp > now_us()) {
                memcpy(mac_out, mac, 6);
                return 0;
            }
            break;
        }
    }
    return -1;
}

static void *map_shm(const char *path, size_t size, bool truncate)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0644);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) < 0 || ((size_t)st.st_size < size && ftruncate(fd, (off_t)size) < 0)) {
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

/* ---- built-in services: echo and discard (RFC 862, RFC 863) ---- */

static void service_listen(struct instance *in, int port, enum role role)
{
    int sid = ss_tcp_socket(in->e);
    ss_tcp_setopt(in->e, sid, SS_OPT_REUSEADDR, 1, now_us());
    if (sid < 0 || ss_tcp_bind(in->e, sid, 0, (uint16_t)port) < 0 || ss_tcp_listen(in->e, sid, 1024) < 0)
        die("cannot listen on a service port");
    in->role[sid] = (uint8_t)role;
}

static void service_close(struct instance *in, int sid)
{
    in->role[sid] = ROLE_NONE;
    ss_tcp_close(in->e, sid, now_us());
}

/* Serves one socket until it would block.  Echo reads only what its send
 * buffer can take back, so nothing is ever held outside the engine. */
static void service_event(struct instance *in, int sid)
{
    static const int chunk = 65536;
    uint8_t buf[65536];
    uint64_t t = now_us();
    switch (in->role[sid]) {
    case ROLE_ECHO_LISTEN:
    case ROLE_DISCARD_LISTEN:
        for (;;) {
            int c = ss_tcp_accept(in->e, sid, t);
            if (c < 0)
                break;
            in->role[c] = in->role[sid] == ROLE_ECHO_LISTEN ? ROLE_ECHO : ROLE_DISCARD;
            ss_tcp_setopt(in->e, c, SS_OPT_NODELAY, 1, t);
            service_event(in, c);
        }
        return;
    case ROLE_ECHO:
    case ROLE_DISCARD:
        for (;;) {
            int n = chunk;
            if (in->role[sid] == ROLE_ECHO) {
                struct ss_tcp_info ti;
                int sndbuf = 0;
                ss_tcp_info(in->e, sid, &ti);
                ss_tcp_getopt(in->e, sid, SS_OPT_SNDBUF, &sndbuf);
                n = sndbuf - (int)ti.snd_queued;
                if (n > chunk)
                    n = chunk;
                if (n <= 0)
                    return; /* resumes when ACKs free the send buffer */
            }
            ssize_t r = ss_tcp_recv(in->e, sid, buf, (size_t)n, t);
            if (r == -EAGAIN)
                return;
            if (r <= 0) {
                service_close(in, sid); /* end of stream or error */
                return;
            }
            if (in->role[sid] == ROLE_ECHO)
                ss_tcp_send(in->e, sid, buf, (size_t)r, t);
        }
    default:
        return;
    }
}

static void run_services(struct instance *in)
{
    int sids[256];
    int n;
    while ((n = ss_engine_take_events(in->e, sids, 256)) > 0)
        for (int i = 0; i < n; i++)
            if (sids[i] >= 0 && (uint32_t)sids[i] < in->max_sockets && !ss_chans_event(&in->chans, sids[i]))
                service_event(in, sids[i]);
}

/* ---- control socket ---- */

/* One line per socket (free ids excepted): its TCP state, queues and holders, as
 * `shardsock netstat` will show it.  The holders' list has no bound but the
 * number of channels: it goes in a buffer grown to fit (a fixed one cut a
 * listener's list of forked workers short, in the middle of a pid). */
static void control_netstat(struct instance *in, int c)
{
    char line[1024];
    char *procs = NULL, *msg = NULL;
    size_t procs_cap = 0, msg_cap = 0;
    for (uint32_t sid = 0; sid < in->max_sockets; sid++) {
        struct ss_tcp_info ti;
        if (ss_tcp_info(in->e, (int)sid, &ti) < 0)
            continue; /* a free socket id; every other one is listed, orphans (TIME_WAIT...) too, as ss -tan does */
        int np = ss_chans_describe(&in->chans, (int)sid, procs, procs_cap);
        if (np > 0 && (size_t)np >= procs_cap) {
            char *grown = realloc(procs, (size_t)np + 1);
            if (!grown)
                break;
            procs = grown;
            procs_cap = (size_t)np + 1;
            np = ss_chans_describe(&in->chans, (int)sid, procs, procs_cap);
        }
        /* a listener: its backlog in use, and whether a process uses it (listen spawn) */
        char listen_info[96] = "";
        if (ti.state == SS_TCP_LISTEN)
            snprintf(listen_info, sizeof listen_info, " accept_queued=%u backlog=%u in_use=%u", ti.accept_queued,
                     ti.backlog, ti.active);
        int n = snprintf(line, sizeof line,
                         "sid=%u state=%s local=%u.%u.%u.%u:%u remote=%u.%u.%u.%u:%u snd_una=%u snd_nxt=%u "
                         "snd_wnd=%u cwnd=%u ssthresh=%u rto_us=%u srtt_us=%u retransmits=%u snd_queued=%u "
                         "rcv_nxt=%u rcv_wnd=%u rcv_queued=%u%s%s",
                         sid, ss_tcp_state_name(ti.state), ti.local_ip >> 24, ti.local_ip >> 16 & 255,
                         ti.local_ip >> 8 & 255, ti.local_ip & 255, ti.local_port, ti.remote_ip >> 24,
                         ti.remote_ip >> 16 & 255, ti.remote_ip >> 8 & 255, ti.remote_ip & 255, ti.remote_port,
                         ti.snd_una, ti.snd_nxt, ti.snd_wnd, ti.cwnd, ti.ssthresh, ti.rto_us, ti.srtt_us,
                         ti.retransmits, ti.snd_queued, ti.rcv_nxt, ti.rcv_wnd, ti.rcv_queued, listen_info,
                         np                                                                    ? ""
                         : in->role[sid] == ROLE_ECHO || in->role[sid] == ROLE_ECHO_LISTEN    ? " service=echo"
                         : in->role[sid] == ROLE_DISCARD || in->role[sid] == ROLE_DISCARD_LISTEN ? " service=discard"
                                                                                                 : "");
        if (n < 0 || (size_t)n >= sizeof line)
            continue; /* cannot be: the fields above have bounded widths */
        size_t need = (size_t)n + (size_t)np + 1;
        if (need > msg_cap) {
            char *grown = realloc(msg, need);
            if (!grown)
                break;
            msg = grown;
            msg_cap = need;
        }
        memcpy(msg, line, (size_t)n);
        if (np > 0)
            memcpy(msg + n, procs, (size_t)np);
        msg[need - 1] = '\n';
        if (send(c, msg, need, MSG_NOSIGNAL) < 0)
            break;
    }
    free(procs);
    free(msg);
}

/* Whether the peer of control connection c is in group gid (its primary
 * group, or a supplementary one: SO_PEERGROUPS). */
static bool peer_in_group(int c, const struct ucred *cred, long gid)
{
    if (gid < 0)
        return false;
    if ((long)cred->gid == gid)
        return true;
    gid_t groups[256];
    socklen_t len = sizeof groups;
    if (getsockopt(c, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
        return false;
    for (size_t i = 0; i < len / sizeof groups[0]; i++)
        if ((long)groups[i] == gid)
            return true;
    return false;
}

static void control_request(struct instance *in)
{
    int c = accept4(in->ctl, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    struct ucred cred;
    socklen_t len = sizeof cred;
    char req[8192], rep[512]; /* a fork ticket may list every slot of a channel */
    /* Same user or root; the read group's members (the socket file is
     * theirs to connect to) only what reads: netstat, procs and ping, which
     * tells them they are not served. */
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        close(c);
        return;
    }
    bool full = cred.uid == 0 || cred.uid == getuid();
    if (!full && !peer_in_group(c, &cred, in->opt.read_gid)) {
        close(c);
        return;
    }
    struct timeval tv = {.tv_sec = 1};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n;
    do /* a signal (or task work) must not cost a process its attach */
        n = recv(c, req, sizeof req - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        req[n] = 0;
        if (strncmp(req, "netstat", 7) == 0) {
            control_netstat(in, c);
            close(c);
            return;
        }
        if (strncmp(req, "procs", 5) == 0) {
            char list[SS_MAX_CHANNELS * 80];
            int m = ss_chans_procs(&in->chans, list, sizeof list);
            if (m > 0)
                send(c, list, (size_t)m, MSG_NOSIGNAL);
            close(c);
            return;
        }
        if (!full) {
            /* a reader: its programs are not served (attach, fork), and it
             * changes nothing (place, stop) */
            snprintf(rep, sizeof rep, strncmp(req, "ping", 4) == 0 ? "readonly %d %d %d\n"
                                                                   : "error: read-only access (the read group)\n",
                     (int)getpid(), in->opt.instance, in->opt.core);
        } else if (strncmp(req, "attach", 6) == 0) {
            if (ss_chans_attach(&in->chans, c) == 0)
                return; /* the connection is the channel's now */
            snprintf(rep, sizeof rep, "error: cannot attach (too many processes, or out of memory)\n");
        } else if (strncmp(req, "fork ", 5) == 0) {
            if (ss_chans_fork_ticket(&in->chans, c, req) == 0)
                return; /* held open by the forked child */
            snprintf(rep, sizeof rep, "error: no such channel\n");
        } else if (strncmp(req, "ping", 4) == 0) {
            snprintf(rep, sizeof rep, "pong %d %d %d\n", (int)getpid(), in->opt.instance, in->opt.core);
        } else if (strncmp(req, "place", 5) == 0) {
            /* Spawn placement (asked of instance 0): the instance for the
             * next process, round-robin, as Fastsocket spawns workers. */
            snprintf(rep, sizeof rep, "place %u %d\n", in->place_next++ % (uint32_t)in->opt.ninstances,
                     in->opt.ninstances);
        }
        else if (strncmp(req, "stop", 4) == 0) {
            in->stopping = true;
            snprintf(rep, sizeof rep, "stopping\n");
        } else
            snprintf(rep, sizeof rep, "error: unknown request (attach, fork, ping, place, procs, stop, netstat)\n");
        send(c, rep, strlen(rep), MSG_NOSIGNAL);
    }
    close(c);
}

static int control_listen(struct instance *in)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int n = snprintf(a.sun_path, sizeof a.sun_path, "%s/instance-%d.sock", in->opt.run_dir, in->opt.instance);
    if (n < 0 || (size_t)n >= sizeof a.sun_path)
        die("run directory path too long for a Unix socket");
    memcpy(in->sock_path, a.sun_path, sizeof a.sun_path);
    unlink(a.sun_path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    mode_t old = umask(0117); /* the socket file is created 0660 */
    int r = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&a, sizeof a);
    umask(old);
    /* the read group's members may connect; control_request says what
     * they may ask */
    if (r == 0 && in->opt.read_gid >= 0 && chown(a.sun_path, (uid_t)-1, (gid_t)in->opt.read_gid) < 0)
        r = -1;
    if (r < 0 || listen(fd, 16) < 0)
        return -1;
    return fd;
}

/* ---- start, loop, stop ---- */

/* A small stable number from the group's name (the fanout group id). */
static uint32_t crc_of(const char *s)
{
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 16777619u;
    return h ^ (h >> 16);
}

static void parse_mac(const char *s, uint8_t mac[6])
{
    unsigned v[6];
    if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
        die("a MAC address is written aa:bb:cc:dd:ee:ff");
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)v[i];
}

static uint32_t parse_ip(const char *s)
{
    struct in_addr a;
    if (inet_pton(AF_INET, s, &a) != 1)
        die("an IPv4 address is written a.b.c.d");
    return ntohl(a.s_addr);
}

static void usage(void)
{
    fprintf(stderr, "usage: shardsockd --group NAME --instance K --instances N --core C --backend tap\n"
                    "       --interface IF --address A.B.C.D --netmask M --mac MAC [--gateway G]\n"
                    "       [--peer A.B.C.D --peer-mac MAC] [--echo PORT] [--discard PORT]\n"
                    "       [--spin-us US] [--run-dir DIR] [--ready-fd FD] [--doorbells FD,FD,...]\n"
                    "       [--read-gid GID]\n");
    exit(2);
}

static void parse_args(int argc, char **argv, struct options *o)
{
    static const struct option opts[] = {
        {"group", 1, 0, 'g'}, {"instance", 1, 0, 'k'}, {"instances", 1, 0, 'n'}, {"core", 1, 0, 'c'},
        {"backend", 1, 0, 'b'}, {"interface", 1, 0, 'i'}, {"address", 1, 0, 'a'}, {"netmask", 1, 0, 'm'},
        {"mac", 1, 0, 'M'}, {"gateway", 1, 0, 'G'}, {"peer", 1, 0, 'p'}, {"peer-mac", 1, 0, 'P'},
        {"echo", 1, 0, 'e'}, {"discard", 1, 0, 'd'}, {"spin-us", 1, 0, 's'}, {"run-dir", 1, 0, 'r'},
        {"ready-fd", 1, 0, 'R'}, {"doorbells", 1, 0, 'D'}, {"read-gid", 1, 0, 'x'}, {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->group = "default";
    o->backend = "tap";
    o->ifname = "ss0";
    o->run_dir = "/run/shardsock";
    o->ninstances = 1;
    o->core = -1;
    o->ready_fd = -1;
    o->netmask = 0xffffff00u;
    o->spin_us = 20;
    o->read_gid = -1;
    o->mac[0] = 0x02;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'g': o->group = optarg; break;
        case 'k': o->instance = atoi(optarg); break;
        case 'n': o->ninstances = atoi(optarg); break;
        case 'c': o->core = atoi(optarg); break;
        case 'b': o->backend = optarg; break;
        case 'i': o->ifname = optarg; break;
        case 'a': o->ip = parse_ip(optarg); break;
        case 'm': o->netmask = parse_ip(optarg); break;
        case 'M': parse_mac(optarg, o->mac); break;
        case 'G': o->gateway = parse_ip(optarg); break;
        case 'p': o->peer_ip = parse_ip(optarg); break;
        case 'P': parse_mac(optarg, o->peer_mac); o->have_peer_mac = true; break;
        case 'e': o->echo_port = atoi(optarg); break;
        case 'd': o->discard_port = atoi(optarg); break;
        case 's': o->spin_us = (uint32_t)atoi(optarg); break;
        case 'r': o->run_dir = optarg; break;
        case 'R': o->ready_fd = atoi(optarg); break;
        case 'D': o->doorbells = optarg; break;
        case 'x': o->read_gid = atol(optarg); break;
        default: usage();
        }
    }
    if (!o->ip || o->ninstances < 1 || o->instance < 0 || o->instance >= o->ninstances)
        usage();
}

static void setup(struct instance *in)
{
    /* The engine allocates and frees per connection (control blocks,
     * buffers): glibc would give the top of the heap back and take it
     * again with brk() about once per connection (perf: 1.03 per
     * connection under churn).  Keep 64 MiB of freed heap instead. */
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    mallopt(M_TOP_PAD, 16 << 20);
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    struct options *o = &in->opt;
    char err[512];
    if (o->core >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(o->core, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("cannot pin to the requested core (is it online?)");
    }
    /* the stats page */
    snprintf(in->stats_path, sizeof in->stats_path, "/dev/shm/shardsock-%s-%d", o->group, o->instance);
    in->stats = map_shm(in->stats_path, sizeof *in->stats, true);
    if (!in->stats)
        die("cannot create the stats page in /dev/shm");
    memset(in->stats, 0, sizeof *in->stats);
    in->stats->version = SS_STATS_VERSION;
    in->stats->size = sizeof *in->stats;
    in->stats->state = SS_INSTANCE_STARTING;
    in->stats->instance = (uint32_t)o->instance;
    in->stats->ninstances = (uint32_t)o->ninstances;
    in->stats->core = o->core;
    in->stats->pid = (int32_t)getpid();
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    in->stats->started_unix_us = (uint64_t)rt.tv_sec * 1000000 + (uint64_t)rt.tv_nsec / 1000;
    in->stats->ip = o->ip;
    in->stats->netmask = o->netmask;
    memcpy(in->stats->mac, o->mac, 6);
    snprintf(in->stats->backend, sizeof in->stats->backend, "%s", o->backend);
    snprintf(in->stats->device, sizeof in->stats->device, "%s", o->ifname);
    in->stats->queue = (uint32_t)o->instance;
    __atomic_store_n(&in->stats->magic, SS_STATS_MAGIC, __ATOMIC_RELEASE);
    /* the group's neighbour table */
    snprintf(in->neigh_path, sizeof in->neigh_path, "/dev/shm/shardsock-%s-neigh", o->group);
    in->neigh = map_shm(in->neigh_path, sizeof *in->neigh, false);
    if (!in->neigh)
        die("cannot map the group's neighbour table in /dev/shm");
    /* the device queue */
    in->dev.ops = ss_netdev_find(o->backend);
    if (!in->dev.ops)
        die("unknown backend (this build has: tap, afpacket, afxdp)");
    struct ss_engine_config cfg;
    ss_engine_config_init(&cfg);
    struct ss_netdev_conf dc = {.ifname = o->ifname, .queue = (uint32_t)o->instance,
                                .nqueues = (uint32_t)o->ninstances, .port_lo = cfg.port_lo,
                                .port_hi = cfg.port_hi, .stack_ip = o->ip,
                                .fanout_id = (uint16_t)(crc_of(o->group) | 1)};
    if (in->dev.ops->open(&in->dev, &dc, err, sizeof err) < 0)
        die(err);
    /* the engine */
    memcpy(cfg.mac, o->mac, 6);
    cfg.ip = o->ip;
    cfg.netmask = o->netmask;
    cfg.gateway = o->gateway;
    if (getrandom(cfg.secret, sizeof cfg.secret, 0) != sizeof cfg.secret)
        die("getrandom failed");
    cfg.port_mod = (uint16_t)o->ninstances;
    cfg.port_rem = (uint16_t)o->instance;
    cfg.counters = &in->stats->counters;
    cfg.tx = tx_frame;
    cfg.tx_ctx = in;
    cfg.neigh_learn = neigh_learn;
    cfg.neigh_lookup = neigh_lookup;
    cfg.neigh_ctx = in;
    if (o->ninstances > 1) {
        /* Any backend may deliver a segment to the wrong instance (see
         * fwd.c); the directory and the rings make that harmless. */
        char path[128];
        snprintf(path, sizeof path, "/dev/shm/shardsock-%s-fwd", o->group);
        if (ss_fwd_open(&in->fwd, path, o->instance, o->ninstances, o->doorbells, &in->stats->counters, err,
                        sizeof err) < 0)
            die(err);
        in->fwd_on = true;
        /* One key for the group: a SYN cookie one instance sent is good at
         * another (on afxdp Linux may send the ACK on another queue after
         * a lost SYN-ACK), and a SYN that reaches two instances gets the
         * same ISN from both. */
        memcpy(cfg.secret, in->fwd.r->engine_key, sizeof cfg.secret);
        cfg.flow_publish = ss_fwd_publish;
        cfg.flow_owner = ss_fwd_owner;
        cfg.forward = ss_fwd_send;
        cfg.listen_publish = ss_fwd_listen_publish;
        cfg.listen_owner = ss_fwd_listen_owner;
        cfg.flow_ctx = &in->fwd;
    } else {
        /* alone: the library's answers about which ports the stack
         * listens on go stale with this instance's own listeners */
        cfg.listen_publish = ss_chans_listen_bump;
        cfg.flow_ctx = &in->listen_gen;
    }
    const char *bad = ss_engine_config_check(&cfg);
    if (bad)
        die(bad);
    in->max_sockets = cfg.max_sockets;
    in->role = calloc(cfg.max_sockets, 1);
    in->e = ss_engine_create(&cfg, now_us());
    if (!in->e || !in->role)
        die("cannot create the engine (out of memory)");
    if (o->have_peer_mac && o->peer_ip)
        ss_arp_add_static(in->e, o->peer_ip, o->peer_mac);
    if (o->echo_port)
        service_listen(in, o->echo_port, ROLE_ECHO_LISTEN);
    if (o->discard_port)
        service_listen(in, o->discard_port, ROLE_DISCARD_LISTEN);
    /* what the loop sleeps on */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    in->sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
    in->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    in->epfd = epoll_create1(EPOLL_CLOEXEC);
    mkdir(o->run_dir, 0750);
    in->ctl = control_listen(in);
    if (in->sfd < 0 || in->tfd < 0 || in->epfd < 0 || in->ctl < 0)
        die("cannot set up the control socket, signalfd, timerfd or epoll");
    int fds[] = {in->dev.fd, in->sfd, in->tfd, in->ctl, in->fwd_on ? in->fwd.doorbell[o->instance] : -1};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (fds[i] < 0)
            continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        if (epoll_ctl(in->epfd, EPOLL_CTL_ADD, fds[i], &ev) < 0)
            die("epoll_ctl failed");
    }
    if (ss_chans_init(&in->chans, in->e, &in->stats->counters, in->max_sockets, (uint32_t)o->instance, o->ip,
                      o->netmask, in->epfd) < 0)
        die("cannot create the channel tables (out of memory)");
    in->chans.core = o->core;
    in->chans.listen_gen = in->fwd_on ? &in->fwd.r->listen_gen : &in->listen_gen;
    in->chans.ninstances = (uint32_t)o->ninstances;
    __atomic_store_n(&in->stats->state, SS_INSTANCE_READY, __ATOMIC_RELEASE);
    if (o->ready_fd >= 0) {
        if (write(o->ready_fd, "ready\n", 6) != 6)
            die("cannot report ready to the launcher");
        close(o->ready_fd);
    }
}

static void sleep_until_work(struct instance *in)
{
    uint64_t next = ss_engine_next_deadline(in->e);
    if (in->chans.sweep_at_us && in->chans.sweep_at_us < next)
        next = in->chans.sweep_at_us;
    /* The same deadline as the last sleep's needs no new system call (it
     * stays armed until it fires and is read). */
    if (next != in->tfd_armed) {
        struct itimerspec its = {{0, 0}, {0, 0}};
        if (next != UINT64_MAX) {
            its.it_value.tv_sec = (time_t)(next / 1000000);
            its.it_value.tv_nsec = (long)(next % 1000000) * 1000;
            if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
                its.it_value.tv_nsec = 1;
        }
        timerfd_settime(in->tfd, TFD_TIMER_ABSTIME, &its, NULL);
        in->tfd_armed = next;
    }
    struct epoll_event evs[8];
    if (in->fwd_on && !ss_fwd_may_sleep(&in->fwd))
        return; /* a forwarded frame came in meanwhile */
    if (!ss_chans_may_sleep(&in->chans))
        return; /* an application asked for something meanwhile */
    in->stats->sleeps++;
    int n = epoll_wait(in->epfd, evs, 8, -1);
    if (in->fwd_on)
        ss_fwd_awake(&in->fwd);
    ss_chans_awake(&in->chans);
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == in->tfd) {
            uint64_t x;
            ssize_t r = read(in->tfd, &x, sizeof x);
            (void)r;
            in->tfd_armed = 0; /* fired: nothing armed */
        } else if (fd == in->sfd) {
            struct signalfd_siginfo si;
            while (read(in->sfd, &si, sizeof si) == sizeof si)
                in->stopping = true;
        } else if (fd == in->ctl) {
            control_request(in);
        } else {
            ss_chans_owns_fd(&in->chans, fd);
        }
    }
}

static void run(struct instance *in)
{
    uint64_t spin_until = 0;
    while (!in->stopping) {
        bool work = false;
        uint64_t t = now_us();
        /* 1. receive burst */
        int n = in->dev.ops->rx_burst(&in->dev);
        if (n < 0)
            in->stats->counters.dev_rx_errors++;
        for (int i = 0; i < n; i++)
            ss_engine_input(in->e, in->dev.rx[i], in->dev.rx_len[i], t);
        work |= n > 0;
        /*    and the frames other instances received for this one's flows */
        if (in->fwd_on)
            work |= ss_fwd_drain(&in->fwd, in->e, t, 64) > 0;
        /* 2. timers */
        ss_engine_poll(in->e, t);
        /* 3. the applications' requests and kicks */
        work |= ss_chans_poll(&in->chans);
        ss_chans_sweep(&in->chans, t);
        /* 4. engine events: to the applications' sockets and the services */
        run_services(in);
        ss_chans_flush(&in->chans);
        /* 5. transmit flush: one kick for what the phases above queued */
        if (in->dev.ops->flush) {
            in->dev.ops->flush(&in->dev);
            in->stats->counters.dev_tx_errors += in->dev.tx_async_errors;
            in->dev.tx_async_errors = 0;
        }
        /* 6. adaptive wait */
        in->stats->loops++;
        in->stats->heartbeat_us = t;
        if (work) {
            in->stats->busy_loops++;
            spin_until = t + in->opt.spin_us;
            continue;
        }
        if (t < spin_until)
            continue;
        sleep_until_work(in);
    }
}

static void stop(struct instance *in)
{
    uint64_t t = now_us();
    __atomic_store_n(&in->stats->state, SS_INSTANCE_STOPPING, __ATOMIC_RELEASE);
    /* Stop accepting, then reset what is open: the peers learn at once. */
    for (uint32_t sid = 0; sid < in->max_sockets; sid++) {
        if (in->role[sid] == ROLE_NONE)
            continue;
        ss_tcp_setopt(in->e, (int)sid, SS_OPT_LINGER_ZERO, 1, t);
        ss_tcp_close(in->e, (int)sid, t);
        in->role[sid] = ROLE_NONE;
    }
    ss_chans_destroy(&in->chans);
    ss_engine_destroy(in->e); /* withdraws its flows from the directory */
    if (in->fwd_on)
        ss_fwd_close(&in->fwd);
    in->dev.ops->close(&in->dev);
    close(in->ctl);
    unlink(in->sock_path);
    in->stats->state = SS_INSTANCE_STOPPED;
    munmap(in->stats, sizeof *in->stats);
    unlink(in->stats_path);
    munmap(in->neigh, sizeof *in->neigh);
}

int main(int argc, char **argv)
{
    static struct instance in; /* one per process; static only for its size */
    parse_args(argc, argv, &in.opt);
    setup(&in);
    run(&in);
    stop(&in);
    return 0;
}
