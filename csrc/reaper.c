/*
 * The reaper process: kills every sandbox of a caller that died.
 *
 * Why it exists and why its kills are safe is told in asyncsandlock/_reaper.py.
 * Here, how it is made.  It takes two steps, so that it is not the caller's
 * child:
 *
 *  A = clone(CLONE_VM | CLONE_VFORK) on a fresh mapping, as a spawn does: it
 *      shares the caller's memory, so raw system calls only (see spawn.c);
 *  B = a raw fork of A: the reaper.  A stores B's pid where the sleeping
 *      caller reads it, and exits.  B is re-parented to init (or the nearest
 *      subreaper): it never becomes a zombie of the caller, and a caller's
 *      waitpid(-1) cannot reap it.
 *
 * B starts as a copy-on-write copy of the whole caller.  Kept, that copy would
 * pin every page the caller rewrites later (a long-lived 1 GiB caller could
 * come to cost 2 GiB), so B unmaps everything but this shared object's image
 * (its code and constants) and the fresh mapping (its stack and its tables).
 * From then on it must not touch libc, TLS or any other mapping: raw system
 * calls only, no stack protector (its canary lives in TLS), and no rseq area
 * for the kernel to write to -- a CLONE_VM child (A) is started without the
 * caller's rseq registration, and a fork inherits its parent's (none).
 *
 * B's tables are two bitmaps indexed by pid, sized for PID_MAX_LIMIT, the
 * kernel's hard ceiling on pid numbers: every group or pid the caller can
 * register fits, so there is no bound to overflow.  They take 1 MiB of address
 * space but only the pages holding set bits are ever written (the rest of the
 * anonymous mapping reads as the shared zero page).
 */
#define _GNU_SOURCE
#include "spawn.h"
#include "raw_syscall.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define REAPER_STACK (64 * 1024)
#define PID_LIMIT (4 * 1024 * 1024) /* PID_MAX_LIMIT on 64-bit kernels */
#define WORD_BITS (8 * sizeof(unsigned long))
#define WORDS (PID_LIMIT / WORD_BITS)
#define KERNEL_SIGSET_SIZE 8
#define RECORD 8 /* {op, id}, two int32 */
#define RECORDS_PER_READ 512
#define BATCH_NS (10 * 1000 * 1000)

/* The linker's bounds of this shared object's loaded image. */
extern const char __ehdr_start[] __attribute__((visibility("hidden")));
extern const char _end[] __attribute__((visibility("hidden")));

struct reaper_args {
    int fd;                          /* the pipe's read end */
    unsigned long region, region_end; /* stack, then the two bitmaps */
    unsigned long image, image_end;   /* this shared object, page-rounded */
    unsigned long page;
    long pid;                         /* written by A: B's pid or -errno */
};

static void unmap_between(unsigned long from, unsigned long to)
{
    if (to > from)
        SYS3(SYS_munmap, from, to - from, 0);
}

/* Unmaps everything but [keep1) and [keep2), keep1 below keep2.  The top of
 * the address space (TASK_SIZE) depends on the arch and the paging mode:
 * munmap past it is EINVAL, so try the candidates from the highest down. */
static void unmap_all_but(const struct reaper_args *a)
{
    unsigned long lo1 = a->image, hi1 = a->image_end, lo2 = a->region, hi2 = a->region_end;
    if (lo2 < lo1) {
        lo1 = a->region, hi1 = a->region_end;
        lo2 = a->image, hi2 = a->image_end;
    }
    unmap_between(0, lo1);
    unmap_between(hi1, lo2);
    for (int bits = 57; bits >= 36; bits--) {
        unsigned long top = 1UL << bits;
        if (top <= hi2)
            break;
        if (SYS3(SYS_munmap, hi2, top - hi2, 0) == 0 ||
            SYS3(SYS_munmap, hi2, top - a->page - hi2, 0) == 0)
            break;
    }
}

static void apply(unsigned long *groups, unsigned long *pids, int op, int id)
{
    if (id <= 0 || id >= PID_LIMIT)
        return;
    unsigned long bit = 1UL << (id % WORD_BITS);
    unsigned long *g = &groups[id / WORD_BITS], *p = &pids[id / WORD_BITS];
    if (op == ASL_REAPER_WATCH_GROUP) {
        *g |= bit;
    } else if (op == ASL_REAPER_WATCH_PID) {
        *p |= bit;
    } else if (op == ASL_REAPER_FORGET) {
        *g &= ~bit;
        *p &= ~bit;
    }
}

__attribute__((noreturn)) static void reaper_main(const struct reaper_args *args)
{
    /* Everything B needs from the caller's memory, copied to its stack
     * before that memory goes. */
    struct reaper_args a = *args;
    unsigned long *groups = (unsigned long *)(a.region + REAPER_STACK);
    unsigned long *pids = groups + WORDS;

    /* Ignored, not only blocked: a terminal's Ctrl-C or hangup, or a kill
     * aimed at the caller's group, must not end the reaper before the caller.
     * (The mask, all blocked, is inherited from asl_reaper_start.) */
    unsigned long ignore[4] = {(unsigned long)SIG_IGN, 0, 0, 0};
    for (int sig = 1; sig < 65; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            raw_syscall(SYS_rt_sigaction, sig, (long)ignore, 0, KERNEL_SIGSET_SIZE, 0, 0);
    /* Out of the caller's session and group too.  Fails harmlessly where
     * setsid is denied (a caller that is itself sandboxed by us). */
    SYS3(SYS_setsid, 0, 0, 0);
    SYS3(SYS_prctl, PR_SET_NAME, "asl-reaper", 0);
    /* Only the pipe's read end survives, as fd 0: no other fd of the caller
     * (a socket, a lock, the write end itself) is held open by the reaper. */
    if (a.fd != 0)
        SYS3(SYS_dup3, a.fd, 0, 0);
    SYS3(SYS_close_range, 1, ~0U, 0);
    SYS3(SYS_chdir, "/", 0, 0); /* pin no mount */
    unmap_all_but(&a);

    /* A pipe wakes its reader only on a write into an empty pipe: reading
     * what is there and then napping (BATCH_NS) lets the caller's next
     * records land in the pipe without a wakeup each, so a spawn costs the
     * caller two plain writes, not two context switches.  The nap delays the
     * kill by at most as much. */
    const struct { long sec, nsec; } nap = {0, BATCH_NS};
    int rec[RECORDS_PER_READ * 2 + 2];
    for (;;) {
        long n = SYS3(SYS_read, 0, rec, RECORDS_PER_READ * RECORD);
        if (n == -EINTR)
            continue;
        if (n <= 0) /* EOF: every write end is closed, the caller is gone */
            break;
        /* Writes of whole records and reads of whole records never split one;
         * should a read ever end inside a record, complete it in place. */
        while (n % RECORD) {
            long more = SYS3(SYS_read, 0, (char *)rec + n, RECORD - n % RECORD);
            if (more <= 0 && more != -EINTR)
                goto done;
            if (more > 0)
                n += more;
        }
        for (long i = 0; i < n / RECORD; i++)
            apply(groups, pids, rec[2 * i], rec[2 * i + 1]);
        if (n < RECORDS_PER_READ * RECORD) /* drained: nap; else read on */
            raw_syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, (long)&nap, 0, 0, 0);
    }
done:
    for (unsigned long w = 0; w < WORDS; w++) {
        unsigned long g = groups[w], p = pids[w];
        if (!(g | p))
            continue;
        for (unsigned long b = 0; b < WORD_BITS; b++) {
            long id = (long)(w * WORD_BITS + b);
            if (g & (1UL << b))
                SYS3(SYS_kill, -id, SIGKILL, 0);
            if (p & (1UL << b))
                SYS3(SYS_kill, id, SIGKILL, 0);
        }
    }
    for (;;)
        SYS3(SYS_exit_group, 0, 0, 0);
}

/* A: fork B, report its pid, exit. */
static int reaper_fork(void *arg)
{
    struct reaper_args *args = arg;
    /* A raw fork: B returns here with A's stack copied, in memory of its own. */
    long pid = raw_syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0, 0);
    if (pid == 0)
        reaper_main(args);
    args->pid = pid;
    for (;;)
        SYS3(SYS_exit_group, 0, 0, 0);
}

int asl_reaper_start(int fd)
{
    unsigned long page = (unsigned long)sysconf(_SC_PAGESIZE);
    unsigned long size = REAPER_STACK + 2 * WORDS * sizeof(unsigned long);
    char *region = mmap(NULL, size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (region == MAP_FAILED)
        return -errno;
    struct reaper_args args = {
        .fd = fd,
        .region = (unsigned long)region,
        .region_end = (unsigned long)region + size,
        .image = (unsigned long)__ehdr_start & ~(page - 1),
        .image_end = ((unsigned long)_end + page - 1) & ~(page - 1),
        .page = page,
        .pid = -ECHILD,
    };
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int a = clone(reaper_fork, region + REAPER_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (a < 0) {
        munmap(region, size);
        return -err;
    }
    /* A has released our memory (vfork) and is exiting: this cannot wait
     * long.  ECHILD: someone else's waitpid(-1) reaped it first. */
    while (waitpid(a, NULL, 0) < 0 && errno == EINTR)
        ;
    munmap(region, size);
    return (int)args.pid;
}
