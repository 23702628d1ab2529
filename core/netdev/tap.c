/*
 * The tap backend: one queue of a multi-queue TAP device per instance.
 *
 * The kernel side of the device holds the host's address; what the host
 * sends to the stack arrives here.  Multi-queue TAP picks a queue by its own
 * flow hash and forgets idle flows (PRIOR_ART.md), so instance 0 attaches a
 * steering program (TUNSETSTEERINGEBPF) that applies our rule instead:
 *   - TCP to an ephemeral port: queue = port % nqueues, the instance that
 *     chose the port for its active open (engine.h port_mod/port_rem);
 *   - other TCP: a hash of the remote address and port, so each passive
 *     connection stays on the instance that received its SYN;
 *   - everything else (ARP, ICMP): queue 0.
 *
 * Transmit is batched through io_uring (a write to a TAP device is one
 * frame, so writev cannot batch): each frame sent is copied into a buffer
 * and queued as a write, the flush phase hands the pass's writes to the
 * kernel in one io_uring_enter, and completions are taken from the shared
 * ring with no system call.  Where io_uring is unavailable (an old kernel,
 * a seccomp policy) frames are written one by one.
 *
 * Receive, on Linux 6.7 and later: one multishot read with provided
 * buffers (a ring of 64 the kernel takes from), armed once; each frame's
 * completion is copied out by the receive burst, which gives the buffer
 * back at once.  No read() per frame (nginx-close: the instance's reads
 * fell from 5.2 to 0.5 per connection).  Debian 12's liburing (2.3) has
 * no helper for the opcode, so the SQE is made by hand.  Posting many
 * single reads was tried and dropped: every armed read wakes on each
 * frame (64 posted reads made a 1-connection echo 2.5 times slower at 3
 * times the CPU).
 *
 * Before 6.7 (the first completion says EINVAL) receive is one read() per
 * frame, in a burst until EAGAIN, and the ring says when to read: one
 * multishot poll of the device, armed once, posts
 * a completion when frames arrive after the queue was found empty, so the
 * instance's spin (a pass every few hundred nanoseconds while it waits for
 * work) looks at the completion ring in memory instead of making a read()
 * that fails with EAGAIN: that read was 40 of the instance's 65 system
 * calls per nginx connection.  The ring runs its task work cooperatively
 * (IORING_SETUP_COOP_TASKRUN): by default the kernel would post the poll's
 * completions by interrupting the instance as a signal does, and a
 * blocking call with a timeout (the control socket's recv) then fails
 * with EINTR.  The ring's TASKRUN flag says when work waits, and the
 * receive burst enters the kernel for it then.  A kernel without it
 * (before 5.19) gets the plain read until EAGAIN.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <linux/bpf.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "netdev.h"

/* ---- io_uring: the frames in flight ---- */

#define TAP_TX_SLOTS 256

/* The poll's completions carry this, the multishot read's the next; the
 * writes carry their buffer slot. */
#define TAP_POLL_TAG UINT64_MAX
#define TAP_READ_TAG (UINT64_MAX - 1)

/* Multishot read (Linux 6.7): Debian 12's headers predate the opcode,
 * which follows IORING_OP_SENDMSG_ZC in the kernel's list. */
#define TAP_OP_READ_MULTISHOT (IORING_OP_SENDMSG_ZC + 1)
#define TAP_RX_BUFS 64                /* provided buffers: frames read ahead of the engine */
#define TAP_BGID 7

enum { MS_UNTRIED, MS_ON, MS_OFF };

struct tap_io {
    struct io_uring ring;
    bool coop;                       /* COOP_TASKRUN: the poll may be used */
    bool polling;                    /* the multishot poll is armed */
    bool rx_maybe;                   /* frames may wait: read until EAGAIN */
    /* the multishot read: frames land in provided buffers, their
     * completions wait in pend until a receive burst copies them out */
    int ms;                          /* MS_*: MS_OFF, the poll and read() instead */
    bool reading;                    /* armed */
    struct io_uring_buf_ring *br;
    uint8_t (*rxbuf)[SS_NETDEV_FRAME];
    uint16_t pend_bid[TAP_RX_BUFS];
    uint32_t pend_len[TAP_RX_BUFS];
    uint32_t pend_head, pend_tail;
    uint32_t queued;                 /* writes prepared since the last submit */
    uint32_t free[TAP_TX_SLOTS], nfree;
    uint32_t len[TAP_TX_SLOTS];
    uint8_t buf[TAP_TX_SLOTS][SS_NETDEV_FRAME];
};

/* Written buffers come back; refused frames are counted; the poll says
 * frames came. */
static void reap(struct ss_netdev *d, struct tap_io *q)
{
    struct io_uring_cqe *cqe;
    while (io_uring_peek_cqe(&q->ring, &cqe) == 0) {
        if (io_uring_cqe_get_data64(cqe) == TAP_READ_TAG) {
            if (cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
                /* at most TAP_RX_BUFS are out of the ring: pend never overflows */
                uint32_t i = q->pend_head++ % TAP_RX_BUFS;
                q->pend_bid[i] = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                q->pend_len[i] = (uint32_t)cqe->res;
                q->ms = MS_ON;
            }
            if (!(cqe->flags & IORING_CQE_F_MORE)) {
                q->reading = false; /* armed again by the next burst */
                /* out of buffers: the burst gives them back; anything
                 * else (a kernel without the opcode: EINVAL) turns it off */
                if (cqe->res < 0 && cqe->res != -ENOBUFS)
                    q->ms = MS_OFF;
            }
            io_uring_cqe_seen(&q->ring, cqe);
            continue;
        }
        if (io_uring_cqe_get_data64(cqe) == TAP_POLL_TAG) {
            q->rx_maybe = true;
            if (!(cqe->flags & IORING_CQE_F_MORE))
                q->polling = false; /* ended (an error, an overflow): armed again by the next burst */
            io_uring_cqe_seen(&q->ring, cqe);
            continue;
        }
        uint32_t slot = (uint32_t)io_uring_cqe_get_data64(cqe);
        if (cqe->res < 0 || (uint32_t)cqe->res != q->len[slot])
            d->tx_async_errors++;
        q->free[q->nfree++] = slot;
        io_uring_cqe_seen(&q->ring, cqe);
    }
}

/* ---- the steering program, written as eBPF instructions ---- */

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
#define MOV64_REG(d, s) INSN(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define MOV64_IMM(d, i) INSN(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, i)
#define ALU64_IMM(op, d, i) INSN(BPF_ALU64 | (op) | BPF_K, d, 0, 0, i)
#define ALU64_REG(op, d, s) INSN(BPF_ALU64 | (op) | BPF_X, d, s, 0, 0)
#define ALU32_IMM(op, d, i) INSN(BPF_ALU | (op) | BPF_K, d, 0, 0, i)
#define LD_ABS(sz, off) INSN(BPF_LD | (sz) | BPF_ABS, 0, 0, 0, off)
#define LD_IND(sz, s, off) INSN(BPF_LD | (sz) | BPF_IND, 0, s, 0, off)
#define JMP_IMM(op, d, i, o) INSN(BPF_JMP | (op) | BPF_K, d, 0, o, i)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

static int load_steering(uint32_t nqueues, uint16_t lo, uint16_t hi, char *log, size_t loglen)
{
    /* LD_ABS/LD_IND read the frame through the context in r6 and convert
     * to host order; a read past the end returns from the program with 0. */
    struct bpf_insn prog[] = {
        MOV64_REG(BPF_REG_6, BPF_REG_1),
        LD_ABS(BPF_H, 12),                              /* ethertype */
        JMP_IMM(BPF_JNE, BPF_REG_0, 0x0800, 19),        /* -> queue 0 */
        LD_ABS(BPF_B, 23),                              /* IP protocol */
        JMP_IMM(BPF_JNE, BPF_REG_0, 6, 17),
        LD_ABS(BPF_B, 14),                              /* version/IHL */
        ALU64_IMM(BPF_AND, BPF_REG_0, 0x0f),
        ALU64_IMM(BPF_LSH, BPF_REG_0, 2),
        MOV64_REG(BPF_REG_7, BPF_REG_0),                /* r7 = IP header length */
        LD_IND(BPF_H, BPF_REG_7, 14 + 2),               /* TCP destination port */
        JMP_IMM(BPF_JLT, BPF_REG_0, lo, 3),             /* -> not ephemeral */
        JMP_IMM(BPF_JGT, BPF_REG_0, hi, 2),
        ALU64_IMM(BPF_MOD, BPF_REG_0, (int32_t)nqueues), /* an ephemeral port: its instance */
        EXIT(),
        LD_IND(BPF_H, BPF_REG_7, 14),                   /* not ephemeral: source port */
        MOV64_REG(BPF_REG_9, BPF_REG_0),
        LD_ABS(BPF_W, 26),                              /* source address */
        ALU64_REG(BPF_ADD, BPF_REG_0, BPF_REG_9),
        ALU32_IMM(BPF_MUL, BPF_REG_0, (int32_t)0x9E3779B1u), /* Fibonacci hash */
        ALU64_IMM(BPF_RSH, BPF_REG_0, 16),
        ALU64_IMM(BPF_MOD, BPF_REG_0, (int32_t)nqueues),
        EXIT(),
        MOV64_IMM(BPF_REG_0, 0),
        EXIT(),
    };
    /* The jump offsets above count instructions: keep them in step. */
    _Static_assert(sizeof prog / sizeof prog[0] == 24, "steering program length changed: fix jump offsets");
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insns = (uint64_t)(uintptr_t)prog;
    attr.insn_cnt = sizeof prog / sizeof prog[0];
    attr.license = (uint64_t)(uintptr_t) "GPL";
    attr.log_buf = (uint64_t)(uintptr_t)log;
    attr.log_size = (uint32_t)loglen;
    attr.log_level = 1;
    return (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
}

static int tap_open(struct ss_netdev *d, const struct ss_netdev_conf *c, char *err, size_t errlen)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        snprintf(err, errlen, "tap: cannot open /dev/net/tun: %s (load the tun module, run as root)",
                 strerror(errno));
        return -1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE;
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", c->ifname);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        snprintf(err, errlen, "tap: cannot attach a queue of %s: %s (is it a multi-queue tap device, "
                 "created by 'shardsock up'?)", c->ifname, strerror(errno));
        close(fd);
        return -1;
    }
    if (c->queue == 0 && c->nqueues > 1) {
        char log[4096] = "";
        int prog = load_steering(c->nqueues, c->port_lo, c->port_hi, log, sizeof log);
        if (prog < 0) {
            snprintf(err, errlen, "tap: cannot load the steering program: %s (needs root or CAP_BPF) %.200s",
                     strerror(errno), log);
            close(fd);
            return -1;
        }
        int r = ioctl(fd, TUNSETSTEERINGEBPF, &prog);
        close(prog); /* the device holds its own reference */
        if (r < 0) {
            snprintf(err, errlen, "tap: TUNSETSTEERINGEBPF failed: %s (kernel 4.16 or newer needed)",
                     strerror(errno));
            close(fd);
            return -1;
        }
    }
    d->fd = fd;
    d->queue = c->queue;
    d->priv = NULL;
    snprintf(d->ifname, sizeof d->ifname, "%s", c->ifname);
    struct tap_io *q = calloc(1, sizeof *q);
    if (q && io_uring_queue_init(TAP_TX_SLOTS, &q->ring, IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG) == 0)
        q->coop = true;
    else if (!q || io_uring_queue_init(TAP_TX_SLOTS, &q->ring, 0) < 0) {
        free(q); /* one frame per system call */
        return 0;
    }
    for (uint32_t i = 0; i < TAP_TX_SLOTS; i++)
        q->free[i] = TAP_TX_SLOTS - 1 - i;
    q->nfree = TAP_TX_SLOTS;
    d->priv = q;
    q->ms = MS_OFF;
    /* SHARDSOCKD_TAP_RECEIVE=read: the path of kernels before 6.7 (its test) */
    const char *how = getenv("SHARDSOCKD_TAP_RECEIVE");
    if (q->coop && !(how && strcmp(how, "read") == 0)) {
        /* the provided buffers of the multishot read, in a ring the kernel
         * takes them from (IORING_REGISTER_PBUF_RING, Linux 5.19) */
        size_t rlen = TAP_RX_BUFS * sizeof(struct io_uring_buf);
        void *ring = mmap(NULL, rlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        q->rxbuf = malloc((size_t)TAP_RX_BUFS * SS_NETDEV_FRAME);
        struct io_uring_buf_reg reg = {.ring_addr = (uintptr_t)ring, .ring_entries = TAP_RX_BUFS, .bgid = TAP_BGID};
        if (ring != MAP_FAILED && q->rxbuf && io_uring_register_buf_ring(&q->ring, &reg, 0) == 0) {
            q->br = ring;
            io_uring_buf_ring_init(q->br);
            for (uint16_t b = 0; b < TAP_RX_BUFS; b++)
                io_uring_buf_ring_add(q->br, q->rxbuf[b], SS_NETDEV_FRAME, b, io_uring_buf_ring_mask(TAP_RX_BUFS),
                                      b);
            io_uring_buf_ring_advance(q->br, TAP_RX_BUFS);
            q->ms = MS_UNTRIED;
        } else {
            if (ring != MAP_FAILED)
                munmap(ring, rlen);
            free(q->rxbuf);
            q->rxbuf = NULL;
        }
    }
    return 0;
}

/* The multishot read of the device; false when the ring has no room. */
static bool arm_read(struct ss_netdev *d, struct tap_io *q)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
    if (!sqe)
        return false;
    io_uring_prep_rw(TAP_OP_READ_MULTISHOT, sqe, d->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = TAP_BGID;
    io_uring_sqe_set_data64(sqe, TAP_READ_TAG);
    q->queued++;
    q->reading = true;
    return true;
}

/* Frames the multishot read brought, copied out to d->rx; their buffers
 * go back to the kernel at once. */
static int take_read(struct ss_netdev *d, struct tap_io *q)
{
    int n = 0;
    for (; n < SS_NETDEV_BURST && q->pend_tail != q->pend_head; n++, q->pend_tail++) {
        uint32_t i = q->pend_tail % TAP_RX_BUFS;
        uint16_t b = q->pend_bid[i];
        uint32_t len = q->pend_len[i] < SS_NETDEV_FRAME ? q->pend_len[i] : SS_NETDEV_FRAME;
        memcpy(d->rx[n], q->rxbuf[b % TAP_RX_BUFS], len);
        d->rx_len[n] = len;
        io_uring_buf_ring_add(q->br, q->rxbuf[b % TAP_RX_BUFS], SS_NETDEV_FRAME, b, io_uring_buf_ring_mask(TAP_RX_BUFS),
                              0);
        io_uring_buf_ring_advance(q->br, 1);
    }
    return n;
}

/* The multishot poll of the device; false when the ring has no room. */
static bool arm_poll(struct ss_netdev *d, struct tap_io *q)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
    if (!sqe)
        return false;
    io_uring_prep_poll_multishot(sqe, d->fd, POLLIN);
    io_uring_sqe_set_data64(sqe, TAP_POLL_TAG);
    q->queued++;
    q->polling = true;
    q->rx_maybe = true; /* what came before it was armed is read first */
    return true;
}

static int tap_rx_burst(struct ss_netdev *d)
{
    struct tap_io *q = d->priv;
    if (q && q->coop) {
        /* the poll's completion waits as task work when frames came */
        if (IO_URING_READ_ONCE(*q->ring.sq.kflags) & IORING_SQ_TASKRUN)
            io_uring_get_events(&q->ring);
        reap(d, q); /* memory only: the completions the kernel posted */
        if (q->ms != MS_OFF) {
            /* Never read() as well: two readers would reorder frames.
             * Until the first completion says the kernel has the opcode,
             * frames wait in the device. */
            int n = take_read(d, q);
            if (!q->reading && q->ms != MS_OFF && arm_read(d, q)) {
                io_uring_submit(&q->ring);
                q->queued = 0;
            }
            if (q->ms != MS_OFF || n)
                return n;
        }
        if (!q->polling && arm_poll(d, q)) {
            io_uring_submit(&q->ring);
            q->queued = 0;
        }
        if (!q->rx_maybe)
            return 0;
    }
    int n = 0;
    while (n < SS_NETDEV_BURST) {
        ssize_t r = read(d->fd, d->rx[n], SS_NETDEV_FRAME);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                /* empty: the poll's next completion says when frames come
                 * (one that arrived during this burst costs one read more) */
                if (q && errno == EAGAIN && q->polling)
                    q->rx_maybe = false;
                break;
            }
            return n ? n : -1;
        }
        d->rx_len[n++] = (uint32_t)r;
    }
    return n;
}

static void tap_flush(struct ss_netdev *d)
{
    struct tap_io *q = d->priv;
    if (!q)
        return;
    if (q->queued) {
        io_uring_submit(&q->ring); /* the pass's writes, in one system call */
        q->queued = 0;
    }
    reap(d, q);
}

static int tap_tx(struct ss_netdev *d, const uint8_t *frame, size_t len)
{
    struct tap_io *q = d->priv;
    if (!q || len > SS_NETDEV_FRAME) {
        /* One write is one frame; the kernel delivers it to the host's
         * stack inside the call. */
        return write(d->fd, frame, len) == (ssize_t)len ? 0 : -1;
    }
    if (!q->nfree) {
        /* every buffer in flight: hand them over and wait for one back */
        io_uring_submit_and_wait(&q->ring, 1);
        q->queued = 0;
        reap(d, q);
        if (!q->nfree)
            return -1;
    }
    struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
    if (!sqe) {
        io_uring_submit(&q->ring);
        q->queued = 0;
        if (!(sqe = io_uring_get_sqe(&q->ring)))
            return -1;
    }
    uint32_t slot = q->free[--q->nfree];
    memcpy(q->buf[slot], frame, len);
    q->len[slot] = (uint32_t)len;
    io_uring_prep_write(sqe, d->fd, q->buf[slot], (unsigned)len, 0);
    io_uring_sqe_set_data64(sqe, slot);
    q->queued++;
    return 0;
}

static void tap_close(struct ss_netdev *d)
{
    struct tap_io *q = d->priv;
    if (q) {
        if (q->queued)
            io_uring_submit(&q->ring);
        io_uring_queue_exit(&q->ring);
        if (q->br)
            munmap(q->br, TAP_RX_BUFS * sizeof(struct io_uring_buf));
        free(q->rxbuf);
        free(q);
        d->priv = NULL;
    }
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
}

const struct ss_netdev_ops ss_netdev_tap = {
    .name = "tap",
    .open = tap_open,
    .rx_burst = tap_rx_burst,
    .tx = tap_tx,
    .flush = tap_flush,
    .close = tap_close,
};
