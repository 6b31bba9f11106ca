/*
 * Network namespaces, seen from the parent (asyncsandlock/_netns.py).
 *
 * A thread's network namespace decides where the sockets it creates live;
 * nothing else about the thread depends on it, and it is per thread (not
 * per process), so switching the calling thread (the event loop's) for the
 * span of one C call changes nothing for any other thread.  Both functions
 * switch and switch back within one call: no Python code, and so no other
 * task of the event loop and no Python signal handler, runs while the thread
 * is elsewhere.  Going back cannot fail where going there worked (it needs
 * CAP_SYS_ADMIN, which we just used, over a namespace we hold an fd of);
 * if it did, the thread would go on creating every socket in the sandbox's
 * namespace, so we abort rather than return.
 */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int own_netns(void)
{
    int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static void go_back(int home)
{
    if (setns(home, CLONE_NEWNET) < 0)
        abort();
    close(home);
}

int asl_netns_new(void)
{
    int home = own_netns();
    if (home < 0)
        return home;
    if (unshare(CLONE_NEWNET) < 0) {
        int err = errno;
        close(home);
        return -err;
    }
    int fd = own_netns();
    go_back(home);
    return fd;
}

int asl_socket_in(int nsfd, int domain, int type, int protocol)
{
    int home = own_netns();
    if (home < 0)
        return home;
    if (setns(nsfd, CLONE_NEWNET) < 0) {
        int err = errno;
        close(home);
        return -err;
    }
    int fd = socket(domain, type, protocol);
    int err = errno;
    go_back(home);
    return fd < 0 ? -err : fd;
}

/*
 * The namespace maker (asyncsandlock/_netpool.py): network namespaces made
 * ahead of the spawns that use them, by a process of their own, beside the
 * caller, so that neither the caller's thread nor a spawn waits for the
 * kernel's ~0.6 ms of CPU per unshare(CLONE_NEWNET).
 *
 * It takes two steps, as the reaper does (reaper.c), for other reasons:
 *
 *  A = clone(CLONE_VM | CLONE_VFORK): the caller sleeps while A closes every
 *      fd of its copy of the caller's table but the socket and the caller's
 *      namespace, so that nothing of the caller (a pipe's write end, whose
 *      reader waits for EOF) is held by a process that outlives the call;
 *  B = clone(CLONE_VM | CLONE_PARENT) by A: the maker.  CLONE_PARENT makes it
 *      the caller's child (A's parent's), reaped by the caller through a
 *      pidfd, never a zombie of init or of a subreaper.  It shares the
 *      caller's memory and runs while the caller does: raw system calls
 *      only (no errno, no TLS written), its stack and arguments are this
 *      file's own static memory, and signals stay blocked (the caller's
 *      handlers are Python's).  A CLONE_VM child starts without the caller's
 *      rseq registration and there is no CLONE_CHILD_CLEARTID, so the kernel
 *      writes nothing into that memory either.
 *
 * B makes namespaces, each from the caller's (setns back to it first: a new
 * namespace's devconf may be copied from its maker's), brings lo up, and
 * sends each as an fd (SCM_RIGHTS) on the socket: `count` at first, then as
 * many more as the caller asks for, a byte at a time, as it takes them.  It
 * sleeps in read() in between, and exits when the caller's end closes (the
 * caller closes it, exits or execs: the end is close-on-exec).  The caller
 * reads EOF only after B is done with the stack: a process leaves its memory
 * (exit_mm) before its fds are closed (exit_files).  Until then no second
 * maker may start: the static stack is one.
 */
#include "raw_syscall.h"
#include "fdmsg.h"
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#define MAKER_STACK (64 * 1024)

struct maker_args {
    int sock, home, count;
    long pid; /* written by A: B's pid or -errno */
};

static struct maker_args maker;
static char maker_stack[MAKER_STACK] __attribute__((aligned(64)));
static char fork_stack[16 * 1024] __attribute__((aligned(64)));

static long send_fd(int sock, int fd)
{
    struct fd_message m;
    return SYS3(SYS_sendmsg, sock, fd_message(&m, &fd, 1), MSG_NOSIGNAL);
}

/* B.  Makes `count` namespaces, then one more per byte the caller sends
 * (the byte says how many), until the caller closes its end (EOF) or a
 * namespace cannot be made: the caller sees EOF then, counts what came, and
 * starts another maker if any did (a host that refuses gives none). */
static int maker_main(void *arg)
{
    const struct maker_args a = *(const struct maker_args *)arg;
    SYS3(SYS_prctl, PR_SET_NAME, "asl-netns", 0);
    long count = a.count;
    for (;;) {
        for (; count > 0; count--) {
            if (SYS3(SYS_setns, a.home, CLONE_NEWNET, 0) < 0 ||
                SYS3(SYS_unshare, CLONE_NEWNET, 0, 0) < 0 || asl_loopback_up() < 0)
                return 0;
            long fd = raw_syscall(SYS_openat, AT_FDCWD, (long)"/proc/thread-self/ns/net",
                                  O_RDONLY | O_CLOEXEC, 0, 0, 0);
            if (fd < 0)
                return 0;
            long rc = send_fd(a.sock, (int)fd);
            SYS3(SYS_close, fd, 0, 0);
            if (rc < 0) /* the caller is gone, or forked and closed its end */
                return 0;
        }
        unsigned char more = 0;
        long n = SYS3(SYS_read, a.sock, &more, 1);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            return 0;
        count = more;
    }
}

static void close_all_but(int a, int b)
{
    int lo = a < b ? a : b, hi = a < b ? b : a;
    if (lo > 0)
        SYS3(SYS_close_range, 0, lo - 1, 0);
    if (hi > lo + 1)
        SYS3(SYS_close_range, lo + 1, hi - 1, 0);
    SYS3(SYS_close_range, hi + 1, ~0U, 0);
}

/* A: B, then exit (the caller wakes when A exits). */
static int maker_fork(void *arg)
{
    struct maker_args *a = arg;
    close_all_but(a->sock, a->home);
    /* SCHED_BATCH, inherited by B: a batch task never preempts another on
     * wake-up, only at a tick.  Without it the new B, about to spend
     * milliseconds in the kernel (not preemptible there with
     * PREEMPT_NONE), often takes the CPU from A at once, and the caller,
     * asleep until A exits, waits for B's batch: 1-3 ms measured, not 0.1. */
    struct sched_param batch = {0};
    SYS3(SYS_sched_setscheduler, 0, SCHED_BATCH, &batch);
    /* glibc's wrapper, for the new stack; it writes errno (the sleeping
     * caller's) only on failure, and the caller reads A's result, not errno. */
    int pid = clone(maker_main, maker_stack + MAKER_STACK, CLONE_VM | CLONE_PARENT | SIGCHLD, a);
    a->pid = pid < 0 ? -EAGAIN : pid;
    return 0;
}

int asl_netns_maker(int sock, int count, int out[3])
{
    int home = own_netns();
    if (home < 0)
        return home;
    maker = (struct maker_args){.sock = sock, .home = home, .count = count, .pid = -ECHILD};
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int pidfd = -1;
    int a = clone(maker_fork, fork_stack + sizeof fork_stack,
                  CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &maker, &pidfd);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(home);
    if (a < 0)
        return -err;
    out[0] = a, out[1] = pidfd, out[2] = (int)maker.pid;
    return 0;
}
