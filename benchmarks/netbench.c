/* The child of bench_net.py.
 *   netbench connect ADDR PORT N   N connect()+close() (a reset) to ADDR:PORT; prints ns per
 *                                  connect, wall-clock time then this process's CPU time
 *   netbench bulk ADDR PORT MIB    send()s MIB MiB over one TCP connection; prints MB/s,
 *                                  then this process's CPU time per MiB in ns
 *   netbench serve ADDR PORT 0     accepts and drains connections until killed
 *                                  (prints the port once listening)
 */
#include <poll.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* This process's CPU time (user + system), in seconds. */
static double cpu_time(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec
         + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

int main(int argc, char **argv) {
    if (argc != 5) return 125;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &sa.sin_addr);
    long n = atol(argv[4]);
    if (!strcmp(argv[1], "serve")) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 4096) < 0) return 1;
        socklen_t sl = sizeof sa;
        getsockname(l, (struct sockaddr *)&sa, &sl);
        printf("%d\n", ntohs(sa.sin_port));
        fflush(stdout);
        static struct pollfd fds[4096];
        static char sink[1 << 16];
        int count = 1;
        fds[0] = (struct pollfd){l, POLLIN, 0};
        for (;;) {
            poll(fds, count, -1);
            for (int i = count - 1; i >= 1; i--) {
                if (!fds[i].revents) continue;
                if (read(fds[i].fd, sink, sizeof sink) <= 0) {
                    close(fds[i].fd);
                    fds[i] = fds[--count];
                }
            }
            if (fds[0].revents && count < 4096) {
                int c = accept(l, NULL, NULL);
                if (c >= 0) fds[count++] = (struct pollfd){c, POLLIN, 0};
            }
        }
    }
    if (!strcmp(argv[1], "connect")) {
        struct linger no_linger = {.l_onoff = 1, .l_linger = 0};
        double start = now(), cpu = cpu_time();
        for (long i = 0; i < n; i++) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
            /* Closed with a reset, not a FIN: no TIME_WAIT left behind.  Tens of
             * thousands of them (60 s each) made connect()'s search for a free
             * local port, and so every figure, grow from round to round. */
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &no_linger, sizeof no_linger);
            close(fd);
        }
        printf("%.0f %.0f\n", (now() - start) / n * 1e9, (cpu_time() - cpu) / n * 1e9);
        return 0;
    }
    static char buf[1 << 16];
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
    double start = now(), cpu = cpu_time();
    for (long left = n << 20; left > 0;) {
        /* send(): sendto with no address, which the guard never sees */
        ssize_t w = send(fd, buf, left < (long)sizeof buf ? left : (long)sizeof buf, 0);
        if (w < 0) { perror("write"); return 1; }
        left -= w;
    }
    printf("%.0f %.0f\n", (double)(n << 20) / (now() - start) / 1e6,
           (cpu_time() - cpu) / n * 1e9);
    return 0;
}
