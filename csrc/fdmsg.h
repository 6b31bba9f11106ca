/*
 * The SCM_RIGHTS message a child or helper process sends its fds in: one
 * byte of data and up to two fds.  Built in the sender's own memory with
 * memset and memcpy only, which the vfork children (spawn.c) and the
 * namespace maker (netns.c) may both call; each sends it its own way.
 */
#ifndef ASL_FDMSG_H
#define ASL_FDMSG_H

#include <string.h>
#include <sys/socket.h>

struct fd_message {
    struct msghdr msg;
    struct iovec iov;
    char byte;
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } control;
};

/* Fill `m` to carry `fds[0..n)` (n is 1 or 2); returns its msghdr. */
static inline struct msghdr *fd_message(struct fd_message *m, const int *fds, int n)
{
    memset(m, 0, sizeof *m);
    m->byte = 'L';
    m->iov.iov_base = &m->byte;
    m->iov.iov_len = 1;
    m->msg.msg_iov = &m->iov;
    m->msg.msg_iovlen = 1;
    m->msg.msg_control = m->control.buf;
    m->msg.msg_controllen = CMSG_SPACE(n * sizeof(int));
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&m->msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(n * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, n * sizeof(int));
    return &m->msg;
}

#endif
