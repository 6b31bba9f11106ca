/*
 * connect_floor MODE NETBENCH ADDR PORT N: the floors under bench_net.py's
 * guarded connect on this machine, with no Python and no event loop.
 *
 * A child installs a filter that traps connect() alone to a listener, then
 * execs `NETBENCH connect ADDR PORT N` (benchmarks/netbench.c), whose line
 * (ns per connect, wall then CPU) is this program's output.  The parent
 * takes the listener (pidfd_getfd), sets SYNC_WAKE_UP as the supervisor
 * does, sleeps in epoll_wait when nothing is queued, and answers each
 * trapped connect as MODE says:
 *
 *   continue  SECCOMP_USER_NOTIF_FLAG_CONTINUE: the child makes the call
 *             itself.  Not a guard (the child may rewrite the sockaddr
 *             after the look, see seccomp_unotify(2)): what the trap's
 *             round trip alone costs a connect.
 *   blocking  the fewest steps of a connect made on the child's behalf:
 *             the sockaddr read once, the socket taken (pidfd_getfd), a
 *             blocking connect() with the bytes read, the copy closed,
 *             SEND.  Not a guard either: it knows nothing of the socket
 *             (a unix socket would be connected as well), and on an event
 *             loop a peer slow to answer would stop every other task.
 *   pump      the library's own C path (csrc/netfast.c, asl_fast_pump,
 *             with the destination's verdict memoised as the guard does
 *             after its first connect): the socket's domain, type and
 *             flags, a non-blocking connect, the flags put back.  This is
 *             asyncsandlock's guard with its Python and event loop taken
 *             away.
 *
 * bench_net.py runs the three beside the unconfined child and the library,
 * so that the library's overhead reads against what any guard built on a
 * seccomp trap must pay on this machine.
 */
#define _GNU_SOURCE
#include "spawn.h"
#include "trap_floor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KIND_TCP 0  /* csrc/netfast.c's kinds of verdict */

enum mode { CONTINUE, BLOCKING, PUMP };

static void trapped_child(char **argv, int report, int go)
{
    trap_syscall(SYS_connect, report, go);
    execv(argv[0], argv);
    _exit(127);
}

static int answer(int listener, __u64 id, int error, __u32 flags)
{
    struct seccomp_notif_resp resp = {.id = id, .error = error, .flags = flags};
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) == 0 || errno == ENOENT ? 0 : -1;
}

/* One notification answered by the CONTINUE or BLOCKING mode. */
static int serve_one(int listener, int pidfd, enum mode mode)
{
    struct seccomp_notif req;
    memset(&req, 0, sizeof req);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0)
        return errno == ENOENT || errno == EINTR ? 0 : -1;
    if (mode == CONTINUE)
        return answer(listener, req.id, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
    unsigned char raw[128];
    unsigned len = (unsigned)req.data.args[2];
    if (len > sizeof raw || asl_peek((int)req.pid, req.data.args[1], raw, len) != (long)len)
        return answer(listener, req.id, -EFAULT, 0);
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, (int)req.data.args[0], 0);
    if (fd < 0)
        return answer(listener, req.id, -errno, 0);
    int error = connect(fd, (struct sockaddr *)raw, len) == 0 ? 0 : -errno;
    close(fd);
    return answer(listener, req.id, error, 0);
}

/* The library's pump until it has nothing queued: 0, 1 once every task of
 * the child is gone, -1 on anything the library would hand to Python. */
static int pump(struct asl_fast *fast, int listener)
{
    union {
        struct seccomp_notif notif;
        unsigned char bytes[256];
    } buf;
    for (;;) {
        int out[3];
        int rc = asl_fast_pump(fast, &buf, 64, out);
        if (rc == 0)
            return 0;
        if (rc == 3)
            return 1;
        if (rc != 2)
            return -1;
        /* A handshake not over at once: the library waits on its loop. */
        unsigned char addr[128];
        unsigned len = asl_fast_address(fast, addr);
        struct pollfd p = {.fd = out[1], .events = POLLOUT};
        int done;
        do {
            poll(&p, 1, -1);
            done = asl_net_connected(out[1], out[2], addr, len);
        } while (done == 1);
        close(out[1]);
        if (answer(listener, buf.notif.id, done, 0))
            return -1;
    }
}

int main(int argc, char **argv)
{
    if (argc != 6)
        return 125;
    enum mode mode = !strcmp(argv[1], "continue") ? CONTINUE
                   : !strcmp(argv[1], "blocking") ? BLOCKING
                   : !strcmp(argv[1], "pump") ? PUMP : -1;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[4]))};
    if ((int)mode < 0 || inet_pton(AF_INET, argv[3], &to.sin_addr) != 1)
        return 125;
    char *child_argv[] = {argv[2], "connect", argv[3], argv[4], argv[5], NULL};
    int report[2], go[2];
    if (pipe(report) || pipe(go))
        return 1;
    pid_t pid = fork();
    if (pid == 0)
        trapped_child(child_argv, report[1], go[0]);
    int pidfd, ep;
    int listener = pid < 0 ? -1 : take_listener(pid, report[0], &pidfd, &ep);
    if (listener < 0)
        return 1;
    struct epoll_event ev;
    struct asl_verdicts *verdicts = asl_verdicts_new();
    struct asl_fast *fast = asl_fast_new(listener, SYS_connect, verdicts);
    if (!fast || asl_verdict_put(verdicts, KIND_TCP, &to, sizeof to, 1))
        return 1;
    if (write(go[1], "x", 1) != 1)
        return 1;
    int failed = 0;
    for (;;) {
        epoll_wait(ep, &ev, 1, -1);
        if (mode == PUMP) {
            int rc = pump(fast, listener);
            if (rc) {
                failed = rc < 0;
                break;
            }
            continue;
        }
        /* As the pump does: everything queued, then back to epoll_wait. */
        struct pollfd p = {.fd = listener, .events = POLLIN};
        while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN))
            failed |= serve_one(listener, pidfd, mode) != 0;
        if (p.revents & POLLHUP)
            break;
    }
    int status;
    waitpid(pid, &status, 0);
    asl_fast_free(fast);
    asl_verdicts_free(verdicts);
    return !failed && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
