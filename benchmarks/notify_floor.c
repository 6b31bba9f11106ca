/*
 * notify_floor N: the floor of bench_notify.py on this machine: the same
 * round trips as the supervisor's, served by a loop in C.
 *
 * A child installs a filter that traps getpid() to a listener and makes N
 * raw getpid() calls; the parent takes the listener (pidfd_getfd), sets
 * SYNC_WAKE_UP, and serves as asyncsandlock's supervisor does
 * (csrc/notifstep.c): SEND the previous answer, poll with no timeout, RECV;
 * epoll_wait when nothing is queued.  Prints the wall time from fork to
 * reap in seconds and the parent's CPU per notification.  No Python, no
 * event loop, no Landlock: what is left is the kernel's round trip and the
 * two context switches.
 */
#define _GNU_SOURCE
#include "trap_floor.h"

#include <linux/seccomp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double cpu(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec)
           + (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) * 1e-6;
}

static void trapped_child(long n, int report, int go)
{
    trap_syscall(SYS_getpid, report, go);
    for (long i = 0; i < n; i++)
        syscall(SYS_getpid);
    _exit(0);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    int report[2], go[2];
    if (pipe(report) || pipe(go))
        return 1;
    double start = seconds();
    pid_t pid = fork();
    if (pid == 0)
        trapped_child(n, report[1], go[0]);
    int pidfd, ep;
    int fd = pid < 0 ? -1 : take_listener(pid, report[0], &pidfd, &ep);
    if (fd < 0)
        return 1;
    struct epoll_event ev;
    double cpu0 = cpu();
    if (write(go[1], "x", 1) != 1)
        return 1;
    struct seccomp_notif req;
    struct seccomp_notif_resp resp = {.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    int answer = 0;
    long served = 0;
    for (;;) {
        if (answer && ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) == 0)
            served++;
        answer = 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 0) == 0) {
            epoll_wait(ep, &ev, 1, -1);
            continue;
        }
        if (!(p.revents & POLLIN))
            break;  /* POLLHUP: the child is gone */
        memset(&req, 0, sizeof req);
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &req) == 0) {
            resp.id = req.id;
            answer = 1;
        }
    }
    int status;
    waitpid(pid, &status, 0);
    double elapsed = seconds() - start;
    printf("%.6f %.3f %ld\n", elapsed, (cpu() - cpu0) / (double)(served ? served : 1) * 1e6,
           served);
    return served == n && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
