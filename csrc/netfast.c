/*
 * The network guard's common case, decided and answered in C: a trapped
 * connect() to a destination whose verdict is known, from the event loop's
 * reader callback, in one crossing from Python (asyncsandlock/_netfast.py).
 *
 * asl_fast_pump receives the listener's queued notifications.  For a
 * connect() on an inet socket whose destination's verdict is in the memo
 * (struct asl_verdicts, filled by the Python guard, which alone reads the
 * rules), it does what NetGuard does in Python, with the same checks
 * (the sockaddr read before the socket is taken, where Python takes the
 * socket first: any failure of either goes to Python, which starts over
 * and answers in the kernel's order, EBADF and ENOTSOCK before EFAULT):
 *
 *   the sockaddr read ONCE into our memory; pidfd_getfd of the child's
 *   socket (the same open socket), its domain, type, protocol and file
 *   flags; ID_VALID after both looks when the pidfd is new (see
 *   fast_connect for why a cached one needs none); the verdict of the
 *   bytes read; connect() on the copy with those bytes; close the copy;
 *   SEND.
 *
 * Everything else stops the batch and is handed to Python with its
 * notification: another syscall, a socket that is not inet, an address
 * that is not a plain sockaddr_in/in6, a verdict not memoised yet, any
 * failure before the connect (the Python guard then starts over and
 * answers as the kernel would).  Nothing before the connect has an effect
 * on the child, so starting over is safe.  A blocking TCP connect whose
 * handshake is not over at once is handed over too, the copy of the socket
 * still open, for the loop to wait on (asl_net_connect returned 1).
 *
 * Nothing here blocks: poll with no timeout before RECV (RECV ignores
 * O_NONBLOCK), connect made non-blocking (asl_net_connect).  After the
 * last answer of a call, the CPU may be handed to the child (sched_yield,
 * see yield_to_child) so that it traps again before we give up.
 */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

#define NOTIF_RECV 0xC0502100UL    /* SECCOMP_IOCTL_NOTIF_RECV */
#define NOTIF_SEND 0xC0182101UL    /* SECCOMP_IOCTL_NOTIF_SEND */
#define NOTIF_ID_VALID 0x40082102UL

#define SLOTS 4096                 /* a power of two */
#define KEY_MAX 20                 /* family, port, 16 address bytes */
#define PIDFDS 64
#define QUICK_NS 250000L           /* a connect back this soon after an answer: yield again */
#define HOLD_NS 2000000L           /* no yield once a pump call has run this long */

struct notif {                     /* struct seccomp_notif */
    uint64_t id;
    uint32_t pid;
    uint32_t flags;
    int32_t nr;
    uint32_t arch;
    uint64_t ip;
    uint64_t args[6];
};

struct resp {                      /* struct seccomp_notif_resp */
    uint64_t id;
    int64_t val;
    int32_t error;
    uint32_t flags;
};

struct slot {
    uint8_t used, allowed, kind, len;
    uint8_t key[KEY_MAX];
};

struct asl_verdicts {
    unsigned count;
    struct slot slots[SLOTS];
};

struct asl_fast {
    int listener;
    int connect_nr;
    int closed;
    struct asl_verdicts *verdicts;
    int tids[PIDFDS];
    int pidfds[PIDFDS];
    int npidfds;
    uint8_t under_way[128];        /* the sockaddr of a connect left under way */
    unsigned under_way_len;
    int yielding;                  /* hand the CPU to the child (see asl_fast_pump) */
    int may_yield;                 /* asl_fast_yield */
    struct timespec answered;      /* when a connect was last answered */
};

/* The bytes of a sockaddr the rules look at (family, port, address: not
 * sin_zero, a flow label or a scope id), or 0 if it is not a full
 * sockaddr_in or sockaddr_in6. */
static unsigned verdict_key(const uint8_t *raw, unsigned len, uint8_t key[KEY_MAX])
{
    if (len < 2)
        return 0;
    unsigned family = raw[0] | raw[1] << 8;
    if (family == AF_INET && len >= 16) {
        memcpy(key, raw, 8);
        return 8;
    }
    if (family == AF_INET6 && len >= 24) {
        memcpy(key, raw, 4);
        memcpy(key + 4, raw + 8, 16);
        return 20;
    }
    return 0;
}

static struct slot *find(struct asl_verdicts *v, int kind, const uint8_t *key, unsigned len)
{
    uint32_t h = 2166136261u ^ (uint32_t)kind;   /* FNV-1a */
    for (unsigned i = 0; i < len; i++)
        h = (h ^ key[i]) * 16777619u;
    for (unsigned i = 0;; i++) {  /* never full: cleared at 3/4 */
        struct slot *s = &v->slots[(h + i) & (SLOTS - 1)];
        if (!s->used || (s->kind == kind && s->len == len && !memcmp(s->key, key, len)))
            return s;
    }
}

struct asl_verdicts *asl_verdicts_new(void)
{
    return calloc(1, sizeof(struct asl_verdicts));
}

void asl_verdicts_free(struct asl_verdicts *v)
{
    free(v);
}

void asl_verdicts_clear(struct asl_verdicts *v)
{
    memset(v, 0, sizeof *v);
}

int asl_verdict_get(struct asl_verdicts *v, int kind, const void *raw, unsigned len)
{
    uint8_t key[KEY_MAX];
    unsigned klen = verdict_key(raw, len, key);
    if (!klen)
        return -2;
    struct slot *s = find(v, kind, key, klen);
    return s->used ? s->allowed : -1;
}

int asl_verdict_put(struct asl_verdicts *v, int kind, const void *raw, unsigned len,
                    int allowed)
{
    uint8_t key[KEY_MAX];
    unsigned klen = verdict_key(raw, len, key);
    if (!klen)
        return -2;
    if (v->count >= SLOTS / 4 * 3)
        asl_verdicts_clear(v);  /* the memo starts over */
    struct slot *s = find(v, kind, key, klen);
    if (!s->used) {
        v->count++;
        s->used = 1;
        s->kind = (uint8_t)kind;
        s->len = (uint8_t)klen;
        memcpy(s->key, key, klen);
    }
    s->allowed = allowed != 0;
    return 0;
}

struct asl_fast *asl_fast_new(int listener, int connect_nr, struct asl_verdicts *verdicts)
{
    struct asl_fast *f = calloc(1, sizeof *f);
    if (f) {
        f->listener = listener;
        f->connect_nr = connect_nr;
        f->verdicts = verdicts;
        f->may_yield = f->yielding = 1;
    }
    return f;
}

static void forget_pidfds(struct asl_fast *f)
{
    for (int i = 0; i < f->npidfds; i++)
        close(f->pidfds[i]);
    f->npidfds = 0;
}

/* Close the cached pidfds; the pump may still run, caching nothing. */
void asl_fast_close(struct asl_fast *f)
{
    forget_pidfds(f);
    f->closed = 1;
}

void asl_fast_free(struct asl_fast *f)
{
    if (f)
        forget_pidfds(f);
    free(f);
}

/* A pidfd names one thread and never another: once it has exited, calls
 * through it fail with ESRCH whoever gets its id next (see Pidfds in
 * _kernel/_notify.py, the Python path's cache, which works the same way).
 * *fresh: opened now, not yet shown to be the target's (see fast_connect). */
static int pidfd_of(struct asl_fast *f, int tid, int *slot, int *fresh)
{
    *fresh = 0;
    for (int i = 0; i < f->npidfds; i++)
        if (f->tids[i] == tid) {
            *slot = i;
            return f->pidfds[i];
        }
    int fd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    if (fd < 0)
        return -errno;  /* EINVAL before Linux 6.9: Python knows the way round */
    *fresh = 1;
    if (f->closed) {
        *slot = -2;  /* the caller's, closed after use */
        return fd;
    }
    if (f->npidfds == PIDFDS)
        forget_pidfds(f);
    *slot = f->npidfds++;
    f->tids[*slot] = tid;
    f->pidfds[*slot] = fd;
    return fd;
}

static void drop_pidfd(struct asl_fast *f, int slot)
{
    close(f->pidfds[slot]);
    f->npidfds--;
    f->tids[slot] = f->tids[f->npidfds];
    f->pidfds[slot] = f->pidfds[f->npidfds];
}

/* The child's socket `number`, with its info (asl_net_take); -errno.
 * Called after the target's memory was read: through a pidfd opened now,
 * the socket is kept only if notification `id` is still pending after both
 * looks (ID_VALID), which shows the pidfd to be the target's for the cache
 * (see fast_connect). */
static int take(struct asl_fast *f, const struct notif *n, int number, int info[4])
{
    int tid = (int)n->pid;
    for (int tries = 0;; tries++) {
        int slot, fresh;
        int pidfd = pidfd_of(f, tid, &slot, &fresh);
        if (pidfd < 0)
            return pidfd;
        int fd = asl_net_take(pidfd, number, info);
        if (slot == -2)
            close(pidfd);
        if (fd == -ESRCH && !fresh && tries == 0) {
            drop_pidfd(f, slot);  /* a dead thread's, its id since reused */
            continue;
        }
        if (fresh) {
            uint64_t id = n->id;
            if (fd >= 0 && ioctl(f->listener, NOTIF_ID_VALID, &id) < 0) {
                close(fd);
                fd = -ESRCH;
            }
            if (fd < 0 && slot >= 0)
                drop_pidfd(f, slot);  /* never shown to be the target's */
        }
        return fd;
    }
}

static int respond(int listener, uint64_t id, int error)
{
    struct resp r = {.id = id, .error = error};
    if (ioctl(listener, NOTIF_SEND, &r) < 0 && errno != ENOENT)
        return -errno;  /* ENOENT: the target died or was interrupted */
    return 0;
}

enum { KIND_TCP, KIND_UDP, KIND_ICMP };

/* One connect notification: 0 answered, 1 for Python, 2 under way (out[1]
 * the copy of the socket, out[2] connect's errno), -errno SEND failed.
 *
 * The sockaddr is read (by the target's tid) BEFORE the socket is taken
 * through the target's pidfd, and that order is the check that the read
 * was the target's: a pidfd that has been shown to name the target's
 * thread (the cache keeps only those) works only while that thread is
 * alive, and a tid is not given to anyone else before its thread is gone;
 * so if pidfd_getfd succeeds, the tid read through was still the target's.
 * (A sibling's execve may hand the leader's tid, and its pidfd, to the
 * thread that execs while the leader waits here: then both looks are of
 * that process, in the same sandbox, the verdict still that of the bytes
 * connected to, and the answer meets ENOENT.)
 * A pidfd opened for this notification is shown by ID_VALID after both
 * looks (the notification still pending: the target was alive and blocked
 * throughout), as the Python path does for every call (take).  Either way the
 * verdict is of the bytes in our memory, and the connect is made with
 * them, never with a second read. */
static int fast_connect(struct asl_fast *f, const struct notif *n, int out[3])
{
    int number = (int)n->args[0];
    int len = (int)n->args[2];
    if (number < 0 || len < 16 || len > 128)
        return 1;
    uint8_t raw[128];
    if (asl_peek((int)n->pid, n->args[1], raw, (unsigned long)len) != len)
        return 1;
    int info[4];
    int fd = take(f, n, number, info);
    if (fd < 0)
        return 1;
    if ((info[0] != AF_INET && info[0] != AF_INET6) || info[3] < 0)
        goto python;
    /* From here on: the bytes in raw, checked once, on the socket in fd. */
    int kind = info[1] == SOCK_STREAM ? KIND_TCP
             : info[2] == 1 /* IPPROTO_ICMP */ || info[2] == 58 /* ICMPV6 */ ? KIND_ICMP
             : KIND_UDP;
    int verdict = asl_verdict_get(f->verdicts, kind, raw, (unsigned)len);
    if (verdict < 0)
        goto python;
    int rc = -EACCES;
    if (verdict) {
        int started;
        /* A blocking TCP socket is made non-blocking for the call, from
         * its flags read a few microseconds ago (asl_net_take). */
        rc = asl_net_connect_flags(fd, raw, (unsigned)len,
                                   kind == KIND_TCP && !(info[3] & O_NONBLOCK), info[3],
                                   &started);
        if (rc == 1) {
            out[1] = fd;
            out[2] = started;
            memcpy(f->under_way, raw, (size_t)len);
            f->under_way_len = (unsigned)len;
            return 2;
        }
    }
    close(fd);
    return respond(f->listener, n->id, rc);
python:
    close(fd);
    return 1;
}

unsigned asl_fast_address(struct asl_fast *f, void *into)
{
    memcpy(into, f->under_way, f->under_way_len);
    return f->under_way_len;
}

void asl_fast_yield(struct asl_fast *f, int on)
{
    f->may_yield = f->yielding = on != 0;
}

static long since(const struct timespec *then)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);  /* the vDSO's: no system call */
    return (now.tv_sec - then->tv_sec) * 1000000000L + (now.tv_nsec - then->tv_nsec);
}

/* Nothing queued after an answer.  SEND woke the child on this CPU
 * (SYNC_WAKE_UP), but whether it runs before this thread sleeps is the
 * scheduler's choice: when it preempts us, a child connecting in a loop
 * has trapped again by the time we look, and one call answers up to
 * `batch` connects; when it does not, every connect costs a turn of the
 * event loop (back to Python, epoll_wait, the callback: ~47 us of CPU on
 * asyncio, ~70 us on Trio, more than this whole function) and the runs of
 * a benchmark split into a fast and a slow mode.  sched_yield asks for what the fast mode gets by
 * chance: the child runs now, until it blocks (in its next trap, say) or
 * its slice ends, as it would have had it preempted us; so the loop waits
 * no longer than the fast mode makes it wait.  It stops once a yield finds
 * nothing, and starts again when a connect comes back within QUICK_NS of
 * the last answer, so a child that connects then computes costs the loop
 * at most one slice per burst.  Another task of this CPU may run first:
 * the CPU was about to be given up anyway (epoll_wait).  With the child's
 * time between its connects now inside the call, a call stops yielding
 * after HOLD_NS (`start`: when it began), so that the loop's other tasks
 * wait about that long at most, not `batch` times a connect and the child's
 * work. */
static int yield_to_child(struct asl_fast *f, struct pollfd *p, const struct timespec *start)
{
    if (!f->yielding || since(start) > HOLD_NS)
        return 0;
    sched_yield();
    int ready = poll(p, 1, 0);
    f->yielding = ready > 0;
    return ready;
}

int asl_fast_pump(struct asl_fast *f, void *buf, int batch, int out[3])
{
    struct notif *n = buf;
    struct pollfd p = {.fd = f->listener, .events = POLLIN};
    struct timespec start = {0, 0};
    if (f->may_yield)
        clock_gettime(CLOCK_MONOTONIC, &start);
    out[0] = 0;
    while (out[0] < batch) {
        int ready = poll(&p, 1, 0);
        if (ready == 0 && out[0])
            ready = yield_to_child(f, &p, &start);
        if (ready <= 0)
            return 0;
        if (!(p.revents & POLLIN))
            return 3;  /* POLLHUP: every task of the sandbox is gone */
        memset(n, 0, sizeof *n);  /* RECV insists on a zeroed buffer */
        if (ioctl(f->listener, NOTIF_RECV, n) < 0) {
            if (errno == ENOENT || errno == EINTR)
                continue;
            return -errno;
        }
        if (n->nr != f->connect_nr)
            return 1;
        if (!out[0] && f->may_yield && !f->yielding)
            f->yielding = since(&f->answered) < QUICK_NS;
        int rc = fast_connect(f, n, out);
        if (rc)
            return rc;
        out[0]++;
        if (f->may_yield)
            clock_gettime(CLOCK_MONOTONIC, &f->answered);
    }
    return 0;
}
