/*
 * Descriptors for accepted connections, without a socket() per connection.
 *
 * A stack socket's descriptor must be a real descriptor of the process: the
 * program closes it, dups it, polls it next to kernel descriptors, counts it
 * against RLIMIT_NOFILE, passes it through exec, fstat()s it (S_ISSOCK), and
 * asks SO_TYPE/SO_DOMAIN/SO_PROTOCOL of it.  A fresh kernel socket per
 * connection gave all of that, at the cost of the kernel making and
 * tearing down a socket, its inode and its file for every connection
 * (socket + close were about 8% of nginx's CPU per connection).
 *
 * Instead each accepted connection's descriptor is a duplicate
 * (F_DUPFD, the lowest free number, as socket() and accept() pick) of one
 * idle TCP socket per address family, the "master", made once per process.
 * A dup only installs a reference to an existing file: the descriptor is
 * still a socket of the right family and type, its FD_CLOEXEC is its own,
 * RLIMIT_NOFILE still gives EMFILE, dup/dup2/close/exec work as before.
 *
 * The trade-off, and how the library keeps the kernel's behaviour:
 *   - every such descriptor shares one open file description, so
 *     file-status flags (O_NONBLOCK) are shared: the library answers
 *     F_GETFL's O_NONBLOCK from the socket's own mode (shim.c);
 *   - the kernel socket's options are shared: setsockopt on such a socket
 *     never touches the master.  The option is checked and normalised by a
 *     second idle socket of the family (the "scratch": EINVAL, EFAULT,
 *     ENOPROTOOPT and SO_RCVBUF's doubling are the kernel's own), and the
 *     value the kernel would report is kept with the socket (its shadow);
 *     getsockopt reads the master (the defaults, and the kernel's own
 *     checks of the caller's buffer) and then lays the shadow over it;
 *   - fstat's st_ino (and /proc/PID/fd's socket:[N]) is the same for all
 *     of a process's accepted stack connections.  Nothing the library
 *     knows of uses it to tell sockets apart; lsof and ss show them as one
 *     idle socket, which is what the kernel has.
 *
 * The masters and the scratch sockets are the library's own descriptors
 * (FD_CLOEXEC): a program that closes or replaces one (a daemon closing
 * every descriptor) makes the library forget it and make another.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shim.h"

/* [0] AF_INET, [1] AF_INET6 */
static struct {
    int master, scratch;
} fam[2] = {{-1, -1}, {-1, -1}};
static pthread_mutex_t ph_lock = PTHREAD_MUTEX_INITIALIZER;

static int own_socket(int *fd, bool v6)
{
    if (*fd < 0)
        *fd = REAL(socket)(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    return *fd;
}

int ss_placeholder_take(bool v6, int flags)
{
    pthread_mutex_lock(&ph_lock);
    int m = own_socket(&fam[v6].master, v6);
    int fd = m < 0 ? -1 : REAL(fcntl)(m, (flags & SOCK_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD, 0);
    int err = errno;
    pthread_mutex_unlock(&ph_lock);
    errno = err;
    return fd;
}

void ss_placeholder_forget(int fd)
{
    if (fd < 0)
        return;
    pthread_mutex_lock(&ph_lock);
    for (int i = 0; i < 2; i++) {
        if (fam[i].master == fd)
            fam[i].master = -1;
        if (fam[i].scratch == fd)
            fam[i].scratch = -1;
    }
    pthread_mutex_unlock(&ph_lock);
}

int ss_placeholder_setsockopt(struct ss_sock *s, int lvl, int opt, const void *v, socklen_t len)
{
    unsigned char now[SS_OPT_SHADOW_MAX];
    socklen_t n = sizeof now;
    pthread_mutex_lock(&ph_lock);
    int x = own_socket(&fam[s->v6].scratch, s->v6);
    int r = x < 0 ? -1 : REAL(setsockopt)(x, lvl, opt, v, len);
    int err = errno;
    /* What the kernel reports after the call; an option it cannot report
     * (a filter) has no shadow: getsockopt says what the kernel says. */
    bool readable = r == 0 && REAL(getsockopt)(x, lvl, opt, now, &n) == 0 && n <= sizeof now;
    pthread_mutex_unlock(&ph_lock);
    if (r < 0) {
        errno = err;
        return -1;
    }
    if (!readable)
        return 0;
    struct ss_optshadow *o = s->shadow;
    while (o && !(o->lvl == lvl && o->opt == opt))
        o = o->next;
    if (!o) {
        o = malloc(sizeof *o);
        if (!o)
            return 0; /* the option is set in the stack; only its echo is lost */
        o->lvl = lvl;
        o->opt = opt;
        o->next = s->shadow;
        s->shadow = o;
    }
    o->len = n;
    memcpy(o->val, now, n);
    return 0;
}

int ss_placeholder_getsockopt(int fd, struct ss_sock *s, int lvl, int opt, void *v, socklen_t *len)
{
    /* The master's answer first: the kernel's own checks of the buffer and
     * its length, and the default of an option nobody set. */
    if (REAL(getsockopt)(fd, lvl, opt, v, len) < 0)
        return -1;
    for (struct ss_optshadow *o = s->shadow; o; o = o->next) {
        if (o->lvl == lvl && o->opt == opt) {
            socklen_t n = *len < o->len ? *len : o->len;
            memcpy(v, o->val, n);
            *len = n;
            break;
        }
    }
    return 0;
}

void ss_placeholder_free(struct ss_sock *s)
{
    while (s->shadow) {
        struct ss_optshadow *o = s->shadow;
        s->shadow = o->next;
        free(o);
    }
}
