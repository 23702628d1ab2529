/*
 * The instance's side of the application channels (shardsock/channel.h):
 * attach, requests, moving bytes between the byte rings and the engine,
 * readiness, detach.
 */
#ifndef SS_DAEMON_CHAN_H
#define SS_DAEMON_CHAN_H

#include <stdbool.h>
#include <stdint.h>

#include <shardsock/channel.h>
#include <shardsock/engine.h>

#define SS_MAX_CHANNELS 64

struct ss_chan_host;

struct ss_chans {
    struct ss_engine *e;
    struct ss_counters *ctr;
    uint32_t instance, stack_ip, stack_netmask;
    int32_t core;
    uint32_t ninstances;
    int epfd;                  /* the instance's epoll: doorbells and control connections join it */
    uint32_t max_sockets;
    int16_t *sid_chan;         /* by engine socket id: channel index, -1: not a channel's */
    uint16_t *sid_slot;
    struct ss_chan_host *c[SS_MAX_CHANNELS];
    struct ss_fork_ticket *tickets;
    uint64_t sweep_at_us;      /* when a freed slot's buffers turn cold (ss_chans_sweep); 0: none waits */
    /* The group's listener generation (the forwarding region's, or the
     * instance's own when alone), copied to every channel's listen_gen. */
    const uint32_t *listen_gen;
    uint32_t listen_gen_seen;
};

/* The engine's listen_publish hook for an instance alone in its group:
 * ctx is a uint32_t generation, bumped. */
void ss_chans_listen_bump(void *ctx, uint16_t port, int state);

/* A slot free this long gives its buffers' pages back. */
#define SS_CHANS_COLD_US 1000000u

int ss_chans_init(struct ss_chans *cs, struct ss_engine *e, struct ss_counters *ctr, uint32_t max_sockets,
                  uint32_t instance, uint32_t stack_ip, uint32_t stack_netmask, int epfd);
/* An "attach" request on control connection fd (already checked by
 * SO_PEERCRED): creates the channel and sends it.  The connection then
 * belongs to the channel.  0, or -1 (the caller closes fd). */
int ss_chans_attach(struct ss_chans *cs, int fd);
/* A "fork <channel> <token>" request on control connection fd: until the
 * connection closes (the child adopted its sockets, exec'd or exited),
 * the channel's sockets outlive the parent's close, so the child can
 * adopt them.  0, or -1 (the caller closes fd). */
int ss_chans_fork_ticket(struct ss_chans *cs, int fd, const char *req);
/* The epoll event was for a channel's descriptor: handles it and returns
 * true (a doorbell, or a control connection that closed). */
bool ss_chans_owns_fd(struct ss_chans *cs, int fd);
/* Requests and kicks of every channel; returns whether there was work. */
bool ss_chans_poll(struct ss_chans *cs);
/* Gives back the pages of slots free for SS_CHANS_COLD_US by time t; the
 * instance's wait ends by sweep_at_us. */
void ss_chans_sweep(struct ss_chans *cs, uint64_t t);
/* An engine readiness event for socket id sid; false: not a channel's. */
bool ss_chans_event(struct ss_chans *cs, int sid);
/* Wakes the applications that sleep and have news. */
void ss_chans_flush(struct ss_chans *cs);
/* Before the instance sleeps: false when a channel has work after all. */
bool ss_chans_may_sleep(struct ss_chans *cs);
void ss_chans_awake(struct ss_chans *cs);
void ss_chans_destroy(struct ss_chans *cs);
/* For netstat: the holders of engine socket sid and their rings, as
 * " proc=CHANNEL/SLOT ..." words; 0 when it is no channel's.  Returns the
 * length of the whole list, as snprintf: len or more, and buf holds only
 * its start (grow it and ask again). */
int ss_chans_describe(struct ss_chans *cs, int sid, char *buf, size_t len);
/* For status: one line per attached process, "proc=CHANNEL pid=PID
 * sockets=N listeners=N gone=0|1" (gone: exec'd or ended, its channel kept
 * for a child's tickets). */
int ss_chans_procs(struct ss_chans *cs, char *buf, size_t len);

#endif
