/*
 * The afxdp backend: one AF_XDP socket (XSK) per instance, bound to queue
 * c->queue of an interface the kernel holds no address on for the stack.
 *
 * Our own XDP program (xdp_redirect.bpf.c, built into build/ next to
 * shardsockd) redirects the stack's frames -- IPv4 TCP and ICMP to its
 * address, ARP for its address -- to the XSK of the queue they arrived on
 * and passes the rest, so the host keeps its network on the interface.
 * Only one XDP program can be attached here (libxdp's dispatcher is not
 * permitted), so instance 0 loads it with libbpf, writes the stack's
 * address into its config map and attaches it in native mode; the XSKs are
 * created with XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD so libxdp loads nothing.
 * Instance 0 pins the program's XSKMAP in bpffs; the other instances wait
 * for the pin (and for the attached program to be the one using it) and
 * insert their socket.
 *
 * Each XSK has its own UMEM: half its frames feed the fill ring, half are
 * transmit buffers.  Copy mode unless zero-copy works (it does not on
 * veth: EOPNOTSUPP, PRIOR_ART.md); a copy-mode transmit needs a sendto()
 * kick per batch of at most 32 descriptors (the flush phase).  An XSK
 * receives only from its own queue: steering must happen before queue
 * choice (NIC RSS; on veth the sender's transmit queue), so the steering
 * rule of tap.c cannot be applied here.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <limits.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <linux/magic.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>

#include "netdev.h"

#define FRAMES 4096                 /* UMEM frames: half fill, half transmit */
#define FRAME_SIZE 2048
#define RX_FRAMES (FRAMES / 2)
#define RING 2048                   /* every ring; holds all frames of its half */
#define KICK_BATCH 32               /* a copy-mode kick sends at most this many */
#define BPFFS "/sys/fs/bpf"
#define PROG_NAME "ss_xdp_redirect"
#define WAIT_PIN_MS 8000            /* instances > 0 wait this long for instance 0 */

struct xdp {
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    struct xsk_ring_prod fill, tx;
    struct xsk_ring_cons comp, rx;
    uint8_t *area;
    uint64_t free_tx[FRAMES - RX_FRAMES]; /* transmit frames not in flight */
    uint32_t nfree;
    uint32_t tx_pending;               /* queued since the last kick */
    unsigned ifindex;
    /* instance 0 only */
    struct bpf_object *obj;
    int prog_fd;
    int attached;
    char pin[PATH_MAX];
};

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static int is_bpffs(const char *path)
{
    struct statfs st;
    return statfs(path, &st) == 0 && st.f_type == BPF_FS_MAGIC;
}

/* The XSKMAP's pin: one per group (fanout_id is a hash of the group's
 * name), network namespace and interface. */
static void pin_path(char *out, size_t len, const struct ss_netdev_conf *c)
{
    struct stat ns;
    unsigned long long ino = stat("/proc/self/ns/net", &ns) == 0 ? (unsigned long long)ns.st_ino : 0;
    snprintf(out, len, BPFFS "/shardsock-%04x-%llu-%s-xsks", c->fanout_id, ino, c->ifname);
}

/* The path of the program's object: SHARDSOCK_XDP_OBJ, or next to shardsockd. */
static void object_path(char *out, size_t len)
{
    const char *env = getenv("SHARDSOCK_XDP_OBJ");
    char exe[PATH_MAX - 32];
    ssize_t n;
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return;
    }
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        snprintf(out, len, "xdp_redirect.bpf.o");
        return;
    }
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    snprintf(out, len, "%s/xdp_redirect.bpf.o", exe);
}

/* The id of the map behind fd, or 0. */
static uint32_t map_id(int fd)
{
    struct bpf_map_info info;
    uint32_t len = sizeof info;
    memset(&info, 0, sizeof info);
    return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : 0;
}

/* The name of the program attached to ifindex in native mode ("" when none). */
static uint32_t attached_prog(unsigned ifindex, char *name, size_t len)
{
    uint32_t id = 0;
    name[0] = 0;
    if (bpf_xdp_query_id((int)ifindex, XDP_FLAGS_DRV_MODE, &id) < 0 || !id)
        return 0;
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd >= 0) {
        struct bpf_prog_info info;
        uint32_t ilen = sizeof info;
        memset(&info, 0, sizeof info);
        if (bpf_obj_get_info_by_fd(fd, &info, &ilen) == 0)
            snprintf(name, len, "%s", info.name);
        close(fd);
    }
    return id;
}

/* Whether the program attached to ifindex uses the map whose id is want. */
static int attached_uses_map(unsigned ifindex, uint32_t want)
{
    uint32_t id = 0, ids[8];
    if (bpf_xdp_query_id((int)ifindex, XDP_FLAGS_DRV_MODE, &id) < 0 || !id)
        return 0;
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0)
        return 0;
    struct bpf_prog_info info;
    uint32_t len = sizeof info;
    memset(&info, 0, sizeof info);
    info.nr_map_ids = 8;
    info.map_ids = (uint64_t)(uintptr_t)ids;
    int found = 0;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0)
        for (uint32_t i = 0; i < info.nr_map_ids && i < 8; i++)
            found |= ids[i] == want;
    close(fd);
    return found;
}

/* Instance 0: loads the program, sets the stack's address, pins the XSKMAP
 * and returns its fd; the program is attached after our socket is in. */
static int load_program(struct xdp *x, const struct ss_netdev_conf *c, char *err, size_t errlen)
{
    char path[PATH_MAX];
    object_path(path, sizeof path);
    if (access(path, R_OK) < 0) {
        snprintf(err, errlen, "afxdp: the XDP program %s is missing: run 'make build' (or set SHARDSOCK_XDP_OBJ)",
                 path);
        return -1;
    }
    x->obj = bpf_object__open_file(path, NULL);
    if (!x->obj) {
        snprintf(err, errlen, "afxdp: cannot open the XDP program %s: %s (rebuild it: make build)", path,
                 strerror(errno));
        return -1;
    }
    if (bpf_object__load(x->obj) < 0) {
        int e = errno;
        snprintf(err, errlen, "afxdp: cannot load the XDP program into the kernel: %s%s", strerror(e),
                 e == EPERM || e == EACCES ? " (BPF permission denied: run as root, or with CAP_BPF, "
                                             "CAP_NET_ADMIN and CAP_SYS_ADMIN)"
                                           : " (the kernel needs CONFIG_BPF_SYSCALL and CONFIG_XDP_SOCKETS)");
        return -1;
    }
    struct bpf_program *prog = bpf_object__find_program_by_name(x->obj, PROG_NAME);
    int cfg = bpf_object__find_map_fd_by_name(x->obj, "ss_cfg");
    int xsks = bpf_object__find_map_fd_by_name(x->obj, "ss_xsks");
    if (!prog || cfg < 0 || xsks < 0) {
        snprintf(err, errlen, "afxdp: %s is not shardsock's XDP program (no %s, ss_cfg or ss_xsks): rebuild it "
                 "with 'make build'", path, PROG_NAME);
        return -1;
    }
    x->prog_fd = bpf_program__fd(prog);
    uint32_t key = 0, ip = htonl(c->stack_ip);
    if (bpf_map_update_elem(cfg, &key, &ip, BPF_ANY) < 0) {
        snprintf(err, errlen, "afxdp: cannot write the stack's address into the program's map: %s",
                 strerror(errno));
        return -1;
    }
    if (c->nqueues > 1) {
        /* The others need the XSKMAP: pin it in bpffs.  In a namespace made
         * by `ip netns exec`, /sys is fresh and /sys/fs/bpf is no bpffs;
         * the mount is private to this mount namespace (the group's). */
        if (!is_bpffs(BPFFS) && mount("bpf", BPFFS, "bpf", 0, "mode=0700") < 0) {
            snprintf(err, errlen, "afxdp: %s is not a bpf filesystem and mounting one failed: %s (mount it: "
                     "mount -t bpf bpf %s; several instances share the XSKMAP through it)", BPFFS,
                     strerror(errno), BPFFS);
            return -1;
        }
        pin_path(x->pin, sizeof x->pin, c);
        unlink(x->pin); /* a stale pin from a group that was killed */
        if (bpf_obj_pin(xsks, x->pin) < 0) {
            snprintf(err, errlen, "afxdp: cannot pin the XSKMAP at %s: %s", x->pin, strerror(errno));
            x->pin[0] = 0;
            return -1;
        }
    }
    return xsks;
}

/* Instances > 0: the XSKMAP pinned by instance 0, once the program that
 * uses it is attached (a stale pin is never taken). */
static int wait_for_map(const struct xdp *x, const struct ss_netdev_conf *c, char *err, size_t errlen)
{
    char pin[PATH_MAX];
    pin_path(pin, sizeof pin, c);
    for (int waited = 0; waited < WAIT_PIN_MS; waited += 20) {
        if (is_bpffs(BPFFS)) {
            int fd = bpf_obj_get(pin);
            if (fd >= 0) {
                if (attached_uses_map(x->ifindex, map_id(fd)))
                    return fd;
                close(fd);
            } else if (errno == EPERM || errno == EACCES) {
                snprintf(err, errlen, "afxdp: cannot open the pinned XSKMAP %s: %s (BPF permission denied: run as "
                         "root, or with CAP_BPF and CAP_NET_ADMIN)", pin, strerror(errno));
                return -1;
            }
        }
        sleep_ms(20);
    }
    snprintf(err, errlen, "afxdp: instance 0 did not attach the XDP program and pin its XSKMAP at %s within %d s "
             "(is %s a bpf filesystem in this mount namespace? see instance 0's log)", pin, WAIT_PIN_MS / 1000,
             BPFFS);
    return -1;
}

static int create_socket(struct xdp *x, const struct ss_netdev_conf *c, char *err, size_t errlen)
{
    size_t bytes = (size_t)FRAMES * FRAME_SIZE;
    x->area = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (x->area == MAP_FAILED) {
        x->area = NULL;
        snprintf(err, errlen, "afxdp: cannot allocate the UMEM (%zu bytes)", bytes);
        return -1;
    }
    struct xsk_umem_config ucfg = {.fill_size = RING, .comp_size = RING, .frame_size = FRAME_SIZE,
                                   .frame_headroom = 0, .flags = 0};
    int r = xsk_umem__create(&x->umem, x->area, bytes, &x->fill, &x->comp, &ucfg);
    if (r) {
        snprintf(err, errlen, "afxdp: cannot register the UMEM: %s%s", strerror(-r),
                 -r == EPERM ? " (needs root, or CAP_NET_RAW)" : "");
        return -1;
    }
    /* Zero-copy first; the driver refuses it when it cannot (veth: copy only). */
    struct xsk_socket_config scfg = {.rx_size = RING, .tx_size = RING,
                                     .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
                                     .xdp_flags = XDP_FLAGS_DRV_MODE,
                                     .bind_flags = XDP_USE_NEED_WAKEUP | XDP_ZEROCOPY};
    r = xsk_socket__create(&x->xsk, c->ifname, c->queue, x->umem, &x->rx, &x->tx, &scfg);
    if (r) {
        scfg.bind_flags = XDP_USE_NEED_WAKEUP | XDP_COPY;
        r = xsk_socket__create(&x->xsk, c->ifname, c->queue, x->umem, &x->rx, &x->tx, &scfg);
    }
    if (r) {
        snprintf(err, errlen, "afxdp: cannot bind an AF_XDP socket to queue %u of %s: %s%s", c->queue, c->ifname,
                 strerror(-r),
                 -r == EINVAL ? " (does the interface have that many queues? veth: ip link add ... "
                                "numtxqueues N numrxqueues N, on both ends)"
                 : -r == EAFNOSUPPORT ? " (the kernel lacks CONFIG_XDP_SOCKETS)"
                 : -r == EBUSY ? " (another AF_XDP socket owns that queue: is another group up on it?)"
                 : -r == EPERM ? " (needs root, or CAP_NET_RAW)" : "");
        return -1;
    }
    /* Every receive frame into the fill ring; the rest are for transmit. */
    uint32_t idx;
    if (xsk_ring_prod__reserve(&x->fill, RX_FRAMES, &idx) != RX_FRAMES) {
        snprintf(err, errlen, "afxdp: cannot fill the fill ring");
        return -1;
    }
    for (uint32_t i = 0; i < RX_FRAMES; i++)
        *xsk_ring_prod__fill_addr(&x->fill, idx + i) = (uint64_t)i * FRAME_SIZE;
    xsk_ring_prod__submit(&x->fill, RX_FRAMES);
    for (uint32_t i = 0; i < FRAMES - RX_FRAMES; i++)
        x->free_tx[x->nfree++] = (uint64_t)(RX_FRAMES + i) * FRAME_SIZE;
    return 0;
}

static void xdp_teardown(struct xdp *x)
{
    if (x->xsk)
        xsk_socket__delete(x->xsk); /* also leaves the XSKMAP */
    if (x->umem)
        xsk_umem__delete(x->umem);
    if (x->area)
        munmap(x->area, (size_t)FRAMES * FRAME_SIZE);
    if (x->attached) {
        LIBBPF_OPTS(bpf_xdp_attach_opts, opts, .old_prog_fd = x->prog_fd);
        /* Only our own program: never someone else's that replaced it. */
        bpf_xdp_detach((int)x->ifindex, XDP_FLAGS_DRV_MODE | XDP_FLAGS_REPLACE, &opts);
    }
    if (x->obj)
        bpf_object__close(x->obj);
    if (x->pin[0])
        unlink(x->pin);
    free(x);
}

static int xdp_open(struct ss_netdev *d, const struct ss_netdev_conf *c, char *err, size_t errlen)
{
    if (ss_netdev_kernel_holds(c->ifname, c->stack_ip)) {
        snprintf(err, errlen, "afxdp: the kernel holds the stack's address on %s: remove it "
                 "(ip addr del ... dev %s) or give the stack another address; both would answer", c->ifname,
                 c->ifname);
        return -1;
    }
    unsigned idx = if_nametoindex(c->ifname);
    if (!idx) {
        snprintf(err, errlen, "afxdp: no interface %s", c->ifname);
        return -1;
    }
    struct xdp *x = calloc(1, sizeof *x);
    if (!x) {
        snprintf(err, errlen, "afxdp: out of memory");
        return -1;
    }
    x->ifindex = idx;
    x->prog_fd = -1;
    int map = -1;
    if (c->queue == 0) {
        char name[64];
        uint32_t id = attached_prog(idx, name, sizeof name);
        if (id && strcmp(name, PROG_NAME) != 0) {
            snprintf(err, errlen, "afxdp: another XDP program (id %u, %s) is attached to %s; only one can be: "
                     "remove it (ip link set dev %s xdp off) or use another backend", id, name, c->ifname,
                     c->ifname);
            goto fail;
        }
        /* An XDP program of ours left by a group that was killed is replaced below. */
        map = load_program(x, c, err, errlen);
    } else {
        map = wait_for_map(x, c, err, errlen);
    }
    if (map < 0 || create_socket(x, c, err, errlen) < 0)
        goto fail;
    int r = xsk_socket__update_xskmap(x->xsk, map);
    if (r) {
        snprintf(err, errlen, "afxdp: cannot insert the socket of queue %u into the XSKMAP: %s", c->queue,
                 strerror(-r));
        goto fail;
    }
    if (c->queue != 0) {
        close(map);
        map = -1;
    }
    if (x->obj && (r = bpf_xdp_attach((int)idx, x->prog_fd, XDP_FLAGS_DRV_MODE, NULL)) < 0) {
        snprintf(err, errlen, "afxdp: cannot attach the XDP program to %s in native mode: %s%s", c->ifname,
                 strerror(-r),
                 -r == EOPNOTSUPP ? " (the driver does not support native XDP: use the afpacket backend)"
                 : -r == EPERM    ? " (BPF permission denied: run as root, or with CAP_NET_ADMIN and CAP_BPF)"
                 : -r == EBUSY    ? " (another XDP program is attached: ip link set dev IF xdp off)"
                 : -r == ENOSPC   ? " (veth: the interface needs at least as many receive queues as its peer "
                                    "has transmit queues)"
                                  : "");
        goto fail;
    }
    x->attached = x->obj != NULL;
    d->priv = x;
    d->fd = xsk_socket__fd(x->xsk);
    d->queue = c->queue;
    snprintf(d->ifname, sizeof d->ifname, "%s", c->ifname);
    return 0;
fail:
    if (map >= 0 && c->queue != 0)
        close(map);
    xdp_teardown(x);
    return -1;
}

/* Transmit frames the kernel has sent go back on the free list. */
static void reclaim(struct xdp *x)
{
    uint32_t idx, n = xsk_ring_cons__peek(&x->comp, RING, &idx);
    for (uint32_t i = 0; i < n; i++)
        x->free_tx[x->nfree++] = *xsk_ring_cons__comp_addr(&x->comp, idx + i) & ~(uint64_t)(FRAME_SIZE - 1);
    if (n)
        xsk_ring_cons__release(&x->comp, n);
}

static int xdp_rx_burst(struct ss_netdev *d)
{
    struct xdp *x = d->priv;
    uint32_t idx, fidx, n = xsk_ring_cons__peek(&x->rx, SS_NETDEV_BURST, &idx);
    if (!n) {
        if (xsk_ring_prod__needs_wakeup(&x->fill))
            recvfrom(d->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
        return 0;
    }
    /* The fill ring holds every receive frame, so there is room for these. */
    uint32_t got = xsk_ring_prod__reserve(&x->fill, n, &fidx);
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *desc = xsk_ring_cons__rx_desc(&x->rx, idx + i);
        uint32_t len = desc->len < SS_NETDEV_FRAME ? desc->len : SS_NETDEV_FRAME;
        memcpy(d->rx[i], xsk_umem__get_data(x->area, desc->addr), len);
        d->rx_len[i] = len;
        if (i < got)
            *xsk_ring_prod__fill_addr(&x->fill, fidx + i) = desc->addr & ~(uint64_t)(FRAME_SIZE - 1);
    }
    xsk_ring_cons__release(&x->rx, n);
    if (got)
        xsk_ring_prod__submit(&x->fill, got);
    if (xsk_ring_prod__needs_wakeup(&x->fill))
        recvfrom(d->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    return (int)n;
}

/* Descriptors in the transmit ring the kernel has not taken yet. */
static uint32_t tx_outstanding(const struct xdp *x)
{
    return *x->tx.producer - __atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE);
}

static void xdp_flush(struct ss_netdev *d)
{
    struct xdp *x = d->priv;
    /* One kick per 32 descriptors (copy mode's batch), until the kernel has
     * taken them all or stops making progress (it says why in errno:
     * EAGAIN/EBUSY, or ENOBUFS when the completion ring is full). */
    for (int tries = 0; tries < 64; tries++) {
        reclaim(x);
        uint32_t before = tx_outstanding(x);
        if (!before)
            break;
        /* Copy mode always wants the kick (its need_wakeup flag stays set). */
        sendto(d->fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
        if (tx_outstanding(x) == before)
            break;
    }
    reclaim(x);
    x->tx_pending = 0;
}

static int xdp_tx(struct ss_netdev *d, const uint8_t *frame, size_t len)
{
    struct xdp *x = d->priv;
    uint32_t idx;
    if (len > FRAME_SIZE)
        return -1;
    if (!x->nfree)
        reclaim(x);
    if (!x->nfree || xsk_ring_prod__reserve(&x->tx, 1, &idx) != 1) {
        /* Full: kick what is queued and try once more. */
        xdp_flush(d);
        if (!x->nfree || xsk_ring_prod__reserve(&x->tx, 1, &idx) != 1)
            return -1;
    }
    uint64_t addr = x->free_tx[--x->nfree];
    memcpy(xsk_umem__get_data(x->area, addr), frame, len);
    struct xdp_desc *desc = xsk_ring_prod__tx_desc(&x->tx, idx);
    desc->addr = addr;
    desc->len = (uint32_t)len;
    desc->options = 0;
    xsk_ring_prod__submit(&x->tx, 1);
    if (++x->tx_pending >= KICK_BATCH)
        xdp_flush(d);
    return 0;
}

static void xdp_close(struct ss_netdev *d)
{
    struct xdp *x = d->priv;
    if (x) {
        xdp_flush(d);
        xdp_teardown(x); /* closes the XSK, which is d->fd */
        d->priv = NULL;
    }
    d->fd = -1;
}

const struct ss_netdev_ops ss_netdev_afxdp = {
    .name = "afxdp",
    .open = xdp_open,
    .rx_burst = xdp_rx_burst,
    .tx = xdp_tx,
    .flush = xdp_flush,
    .close = xdp_close,
};
