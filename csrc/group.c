/*
 * Counting the processes of one sandbox (for max_processes).
 *
 * The kernel has no list of a process group's members that user space can
 * read, so this walks /proc with getdents64 and asks getpgid() of each pid: a
 * cheap system call (Linux, unlike some systems, answers it for a process of
 * any session), where reading a stat file is not (the kernel gathers the CPU
 * times of every thread and the memory counters to format it).  Only the
 * group's own members, a handful, have their stat read, into a buffer on the
 * stack, to tell the live from the zombies.  The scan in Python read every
 * stat: tens of milliseconds on a busy host, on the event loop, for every
 * fork a sandbox traps.
 *
 * This runs in the caller (the supervisor), never in a spawn's child, so plain
 * libc is fine.
 */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Up to num_threads (field 20) a stat line is short: the pid, a command name
 * of at most 64 bytes (kernel threads' longer names included) and 17 numbers
 * of at most 20 digits each. */
#define STAT_BUF 1024

/* Parses field `*p` as a non-negative decimal and moves past it and the space
 * after it; -1 if there is no number there. */
static long next_number(const char **p, const char *end)
{
    const char *s = *p;
    long value = 0;
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    while (s < end && *s >= '0' && *s <= '9')
        value = value * 10 + (*s++ - '0');
    if (s < end && *s == ' ')
        s++;
    *p = s;
    return value;
}

/* Moves past field `*p` (anything up to the next space) and that space. */
static void skip_field(const char **p, const char *end)
{
    const char *s = *p;
    while (s < end && *s != ' ')
        s++;
    if (s < end)
        s++;
    *p = s;
}

/* Reads /proc/<name>/stat; returns 1 and fills the outputs when it is in
 * `pgid` and alive, 0 when not (or it vanished meanwhile). */
static int stat_in_group(int proc, const char *name, int pgid, long *threads)
{
    char path[32];
    char buf[STAT_BUF];
    size_t n = 0;
    while (name[n] && n < sizeof(path) - sizeof("/stat"))
        path[n] = name[n], n++;
    for (const char *t = "/stat"; *t; t++)
        path[n++] = *t;
    path[n] = '\0';

    int fd = openat(proc, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0; /* exited and reaped since getdents: not a member any more */
    ssize_t got = read(fd, buf, sizeof(buf));
    close(fd);
    if (got <= 0)
        return 0;

    /* The command name may hold spaces and ')': the fields start after the
     * last ')'. */
    const char *end = buf + got;
    const char *p = end;
    while (p > buf && p[-1] != ')')
        p--;
    if (p == buf || end - p < 2)
        return 0;
    p++; /* the space after ')' */
    char state = *p;
    p += 2;
    skip_field(&p, end);              /* ppid */
    if (next_number(&p, end) != pgid) /* pgrp */
        return 0;
    for (int field = 6; field < 20; field++)
        skip_field(&p, end);
    long nthreads = next_number(&p, end);
    /* A zombie whose leader thread is gone but whose other threads live on
     * still runs: its stat says Z (the leader's state) yet num_threads counts
     * the live ones next to the dead leader.  A process that really ended
     * has only the leader left. */
    if (state == 'Z' && nthreads <= 1)
        return 0;
    if (state == 'Z')
        nthreads -= 1;
    *threads += nthreads > 0 ? nthreads : 1;
    return 1;
}

/* Calls visit(proc, name, pid, arg) for every pid directory of /proc (an fd
 * of it: `proc`); a negative return stops the walk with that error.  Returns
 * the sum of what visit returned, or -errno. */
static long walk_pids(long (*visit)(int proc, const char *name, long pid, void *arg), void *arg)
{
    char dents[16384] __attribute__((aligned(8)));
    long total = 0;
    int proc = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (proc < 0)
        return -errno;
    for (;;) {
        long got = syscall(SYS_getdents64, proc, dents, sizeof(dents));
        if (got < 0) {
            total = -errno;
            break;
        }
        if (got == 0)
            break;
        for (long off = 0; off < got && total >= 0;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(dents + off);
            off += d->d_reclen;
            if (d->d_name[0] < '1' || d->d_name[0] > '9')
                continue; /* not a pid: self, sys, meminfo, ... */
            long pid = 0;
            for (const char *c = d->d_name; *c >= '0' && *c <= '9'; c++)
                pid = pid * 10 + (*c - '0');
            long rc = visit(proc, d->d_name, pid, arg);
            total = rc < 0 ? rc : total + rc;
        }
        if (total < 0)
            break;
    }
    close(proc);
    return total;
}

struct count_arg {
    int pgid;
    long threads;
};

static long count_one(int proc, const char *name, long pid, void *arg)
{
    struct count_arg *c = arg;
    /* A zombie still has its group (until it is reaped), so the stat
     * below decides; ESRCH: gone since getdents. */
    if (getpgid((pid_t)pid) != c->pgid)
        return 0;
    return stat_in_group(proc, name, c->pgid, &c->threads);
}

long asl_count_group(int pgid, long *threads)
{
    struct count_arg c = {pgid, 0};
    long count = walk_pids(count_one, &c);
    if (count >= 0 && threads)
        *threads = c.threads;
    return count;
}

/*
 * What the sandboxes' processes use (for max_memory, cpu_time and max_cpu;
 * asyncsandlock/_watch.py).  One walk of /proc serves every watched group
 * at once, as above: getpgid() of each pid, and the stat of the members
 * only.  A member whose first thread has ended while others run on shows
 * no memory in its own stat (the kernel reads the memory counters through
 * that first thread, which has none any more): its rss is read through one
 * of its live threads instead, or such a process would hide its memory.
 */

/* Fields 14-17 (utime, stime, cutime, cstime), 20 (num_threads) and 24
 * (rss) of the stat text `buf`; 0 if it cannot be parsed.  `p` points just
 * past the state field's space. */
static int usage_fields(const char *p, const char *end, struct asl_member *m,
                        long *nthreads)
{
    uint64_t ticks = 0;
    for (int field = 4; field <= 24; field++) {
        if (field >= 14 && field <= 17) {
            long v = next_number(&p, end);
            if (v < 0)
                return 0;
            ticks += (uint64_t)v;
        } else if (field == 20) {
            *nthreads = next_number(&p, end);
        } else if (field == 24) {
            long v = next_number(&p, end);
            m->rss_pages = v > 0 ? (uint64_t)v : 0;
        } else {
            skip_field(&p, end);
        }
    }
    m->ticks = ticks;
    return 1;
}

/* Reads `path` (relative to `dir`) into `buf`; returns the bytes read, or 0. */
static ssize_t read_small(int dir, const char *path, char *buf, size_t size)
{
    int fd = openat(dir, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t got = read(fd, buf, size);
    close(fd);
    return got > 0 ? got : 0;
}

/* The start of the fields after the state of stat text `buf`, and the state. */
static const char *after_state(const char *buf, const char *end, char *state)
{
    const char *p = end;
    while (p > buf && p[-1] != ')')
        p--;
    if (p == buf || end - p < 4)
        return NULL;
    *state = p[1];
    return p + 3;
}

/* The rss of process `pid` read through a live thread other than its first. */
static uint64_t rss_of_live_thread(int proc, const char *pid)
{
    char path[64];
    char dents[4096] __attribute__((aligned(8)));
    char buf[STAT_BUF];
    snprintf(path, sizeof(path), "%s/task", pid);
    int dir = openat(proc, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return 0;
    uint64_t rss = 0;
    long got;
    while (rss == 0 && (got = syscall(SYS_getdents64, dir, dents, sizeof(dents))) > 0) {
        for (long off = 0; off < got && rss == 0;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(dents + off);
            off += d->d_reclen;
            if (d->d_name[0] < '1' || d->d_name[0] > '9' || strcmp(d->d_name, pid) == 0)
                continue;
            snprintf(path, sizeof(path), "%s/stat", d->d_name);
            ssize_t n = read_small(dir, path, buf, sizeof(buf));
            char state;
            const char *p = n ? after_state(buf, buf + n, &state) : NULL;
            struct asl_member m = {0};
            long threads = 0;
            if (p && state != 'Z' && usage_fields(p, buf + n, &m, &threads))
                rss = m.rss_pages;
        }
    }
    close(dir);
    return rss;
}

static long find_group(const int32_t *pgids, long n, long pgid)
{
    long lo = 0, hi = n;
    while (lo < hi) {
        long mid = (lo + hi) / 2;
        if (pgids[mid] < pgid)
            lo = mid + 1;
        else if (pgids[mid] > pgid)
            hi = mid;
        else
            return mid;
    }
    return -1;
}

/* The resident pages in /proc/<name>/statm (a third of the cost of stat,
 * which gathers every thread's CPU times); 0 if there are none or it is gone. */
static uint64_t statm_rss(int proc, const char *name)
{
    char path[32];
    char buf[128];
    snprintf(path, sizeof(path), "%s/statm", name);
    ssize_t n = read_small(proc, path, buf, sizeof(buf) - 1);
    const char *p = buf;
    skip_field(&p, buf + n); /* size */
    long rss = n ? next_number(&p, buf + n) : -1;
    return rss > 0 ? (uint64_t)rss : 0;
}

struct scan_arg {
    const int32_t *pgids;
    const uint8_t *want_cpu;
    long ngroups;
    struct asl_member *out;
    long max;
    long count;
    char buf[STAT_BUF];
};

/* Records one member (when there is room): it counts either way. */
static long put(struct scan_arg *a, const struct asl_member *m)
{
    if (a->count < a->max)
        a->out[a->count] = *m;
    a->count++;
    return 1;
}

static long scan_one(int proc, const char *name, long pid, void *arg)
{
    struct scan_arg *a = arg;
    char path[32];
    long group = find_group(a->pgids, a->ngroups, getpgid((pid_t)pid));
    if (group < 0)
        return 0;
    struct asl_member m = {0};
    m.pid = (int32_t)pid;
    m.group = (int32_t)group;
    m.ppid = -1;
    if (a->want_cpu[group] == 2) { /* the members' pids alone */
        return put(a, &m);
    }
    /* Memory alone: statm does, unless it shows nothing (a zombie,
     * or a process whose first thread ended: stat tells which). */
    if (!a->want_cpu[group] && (m.rss_pages = statm_rss(proc, name)) > 0) {
        return put(a, &m);
    }
    snprintf(path, sizeof(path), "%s/stat", name);
    ssize_t n = read_small(proc, path, a->buf, sizeof(a->buf));
    char state;
    const char *p = n ? after_state(a->buf, a->buf + n, &state) : NULL;
    long threads = 0;
    if (!p)
        return 0; /* reaped since getdents */
    const char *q = p;
    m.ppid = (int32_t)next_number(&q, a->buf + n);
    if (!usage_fields(p, a->buf + n, &m, &threads))
        return 0;
    m.ended = state == 'Z' && threads <= 1;
    if (state == 'Z' && threads > 1)
        m.rss_pages = rss_of_live_thread(proc, name);
    return put(a, &m);
}

long asl_scan_groups(const int32_t *pgids, const uint8_t *want_cpu, long ngroups,
                     struct asl_member *out, long max)
{
    struct scan_arg a = {pgids, want_cpu, ngroups, out, max, 0, {0}};
    return walk_pids(scan_one, &a);
}

/*
 * The same, without walking /proc (asyncsandlock/_watch.py keeps each
 * sandbox's members): the watcher learns of new processes from the pids
 * allocated since its last look (asl_probe_pids) and reads each member's
 * use through descriptors it holds open on its statm and stat files
 * (asl_read_members).  A /proc/<pid> file stays bound to the process it was
 * opened for, so a pid used again by someone else can never be read by
 * mistake, and reading it again from offset 0 makes the kernel format it
 * anew without the path lookup an open costs (a fifth of the time here).
 */

long asl_probe_pids(const int32_t *pids, long n, const int32_t *pgids, long ngroups,
                    int32_t *result)
{
    long members = 0;
    for (long i = 0; i < n; i++) {
        if (pids[i] <= 0) { /* getpgid(0) would answer for the caller */
            result[i] = -1;
            continue;
        }
        pid_t pgid = getpgid((pid_t)pids[i]);
        if (pgid < 0) {
            result[i] = errno == ESRCH ? -2 : -1;
            continue;
        }
        long group = find_group(pgids, ngroups, pgid);
        /* A thread's id is a pid too, with its process's group: only a
         * thread group's leader is a process (tgkill finds a non-leader
         * thread under its own id as no member of a group of that id). */
        if (group >= 0 && syscall(SYS_tgkill, pids[i], pids[i], 0) < 0 && errno == ESRCH)
            group = -1;
        result[i] = (int32_t)group;
        members += group >= 0;
    }
    return members;
}

/* Reads into `buf` from `fd` at offset 0, or (fd < 0) from <pid>/<file>
 * under /proc (opened once in *proc); the bytes read, 0 if it is gone. */
static ssize_t read_member(int fd, int *proc, int32_t pid, const char *file,
                           char *buf, size_t size)
{
    if (fd >= 0) {
        ssize_t got = pread(fd, buf, size, 0);
        return got > 0 ? got : 0;
    }
    if (*proc < 0 && (*proc = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return 0;
    char path[32];
    snprintf(path, sizeof(path), "%d/%s", (int)pid, file);
    return read_small(*proc, path, buf, size);
}

long asl_read_usage(const int32_t *pids, const int32_t *statm_fds, const int32_t *stat_fds,
                    const int32_t *owner, const uint8_t *want, long n, long nowners,
                    struct asl_member *out, uint64_t *rss)
{
    char buf[STAT_BUF];
    int proc = -1;
    long reaped = 0;
    memset(rss, 0, sizeof(*rss) * (size_t)nowners);
    for (long i = 0; i < n; i++) {
        struct asl_member *m = &out[i];
        uint8_t wanted = want[owner[i]];
        memset(m, 0, sizeof(*m));
        m->pid = pids[i];
        m->group = owner[i];
        m->ppid = -1;
        if (!wanted || wanted >= ASL_WANT_UNCHANGED) {
            m->ended = 3; /* not read */
            continue;
        }
        ssize_t got;
        if (wanted == 1) {
            got = read_member(statm_fds[i], &proc, pids[i], "statm", buf, sizeof(buf) - 1);
            if (!got && statm_fds[i] >= 0) {
                m->ended = 2; /* the process it was opened for is reaped (ESRCH) */
                reaped++;
                continue;
            }
            const char *p = buf;
            skip_field(&p, buf + got); /* size */
            long pages = got ? next_number(&p, buf + got) : -1;
            if (pages > 0) {
                m->rss_pages = (uint64_t)pages;
                rss[owner[i]] += (uint64_t)pages;
                continue;
            }
            /* None: gone, a zombie, or a process whose first thread has
             * ended while others run on: stat tells which. */
        }
        got = read_member(stat_fds[i], &proc, pids[i], "stat", buf, sizeof(buf));
        char state;
        const char *p = got ? after_state(buf, buf + got, &state) : NULL;
        long threads = 0;
        if (!p) {
            m->ended = 2; /* reaped */
            reaped++;
            continue;
        }
        const char *q = p;
        m->ppid = (int32_t)next_number(&q, buf + got);
        if (!usage_fields(p, buf + got, m, &threads)) {
            m->ended = 2;
            reaped++;
            continue;
        }
        m->ended = state == 'Z' && threads <= 1;
        if (state == 'Z' && threads > 1) {
            char name[16];
            snprintf(name, sizeof(name), "%d", (int)pids[i]);
            if (proc < 0)
                proc = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            m->rss_pages = proc < 0 ? 0 : rss_of_live_thread(proc, name);
        }
        rss[owner[i]] += m->rss_pages;
    }
    if (proc >= 0)
        close(proc);
    return reaped;
}

/*
 * The watcher's schedule (asyncsandlock/_watch.py), kept here for its most
 * frequent case: a wake-up that looks at the memory of many sandboxes and
 * finds each below its budget.  In Python that cost more than the statm
 * reads themselves (a method call and a dozen attribute writes per
 * sandbox); here it is a loop over a few doubles.  _Entry.memory() is the
 * same rule, kept for the looks that take the Python path (CPU times, a
 * member reaped): a change to one is a change to both.
 */

long asl_due(struct asl_schedule *const *s, long n, double now, uint8_t *want)
{
    long due = 0;
    for (long i = 0; i < n; i++) {
        want[i] = s[i]->soon > now ? 0 : s[i]->cpu_soon > now ? 1 : 2;
        due += want[i] != 0;
    }
    return due;
}

double asl_next_due(struct asl_schedule *const *s, long n)
{
    double next = INFINITY;
    for (long i = 0; i < n; i++)
        if (s[i]->due < next)
            next = s[i]->due;
    return next;
}

long asl_schedule_memory(struct asl_schedule *const *s, const uint8_t *want,
                         const uint64_t *rss, long n, double now, double shortest,
                         double growing, double longest, int32_t *over)
{
    long count = 0;
    for (long i = 0; i < n; i++) {
        struct asl_schedule *e = s[i];
        if ((want[i] != 1 && want[i] != ASL_WANT_UNCHANGED) || e->budget == UINT64_MAX)
            continue;
        uint64_t pages = want[i] == ASL_WANT_UNCHANGED ? e->pages : rss[i];
        if (pages > e->budget) {
            over[count++] = (int32_t)i;
            continue;
        }
        double interval = (double)(e->budget - pages) * e->per_page;
        if (interval < shortest) {
            if (pages <= e->pages)
                interval = shortest;
            else if (interval < growing)
                interval = growing;
        } else if (interval > longest) {
            interval = longest;
        }
        e->pages = pages;
        e->mem_due = now + interval;
        e->mem_soon = now + interval * 0.5;
        e->soon = e->mem_soon < e->cpu_soon ? e->mem_soon : e->cpu_soon;
        e->due = e->mem_due < e->cpu_due ? e->mem_due : e->cpu_due;
    }
    return count;
}

/*
 * A memory look at a sandbox none of whose processes has run since the
 * last one needs no statm: its resident memory cannot have changed.  Pages
 * become resident only by a task of the mm faulting them in or populating
 * them (its page faults, or its own system calls: mmap with MAP_POPULATE,
 * madvise, a read into fresh memory), which is CPU time of that task; a
 * khugepaged collapse would not be, but huge pages are off under
 * max_memory (spawn step thp); userfaultfd, io_uring, ptrace and
 * process_vm_writev, which could fill it from outside, are denied.  Every
 * task of a member's mm is a member or a thread of one: a process that
 * shares the mm without being a thread (clone(CLONE_VM), vfork) stays in
 * the sandbox's process group, which nothing inside can leave.  A
 * process's CPU clock (clock_gettime of its CPUCLOCK_SCHED, in nanoseconds,
 * its ended threads included) reads ~3x cheaper than its statm here, and
 * moves whenever any of its threads ran at all.  So: if the clock of every
 * member is where it was at the last look, and the members are the same,
 * the rss is as last seen, and so are the CPU times (a member that reaped
 * a child, moving it into its cutime, ran; one reaped by an outsider is
 * gone: its clock cannot be read).  A member that ran, ended, or is new (the
 * table was rebuilt: its clocks are 0) means a full read of that sandbox.
 * A task born and ended between two looks was forked by a member, which
 * ran.  The clocks are read before the statm reads that may follow: growth
 * after them moves a clock, seen at the next look.
 */
long asl_skip_unchanged(const int32_t *pids, const int32_t *owner, uint64_t *cpu_ns,
                        long n, uint8_t *want)
{
    long skipped = 0;
    for (long start = 0; start < n;) {
        long group = owner[start], end = start;
        while (end < n && owner[end] == group)
            end++;
        if (want[group] == 1 || want[group] == 2) {
            int same = 1;
            for (long i = start; i < end; i++) {
                struct timespec ts;
                clockid_t clock = (clockid_t)((~(unsigned)pids[i] << 3) | 2); /* CPUCLOCK_SCHED */
                uint64_t ns = 0;
                if (syscall(SYS_clock_gettime, clock, &ts) == 0)
                    ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
                if (ns == 0 || ns != cpu_ns[i])
                    same = 0;
                cpu_ns[i] = ns;
            }
            if (same && end > start) {
                want[group] = want[group] == 1 ? ASL_WANT_UNCHANGED : ASL_WANT_UNCHANGED_CPU;
                skipped++;
            }
        }
        start = end;
    }
    return skipped;
}
