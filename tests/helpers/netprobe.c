/* Network probes for tests/test_net_guard.py.  Each prints one line "key=value ..."
 * and exits with the errno of the call it tests (0: it worked); 125 is a usage error.
 *
 *   netprobe connect tcp|udp ADDR PORT        blocking connect (udp: then send)
 *   netprobe nbconnect ADDR PORT              non-blocking: first=ERRNO final=ERRNO
 *   netprobe reconnect ADDR PORT1 PORT2       blocking, to PORT1, then the same socket to
 *                                             PORT2: first=ERRNO second=ERRNO
 *   netprobe sendto ADDR PORT                 UDP sendto with an address
 *   netprobe unspec ADDR PORT                 the same, the address's family AF_UNSPEC
 *   netprobe sendmsg ADDR PORT                UDP sendmsg with msg_name
 *   netprobe sendmmsg ADDR PORT               UDP sendmmsg of two messages: sent=N
 *   netprobe connected ADDR PORT              UDP connect, then send() with no address
 *   netprobe unix PATH                        connect a unix stream socket to PATH
 *   netprobe ping ADDR                        ICMP echo on a ping socket, reply awaited
 *   netprobe toctou GOOD BAD PORT N           N connects while a thread flips the address
 *   netprobe sendtoctou GOOD BAD PORT N       N UDP sendtos while a thread flips the address
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static socklen_t make_addr(struct sockaddr_storage *ss, const char *addr, int port) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, addr, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        return sizeof *in;
    }
    if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        return sizeof *in6;
    }
    fprintf(stderr, "bad address %s\n", addr);
    exit(125);
}

static int done(const char *what, int rc) {
    int err = rc < 0 ? errno : 0;
    printf("%s=%d\n", what, err);
    return err;
}

static volatile int flipping = 1;
static struct sockaddr_storage shared;
static struct sockaddr_storage good, bad;

static void *flipper(void *arg) {
    (void)arg;
    /* As long in each state: an unconfined connect lands on either. */
    while (flipping) {
        memcpy(&shared, &bad, sizeof shared);
        __asm__ volatile("" ::: "memory");  /* no dead-store elimination */
        for (volatile int i = 0; i < 2000; i++) {}
        memcpy(&shared, &good, sizeof shared);
        __asm__ volatile("" ::: "memory");
        for (volatile int i = 0; i < 2000; i++) {}
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) return 125;
    const char *cmd = argv[1];
    struct sockaddr_storage ss;
    if (!strcmp(cmd, "connect") && argc == 5) {
        int udp = !strcmp(argv[2], "udp");
        socklen_t len = make_addr(&ss, argv[3], atoi(argv[4]));
        int fd = socket(ss.ss_family, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
        if (fd < 0) return done("socket", -1);
        int rc = connect(fd, (struct sockaddr *)&ss, len);
        if (rc == 0 && udp) rc = (int)send(fd, "x", 1, 0) < 0 ? -1 : 0;
        return done("connect", rc);
    }
    if (!strcmp(cmd, "reconnect") && argc == 5) {
        socklen_t len = make_addr(&ss, argv[2], atoi(argv[3]));
        int fd = socket(ss.ss_family, SOCK_STREAM, 0);
        if (fd < 0) return done("socket", -1);
        int first = connect(fd, (struct sockaddr *)&ss, len) < 0 ? errno : 0;
        len = make_addr(&ss, argv[2], atoi(argv[4]));
        int second = connect(fd, (struct sockaddr *)&ss, len) < 0 ? errno : 0;
        printf("first=%d second=%d\n", first, second);
        return second;
    }
    if (!strcmp(cmd, "nbconnect") && argc == 4) {
        socklen_t len = make_addr(&ss, argv[2], atoi(argv[3]));
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0) return done("socket", -1);
        int rc = connect(fd, (struct sockaddr *)&ss, len);
        int first = rc < 0 ? errno : 0;
        struct pollfd p = {fd, POLLOUT, 0};
        poll(&p, 1, 5000);
        int final = 0;
        socklen_t sl = sizeof final;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &final, &sl);
        struct sockaddr_storage peer;
        socklen_t pl = sizeof peer;
        int connected = getpeername(fd, (struct sockaddr *)&peer, &pl) == 0;
        printf("first=%d final=%d connected=%d\n", first, final, connected);
        return first == EINPROGRESS || first == 0 ? final : first;
    }
    if (!strcmp(cmd, "unspec") && argc == 4) {
        socklen_t len = make_addr(&ss, argv[2], atoi(argv[3]));
        int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
        ss.ss_family = AF_UNSPEC;  /* udp_sendmsg reads it as a sockaddr_in */
        return done("sendto", (int)sendto(fd, "x", 1, 0, (struct sockaddr *)&ss, len));
    }
    if ((!strcmp(cmd, "sendto") || !strcmp(cmd, "sendmsg") || !strcmp(cmd, "sendmmsg")
         || !strcmp(cmd, "connected")) && argc == 4) {
        socklen_t len = make_addr(&ss, argv[2], atoi(argv[3]));
        int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
        if (fd < 0) return done("socket", -1);
        char payload[] = "hello";
        struct iovec iov = {payload, 5};
        if (!strcmp(cmd, "sendto"))
            return done("sendto", (int)sendto(fd, payload, 5, 0, (struct sockaddr *)&ss, len));
        if (!strcmp(cmd, "connected")) {
            if (connect(fd, (struct sockaddr *)&ss, len) < 0) return done("connect", -1);
            return done("send", (int)send(fd, payload, 5, 0));
        }
        struct msghdr msg = {.msg_name = &ss, .msg_namelen = len, .msg_iov = &iov,
                             .msg_iovlen = 1};
        if (!strcmp(cmd, "sendmsg")) {
            ssize_t n = sendmsg(fd, &msg, 0);
            if (n >= 0 && n != 5) { printf("short=%zd\n", n); return 124; }
            return done("sendmsg", (int)n);
        }
        struct mmsghdr vec[2] = {{msg, 0}, {msg, 0}};
        int n = sendmmsg(fd, vec, 2, 0);
        if (n < 0) return done("sendmmsg", -1);
        printf("sent=%d len0=%u len1=%u\n", n, vec[0].msg_len, vec[1].msg_len);
        return n == 2 && vec[0].msg_len == 5 && vec[1].msg_len == 5 ? 0 : 124;
    }
    if (!strcmp(cmd, "unix") && argc == 3) {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        strncpy(un.sun_path, argv[2], sizeof un.sun_path - 1);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0) return done("socket", -1);
        return done("connect", connect(fd, (struct sockaddr *)&un, sizeof un));
    }
    if (!strcmp(cmd, "ping") && argc == 3) {
        socklen_t len = make_addr(&ss, argv[2], 0);
        int v6 = ss.ss_family == AF_INET6;
        int fd = socket(ss.ss_family, SOCK_DGRAM, v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP);
        if (fd < 0) return done("socket", -1);
        unsigned char pkt[16] = {v6 ? 128 : ICMP_ECHO, 0};  /* echo request */
        if (sendto(fd, pkt, sizeof pkt, 0, (struct sockaddr *)&ss, len) < 0)
            return done("sendto", -1);
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 3000) != 1) { printf("reply=timeout\n"); return 124; }
        return done("recv", (int)recv(fd, pkt, sizeof pkt, 0));
    }
    if ((!strcmp(cmd, "toctou") || !strcmp(cmd, "sendtoctou")) && argc == 6) {
        int port = atoi(argv[4]), n = atoi(argv[5]);
        int udp = !strcmp(cmd, "sendtoctou");
        socklen_t len = make_addr(&good, argv[2], port);
        make_addr(&bad, argv[3], port);
        memcpy(&shared, &good, sizeof shared);
        pthread_t t;
        pthread_create(&t, NULL, flipper, NULL);
        int ok = 0, refused = 0, other = 0;
        for (int i = 0; i < n; i++) {
            int fd = socket(good.ss_family, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
            int rc = udp ? (int)sendto(fd, "x", 1, 0, (struct sockaddr *)&shared, len)
                         : connect(fd, (struct sockaddr *)&shared, len);
            if (rc >= 0) ok++;
            else if (errno == EACCES) refused++;
            else other++;
            close(fd);
        }
        flipping = 0;
        pthread_join(t, NULL);
        printf("ok=%d refused=%d other=%d\n", ok, refused, other);
        return 0;
    }
    return 125;
}
