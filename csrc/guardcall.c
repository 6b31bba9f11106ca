/*
 * Calls the guards make on every trapped syscall, each a few system calls
 * made in one crossing from Python: through cffi's variadic syscall() with
 * its arguments cast one by one, each costs several times what the kernel
 * spends on it (process_vm_readv: ~15 us of Python around ~5 us of copy).
 *
 * asl_peek: HandlerCtx's reads of the target's memory (_kernel/_notify.py).
 * asl_net_*: the network guard's on-behalf connect (handlers/net.py); a
 * guarded connect() is on the path of every connection the child makes.
 *
 * Nothing here blocks: the one wait a blocking connect may need is left to
 * the caller's event loop (asl_net_connect returns 1 for it).
 */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

long asl_peek(int pid, unsigned long addr, void *buf, unsigned long len)
{
    struct iovec local = {.iov_base = buf, .iov_len = len};
    struct iovec remote = {.iov_base = (void *)addr, .iov_len = len};
    ssize_t done = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    return done < 0 ? -errno : done;
}

int asl_net_take(int pidfd, int number, int info[4])
{
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, number, 0);
    if (fd < 0)
        return -errno;
    static const int opts[3] = {SO_DOMAIN, SO_TYPE, SO_PROTOCOL};
    info[2] = 0;
    for (int i = 0; i < 3; i++) {
        /* A stream socket's kind is its type (TCP): its protocol is read
         * only to tell ICMP from UDP among the others. */
        if (i == 2 && info[1] == SOCK_STREAM)
            break;
        socklen_t len = sizeof info[i];
        if (getsockopt(fd, SOL_SOCKET, opts[i], &info[i], &len) < 0) {
            int err = errno;  /* ENOTSOCK: not a socket */
            close(fd);
            return -err;
        }
    }
    info[3] = fcntl(fd, F_GETFL);
    return fd;
}

#define NOTIF_ID_VALID 0x40082102UL /* SECCOMP_IOCTL_NOTIF_ID_VALID */

/* A guarded call's first look at the target, in one crossing: the socket
 * (asl_net_take), `len` bytes at `addr` in `pid` into `buf`, then whether
 * notification `id` of `listener` is still pending.  While it is, the
 * target is alive and blocked in the call, so its id was still its own
 * during both looks (see _kernel/_notify.py).  The socket's fd, or -errno:
 * -ESRCH when the target is gone, -EFAULT when part of the range is not
 * mapped; nothing stays open on failure. */
int asl_net_fetch(int listener, uint64_t id, int pidfd, int number, int pid,
                  unsigned long addr, unsigned long len, void *buf, int info[4])
{
    int fd = asl_net_take(pidfd, number, info);
    if (fd < 0)
        return fd;
    long got = len ? asl_peek(pid, addr, buf, len) : 0;
    int err = 0;
    if (ioctl(listener, NOTIF_ID_VALID, &id) < 0)
        err = errno == ENOENT ? ESRCH : errno;
    else if (got < 0)
        err = (int)-got;
    else if ((unsigned long)got != len)
        err = EFAULT;
    if (err) {
        close(fd);
        return -err;
    }
    return fd;
}

static int pending(int err)
{
    return err == EINPROGRESS || err == EAGAIN || err == EALREADY;
}

int asl_net_connect(int fd, const void *addr, unsigned len, int wait, int *started)
{
    int flags = wait ? fcntl(fd, F_GETFL) : 0;
    if (flags < 0)
        return -errno;
    return asl_net_connect_flags(fd, addr, len, wait, flags, started);
}

/* asl_net_connect with the file's flags as just read (`flags`). */
int asl_net_connect_flags(int fd, const void *addr, unsigned len, int wait, int flags,
                          int *started)
{
    *started = 0;
    if (!wait)
        return connect(fd, addr, len) == 0 ? 0 : -errno;
    /* O_NONBLOCK belongs to the open file, shared with the child: set for
     * this one call only, from the flags as they are now. */
    if (fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    int err = connect(fd, addr, len) == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
        /* On loopback the handshake is as a rule over by the time connect()
         * returns (the SYN-ACK waits in the socket's backlog, processed as
         * connect releases the socket's lock).  A second connect(), still
         * non-blocking, tells so in one call where poll() and SO_ERROR took
         * two, and ends as the kernel's blocking connect does: the socket
         * marked connected, or reset after an error.  EALREADY: still
         * under way, for the caller's loop to wait on. */
        int again = connect(fd, addr, len) == 0 ? 0 : errno;
        if (again != EALREADY)
            err = again == EISCONN ? 0 : again;
    }
    fcntl(fd, F_SETFL, flags);
    if (!pending(err))
        return -err;
    *started = err;
    if (err == EINPROGRESS)
        return 1;
    /* Another socket's EAGAIN or EALREADY: a poll with no timeout saves
     * the caller a turn of its event loop when it is over already. */
    struct pollfd ready = {.fd = fd, .events = POLLOUT};
    if (poll(&ready, 1, 0) <= 0)
        return 1;
    return asl_net_connected(fd, err, addr, len);
}

int asl_net_connected(int fd, int started, const void *addr, unsigned len)
{
    if (started == EINPROGRESS && len) {
        /* The handshake is over, or the socket reports an error: finished
         * by connect() as in asl_net_connect_flags, the socket made
         * non-blocking for the call (an error queued by IP_RECVERR makes it
         * writable before the handshake is over). */
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
            return -errno;
        int again = connect(fd, addr, len) == 0 ? 0 : errno;
        fcntl(fd, F_SETFL, flags);
        if (again == EALREADY)
            return 1;
        return again == EISCONN ? 0 : -again;
    }
    int err = 0;
    socklen_t size = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &size) < 0)
        return -errno;
    if (err)
        return -err;
    /* A unix stream socket's EAGAIN (a full backlog) is not a connection
     * under way: it stays the answer once the socket is writable. */
    return started == EINPROGRESS ? 0 : -started;
}
