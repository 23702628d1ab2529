/*
 * Forwarding between the instances of a group: the shared flow directory
 * and the frame rings (layout in shardsock/stats.h, struct ss_fwd_region).
 * The engine calls the three hooks (engine.h flow_publish, flow_owner,
 * forward) with a struct ss_fwd as their context.
 */
#ifndef SS_DAEMON_FWD_H
#define SS_DAEMON_FWD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <shardsock/engine.h>
#include <shardsock/stats.h>

struct ss_fwd {
    struct ss_fwd_region *r;
    size_t size;
    int self, n;
    int doorbell[SS_FWD_MAX_INSTANCES]; /* each instance's eventfd */
    struct ss_counters *ctr;
};

/* Maps the region `shardsock up` created and checks it was made for this
 * group's size.  doorbells lists n eventfds, this instance's at self.
 * 0, or -1 with the reason in err. */
int ss_fwd_open(struct ss_fwd *f, const char *path, int self, int n, const char *doorbells,
                struct ss_counters *ctr, char *err, size_t errlen);
void ss_fwd_close(struct ss_fwd *f);

/* engine.h hooks; ctx is the struct ss_fwd */
void ss_fwd_publish(void *ctx, uint32_t rip, uint16_t rport, uint16_t lport, int add);
int ss_fwd_owner(void *ctx, uint32_t rip, uint16_t rport, uint16_t lport);
int ss_fwd_send(void *ctx, int owner, const uint8_t *frame, size_t len);
void ss_fwd_listen_publish(void *ctx, uint16_t port, int state);
int ss_fwd_listen_owner(void *ctx, uint32_t rip, uint16_t rport, uint16_t lport, int active);

/* Hands the engine the frames other instances forwarded here, at most
 * `budget` from each; returns how many. */
int ss_fwd_drain(struct ss_fwd *f, struct ss_engine *e, uint64_t now_us, int budget);
/* Before sleeping: raises this instance's sleeping flag and returns false
 * (do not sleep) when a frame arrived meanwhile. */
bool ss_fwd_may_sleep(struct ss_fwd *f);
/* After waking: lowers the flag and empties the doorbell. */
void ss_fwd_awake(struct ss_fwd *f);

#endif
