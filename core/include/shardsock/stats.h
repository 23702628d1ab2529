/*
 * shardsock instance stats: the shared-memory page each instance publishes,
 * and tools (shardsock status/stat, Python through cffi) read with no
 * request to the instance.
 *
 * One file per instance, /dev/shm/shardsock-<group>-<instance>, holding one
 * struct ss_instance_stats.  Only the instance writes it; every field is a
 * naturally aligned 32- or 64-bit word, so a reader sees each value whole
 * (possibly one update old).
 */
#ifndef SHARDSOCK_STATS_H
#define SHARDSOCK_STATS_H

#ifndef SS_CDEF
#include <stdint.h>
#endif

#include "counters.h"

#define SS_STATS_MAGIC 0x5353544b /* "SSTK" */
#define SS_STATS_VERSION 1

enum ss_instance_state {
    SS_INSTANCE_STARTING = 0,
    SS_INSTANCE_READY = 1,
    SS_INSTANCE_STOPPING = 2,
    SS_INSTANCE_STOPPED = 3,
};

struct ss_instance_stats {
    uint32_t magic;        /* SS_STATS_MAGIC once the page is initialised */
    uint32_t version;      /* SS_STATS_VERSION */
    uint32_t size;         /* sizeof(struct ss_instance_stats) */
    uint32_t state;        /* enum ss_instance_state */
    uint32_t instance;     /* index in the group, 0..ninstances-1 */
    uint32_t ninstances;
    int32_t core;          /* the CPU it is pinned to */
    int32_t pid;
    uint64_t started_unix_us;  /* wall clock at start */
    uint64_t heartbeat_us;     /* monotonic clock of the last loop pass */
    uint64_t loops;            /* passes of the main loop */
    uint64_t sleeps;           /* times it slept in epoll_wait */
    uint64_t busy_loops;       /* passes that did work */
    uint32_t ip;               /* the stack's address, host order */
    uint32_t netmask;
    uint8_t mac[6];
    char backend[10];          /* "tap", "afxdp", "afpacket" */
    char device[16];           /* interface name */
    uint32_t queue;            /* device queue owned */
    uint32_t _pad;
    struct ss_counters counters;
};

/*
 * The group's shared neighbour table, /dev/shm/shardsock-<group>-neigh: what
 * one instance learns by ARP, the others use (engine.h neigh_learn and
 * neigh_lookup).  Open addressing by address; each entry is guarded by a
 * sequence lock: a writer makes seq odd, writes, makes it even; a reader
 * retries while seq is odd or changed under it.
 */
#define SS_NEIGH_MAGIC 0x53534e42 /* "SSNB" */
#define SS_NEIGH_ENTRIES 256
#define SS_NEIGH_PROBE 8

struct ss_neigh_entry {
    uint32_t seq;
    uint32_t ip;       /* host order; 0: free */
    uint8_t mac[6];
    uint16_t _pad;
    uint64_t expires_us; /* monotonic clock */
};

struct ss_neigh_table {
    uint32_t magic;
    uint32_t entries;    /* SS_NEIGH_ENTRIES */
    struct ss_neigh_entry e[SS_NEIGH_ENTRIES];
};

/*
 * The group's forwarding region, /dev/shm/shardsock-<group>-fwd, created by
 * `shardsock up` before the instances start (DESIGN.md, Flow ownership).
 *
 * The flow directory says which instance owns each connection, keyed by the
 * remote address and port and the local port (the group has one address).
 * Open addressing with at most SS_FLOW_PROBE probes; key 0 is a free entry,
 * SS_FLOW_TOMBSTONE a withdrawn one that an insert may reuse.  An instance
 * writes only the entries of its own connections: it claims an entry by
 * compare-and-swap of the key, then stores owner (instance + 1; 0 while
 * being written or withdrawn).
 *
 * The listener map says which instances listen on each port: a SYN for a
 * port the receiving instance does not listen on goes to one that does.
 *
 * Forwarding rings: one single-producer single-consumer ring of frames from
 * each instance to each other, ring[src * ninstances + dst].  The producer
 * fills slot[head % SS_FWD_SLOTS] and then publishes head; the consumer
 * reads up to head and then publishes tail.  A full ring drops the frame.
 * inbox[k].sleeping is set by instance k just before it sleeps; a producer
 * that clears it writes k's doorbell (an eventfd), so a sleeping owner
 * wakes once per sleep, and a busy one is never signalled.
 */
#define SS_FWD_MAGIC 0x53534657 /* "SSFW" */
#define SS_FWD_VERSION 4
#define SS_FWD_MAX_INSTANCES 64
#define SS_FWD_SLOTS 256
#define SS_FWD_FRAME_MAX 2040   /* an MTU of 1500 and its ethernet header fit */
#define SS_FLOW_ENTRIES 262144  /* a power of two */
#define SS_FLOW_PROBE 32
#define SS_FLOW_TOMBSTONE 1

struct ss_flow_entry {
    uint64_t key;      /* rip << 32 | rport << 16 | lport */
    uint32_t owner;    /* instance + 1; 0: not (yet) valid */
    uint32_t _pad;
};

struct ss_fwd_slot {
    uint32_t len;
    uint32_t _pad;
    uint8_t frame[SS_FWD_FRAME_MAX];
};

struct ss_fwd_ring {
    uint32_t head;     /* written by the producer */
    uint8_t _pad0[60];
    uint32_t tail;     /* written by the consumer */
    uint8_t _pad1[60];
    struct ss_fwd_slot slot[SS_FWD_SLOTS];
};

struct ss_fwd_inbox {
    uint32_t sleeping;
    uint8_t _pad[60];
};

struct ss_fwd_region {
    uint32_t magic;        /* SS_FWD_MAGIC once initialised */
    uint32_t version;
    uint32_t ninstances;
    uint32_t _pad;
    uint64_t secret[2];    /* keys the directory's hash: peers cannot aim at one chain */
    uint64_t engine_key[2]; /* the instances' ISN and SYN-cookie key (struct ss_engine_config
                             * secret), one for the group: a cookie one instance sent is
                             * good at another */
    uint32_t listen_gen;   /* bumped on every change of listeners[] (the processes' LISTENED answers go stale) */
    uint8_t _pad1[12];
    struct ss_fwd_inbox inbox[SS_FWD_MAX_INSTANCES];
    /* bit k of listeners[port]: instance k listens on the port; of
     * active[port]: a process uses one of those listeners (listen spawn) */
    uint64_t listeners[65536];
    uint64_t active[65536];
    struct ss_flow_entry flows[SS_FLOW_ENTRIES];
    struct ss_fwd_ring ring[]; /* ninstances * ninstances */
};

#endif
