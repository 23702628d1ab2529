/*
 * Every call libshardsock.so intercepts, once.  X(ret, name, params, args)
 * expands into the pointer to the next definition (libc's, found with
 * dlsym(RTLD_NEXT)) and into the exported definition, which calls shim.c's
 * hook_<name>.  The calls libc declares variadic (fcntl, ioctl) take their
 * third argument as one machine word, which is how it is passed; execl,
 * execlp and execle become execv, execvp and execve with their arguments
 * gathered into a vector (libc's own go to execve inside libc, unseen).
 */
#define SS_CALLS_PLAIN(X)                                                                                            \
    X(int, socket, (int domain, int type, int protocol), (domain, type, protocol))                               \
    X(int, socketpair, (int domain, int type, int protocol, int sv[2]), (domain, type, protocol, sv))            \
    X(int, bind, (int fd, const struct sockaddr *a, socklen_t len), (fd, a, len))                                \
    X(int, listen, (int fd, int backlog), (fd, backlog))                                                         \
    X(int, accept, (int fd, struct sockaddr *a, socklen_t *len), (fd, a, len))                                   \
    X(int, accept4, (int fd, struct sockaddr *a, socklen_t *len, int flags), (fd, a, len, flags))                \
    X(int, connect, (int fd, const struct sockaddr *a, socklen_t len), (fd, a, len))                             \
    X(int, close, (int fd), (fd))                                                                                \
    X(int, close_range, (unsigned first, unsigned last, int flags), (first, last, flags))                        \
    X(int, shutdown, (int fd, int how), (fd, how))                                                               \
    X(ssize_t, read, (int fd, void *buf, size_t n), (fd, buf, n))                                                \
    X(ssize_t, readv, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt))                                \
    X(ssize_t, write, (int fd, const void *buf, size_t n), (fd, buf, n))                                         \
    X(ssize_t, writev, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt))                               \
    X(ssize_t, recv, (int fd, void *buf, size_t n, int flags), (fd, buf, n, flags))                              \
    X(ssize_t, recvfrom, (int fd, void *buf, size_t n, int flags, struct sockaddr *a, socklen_t *len),           \
      (fd, buf, n, flags, a, len))                                                                               \
    X(ssize_t, recvmsg, (int fd, struct msghdr *m, int flags), (fd, m, flags))                                   \
    X(int, recvmmsg, (int fd, struct mmsghdr *v, unsigned n, int flags, struct timespec *t), (fd, v, n, flags, t)) \
    X(ssize_t, send, (int fd, const void *buf, size_t n, int flags), (fd, buf, n, flags))                        \
    X(ssize_t, sendto, (int fd, const void *buf, size_t n, int flags, const struct sockaddr *a, socklen_t len),  \
      (fd, buf, n, flags, a, len))                                                                               \
    X(ssize_t, sendmsg, (int fd, const struct msghdr *m, int flags), (fd, m, flags))                             \
    X(int, sendmmsg, (int fd, struct mmsghdr *v, unsigned n, int flags), (fd, v, n, flags))                      \
    X(ssize_t, sendfile, (int out, int in, off_t *off, size_t n), (out, in, off, n))                             \
    X(ssize_t, sendfile64, (int out, int in, off64_t *off, size_t n), (out, in, off, n))                         \
    X(ssize_t, splice, (int in, off64_t *ioff, int out, off64_t *ooff, size_t n, unsigned flags),                \
      (in, ioff, out, ooff, n, flags))                                                                           \
    X(int, getsockopt, (int fd, int lvl, int opt, void *v, socklen_t *len), (fd, lvl, opt, v, len))              \
    X(int, setsockopt, (int fd, int lvl, int opt, const void *v, socklen_t len), (fd, lvl, opt, v, len))         \
    X(int, getsockname, (int fd, struct sockaddr *a, socklen_t *len), (fd, a, len))                              \
    X(int, getpeername, (int fd, struct sockaddr *a, socklen_t *len), (fd, a, len))                              \
    X(int, dup, (int fd), (fd))                                                                                  \
    X(int, dup2, (int fd, int to), (fd, to))                                                                     \
    X(int, dup3, (int fd, int to, int flags), (fd, to, flags))                                                   \
    X(int, poll, (struct pollfd *p, nfds_t n, int timeout), (p, n, timeout))                                     \
    X(int, ppoll, (struct pollfd *p, nfds_t n, const struct timespec *t, const sigset_t *m), (p, n, t, m))       \
    X(int, select, (int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *t), (n, r, w, e, t))                 \
    X(int, pselect, (int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *t, const sigset_t *m),       \
      (n, r, w, e, t, m))                                                                                        \
    X(int, epoll_create, (int size), (size))                                                                     \
    X(int, epoll_create1, (int flags), (flags))                                                                  \
    X(int, epoll_ctl, (int ep, int op, int fd, struct epoll_event *ev), (ep, op, fd, ev))                         \
    X(int, epoll_wait, (int ep, struct epoll_event *ev, int max, int timeout), (ep, ev, max, timeout))           \
    X(int, epoll_pwait, (int ep, struct epoll_event *ev, int max, int timeout, const sigset_t *m),               \
      (ep, ev, max, timeout, m))                                                                                 \
    X(int, epoll_pwait2, (int ep, struct epoll_event *ev, int max, const struct timespec *t, const sigset_t *m), \
      (ep, ev, max, t, m))                                                                                       \
    X(pid_t, fork, (void), ())                                                                                   \
    X(pid_t, vfork, (void), ())                                                                                  \
    X(int, execve, (const char *path, char *const argv[], char *const envp[]), (path, argv, envp))               \
    X(int, execv, (const char *path, char *const argv[]), (path, argv))                                          \
    X(int, execvp, (const char *file, char *const argv[]), (file, argv))                                         \
    X(int, execvpe, (const char *file, char *const argv[], char *const envp[]), (file, argv, envp))              \
    X(int, fexecve, (int fd, char *const argv[], char *const envp[]), (fd, argv, envp))                          \
    X(int, setuid, (uid_t uid), (uid))                                                                           \
    X(int, seteuid, (uid_t uid), (uid))                                                                          \
    X(int, setreuid, (uid_t r, uid_t e), (r, e))                                                                 \
    X(int, setresuid, (uid_t r, uid_t e, uid_t s), (r, e, s))                                                    \
    X(ssize_t, __read_chk, (int fd, void *buf, size_t n, size_t buflen), (fd, buf, n, buflen))                   \
    X(ssize_t, __recv_chk, (int fd, void *buf, size_t n, size_t buflen, int flags), (fd, buf, n, buflen, flags)) \
    X(ssize_t, __recvfrom_chk,                                                                                   \
      (int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *a, socklen_t *len),               \
      (fd, buf, n, buflen, flags, a, len))                                                                       \
    X(int, __poll_chk, (struct pollfd *p, nfds_t n, int timeout, size_t plen), (p, n, timeout, plen))            \
    X(int, __ppoll_chk, (struct pollfd *p, nfds_t n, const struct timespec *t, const sigset_t *m, size_t plen),  \
      (p, n, t, m, plen))

/* Declared variadic by libc: their exported hooks are written out in shim.c. */
#define SS_CALLS_VARIADIC(X) \
    X(int, fcntl, (int fd, int cmd, long arg), (fd, cmd, arg))                                                   \
    X(int, fcntl64, (int fd, int cmd, long arg), (fd, cmd, arg))                                                 \
    X(int, ioctl, (int fd, unsigned long req, long arg), (fd, req, arg))                                         \
    X(int, execl, (const char *path, const char *arg, ...), (path, arg))                                         \
    X(int, execlp, (const char *file, const char *arg, ...), (file, arg))                                        \
    X(int, execle, (const char *path, const char *arg, ...), (path, arg))

#define SS_CALLS(X) SS_CALLS_PLAIN(X) SS_CALLS_VARIADIC(X)
