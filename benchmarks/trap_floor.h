/*
 * What the C floors (notify_floor.c, connect_floor.c) share: a child that
 * traps one system call to a listener, and the parent that takes the
 * listener over as the supervisor does.  Header-only, so that each floor
 * is still built from its one .c file.
 */
#ifndef TRAP_FLOOR_H
#define TRAP_FLOOR_H

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

/* In the child: a filter that traps system call `nr` alone to a new
 * listener, whose number is written to `report`; then wait for a byte on
 * `go` (the parent has taken the listener) and close our copy. */
static void trap_syscall(long nr, int report, int go)
{
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = 4, .filter = code};
    char byte;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        _exit(1);
    int fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                          SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (write(report, &fd, sizeof fd) != sizeof fd || read(go, &byte, 1) != 1)
        _exit(1);
    close(fd);
}

/* In the parent: child `pid`'s listener (its number read from `report`),
 * taken with pidfd_getfd and set to SYNC_WAKE_UP as the supervisor sets
 * it, and an epoll set watching it in *ep; -1 on failure.  *pidfd: the
 * child's pidfd, left open. */
static int take_listener(pid_t pid, int report, int *pidfd, int *ep)
{
    int number;
    if (read(report, &number, sizeof number) != sizeof number || number < 0)
        return -1;
    *pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int fd = (int)syscall(SYS_pidfd_getfd, *pidfd, number, 0);
    if (fd < 0 || ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                        (unsigned long)SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP))
        return -1;
    *ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    if (*ep < 0 || epoll_ctl(*ep, EPOLL_CTL_ADD, fd, &ev))
        return -1;
    return fd;
}

#endif
