/*
 * hugehog probe MB | reenable | fill
 *
 * Transparent huge pages from inside a sandbox (tests/test_limits_thp.py).
 *
 * probe MB: prints "thp=<PR_GET_THP_DISABLE> huge_kb=<AnonHugePages>" for
 *   itself after touching MB of fresh memory it asked huge pages for
 *   (MADV_HUGEPAGE, 2 MiB aligned), then the same for a child it forks.
 * reenable: tries to turn huge pages back on, both ways
 *   (PR_SET_THP_DISABLE with arg2 0; with PR_THP_DISABLE_EXCEPT_ADVISED),
 *   and prints "<rc> <errno> <rc> <errno> thp=<PR_GET_THP_DISABLE>".
 * fill: takes fresh memory with MADV_HUGEPAGE 2 MiB at a time, touched,
 *   forever (in mappings of 16 MiB); prints its peak RSS in bytes (VmHWM) after each step.
 * 125 on a usage or setup error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PR_THP_DISABLE_EXCEPT_ADVISED
#define PR_THP_DISABLE_EXCEPT_ADVISED (1 << 1)
#endif
#define HUGE (2UL << 20)
#define BLOCK (16UL << 20)

/* This process's peak resident memory in bytes: VmHWM, its own mm's high
 * water mark.  Not getrusage's ru_maxrss, which counts the mm a vfork
 * child shared with its parent before exec: the caller's whole size. */
static long peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        exit(125);
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    fclose(f);
    if (kb < 0)
        exit(125);
    return kb * 1024;
}

/* `bytes` of fresh memory, 2 MiB aligned, huge pages asked for. */
static char *advised(size_t bytes)
{
    char *raw = mmap(NULL, bytes + HUGE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        exit(125);
    char *mem = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
    if (madvise(mem, bytes, MADV_HUGEPAGE) < 0)
        exit(125);
    return mem;
}

static long anon_huge_kb(void)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    long kb = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static void probe(size_t bytes)
{
    char *mem = advised(bytes);
    memset(mem, 1, bytes);
    printf("thp=%d huge_kb=%ld\n", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0), anon_huge_kb());
    fflush(stdout);
    munmap(mem, bytes);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "probe") == 0) {
        size_t bytes = (size_t)atol(argv[2]) << 20;
        probe(bytes);
        pid_t pid = fork();
        if (pid < 0)
            return 125;
        if (pid == 0) {
            probe(bytes);
            _exit(0);
        }
        int status;
        return waitpid(pid, &status, 0) == pid && WIFEXITED(status) ? WEXITSTATUS(status) : 125;
    }
    if (argc == 2 && strcmp(argv[1], "reenable") == 0) {
        int off = prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0);
        int off_errno = off < 0 ? errno : 0;
        int advised_on = prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0);
        int advised_errno = advised_on < 0 ? errno : 0;
        printf("%d %d %d %d thp=%d\n", off, off_errno, advised_on, advised_errno,
               prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "fill") == 0) {
        /* Blocks of 16 MiB: an address-space limit (RLIMIT_AS) stops it at
         * about what it has touched. */
        for (;;) {
            char *mem = advised(BLOCK);
            for (size_t at = 0; at < BLOCK; at += HUGE) {
                memset(mem + at, 1, HUGE);
                printf("%ld\n", peak_rss());
                fflush(stdout);
            }
        }
    }
    return 125;
}
