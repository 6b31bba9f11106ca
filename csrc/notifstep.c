/*
 * The supervisor's per-notification system calls in one crossing from
 * Python (asyncsandlock/_supervisor.py, Supervisor.pump).
 *
 * asl_notif_step answers the previous notification (SEND), then receives
 * the next queued one (poll with no timeout, then RECV: RECV ignores
 * O_NONBLOCK and would block the event loop with nothing queued).  Served
 * from Python one call at a time, those were three calls into C, a
 * select.poll result list and a buffer zeroed by slice assignment: about a
 * third of the supervisor's Python time per notification.
 *
 * SEND first, RECV after: with SYNC_WAKE_UP the answered target runs on
 * this CPU at once, and has usually trapped again by the time SEND returns,
 * so the poll that follows finds its next notification queued.
 */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#define STEP_RECV 0xC0502100UL     /* SECCOMP_IOCTL_NOTIF_RECV */
#define STEP_SEND 0xC0182101UL     /* SECCOMP_IOCTL_NOTIF_SEND */
#define STEP_NOTIF_SIZE 80         /* struct seccomp_notif */
#define STEP_FLAG_CONTINUE 1       /* SECCOMP_USER_NOTIF_FLAG_CONTINUE */

struct step_resp {                 /* struct seccomp_notif_resp */
    uint64_t id;
    int64_t val;
    int32_t error;
    uint32_t flags;
};

int asl_notif_step(int listener, int answer, uint64_t id, int64_t val, int32_t error,
                   uint32_t flags, void *buf)
{
    if (answer) {
        struct step_resp r = {.id = id, .val = val, .error = error, .flags = flags};
        /* ENOENT: the target died, or a signal interrupted its syscall. */
        if (ioctl(listener, STEP_SEND, &r) < 0 && errno != ENOENT)
            return -1;
    }
    if (!buf)
        return 0;
    struct pollfd p = {.fd = listener, .events = POLLIN};
    for (;;) {
        p.revents = 0;
        int ready = poll(&p, 1, 0);
        if (ready < 0 && errno != EINTR)
            return -2;
        if (ready <= 0)
            return 0;
        if (!(p.revents & POLLIN))
            return 3;  /* POLLHUP: every task using the filter is gone */
        memset(buf, 0, STEP_NOTIF_SIZE);  /* RECV insists on a zeroed buffer */
        if (ioctl(listener, STEP_RECV, buf) == 0)
            return 1;
        if (errno != ENOENT && errno != EINTR)
            return -2;
    }
}

int asl_notif_continue(int listener, void *buf)
{
    uint64_t id;
    memcpy(&id, buf, sizeof id);  /* struct seccomp_notif starts with its id */
    return asl_notif_step(listener, 1, id, 0, 0, STEP_FLAG_CONTINUE, buf);
}
