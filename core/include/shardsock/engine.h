/*
 * shardsock engine: the public interface of one TCP/IP stack instance.
 *
 * One struct ss_engine is one instance: its own ARP cache, flow table, listen
 * table, timers and counters.  Nothing in the engine is global, so several
 * engines live in one process (the tests connect two back to back).
 *
 * The engine never reads a clock and never touches a device or a kernel
 * socket.  Frames come in through ss_engine_input(), leave through the tx
 * callback in the configuration, and time is the now_us argument of every
 * call (microseconds of a monotonic clock chosen by the caller).
 *
 * Socket calls take a socket id (a small non-negative int) and return a
 * value >= 0 or a negative errno, the errno the Linux kernel gives for the
 * same misuse.
 */
#ifndef SHARDSOCK_ENGINE_H
#define SHARDSOCK_ENGINE_H

#ifndef SS_CDEF
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#endif

#include "counters.h"

/* Called with each frame the engine sends.  The frame is valid only during
 * the call.  A non-zero return counts the frame as a device error. */
typedef int (*ss_tx_fn)(void *ctx, const uint8_t *frame, size_t len);

/*
 * Configuration.  ss_engine_config_init() fills every field with its default
 * (given in the comment); addresses are in host byte order.
 */
struct ss_engine_config {
    uint8_t mac[6];
    uint32_t ip;                 /* the stack's address */
    uint32_t netmask;            /* 255.255.255.0 */
    uint32_t gateway;            /* 0: none, only on-link destinations */
    uint32_t mtu;                /* 1500 */
    uint64_t secret[2];          /* ISN and SYN-cookie key (RFC 6528); set it */
    /* TCP */
    uint32_t rcvbuf;             /* 262144: receive buffer per connection */
    uint32_t sndbuf;             /* 262144: send buffer per connection */
    uint32_t rto_min_ms;         /* 200 (Linux's value; RFC 6298 says 1000) */
    uint32_t rto_max_ms;         /* 60000 (RFC 6298 2.5: at least 60 s) */
    uint32_t rto_initial_ms;     /* 1000 (RFC 6298 2.1) */
    uint32_t syn_retries;        /* 6: SYN retransmissions before ETIMEDOUT */
    uint32_t synack_retries;     /* 5 */
    uint32_t retries;            /* 15: data retransmissions before ETIMEDOUT */
    uint32_t delack_ms;          /* 40: delayed-ACK bound (RFC 1122: < 500) */
    uint32_t msl_ms;             /* 30000: TIME-WAIT lasts 2 * MSL */
    uint32_t fin_timeout_ms;     /* 60000: orphaned FIN-WAIT-2 lifetime */
    uint32_t keepalive_idle_ms;  /* 7200000 (RFC 1122 4.2.3.6: >= 2 h) */
    uint32_t keepalive_intvl_ms; /* 75000 */
    uint32_t keepalive_probes;   /* 9 */
    uint32_t syn_backlog;        /* 256: half-open connections per listener */
    uint32_t somaxconn;          /* 4096: cap on listen()'s backlog */
    uint32_t max_sockets;        /* 65536 */
    uint32_t challenge_ack_limit; /* 1000 per second (RFC 5961 section 7) */
    uint32_t initial_cwnd;       /* 10 segments (RFC 6928) */
    uint16_t port_lo, port_hi;   /* 32768..60999: ephemeral ports */
    /* Ephemeral ports p with p % port_mod == port_rem only, so that the
     * return traffic of an active open can be steered to this instance
     * (Fastsocket's Receive Flow Deliver).  1, 0: every port. */
    uint16_t port_mod, port_rem;
    /* Where the counters live; NULL: inside the engine.  An instance
     * points this at shared memory so tools read them with no request. */
    struct ss_counters *counters;
    /* ARP */
    uint32_t arp_timeout_ms;     /* 60000: a learned entry's lifetime */
    uint32_t arp_retry_ms;       /* 1000 */
    uint32_t arp_retries;        /* 3 requests before giving up */
    uint32_t arp_queue_max;      /* 8 packets waiting per unresolved entry */
    /* output */
    ss_tx_fn tx;
    void *tx_ctx;
    /* Optional: a neighbour table shared by the instances of a group, so an
     * address learned by one is usable by all (the one that receives an ARP
     * reply may not be the one waiting for it).  learn is called for every
     * entry this engine learns; lookup, before an ARP request, returns 0
     * and the MAC when another instance knows the address. */
    void (*neigh_learn)(void *ctx, uint32_t ip, const uint8_t mac[6]);
    int (*neigh_lookup)(void *ctx, uint32_t ip, uint8_t mac_out[6]);
    void *neigh_ctx;
    /* Optional: flow ownership across the instances of a group, for
     * backends that cannot promise every segment of a flow reaches the
     * instance that owns it (DESIGN.md, Flow ownership).  The engine
     * publishes each connection it holds (add 1 when it enters the flow
     * table, 0 when it leaves); for a TCP segment that matches no
     * connection of its own it asks flow_owner, and when another instance
     * owns the flow (a return >= 0) hands the whole frame to forward
     * instead of answering it.  forward returns 0 when the frame was
     * queued, non-zero when the ring to the owner was full (counted as
     * drop_fwd_full, never waited for).  Frames arriving through
     * ss_engine_input_forwarded are never forwarded again. */
    void (*flow_publish)(void *ctx, uint32_t rip, uint16_t rport, uint16_t lport, int add);
    int (*flow_owner)(void *ctx, uint32_t rip, uint16_t rport, uint16_t lport);
    /* Listeners likewise: the engine publishes, per port, whether it has
     * listeners (state 1) and whether one of them is in use (2: a process
     * accepts from it or waits on it; SS_OPT_ACTIVE), or none (0).  A SYN
     * for a port with no listener here, or with only unused ones while
     * another instance has one in use, goes, whole, to the instance
     * listen_owner names (>= 0; with active, only an instance whose
     * listener is in use), so connections are accepted where a process
     * takes them and no SYN is reset while a listener exists anywhere in
     * the group (DESIGN.md, Partitioned listen sockets). */
    void (*listen_publish)(void *ctx, uint16_t port, int state);
    int (*listen_owner)(void *ctx, uint32_t rip, uint16_t rport, uint16_t lport, int active);
    int (*forward)(void *ctx, int owner, const uint8_t *frame, size_t len);
    void *flow_ctx;
};

struct ss_engine;

void ss_engine_config_init(struct ss_engine_config *cfg);
/* NULL when the configuration is valid, else a sentence naming the first
 * field out of range and its valid range. */
const char *ss_engine_config_check(const struct ss_engine_config *cfg);
/* NULL with errno set (EINVAL: see ss_engine_config_check; ENOMEM).
 * Sends a gratuitous ARP for the stack's address. */
struct ss_engine *ss_engine_create(const struct ss_engine_config *cfg, uint64_t now_us);
void ss_engine_destroy(struct ss_engine *e);

/* One received frame, starting at the ethernet header. */
void ss_engine_input(struct ss_engine *e, const uint8_t *frame, size_t len, uint64_t now_us);
/* A frame another instance forwarded here because this one owns its flow;
 * handled as received, but never forwarded again. */
void ss_engine_input_forwarded(struct ss_engine *e, const uint8_t *frame, size_t len, uint64_t now_us);
/* Runs the timers that are due. */
void ss_engine_poll(struct ss_engine *e, uint64_t now_us);
/* When the engine next needs ss_engine_poll(); UINT64_MAX: no timer armed. */
uint64_t ss_engine_next_deadline(struct ss_engine *e);
const struct ss_counters *ss_engine_counters(const struct ss_engine *e);

/* ARP cache: a static entry never expires and is never replaced. */
int ss_arp_add_static(struct ss_engine *e, uint32_t ip, const uint8_t mac[6]);
/* 0 and the MAC when resolved, -ENOENT otherwise. */
int ss_arp_lookup(struct ss_engine *e, uint32_t ip, uint8_t mac_out[6]);

/* Readiness bits, the values of EPOLLIN, EPOLLPRI, EPOLLOUT, EPOLLERR,
 * EPOLLHUP and EPOLLRDHUP so the preload library passes them through. */
#define SS_EV_IN 0x001
#define SS_EV_OUT 0x004
#define SS_EV_ERR 0x008
#define SS_EV_HUP 0x010
#define SS_EV_RDHUP 0x2000

/* Socket options understood by ss_tcp_setopt/getopt. */
enum ss_tcp_opt {
    SS_OPT_NODELAY = 1,    /* TCP_NODELAY: Nagle off */
    SS_OPT_KEEPALIVE,      /* SO_KEEPALIVE */
    SS_OPT_KEEPIDLE,       /* TCP_KEEPIDLE, seconds */
    SS_OPT_KEEPINTVL,      /* TCP_KEEPINTVL, seconds */
    SS_OPT_KEEPCNT,        /* TCP_KEEPCNT */
    SS_OPT_RCVBUF,         /* SO_RCVBUF, bytes; before connect/listen */
    SS_OPT_SNDBUF,         /* SO_SNDBUF, bytes */
    SS_OPT_REUSEADDR,      /* SO_REUSEADDR */
    SS_OPT_LINGER_ZERO,    /* SO_LINGER with l_linger 0: close sends RST */
    SS_OPT_MAXSEG,         /* TCP_MAXSEG */
    SS_OPT_ERROR,          /* SO_ERROR (get only; reading clears it) */
    SS_OPT_CORK,           /* bit 0 TCP_CORK, bit 1 MSG_MORE on the last send: only
                            * full segments go out; clearing both pushes the rest */
    SS_OPT_DEFER_ACCEPT,   /* TCP_DEFER_ACCEPT, seconds: a listener's bare ACKs do
                            * not complete handshakes until data or the time */
    SS_OPT_REUSEPORT,      /* SO_REUSEPORT: listeners share a port, a connection
                            * goes to one by a hash of the peer's address */
    SS_OPT_ACTIVE,         /* 1: one more process uses the listener (accepts from
                            * it, waits on it), 0: one fewer; listeners in use
                            * are preferred to unused ones, here and in the group */
    SS_OPT_SPAWNED,        /* a process's local listener for a listening socket it
                            * inherited (listen spawn): shares its port with the
                            * other local listeners of that socket */
};

/* What ss_tcp_info() reports; sequence numbers are absolute. */
struct ss_tcp_info {
    int state;                 /* enum ss_tcp_state */
    uint32_t local_ip, remote_ip;
    uint16_t local_port, remote_port;
    uint32_t iss, irs;
    uint32_t snd_una, snd_nxt, snd_wnd;
    uint32_t rcv_nxt, rcv_wnd;
    uint32_t mss;              /* payload bytes per segment */
    uint32_t cwnd, ssthresh;
    uint32_t srtt_us, rto_us;
    uint32_t snd_queued;       /* bytes in the send buffer, unacked included */
    uint32_t rcv_queued;       /* bytes ready for ss_tcp_recv */
    uint8_t snd_wscale, rcv_wscale;
    uint8_t ts_ok, sack_ok;
    uint32_t retransmits;      /* consecutive timeouts of the current segment */
    uint32_t accept_queued;    /* a listener: connections waiting for accept */
    uint32_t backlog;          /* a listener: the most that may wait (+1, as Linux) */
    uint8_t active;            /* a listener: in use (SS_OPT_ACTIVE) */
};

int ss_tcp_socket(struct ss_engine *e);
int ss_tcp_bind(struct ss_engine *e, int sid, uint32_t ip, uint16_t port);
int ss_tcp_listen(struct ss_engine *e, int sid, int backlog);
/* A new socket id, or -EAGAIN when no connection is waiting. */
int ss_tcp_accept(struct ss_engine *e, int sid, uint64_t now_us);
/* Accept-ahead: n connections the listener sid's owner accepted before the
 * application asked, and the application has not taken yet.  They count
 * against the backlog as if still queued here (Linux's accept queue holds
 * them until accept()). */
int ss_tcp_set_ahead(struct ss_engine *e, int sid, uint32_t n);
/* An accept undone: connection sid, accepted from listener lsid and never
 * taken by the application, goes back to the head of the listener's queue
 * with the bytes already moved out of it (data, len) in front of its
 * receive buffer; its id is released.  -ENOBUFS when they no longer fit
 * beside what the peer may still send (the caller resets it). */
int ss_tcp_unaccept(struct ss_engine *e, int lsid, int sid, const void *data, uint32_t len, uint64_t now_us);
/* -EINPROGRESS once the SYN is on its way; the outcome is a readiness event. */
int ss_tcp_connect(struct ss_engine *e, int sid, uint32_t ip, uint16_t port, uint64_t now_us);
ssize_t ss_tcp_send(struct ss_engine *e, int sid, const void *buf, size_t len, uint64_t now_us);
/* Bytes, 0 at end of stream, -EAGAIN when nothing is there yet. */
ssize_t ss_tcp_recv(struct ss_engine *e, int sid, void *buf, size_t len, uint64_t now_us);
/* how: 0 read, 1 write, 2 both (SHUT_RD, SHUT_WR, SHUT_RDWR). */
int ss_tcp_shutdown(struct ss_engine *e, int sid, int how, uint64_t now_us);
/* Releases the id; the connection finishes on its own (FIN, or RST when
 * received data was left unread or SO_LINGER is zero). */
int ss_tcp_close(struct ss_engine *e, int sid, uint64_t now_us);
int ss_tcp_setopt(struct ss_engine *e, int sid, int opt, int value, uint64_t now_us);
int ss_tcp_getopt(struct ss_engine *e, int sid, int opt, int *value);
int ss_tcp_info(struct ss_engine *e, int sid, struct ss_tcp_info *info);
/* Readiness as SS_EV_* bits, or a negative errno. */
int ss_tcp_poll(struct ss_engine *e, int sid);
/* Whether a listener holds the port here or, by the listener map, in another
 * instance of the group: a loopback connection to it stays in the stack. */
int ss_tcp_port_listened(struct ss_engine *e, uint16_t port);
/* Socket ids whose readiness may have changed since the last call, each at
 * most once; returns how many were written. */
int ss_engine_take_events(struct ss_engine *e, int *sids, int max);

/* Human-readable names, for logs and Python. */
const char *ss_tcp_state_name(int state);

#endif
