/*
 * threadstress: the threads of one process accepting and connecting at
 * once, as a multi-threaded server does (HAProxy nbthread, memcached's
 * workers): ACCEPTORS threads share one non-blocking listener and each
 * answers what it accepts; CONNECTORS threads each open ROUNDS short
 * connections to it, send a byte and wait for the echo.  Under the library
 * the acceptors race for the connections the instance accepted ahead and
 * the connectors' requests cross on the channel.
 *
 * usage: threadstress CONNECT_ADDR PORT
 * Prints only what the kernel and the library must agree on.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ACCEPTORS 4
#define CONNECTORS 4
#define ROUNDS 250

static int listener;
static struct sockaddr_in dst;
static int accepted, echoed, connect_errors, echo_errors, accept_errors, duplicate_fds;
static int connectors_left = CONNECTORS;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int fd_owner[65536];
static time_t deadline;

static void add(int *x, int n)
{
    pthread_mutex_lock(&lock);
    *x += n;
    pthread_mutex_unlock(&lock);
}

static void *acceptor(void *arg)
{
    (void)arg;
    for (;;) {
        struct pollfd p = {.fd = listener, .events = POLLIN};
        poll(&p, 1, 50);
        int a = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (a < 0) {
            if (errno != EAGAIN)
                add(&accept_errors, 1);
            /* done when every connection that was made has been taken, or
             * the time is up (a lost connection shows in the counts) */
            pthread_mutex_lock(&lock);
            int done = connectors_left == 0 && accepted >= CONNECTORS * ROUNDS - connect_errors;
            pthread_mutex_unlock(&lock);
            if (done || time(NULL) > deadline)
                return NULL;
            continue;
        }
        /* a descriptor two threads both got would be a claim taken twice */
        pthread_mutex_lock(&lock);
        if (a < 65536 && fd_owner[a]++)
            duplicate_fds++;
        accepted++;
        pthread_mutex_unlock(&lock);
        char c;
        struct pollfd q = {.fd = a, .events = POLLIN};
        if (poll(&q, 1, 5000) == 1 && recv(a, &c, 1, 0) == 1 && send(a, &c, 1, MSG_NOSIGNAL) == 1)
            add(&echoed, 1);
        else
            add(&echo_errors, 1);
        pthread_mutex_lock(&lock);
        if (a < 65536)
            fd_owner[a]--;
        pthread_mutex_unlock(&lock);
        close(a);
    }
}

static void *connector(void *arg)
{
    int id = (int)(long)arg;
    for (int i = 0; i < ROUNDS; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&dst, sizeof dst) < 0) {
            fprintf(stderr, "threadstress: connect %d of thread %d: %s\n", i, id, strerror(errno));
            add(&connect_errors, 1);
            if (c >= 0)
                close(c);
            continue;
        }
        char x = (char)('a' + (id + i) % 26), y = 0;
        struct pollfd q = {.fd = c, .events = POLLIN};
        if (send(c, &x, 1, MSG_NOSIGNAL) != 1 || poll(&q, 1, 5000) != 1 || recv(c, &y, 1, 0) != 1 || y != x)
            add(&echo_errors, 1);
        close(c);
    }
    add(&connectors_left, -1);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: threadstress CONNECT_ADDR PORT\n");
        return 2;
    }
    int port = atoi(argv[2]), one = 1;
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    dst = any;
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&any, sizeof any) < 0 || listen(listener, 128) < 0) {
        perror("listen");
        return 1;
    }
    deadline = time(NULL) + 60;
    pthread_t a[ACCEPTORS], c[CONNECTORS];
    for (int i = 0; i < ACCEPTORS; i++)
        pthread_create(&a[i], NULL, acceptor, NULL);
    for (int i = 0; i < CONNECTORS; i++)
        pthread_create(&c[i], NULL, connector, (void *)(long)i);
    for (int i = 0; i < CONNECTORS; i++)
        pthread_join(c[i], NULL);
    for (int i = 0; i < ACCEPTORS; i++)
        pthread_join(a[i], NULL);
    printf("connections: %d\n", CONNECTORS * ROUNDS);
    printf("accepted: %d\n", accepted);
    printf("echoed: %d\n", echoed);
    printf("connect errors: %d\n", connect_errors);
    printf("echo errors: %d\n", echo_errors);
    printf("accept errors: %d\n", accept_errors);
    printf("a descriptor accepted twice: %d\n", duplicate_fds);
    return 0;
}
