/*
 * sockcheck: one scripted run through the socket calls and their errors,
 * printing a line per step ("step: result"), so the same run on the kernel
 * and under libshardsock.so can be compared line for line.
 *
 * usage: sockcheck CONNECT_ADDR PORT
 *   The program listens on 0.0.0.0:PORT and connects to CONNECT_ADDR:PORT:
 *   on the kernel, 127.0.0.1; under the library, the stack's address (the
 *   listener's side is the stack's) or the kernel side's (the client's is).
 *   Ports PORT+1 and PORT+2 must be closed; PORT+3 and PORT+4 it listens on.
 *
 * Lines hold only what both runs must agree on: return values, errno
 * names, byte counts and contents, readiness bits.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>

static const char *ename(int e)
{
    switch (e) {
#define E(x) case x: return #x;
    E(EAGAIN) E(EINPROGRESS) E(EALREADY) E(EISCONN) E(ENOTCONN) E(EPIPE) E(ECONNRESET) E(ECONNREFUSED)
    E(EBADF) E(EINVAL) E(EADDRINUSE) E(ENOTSOCK) E(EFAULT) E(ENOPROTOOPT) E(EAFNOSUPPORT) E(EOPNOTSUPP)
    E(EDESTADDRREQ) E(ETIMEDOUT) E(EEXIST) E(ENOENT) E(EINTR) E(ELOOP) E(EMFILE)
#undef E
    default: return "E?";
    }
}

static void show(const char *step, long r)
{
    if (r < 0)
        printf("%s: -1 %s\n", step, ename(errno));
    else
        printf("%s: %ld\n", step, r);
    fflush(stdout);
}

static struct sockaddr_in sin_of(const char *ip, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static int sender_fd;

/* a second thread sends while the main thread receives */
static void *sender(void *data)
{
    return (void *)(intptr_t)send(sender_fd, data, 1 << 20, 0);
}

/* --- a signal during a blocking call --- */
static volatile sig_atomic_t alarms;
static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

/* SIGALRM in 100 ms, its handler with or without SA_RESTART */
static void alarm_soon(int restart)
{
    struct sigaction sa = {.sa_handler = on_alarm, .sa_flags = restart ? SA_RESTART : 0};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarms = 0;
    struct itimerval it = {.it_value = {0, 100000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

/* What a second thread, deaf to signals, does after 400 ms: send on fd,
 * or (fd -1) connect a new socket to *to. */
struct later {
    int fd;
    const struct sockaddr_in *to;
    int made;
};
static void *act_later(void *p)
{
    struct later *l = p;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    usleep(400000);
    if (l->fd >= 0) {
        send(l->fd, "late", 4, 0);
    } else {
        l->made = socket(AF_INET, SOCK_STREAM, 0);
        connect(l->made, (const struct sockaddr *)l->to, sizeof *l->to);
    }
    return NULL;
}

/* A blocking recv (on a, from b) or accept (on a listener; b -1) that a
 * signal interrupts at 100 ms, 300 ms before its data or connection
 * comes: with SA_RESTART the call goes on and succeeds, without it fails
 * with EINTR. */
static void interrupted(const char *what, int a, int b, const struct sockaddr_in *to)
{
    for (int restart = 1; restart >= 0; restart--) {
        struct later lt = {.fd = b, .to = to, .made = -1};
        pthread_t th;
        pthread_create(&th, NULL, act_later, &lt);
        alarm_soon(restart);
        char buf[8], step[80];
        long r = b >= 0 ? recv(a, buf, sizeof buf, 0) : accept(a, NULL, NULL);
        int e = errno;
        snprintf(step, sizeof step, "%s %s", what, restart ? "SA_RESTART" : "no SA_RESTART");
        errno = e;
        show(step, b >= 0 || r < 0 ? r : 0);
        printf("%s alarms: %d\n", step, alarms);
        pthread_join(th, NULL);
        if (r < 0) /* what came late */
            r = b >= 0 ? recv(a, buf, sizeof buf, 0) : accept(a, NULL, NULL);
        if (b < 0) {
            close((int)r);
            close(lt.made);
        }
    }
    signal(SIGALRM, SIG_IGN);
}

static int wait_fd(int fd, short ev, int ms)
{
    struct pollfd p = {.fd = fd, .events = ev};
    int r = poll(&p, 1, ms);
    return r <= 0 ? r : p.revents;
}

/* TCP_CORK and MSG_MORE on x hold a partial segment back from y until the
 * cork goes or a send without MSG_MORE comes. */
static void cork_check(const char *side, int x, int y)
{
    char step[96], buf[16] = {0};
    int on = 1, off = 0;
#define STEP(name) (snprintf(step, sizeof step, "%s %s", side, name), step)
    show(STEP("TCP_CORK on"), setsockopt(x, IPPROTO_TCP, TCP_CORK, &on, sizeof on));
    send(x, "cork", 4, 0);
    show(STEP("corked: nothing comes"), wait_fd(y, POLLIN, 50));
    show(STEP("TCP_CORK off"), setsockopt(x, IPPROTO_TCP, TCP_CORK, &off, sizeof off));
    show(STEP("uncorked: it comes"), wait_fd(y, POLLIN, 5000));
    show(STEP("recv corked"), recv(y, buf, sizeof buf, 0));
    /* Linux sends MSG_MORE's bytes on the next ACK: let the delayed ACKs
     * of what went before arrive first */
    usleep(100000);
    show(STEP("send MSG_MORE"), send(x, "mo", 2, MSG_MORE));
    show(STEP("more: nothing comes"), wait_fd(y, POLLIN, 50));
    show(STEP("send the rest"), send(x, "re", 2, 0));
    show(STEP("then it comes"), wait_fd(y, POLLIN, 5000));
    usleep(20000);
    memset(buf, 0, sizeof buf);
    show(STEP("recv more"), recv(y, buf, sizeof buf, MSG_WAITALL | MSG_DONTWAIT));
    printf("%s got: %s\n", side, buf);
#undef STEP
}

/* epoll_wait's count and the first event's data, on one line */
static void show_wait(const char *side, const char *what, int ep, int ms)
{
    struct epoll_event out[8];
    int r = epoll_wait(ep, out, 8, ms);
    printf("%s %s: %d data %u\n", side, what, r, r > 0 ? out[0].data.u32 : 0);
    fflush(stdout);
}

/* epoll sets inside epoll sets and inside poll, the socket x in two sets,
 * beside a pipe, an eventfd and a timerfd; y sends to x. */
static void epoll_mix(const char *side, int x, int y)
{
    char step[96], buf[16];
#define STEP(name) (snprintf(step, sizeof step, "%s %s", side, name), step)
    int inner = epoll_create1(0), outer = epoll_create1(0), other = epoll_create(1);
    int pfd[2];
    if (pipe(pfd) < 0)
        return;
    int efd = eventfd(0, EFD_NONBLOCK), tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 1};
    epoll_ctl(inner, EPOLL_CTL_ADD, x, &ev);
    ev.data.u32 = 2;
    epoll_ctl(inner, EPOLL_CTL_ADD, pfd[0], &ev);
    ev.data.u32 = 3;
    show(STEP("epoll second set"), epoll_ctl(other, EPOLL_CTL_ADD, x, &ev));
    ev.data.u32 = 4;
    epoll_ctl(other, EPOLL_CTL_ADD, efd, &ev);
    ev.data.u32 = 5;
    epoll_ctl(other, EPOLL_CTL_ADD, tfd, &ev);
    ev = (struct epoll_event){.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u32 = 9};
    show(STEP("epoll nested exclusive"), epoll_ctl(outer, EPOLL_CTL_ADD, inner, &ev));
    ev = (struct epoll_event){.events = EPOLLIN, .data.u32 = 10};
    show(STEP("epoll nested add"), epoll_ctl(outer, EPOLL_CTL_ADD, inner, &ev));
    show(STEP("epoll nested add again"), epoll_ctl(outer, EPOLL_CTL_ADD, inner, &ev));
    show(STEP("epoll nested loop"), epoll_ctl(inner, EPOLL_CTL_ADD, outer, &ev));
    show_wait(side, "nested idle", outer, 50);
    show(STEP("poll epoll idle"), wait_fd(inner, POLLIN, 50));
    send(y, "n", 1, 0);
    show_wait(side, "nested socket", outer, 5000);
    show(STEP("poll epoll ready"), wait_fd(inner, POLLIN, 5000));
    show_wait(side, "second set", other, 5000);
    show_wait(side, "inner", inner, 5000);
    show(STEP("nested recv"), recv(x, buf, sizeof buf, 0));
    show_wait(side, "nested drained", outer, 50);
    show(STEP("poll epoll drained"), wait_fd(inner, POLLIN, 50));
    show(STEP("pipe write"), write(pfd[1], "p", 1));
    show_wait(side, "nested pipe", outer, 5000);
    show_wait(side, "inner pipe", inner, 5000);
    show(STEP("pipe read"), read(pfd[0], buf, sizeof buf));
    ev = (struct epoll_event){.events = EPOLLIN | EPOLLET, .data.u32 = 11};
    show(STEP("epoll nested mod ET"), epoll_ctl(outer, EPOLL_CTL_MOD, inner, &ev));
    send(y, "e", 1, 0);
    show_wait(side, "nested ET", outer, 5000);
    show_wait(side, "nested ET again", outer, 50);
    show(STEP("nested ET recv"), recv(x, buf, sizeof buf, 0));
    ev = (struct epoll_event){.events = EPOLLIN | EPOLLONESHOT, .data.u32 = 12};
    show(STEP("epoll nested mod ONESHOT"), epoll_ctl(outer, EPOLL_CTL_MOD, inner, &ev));
    send(y, "o", 1, 0);
    show_wait(side, "nested ONESHOT", outer, 5000);
    show_wait(side, "nested ONESHOT disabled", outer, 50);
    show(STEP("nested ONESHOT recv"), recv(x, buf, sizeof buf, 0));
    uint64_t one = 1;
    show(STEP("eventfd write"), write(efd, &one, sizeof one));
    show_wait(side, "eventfd", other, 5000);
    show(STEP("eventfd read"), read(efd, &one, sizeof one));
    struct itimerspec its = {.it_value = {0, 20000000}};
    timerfd_settime(tfd, 0, &its, NULL);
    show_wait(side, "timerfd", other, 5000);
    show(STEP("timerfd read"), read(tfd, &one, sizeof one));
    show(STEP("epoll nested del"), epoll_ctl(outer, EPOLL_CTL_DEL, inner, NULL));
    show(STEP("epoll nested del again"), epoll_ctl(outer, EPOLL_CTL_DEL, inner, NULL));
    ev = (struct epoll_event){.events = EPOLLIN, .data.u32 = 13};
    epoll_ctl(outer, EPOLL_CTL_ADD, inner, &ev);
    close(inner);
    send(y, "c", 1, 0);
    show_wait(side, "inner closed", outer, 100);
    show_wait(side, "second set after", other, 5000);
    recv(x, buf, sizeof buf, 0);
    close(outer);
    close(other);
    close(pfd[0]);
    close(pfd[1]);
    close(efd);
    close(tfd);
#undef STEP
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: sockcheck CONNECT_ADDR PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    const char *peer = argv[1];
    int port = atoi(argv[2]);
    struct sockaddr_in any = sin_of("0.0.0.0", port), dst = sin_of(peer, port);
    struct sockaddr_in closed = sin_of(peer, port + 1);
    char buf[65536];
    int one = 1;

    /* --- a listener --- */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    show("setsockopt SO_REUSEADDR", setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    show("setsockopt bad level", setsockopt(l, 12345, 1, &one, sizeof one));
    show("setsockopt short", setsockopt(l, IPPROTO_TCP, TCP_NODELAY, &one, 1));
    show("bind short addrlen", bind(l, (struct sockaddr *)&any, 4));
    show("bind", bind(l, (struct sockaddr *)&any, sizeof any));
    show("bind again", bind(l, (struct sockaddr *)&any, sizeof any));
    show("accept before listen", accept(l, NULL, NULL));
    show("listen", listen(l, 16));
    show("getpeername listener", getpeername(l, (struct sockaddr *)&(struct sockaddr_in){0}, &(socklen_t){16}));
    int acc = 0;
    socklen_t al = sizeof acc;
    getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al);
    printf("SO_ACCEPTCONN: %d\n", acc);
    show("recv on listener", recv(l, buf, 1, MSG_DONTWAIT));
    show("send on listener", send(l, "x", 1, MSG_NOSIGNAL));
    fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK);
    show("accept nothing waiting", accept(l, NULL, NULL));
    struct sockaddr_in got;
    socklen_t gl = sizeof got;
    getsockname(l, (struct sockaddr *)&got, &gl);
    printf("getsockname listener: len %u port ok %d\n", gl, ntohs(got.sin_port) == port);

    /* --- misuse of an unconnected socket --- */
    int u = socket(AF_INET, SOCK_STREAM, 0);
    show("send unconnected", send(u, "x", 1, MSG_NOSIGNAL));
    show("recv unconnected", recv(u, buf, 1, 0));
    show("getpeername unconnected", getpeername(u, (struct sockaddr *)&got, &gl));
    show("shutdown unconnected", shutdown(u, SHUT_WR));
    show("connect short addrlen", connect(u, (struct sockaddr *)&dst, 8));
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6};
    show("connect wrong family", connect(u, (struct sockaddr *)&v6, sizeof v6));
    show("connect refused", connect(u, (struct sockaddr *)&closed, sizeof closed));
    close(u);
    /* refused, non-blocking: SO_ERROR says it once */
    u = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    printf("connect nonblocking to a closed port: %s\n",
           connect(u, (struct sockaddr *)&closed, sizeof closed) == 0 ? "0" : ename(errno));
    int urev = wait_fd(u, POLLOUT, 5000);
    printf("poll refused: out %d err %d hup %d\n", !!(urev & POLLOUT), !!(urev & POLLERR), !!(urev & POLLHUP));
    int uerr = -1;
    socklen_t uel = sizeof uerr;
    getsockopt(u, SOL_SOCKET, SO_ERROR, &uerr, &uel);
    printf("SO_ERROR refused: %s\n", uerr ? ename(uerr) : "0");
    uerr = -1;
    getsockopt(u, SOL_SOCKET, SO_ERROR, &uerr, &uel);
    printf("SO_ERROR again: %d\n", uerr);
    close(u);
    /* O_NONBLOCK set by fcntl is the library's until the kernel socket
     * serves: then (a fallback) the kernel's connect must not block */
    u = socket(AF_INET, SOCK_STREAM, 0);
    printf("F_GETFL new: %#x\n", fcntl(u, F_GETFL));
    fcntl(u, F_SETFL, fcntl(u, F_GETFL) | O_NONBLOCK);
    printf("F_GETFL nonblocking: %#x\n", fcntl(u, F_GETFL));
    printf("connect nonblocking (fcntl) to a closed port: %s\n",
           connect(u, (struct sockaddr *)&closed, sizeof closed) == 0 ? "0" : ename(errno));
    fcntl(u, F_SETFL, fcntl(u, F_GETFL) | O_APPEND);
    printf("F_GETFL append: %#x\n", fcntl(u, F_GETFL));
    close(u);
    show("close closed", close(u));
    show("send bad fd", send(9999, "x", 1, 0));

    /* --- a non-blocking connect --- */
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int r = connect(c, (struct sockaddr *)&dst, sizeof dst);
    printf("connect nonblocking: %s\n", r == 0 ? "0" : ename(errno));
    /* the kernel chose the local port in connect(): a posted connect too */
    struct sockaddr_in mine = {0};
    socklen_t ml = sizeof mine;
    getsockname(c, (struct sockaddr *)&mine, &ml);
    printf("getsockname while connecting: port set %d\n", mine.sin_port != 0);
    int rev = wait_fd(c, POLLOUT, 5000);
    printf("poll connecting: out %d err %d\n", !!(rev & POLLOUT), !!(rev & POLLERR));
    int err = -1;
    socklen_t el = sizeof err;
    show("getsockopt SO_ERROR", getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el));
    printf("SO_ERROR: %d\n", err);
    show("connect again", connect(c, (struct sockaddr *)&dst, sizeof dst));
    wait_fd(l, POLLIN, 5000);
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    printf("accept4: %s\n", s >= 0 ? "fd" : ename(errno));
    struct sockaddr_in theirs = {0};
    socklen_t tl0 = sizeof theirs;
    getpeername(s, (struct sockaddr *)&theirs, &tl0);
    printf("accepted peer is the connecting port: %d\n", theirs.sin_port == mine.sin_port);
    printf("accepted cloexec: %d\n", (fcntl(s, F_GETFD) & FD_CLOEXEC) != 0);
    int type = 0;
    socklen_t tl = sizeof type;
    getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &tl);
    printf("SO_TYPE stream: %d\n", type == SOCK_STREAM);

    /* --- bytes both ways --- */
    show("send 5", send(c, "hello", 5, 0));
    wait_fd(s, POLLIN, 5000);
    int avail = -1;
    ioctl(s, FIONREAD, &avail);
    printf("FIONREAD: %d\n", avail);
    memset(buf, 0, sizeof buf);
    show("recv peek", recv(s, buf, sizeof buf, MSG_PEEK));
    printf("peeked: %s\n", buf);
    memset(buf, 0, sizeof buf);
    show("read", read(s, buf, 2));
    printf("read: %s\n", buf);
    struct iovec iv[2] = {{buf, 1}, {buf + 1, 10}};
    memset(buf, 0, sizeof buf);
    show("readv", readv(s, iv, 2));
    printf("readv: %s\n", buf);
    show("recv empty nonblocking", recv(s, buf, 1, MSG_DONTWAIT));
    struct iovec ov[3] = {{"ab", 2}, {"", 0}, {"cde", 3}};
    show("writev", writev(s, ov, 3));
    struct msghdr mh = {.msg_iov = ov, .msg_iovlen = 3};
    show("sendmsg", sendmsg(s, &mh, 0));
    wait_fd(c, POLLIN, 5000);
    memset(buf, 0, sizeof buf);
    ssize_t n = 0;
    while (n < 10) {
        ssize_t k = recv(c, buf + n, sizeof buf - (size_t)n, 0);
        if (k <= 0) {
            if (k < 0 && errno == EAGAIN) {
                wait_fd(c, POLLIN, 5000);
                continue;
            }
            break;
        }
        n += k;
    }
    printf("client got %zd: %s\n", n, buf);
    /* 1 MB through, blocking sender, MSG_WAITALL receiver */
    fcntl(c, F_SETFL, fcntl(c, F_GETFL) & ~O_NONBLOCK);
    static char big[1 << 20], back[1 << 20];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 7 + i / 251);
    pthread_t th;
    sender_fd = c;
    pthread_create(&th, NULL, sender, big);
    show("recv waitall 1MB", recv(s, back, sizeof back, MSG_WAITALL));
    printf("1MB same: %d\n", memcmp(big, back, sizeof big) == 0);
    void *sent;
    pthread_join(th, &sent);
    printf("sender sent all: %d\n", (ssize_t)(intptr_t)sent == (ssize_t)sizeof big);

    /* --- readiness: select and epoll --- */
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(s, &rs);
    struct timeval tv = {0, 100000};
    show("select nothing", select(s + 1, &rs, NULL, NULL, &tv));
    show("send 1", send(c, "z", 1, 0));
    FD_ZERO(&rs);
    FD_SET(s, &rs);
    tv = (struct timeval){5, 0};
    show("select readable", select(s + 1, &rs, NULL, NULL, &tv));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u32 = 42}, out[4];
    show("epoll_ctl add", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    show("epoll_ctl add again", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    show("epoll_ctl mod missing", epoll_ctl(ep, EPOLL_CTL_MOD, c, &ev));
    r = epoll_wait(ep, out, 4, 1000);
    printf("epoll ET first: %d data %u in %d\n", r, r > 0 ? out[0].data.u32 : 0, r > 0 && (out[0].events & EPOLLIN));
    show("epoll ET again", epoll_wait(ep, out, 4, 50));
    recv(s, buf, 1, 0);
    ev.events = EPOLLIN | EPOLLONESHOT;
    show("epoll_ctl mod oneshot", epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev));
    send(c, "yy", 2, 0);
    show("epoll oneshot", epoll_wait(ep, out, 4, 1000));
    show("epoll oneshot disabled", epoll_wait(ep, out, 4, 50));
    ev.events = EPOLLIN;
    epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev);
    show("epoll level", epoll_wait(ep, out, 4, 1000));
    show("epoll level still", epoll_wait(ep, out, 4, 1000));
    recv(s, buf, 2, 0);
    show("epoll drained", epoll_wait(ep, out, 4, 50));
    show("epoll_ctl del", epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL));
    ev.events = EPOLLIN | EPOLLEXCLUSIVE | EPOLLONESHOT;
    show("epoll exclusive+oneshot", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    ev.events = EPOLLIN | EPOLLEXCLUSIVE;
    show("epoll_ctl add exclusive", epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev));
    ev.events = EPOLLIN;
    show("epoll_ctl mod exclusive", epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev));
    send(c, "e", 1, 0);
    show("epoll exclusive wakes", epoll_wait(ep, out, 4, 1000));
    recv(s, buf, 1, 0);
    close(ep);

    /* an event array epoll_wait cannot write to (stress-ng's epoll stressor
     * passes a PROT_NONE page): 0 when nothing is ready, EFAULT when
     * something is, and the event is kept for the next call */
    struct epoll_event *none = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int ep3 = epoll_create1(0);
    ev = (struct epoll_event){.events = EPOLLIN | EPOLLET, .data.u32 = 43};
    epoll_ctl(ep3, EPOLL_CTL_ADD, s, &ev);
    show("epoll unwritable idle", epoll_wait(ep3, none, 1, 50));
    send(c, "f", 1, 0);
    wait_fd(s, POLLIN, 5000);
    show("epoll unwritable ready", epoll_wait(ep3, none, 1, 1000));
    r = epoll_wait(ep3, out, 4, 1000);
    printf("epoll ET kept after EFAULT: %d data %u\n", r, r > 0 ? out[0].data.u32 : 0);
    show("epoll ET spent after EFAULT", epoll_wait(ep3, out, 4, 50));
    ev.events = EPOLLIN | EPOLLONESHOT;
    epoll_ctl(ep3, EPOLL_CTL_MOD, s, &ev);
    show("epoll unwritable oneshot", epoll_pwait(ep3, none, 1, 1000, NULL));
    show("epoll oneshot armed after EFAULT", epoll_wait(ep3, out, 4, 1000));
    show("epoll oneshot disabled after", epoll_wait(ep3, out, 4, 50));
    recv(s, buf, 1, 0);
    close(ep3);
    munmap(none, 4096);

    /* epoll before connect, as nginx registers its upstream sockets */
    int ec = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int ep2 = epoll_create1(0);
    struct epoll_event e2 = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u32 = 7};
    show("epoll add before connect", epoll_ctl(ep2, EPOLL_CTL_ADD, ec, &e2));
    r = epoll_wait(ep2, out, 4, 0);
    printf("unconnected in epoll: %d events %#x\n", r, r > 0 ? out[0].events : 0);
    r = connect(ec, (struct sockaddr *)&dst, sizeof dst);
    printf("connect after epoll add: %s\n", r == 0 ? "0" : ename(errno));
    r = epoll_wait(ep2, out, 4, 5000);
    printf("connected in epoll: %d out %d hup %d data %u\n", r, r > 0 && (out[0].events & EPOLLOUT),
           r > 0 && (out[0].events & EPOLLHUP), r > 0 ? out[0].data.u32 : 0);
    wait_fd(l, POLLIN, 5000);
    int ea = accept(l, NULL, NULL);
    send(ea, "up", 2, 0);
    r = epoll_wait(ep2, out, 4, 5000);
    printf("data in epoll: %d in %d\n", r, r > 0 && (out[0].events & EPOLLIN));
    close(ea);
    close(ec);
    close(ep2);

    /* --- epoll sets in sets and in poll; a socket in two sets --- */
    epoll_mix("server side", s, c);
    epoll_mix("client side", c, s);

    /* --- TCP_CORK, MSG_MORE --- */
    cork_check("server side", s, c);
    cork_check("client side", c, s);

    /* --- TCP_DEFER_ACCEPT: accept waits for the first bytes --- */
    struct sockaddr_in any3 = sin_of("0.0.0.0", port + 3), dst3 = sin_of(peer, port + 3);
    int dl = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int defer = 5;
    setsockopt(dl, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    show("setsockopt TCP_DEFER_ACCEPT", setsockopt(dl, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer));
    bind(dl, (struct sockaddr *)&any3, sizeof any3);
    listen(dl, 8);
    int dc = socket(AF_INET, SOCK_STREAM, 0);
    show("connect to a deferring listener", connect(dc, (struct sockaddr *)&dst3, sizeof dst3));
    show("deferred: no connection to accept", wait_fd(dl, POLLIN, 300));
    show("accept deferred", accept(dl, NULL, NULL));
    send(dc, "first", 5, 0);
    show("data: the connection comes", wait_fd(dl, POLLIN, 5000));
    int ds = accept(dl, NULL, NULL);
    printf("accept after data: %s\n", ds >= 0 ? "fd" : ename(errno));
    memset(buf, 0, 16);
    show("recv deferred", recv(ds, buf, 16, MSG_DONTWAIT));
    close(ds);
    close(dc);
    close(dl);

    /* --- SO_REUSEPORT: listeners share a port; each connection goes to one --- */
    struct sockaddr_in any4 = sin_of("0.0.0.0", port + 4), dst4 = sin_of(peer, port + 4);
    int rl[3];
    for (int i = 0; i < 3; i++) {
        rl[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (i < 2)
            show("setsockopt SO_REUSEPORT", setsockopt(rl[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof one));
        show(i < 2 ? "bind SO_REUSEPORT" : "bind without SO_REUSEPORT",
             bind(rl[i], (struct sockaddr *)&any4, sizeof any4));
    }
    show("listen SO_REUSEPORT", listen(rl[0], 16) + listen(rl[1], 16));
    int rc[8], accepted = 0;
    for (int i = 0; i < 8; i++) {
        rc[i] = socket(AF_INET, SOCK_STREAM, 0);
        connect(rc[i], (struct sockaddr *)&dst4, sizeof dst4);
    }
    for (int tries = 0; accepted < 8 && tries < 500; tries++) {
        int got_one = 0;
        for (int i = 0; i < 2; i++) {
            int a = accept(rl[i], NULL, NULL);
            if (a >= 0) {
                accepted++;
                got_one = 1;
                close(a);
            }
        }
        if (!got_one)
            usleep(10000);
    }
    printf("SO_REUSEPORT accepted: %d\n", accepted);
    for (int i = 0; i < 8; i++)
        close(rc[i]);
    for (int i = 0; i < 3; i++)
        close(rl[i]);

    /* --- signals: SA_RESTART --- */
    interrupted("recv server side", s, c, NULL);
    interrupted("recv client side", c, s, NULL);
    fcntl(l, F_SETFL, fcntl(l, F_GETFL) & ~O_NONBLOCK);
    interrupted("accept", l, -1, &dst);
    fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK);

    /* --- half-close, end of stream, resets --- */
    show("shutdown bad how", shutdown(c, 7));
    show("shutdown wr", shutdown(c, SHUT_WR));
    show("send after shutdown", send(c, "x", 1, MSG_NOSIGNAL));
    wait_fd(s, POLLIN, 5000);
    show("recv eof", recv(s, buf, 10, 0));
    show("recv eof again", recv(s, buf, 10, 0));
    show("send to half-closed", send(s, "back", 4, 0));
    wait_fd(c, POLLIN, 5000);
    memset(buf, 0, sizeof buf);
    show("recv after own shutdown", recv(c, buf, 10, 0));
    printf("got: %s\n", buf);
    close(s);
    wait_fd(c, POLLIN, 5000);
    show("recv peer closed", recv(c, buf, 10, 0));
    close(c);

    /* close with unread data resets the peer */
    c = socket(AF_INET, SOCK_STREAM, 0);
    show("connect blocking", connect(c, (struct sockaddr *)&dst, sizeof dst));
    wait_fd(l, POLLIN, 5000);
    s = accept(l, NULL, NULL);
    send(c, "unread", 6, 0);
    wait_fd(s, POLLIN, 5000);
    close(s);
    wait_fd(c, POLLIN, 5000);
    usleep(100000);
    show("recv after peer reset", recv(c, buf, 10, 0));
    show("recv after reset again", recv(c, buf, 10, 0));
    show("send after reset", send(c, "x", 1, MSG_NOSIGNAL));
    close(c);

    /* SO_LINGER zero: close sends a reset */
    c = socket(AF_INET, SOCK_STREAM, 0);
    connect(c, (struct sockaddr *)&dst, sizeof dst);
    wait_fd(l, POLLIN, 5000);
    s = accept(l, NULL, NULL);
    struct linger lg = {1, 0};
    show("setsockopt SO_LINGER 0", setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    close(c);
    wait_fd(s, POLLIN, 5000);
    usleep(100000);
    show("recv after linger reset", recv(s, buf, 10, 0));
    close(s);

    /* SO_RCVTIMEO */
    c = socket(AF_INET, SOCK_STREAM, 0);
    connect(c, (struct sockaddr *)&dst, sizeof dst);
    struct timeval to = {0, 200000};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &to, sizeof to);
    show("recv timeout", recv(c, buf, 1, 0));
    wait_fd(l, POLLIN, 5000);
    s = accept(l, NULL, NULL);
    struct tcp_info ti;
    socklen_t til = sizeof ti;
    getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &til);
    printf("TCP_INFO established: %d\n", ti.tcpi_state == 1);
    /* dup: the connection lives while a descriptor holds it */
    int d = dup(s);
    close(s);
    show("send on dup", send(d, "dup", 3, 0));
    wait_fd(c, POLLIN, 5000);
    memset(buf, 0, sizeof buf);
    show("recv from dup", recv(c, buf, 10, 0));
    printf("got: %s\n", buf);
    close(d);
    close(c);

    /* --- accepted descriptors: each its own, whatever is behind it --- */
    int c1 = socket(AF_INET, SOCK_STREAM, 0), c2 = socket(AF_INET, SOCK_STREAM, 0);
    connect(c1, (struct sockaddr *)&dst, sizeof dst);
    connect(c2, (struct sockaddr *)&dst, sizeof dst);
    wait_fd(l, POLLIN, 5000);
    fcntl(l, F_SETFL, fcntl(l, F_GETFL) & ~O_NONBLOCK);
    int a1 = accept4(l, NULL, NULL, SOCK_NONBLOCK), a2 = accept(l, NULL, NULL);
    struct stat st;
    printf("accepted fstat socket: %d\n", fstat(a1, &st) == 0 && S_ISSOCK(st.st_mode));
    int v = 0;
    socklen_t vl = sizeof v;
    getsockopt(a1, SOL_SOCKET, SO_DOMAIN, &v, &vl);
    printf("accepted SO_DOMAIN inet: %d\n", v == AF_INET);
    getsockopt(a1, SOL_SOCKET, SO_PROTOCOL, &v, &vl);
    printf("accepted SO_PROTOCOL tcp: %d\n", v == IPPROTO_TCP);
    printf("accepted cloexec without the flag: %d\n", (fcntl(a2, F_GETFD) & FD_CLOEXEC) != 0);
    printf("nonblock: SOCK_NONBLOCK %d, blocking %d\n", !!(fcntl(a1, F_GETFL) & O_NONBLOCK),
           !!(fcntl(a2, F_GETFL) & O_NONBLOCK));
    fcntl(a2, F_SETFL, O_NONBLOCK);
    fcntl(a1, F_SETFL, 0);
    printf("nonblock swapped: %d %d\n", !!(fcntl(a1, F_GETFL) & O_NONBLOCK), !!(fcntl(a2, F_GETFL) & O_NONBLOCK));
    /* an option set on one connection is that connection's alone */
    int rcv = 100000;
    struct linger l5 = {1, 5};
    show("accepted setsockopt TCP_NODELAY", setsockopt(a1, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one));
    show("accepted setsockopt SO_KEEPALIVE", setsockopt(a1, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one));
    show("accepted setsockopt SO_RCVBUF", setsockopt(a1, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv));
    show("accepted setsockopt SO_LINGER", setsockopt(a1, SOL_SOCKET, SO_LINGER, &l5, sizeof l5));
    show("accepted setsockopt SO_LINGER short", setsockopt(a1, SOL_SOCKET, SO_LINGER, &l5, 2));
    show("accepted setsockopt bad level", setsockopt(a1, 12345, 1, &one, sizeof one));
    int nd[2] = {-1, -1}, ka[2] = {-1, -1}, rb[2] = {-1, -1};
    struct linger lgo[2];
    for (int i = 0; i < 2; i++) {
        int x = i ? a2 : a1;
        vl = sizeof nd[i];
        getsockopt(x, IPPROTO_TCP, TCP_NODELAY, &nd[i], &vl);
        vl = sizeof ka[i];
        getsockopt(x, SOL_SOCKET, SO_KEEPALIVE, &ka[i], &vl);
        vl = sizeof rb[i];
        getsockopt(x, SOL_SOCKET, SO_RCVBUF, &rb[i], &vl);
        vl = sizeof lgo[i];
        getsockopt(x, SOL_SOCKET, SO_LINGER, &lgo[i], &vl);
    }
    printf("options set: nodelay %d keepalive %d rcvbuf %d linger %d/%d\n", nd[0], ka[0], rb[0], lgo[0].l_onoff,
           lgo[0].l_linger);
    printf("options of the other: nodelay %d keepalive %d rcvbuf differs %d linger %d/%d\n", nd[1], ka[1],
           rb[1] != rb[0], lgo[1].l_onoff, lgo[1].l_linger);
    unsigned char byte = 0xee;
    vl = 1;
    show("accepted getsockopt TCP_NODELAY 1 byte", getsockopt(a1, IPPROTO_TCP, TCP_NODELAY, &byte, &vl));
    printf("1 byte: len %u value %u\n", vl, byte);
    vl = sizeof v;
    show("accepted getsockopt bad pointer", getsockopt(a1, IPPROTO_TCP, TCP_NODELAY, (void *)8, &vl));
    int a3 = dup(a1);
    vl = sizeof v;
    getsockopt(a3, IPPROTO_TCP, TCP_NODELAY, &v, &vl);
    printf("dup keeps the option: %d\n", v);
    close(a3);
    close(a1);
    close(a2);
    close(c1);
    close(c2);
    /* descriptors exhausted: EMFILE, and the connection waits in the queue */
    int c3 = socket(AF_INET, SOCK_STREAM, 0);
    connect(c3, (struct sockaddr *)&dst, sizeof dst);
    send(c3, "queued", 6, 0);
    wait_fd(l, POLLIN, 5000);
    fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK); /* a lost connection shows, and hangs nothing */
    struct rlimit old_lim, lim;
    getrlimit(RLIMIT_NOFILE, &old_lim);
    int lowest = dup(0);
    close(lowest);
    lim = old_lim;
    lim.rlim_cur = (rlim_t)lowest;
    setrlimit(RLIMIT_NOFILE, &lim);
    show("accept at the descriptor limit", accept(l, NULL, NULL));
    setrlimit(RLIMIT_NOFILE, &old_lim);
    wait_fd(l, POLLIN, 1000);
    int a4 = accept(l, NULL, NULL);
    printf("accept after the limit: %s\n", a4 >= 0 ? "fd" : ename(errno));
    wait_fd(a4, POLLIN, 5000);
    memset(buf, 0, sizeof buf);
    show("recv the queued connection's bytes", recv(a4, buf, 10, 0));
    printf("got: %s\n", buf);
    close(a4);
    close(c3);

    /* --- a connection whose bytes came before accept: readable at once --- */
    int c5 = socket(AF_INET, SOCK_STREAM, 0);
    connect(c5, (struct sockaddr *)&dst, sizeof dst);
    send(c5, "early", 5, 0);
    usleep(200000);
    int a5 = accept(l, NULL, NULL);
    printf("accept with bytes waiting: %s\n", a5 >= 0 ? "fd" : ename(errno));
    struct pollfd p5 = {.fd = a5, .events = POLLIN};
    show("poll at once", poll(&p5, 1, 0));
    memset(buf, 0, sizeof buf);
    show("recv at once", recv(a5, buf, 16, MSG_DONTWAIT));
    printf("got: %s\n", buf);
    close(a5);
    close(c5);

    close(l);
    printf("done\n");
    return 0;
}
