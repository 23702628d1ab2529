/*
 * Packet I/O backends behind one ops table (the model is Redis's ae: one
 * small static API, one file per backend).  A backend owns one queue of one
 * device for one instance.
 */
#ifndef SS_NETDEV_H
#define SS_NETDEV_H

#include <stddef.h>
#include <stdint.h>

#define SS_NETDEV_BURST 32
#define SS_NETDEV_FRAME 2048

struct ss_netdev_conf {
    const char *ifname;     /* device name */
    uint32_t queue;         /* the queue this instance owns */
    uint32_t nqueues;       /* queues in the group (instances) */
    uint16_t port_lo, port_hi; /* ephemeral ports, for the steering rule */
    uint32_t stack_ip;      /* host order */
    uint16_t fanout_id;     /* afpacket: the group's fanout group; afxdp: names the pinned XSKMAP */
};

struct ss_netdev {
    const struct ss_netdev_ops *ops;
    int fd;                 /* what the instance sleeps on */
    void *priv;             /* the backend's own state */
    char ifname[16];
    uint32_t queue;
    uint32_t tx_async_errors; /* frames a flush handed over that the device then refused */
    /* the last receive burst */
    uint8_t rx[SS_NETDEV_BURST][SS_NETDEV_FRAME];
    uint32_t rx_len[SS_NETDEV_BURST];
};

struct ss_netdev_ops {
    const char *name;
    /* 0, or -1 with a sentence in err saying what failed and what to do. */
    int (*open)(struct ss_netdev *d, const struct ss_netdev_conf *c, char *err, size_t errlen);
    /* Frames received into d->rx[0..n-1]; 0 when none waits; -1 on error. */
    int (*rx_burst)(struct ss_netdev *d);
    /* Sends (or queues) one frame; -1 when the device refused it. */
    int (*tx)(struct ss_netdev *d, const uint8_t *frame, size_t len);
    /* Hands queued frames to the device: one system call per burst.  NULL
     * when tx sends at once. */
    void (*flush)(struct ss_netdev *d);
    void (*close)(struct ss_netdev *d);
};

extern const struct ss_netdev_ops ss_netdev_tap;
extern const struct ss_netdev_ops ss_netdev_afpacket;
extern const struct ss_netdev_ops ss_netdev_afxdp;

const struct ss_netdev_ops *ss_netdev_find(const char *name);
int ss_netdev_kernel_holds(const char *ifname, uint32_t ip);

#endif
