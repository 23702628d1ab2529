/*
 * The afpacket backend: TPACKET_V2 receive and transmit rings on an
 * interface the kernel holds no address on (otherwise the kernel would
 * answer the stack's traffic too: it sees every frame).  V2, not V3: V3
 * hands a block over only when full or after >= 1 ms (PRIOR_ART.md).
 *
 * Several instances share the interface through a fanout group whose
 * classic-BPF program applies the steering rule of tap.c; fanout programs
 * see the packet from its network header.  Transmit fills ring slots and
 * kicks the kernel once per loop pass (the flush phase).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "netdev.h"

/* Linux 6.5; Debian 12's headers predate it. */
#ifndef PACKET_FANOUT_FLAG_IGNORE_OUTGOING
#define PACKET_FANOUT_FLAG_IGNORE_OUTGOING 0x4000
#endif

#define FRAMES 1024
#define FRAME_SIZE 2048
#define RING_BYTES (FRAMES * FRAME_SIZE)
#define TX_DATA TPACKET_ALIGN(sizeof(struct tpacket2_hdr))

struct pkt {
    uint8_t *rx_ring, *tx_ring;
    uint32_t rx_next, tx_next;
    uint32_t tx_pending;
};

static int attach_fanout(int fd, const struct ss_netdev_conf *c)
{
    /* The steering rule of tap.c in classic BPF, offsets from the IP header.
     * Jump offsets count instructions (jt, jf): keep them in step. */
    struct sock_filter prog[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_PROTOCOL)),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IP, 0, 17),   /* not IPv4 -> 19 */
        /* 2 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 9),
        /* 3 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 6, 0, 15),          /* not TCP -> 19 */
        /* 4 */ BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),                 /* X = IP header length */
        /* 5 */ BPF_STMT(BPF_LD | BPF_H | BPF_IND, 2),                  /* destination port */
        /* 6 */ BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, c->port_lo, 0, 3),  /* below -> 10 */
        /* 7 */ BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, c->port_hi, 2, 0),  /* above -> 10 */
        /* 8 */ BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, c->nqueues),       /* ephemeral: its instance */
        /* 9 */ BPF_STMT(BPF_RET | BPF_A, 0),
        /* 10 */ BPF_STMT(BPF_LD | BPF_H | BPF_IND, 0),                 /* otherwise: source port */
        /* 11 */ BPF_STMT(BPF_ST, 0),
        /* 12 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 12),                /* and source address */
        /* 13 */ BPF_STMT(BPF_LDX | BPF_W | BPF_MEM, 0),
        /* 14 */ BPF_STMT(BPF_ALU | BPF_ADD | BPF_X, 0),
        /* 15 */ BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, 0x9E3779B1u),      /* Fibonacci hash */
        /* 16 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
        /* 17 */ BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, c->nqueues),
        /* 18 */ BPF_STMT(BPF_RET | BPF_A, 0),
        /* 19 */ BPF_STMT(BPF_RET | BPF_K, 0),                          /* ARP, ICMP: instance 0 */
    };
    _Static_assert(sizeof prog / sizeof prog[0] == 20, "fanout program length changed: fix jump offsets");
    struct sock_fprog fp = {.len = sizeof prog / sizeof prog[0], .filter = prog};
    /* The group's hook replaces the socket's: PACKET_IGNORE_OUTGOING must
     * be asked of the group (older kernels refuse the flag: rx_burst drops
     * outgoing frames itself). */
    int arg = (int)c->fanout_id | ((PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16);
    if (setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg) < 0) {
        arg = (int)c->fanout_id | (PACKET_FANOUT_CBPF << 16);
        if (setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg) < 0)
            return -1;
    }
    return setsockopt(fd, SOL_PACKET, PACKET_FANOUT_DATA, &fp, sizeof fp);
}

static int afp_open(struct ss_netdev *d, const struct ss_netdev_conf *c, char *err, size_t errlen)
{
    if (ss_netdev_kernel_holds(c->ifname, c->stack_ip)) {
        snprintf(err, errlen, "afpacket: the kernel holds the stack's address on %s: remove it "
                 "(ip addr del ... dev %s) or give the stack another address; both would answer", c->ifname,
                 c->ifname);
        return -1;
    }
    unsigned idx = if_nametoindex(c->ifname);
    if (!idx) {
        snprintf(err, errlen, "afpacket: no interface %s", c->ifname);
        return -1;
    }
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL));
    if (fd < 0) {
        snprintf(err, errlen, "afpacket: cannot open a packet socket: %s (needs root or CAP_NET_RAW)",
                 strerror(errno));
        return -1;
    }
    int v = TPACKET_V2, one = 1;
    struct tpacket_req req = {.tp_block_size = FRAME_SIZE * 16, .tp_block_nr = FRAMES / 16,
                              .tp_frame_size = FRAME_SIZE, .tp_frame_nr = FRAMES};
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)idx};
    /* A frame the kernel refuses is skipped, not left as a wall: without
     * PACKET_LOSS its slot turns WRONG_FORMAT and the kernel's ring head
     * stops there, silencing every later frame.  It must precede the rings. */
    if (setsockopt(fd, SOL_PACKET, PACKET_LOSS, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof req) < 0) {
        snprintf(err, errlen, "afpacket: cannot set up TPACKET_V2 rings: %s", strerror(errno));
        close(fd);
        return -1;
    }
    /* Our own transmissions are not input (Linux 4.20+). */
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    uint8_t *ring = mmap(NULL, 2 * RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED || bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        snprintf(err, errlen, "afpacket: cannot map or bind on %s: %s", c->ifname, strerror(errno));
        close(fd);
        return -1;
    }
    if (c->nqueues > 1 && attach_fanout(fd, c) < 0) {
        snprintf(err, errlen, "afpacket: cannot join the fanout group: %s", strerror(errno));
        munmap(ring, 2 * RING_BYTES);
        close(fd);
        return -1;
    }
    struct pkt *p = calloc(1, sizeof *p);
    if (!p) {
        close(fd);
        return -1;
    }
    p->rx_ring = ring;
    p->tx_ring = ring + RING_BYTES;
    d->priv = p;
    d->fd = fd;
    d->queue = c->queue;
    snprintf(d->ifname, sizeof d->ifname, "%s", c->ifname);
    return 0;
}

static int afp_rx_burst(struct ss_netdev *d)
{
    struct pkt *p = d->priv;
    int n = 0;
    while (n < SS_NETDEV_BURST) {
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(p->rx_ring + (size_t)p->rx_next * FRAME_SIZE);
        if (!(__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
            break;
        /* What the kernel itself sends on the interface is not input. */
        const struct sockaddr_ll *sll = (const void *)((uint8_t *)h + TPACKET_ALIGN(sizeof *h));
        if (sll->sll_pkttype != PACKET_OUTGOING) {
            uint32_t len = h->tp_snaplen < SS_NETDEV_FRAME ? h->tp_snaplen : SS_NETDEV_FRAME;
            memcpy(d->rx[n], (uint8_t *)h + h->tp_mac, len);
            d->rx_len[n++] = len;
        }
        __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        p->rx_next = (p->rx_next + 1) % FRAMES;
    }
    return n;
}

static void afp_flush(struct ss_netdev *d)
{
    struct pkt *p = d->priv;
    if (!p->tx_pending)
        return;
    /* One kick for the whole burst. */
    send(d->fd, NULL, 0, MSG_DONTWAIT);
    p->tx_pending = 0;
}

static int afp_tx(struct ss_netdev *d, const uint8_t *frame, size_t len)
{
    struct pkt *p = d->priv;
    if (len > FRAME_SIZE - TX_DATA)
        return -1;
    struct tpacket2_hdr *h = (struct tpacket2_hdr *)(p->tx_ring + (size_t)p->tx_next * FRAME_SIZE);
    uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
    if (st != TP_STATUS_AVAILABLE && st != TP_STATUS_WRONG_FORMAT) {
        /* The ring is full: kick what is queued and try the slot once more. */
        afp_flush(d);
        st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
        if (st != TP_STATUS_AVAILABLE && st != TP_STATUS_WRONG_FORMAT)
            return -1;
    }
    memcpy((uint8_t *)h + TX_DATA, frame, len);
    h->tp_len = (uint32_t)len;
    __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
    p->tx_next = (p->tx_next + 1) % FRAMES;
    if (++p->tx_pending >= SS_NETDEV_BURST)
        afp_flush(d);
    return 0;
}

static void afp_close(struct ss_netdev *d)
{
    struct pkt *p = d->priv;
    if (p) {
        afp_flush(d);
        munmap(p->rx_ring, 2 * RING_BYTES);
        free(p);
        d->priv = NULL;
    }
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
}

const struct ss_netdev_ops ss_netdev_afpacket = {
    .name = "afpacket",
    .open = afp_open,
    .rx_burst = afp_rx_burst,
    .tx = afp_tx,
    .flush = afp_flush,
    .close = afp_close,
};
