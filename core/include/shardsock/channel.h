/*
 * The channel between an application process (libshardsock.so) and one
 * instance: a shared-memory region the instance creates and hands over, by
 * SCM_RIGHTS on its control socket, with two eventfds.
 *
 * Attach: the library connects to <run_dir>/<group>/instance-K.sock and
 * sends "attach"; the instance checks SO_PEERCRED (same uid or root) and
 * answers "ok <region size>" with three descriptors: the region (a memfd),
 * the application's doorbell (the instance writes it to wake the process)
 * and the instance's doorbell (the process writes it to wake the
 * instance).  The control connection stays open: when it closes (the
 * process exited or crashed) the instance closes every socket of the
 * channel, as the kernel does for a dying process.
 *
 * After fork, the child attaches a channel of its own and adopts each
 * socket it inherited (SS_OP_ADOPT): one engine socket then has several
 * holders, and closes when the last one closes.  The received bytes go to
 * one holder's ring, the first; when it closes, what it left unread moves
 * to the next (a forking server's parent closes its copy at once).
 *
 * Requests (socket, bind, listen, accept, connect, shutdown, close, options)
 * go through the request ring, a ring of cells many threads fill at once
 * (shardsock/ring.h): no lock serialises a process's threads.  A call
 * whose answer the library must have (bind, listen, an accept the ring
 * did not hold, getsockopt) waits for its cell's answer; the instance
 * answers in its next loop pass and never blocks on it.  A call whose
 * answer the library knows, or the kernel would give later, is posted
 * (SS_REQ_POSTED) and not waited for: close, setsockopt (the kernel socket
 * checked the arguments), and a non-blocking connect, which returns
 * EINPROGRESS as the kernel's does; a failure arrives as the socket's
 * error and readiness, as SO_ERROR does on Linux.  The instance takes
 * requests in ring order, so a posted connect is done before anything
 * the process asks after it.
 *
 * A socket needs a slot before its first request.  The instance keeps a few
 * free slots granted ahead on the grant ring; socket() for a connection
 * takes one (no round trip) and posts SS_OP_SOCKET on it.  The instance
 * accepts a SS_OP_SOCKET only on a slot it granted to this channel.
 * Blocking calls are the library's: it waits for readiness.
 *
 * Accept-ahead: a listener that one process holds and uses (the socket's
 * uses word) has its connections accepted by the instance as they
 * complete: each gets a slot of the process's channel, its bytes move to
 * its rx ring as they come, and a record (struct ss_chan_accepted) names it in the listener's
 * rx ring, whose head and tail count records.  accept() takes a record with
 * no request; the connection is readable at once.  The readiness word's
 * SS_EV_IN says only that connections wait in the engine beyond the ring
 * (it was full, or the listener is shared): accept() then asks
 * (SS_OP_ACCEPT), and after taking a record kicks the listener so the
 * instance refills it.  Records not taken when the listener closes go back
 * to the engine's queue, bytes included, and on to another listener of the
 * port (listen spawn's heir) or are reset, as Linux resets a closed
 * listener's queue.
 *
 * Data goes through each socket's two byte rings with no request: the
 * library writes tx and reads rx; the instance moves bytes between them and
 * the engine, told by a kick (the socket's number on the kick ring) when the
 * library has written data or made room.  Readiness is a word per socket
 * the instance keeps current; a change is also posted on the event ring,
 * once until the library takes it, so epoll costs O(ready).
 *
 * Everything in the region is an index or an offset, never a pointer, and
 * the instance checks every index and length the library wrote before it
 * uses one: a corrupt application can crash itself, never the instance.
 * Rings: shardsock/ring.h says how every ring here is filled and emptied,
 * and how each side sleeps and wakes the other; the byte rings are single-
 * producer, single-consumer: free-running 32-bit head and tail, release
 * store on publish, acquire load on consume.
 */
#ifndef SHARDSOCK_CHANNEL_H
#define SHARDSOCK_CHANNEL_H

#ifndef SS_CDEF
#include <stdint.h>
#endif
#include <shardsock/ring.h>

#define SS_CHAN_MAGIC 0x53534348 /* "SSCH" */
#define SS_CHAN_VERSION 5
#define SS_CHAN_SOCKETS 4096     /* stack sockets per process (buffer pages only as used) */
#define SS_CHAN_RXBUF 65536      /* bytes, each a power of two */
#define SS_CHAN_TXBUF 65536
#define SS_CHAN_KICKS 8192       /* > SS_CHAN_SOCKETS: a kick is queued once */
#define SS_CHAN_EVENTS 8192
#define SS_CHAN_REQS 256         /* request cells: threads asking at once, and posted requests */
#define SS_CHAN_GRANTS 64        /* slots granted ahead (at most) */
#define SS_CHAN_GRANT_AHEAD 16   /* the instance tops the grant ring up to this many */

/* Requests */
enum ss_chan_op {
    SS_OP_NONE = 0,
    SS_OP_SOCKET,      /* -> slot; a0 = 1: on the granted slot `slot` (posted) */
    SS_OP_BIND,        /* a0 ip (host order), a1 port */
    SS_OP_LISTEN,      /* a0 backlog */
    SS_OP_ACCEPT,      /* -> new slot; a0 peer ip, a1 peer port out */
    SS_OP_CONNECT,     /* a0 ip, a1 port -> -EINPROGRESS or an error */
    SS_OP_SHUTDOWN,    /* a0 how */
    SS_OP_CLOSE,
    SS_OP_SETOPT,      /* a0 enum ss_tcp_opt, a1 value */
    SS_OP_GETOPT,      /* a0 enum ss_tcp_opt -> a1 value */
    SS_OP_INFO,        /* -> struct ss_tcp_info in reply.info */
    SS_OP_ADOPT,       /* a forked child takes a share of its parent's socket:
                        * a0 = parent channel << 32 | parent slot, a1 = the
                        * parent channel's token -> a slot here */
    SS_OP_FALLBACK,    /* a0 enum ss_fallback: a socket left to the kernel, counted */
    SS_OP_LISTENED,    /* a0 port -> 1 when a stack listener holds it in the group */
};

/* Why the library left a socket to the kernel (counters fallback_*). */
enum ss_fallback {
    SS_FB_ADDRESS = 0,     /* bound to an address that is not the stack's, or not IPv4 */
    SS_FB_PORT,            /* the stack could not bind the port */
    SS_FB_LISTEN_UNBOUND,  /* listen() without bind(): the kernel picks the port */
    SS_FB_DESTINATION,     /* connecting to a destination not behind the stack */
    SS_FB_FD_TABLE,        /* descriptor number beyond the library's table */
    SS_FB_NOT_TCP,         /* UDP, AF_UNIX, raw...: never the stack's */
    SS_FB_OPTION,          /* an option the stack cannot honour (SO_BINDTODEVICE...) */
};

/* Readiness word bits: the engine's SS_EV_* (engine.h), plus */
#define SS_CHAN_EV_EOF 0x10000    /* the rx ring ends with the peer's FIN */
#define SS_CHAN_EV_CONNECTED 0x20000

#define SS_REQ_POSTED 1    /* nobody waits for the answer: the instance frees the cell */

/* A cell of the request ring, with its answer. */
struct ss_chan_request {
    uint32_t seq;          /* the ring's (shardsock/ring.h) */
    uint32_t op;
    uint32_t slot;
    uint32_t flags;        /* SS_REQ_* */
    int64_t a0, a1;
    uint32_t tx_mark;      /* the socket's tx head when asked: bytes written before go first */
    uint32_t _pad0;
    /* the answer, by the instance */
    uint32_t done;         /* the cell's position + 1 once answered */
    int32_t result;        /* >= 0, or a negative errno */
    int64_t r0, r1;
    uint8_t info[160];     /* SS_OP_INFO: a struct ss_tcp_info */
    uint8_t _pad[32];
};

/* A cell of the kick ring: a socket the instance should look at. */
struct ss_chan_kick {
    uint32_t seq;          /* the ring's (shardsock/ring.h) */
    uint32_t slot;
};

/* A connection accepted ahead, in its listener's rx ring (accept-ahead). */
struct ss_chan_accepted {
    uint32_t slot;         /* the connection's socket in this channel */
    uint32_t remote_ip;    /* host order */
    uint16_t remote_port;
    uint16_t _pad;
    uint32_t _pad2;
};
#define SS_CHAN_ACCEPTED (SS_CHAN_RXBUF / 16) /* records a listener's ring holds */

struct ss_chan_bytes {
    uint32_t head;         /* the producer's: bytes written, free-running */
    uint8_t _pad0[60];
    uint32_t tail;         /* the consumer's: bytes read */
    uint8_t _pad1[60];
};

struct ss_chan_socket {
    uint32_t ready;        /* SS_EV_* | SS_CHAN_EV_*, kept by the instance */
    int32_t error;         /* pending SO_ERROR (negative errno), by the instance */
    uint32_t kicked;       /* 1 while a kick for it waits on the kick ring */
    uint32_t evq;          /* 1 while an event for it waits on the event ring */
    uint32_t in_use;       /* 1 from its grant, accept or SS_OP_SOCKET until closed */
    uint32_t local_ip, remote_ip;
    uint16_t local_port, remote_port;
    uint32_t more;         /* 1: the application's last send had MSG_MORE */
    uint32_t _pad1;
    uint32_t uses;         /* a listener: 1 while the process uses it (accepts, polls it, or has it in an
                            * epoll set); the kick that follows tells the instance (SS_OPT_ACTIVE) */
    uint8_t _pad[20];
    struct ss_chan_bytes rx; /* instance -> application */
    struct ss_chan_bytes tx; /* application -> instance */
};

struct ss_chan_region {
    uint32_t magic, version;
    uint32_t size;             /* of the whole region */
    uint32_t nsockets;         /* SS_CHAN_SOCKETS */
    uint32_t instance;         /* which instance of the group */
    uint32_t stack_ip;         /* host order */
    uint32_t stack_netmask;    /* the stack's subnet: destinations in it are the stack's */
    uint32_t channel;          /* this channel's number at the instance */
    uint64_t token;            /* proves a forked child holds this channel (SS_OP_ADOPT) */
    int32_t core;              /* the instance's CPU: a placed process runs there too */
    uint32_t ninstances;       /* in the group */
    uint32_t listen_gen;       /* changes when the group's stack listeners do: SS_OP_LISTENED answers
                                * asked before are stale (never 0) */
    uint8_t _pad0[12];
    /* sleeping flags: a side wakes the other only when it sleeps */
    uint32_t app_sleeping;     /* written by the library: threads asleep on app_wake_seq (a futex) */
    uint32_t app_bell_sleeping; /* and threads asleep in the kernel (poll, epoll) with the doorbell */
    uint8_t _pad1[56];
    uint32_t inst_sleeping;    /* written by the instance */
    uint8_t _pad2[60];
    uint32_t app_wake_seq;     /* bumped by the instance on every wake (a futex word) */
    uint8_t _pad3[60];
    struct ss_cellq reqq;          /* requests, application -> instance */
    struct ss_chan_request req[SS_CHAN_REQS];
    struct ss_cellq kickq;         /* socket slots, application -> instance */
    struct ss_chan_kick kicks[SS_CHAN_KICKS];
    struct ss_idxq eventq;         /* socket slots whose readiness changed, instance -> application */
    uint32_t events[SS_CHAN_EVENTS];
    struct ss_idxq grantq;         /* free slots the instance granted ahead, instance -> any thread */
    uint32_t grants[SS_CHAN_GRANTS];
    struct ss_chan_socket sock[SS_CHAN_SOCKETS];
    /* then the byte rings' data: socket k's rx at SS_CHAN_RX_OFF(k), tx
     * at SS_CHAN_TX_OFF(k) from the start of the region */
};

#define SS_CHAN_RX_OFF(k) (sizeof(struct ss_chan_region) + (uint64_t)(k) * (SS_CHAN_RXBUF + SS_CHAN_TXBUF))
#define SS_CHAN_TX_OFF(k) (SS_CHAN_RX_OFF(k) + SS_CHAN_RXBUF)
#define SS_CHAN_SIZE SS_CHAN_RX_OFF(SS_CHAN_SOCKETS)

#ifndef SS_CDEF
_Static_assert(sizeof(struct ss_chan_request) == 256, "request cell layout");
_Static_assert((SS_CHAN_REQS & (SS_CHAN_REQS - 1)) == 0 && (SS_CHAN_KICKS & (SS_CHAN_KICKS - 1)) == 0 &&
               (SS_CHAN_EVENTS & (SS_CHAN_EVENTS - 1)) == 0 && (SS_CHAN_GRANTS & (SS_CHAN_GRANTS - 1)) == 0,
               "rings are powers of two");
_Static_assert(sizeof(struct ss_chan_accepted) == 16, "accepted record layout");
_Static_assert(sizeof(struct ss_chan_region) % 64 == 0, "sockets on cache lines");
_Static_assert((SS_CHAN_RXBUF & (SS_CHAN_RXBUF - 1)) == 0 && (SS_CHAN_TXBUF & (SS_CHAN_TXBUF - 1)) == 0,
               "byte rings are powers of two");
#endif

#endif
