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
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "netdev.h"

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
    snprintf(d->ifname, sizeof d->ifname, "%s", c->ifname);
    return 0;
}

static int tap_rx_burst(struct ss_netdev *d)
{
    int n = 0;
    while (n < SS_NETDEV_BURST) {
        ssize_t r = read(d->fd, d->rx[n], SS_NETDEV_FRAME);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            return n ? n : -1;
        }
        d->rx_len[n++] = (uint32_t)r;
    }
    return n;
}

static int tap_tx(struct ss_netdev *d, const uint8_t *frame, size_t len)
{
    /* One write is one frame; the kernel delivers it to the host's stack
     * inside the call. */
    return write(d->fd, frame, len) == (ssize_t)len ? 0 : -1;
}

static void tap_close(struct ss_netdev *d)
{
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
}

const struct ss_netdev_ops ss_netdev_tap = {
    .name = "tap",
    .open = tap_open,
    .rx_burst = tap_rx_burst,
    .tx = tap_tx,
    .close = tap_close,
};
