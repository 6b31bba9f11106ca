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
