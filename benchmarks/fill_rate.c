/*
 * fill_rate HUGE THREADS ROUNDS: how fast fresh anonymous memory can be
 * made resident, in GiB/s (the best of ROUNDS), for the watcher's GROWTH
 * (asyncsandlock/_watch.py, docs/limits.md).
 *
 * HUGE 0: transparent huge pages off (PR_SET_THP_DISABLE, as under
 * max_memory); 1: asked for (MADV_HUGEPAGE).  THREADS threads each take
 * 256 MiB at once, three ways: touching a byte of each page, MAP_POPULATE,
 * MADV_POPULATE_WRITE.  Prints one line per way.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define SIZE (256UL << 20)

static int huge, way;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *take(void *unused)
{
    (void)unused;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (way == 1 ? MAP_POPULATE : 0);
    char *mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (mem == MAP_FAILED)
        exit(1);
    if (huge)
        madvise(mem, SIZE, MADV_HUGEPAGE); /* too late for MAP_POPULATE: see below */
    if (way == 0)
        for (size_t at = 0; at < SIZE; at += 4096)
            mem[at] = 1;
    else if (way == 2 && madvise(mem, SIZE, MADV_POPULATE_WRITE) < 0)
        exit(1);
    return mem;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    huge = atoi(argv[1]);
    int threads = atoi(argv[2]), rounds = atoi(argv[3]);
    if (threads < 1 || threads > 64)
        return 2;
    if (!huge && prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) < 0)
        return 1;
    static const char *const names[] = {"touch", "MAP_POPULATE", "MADV_POPULATE_WRITE"};
    for (way = 0; way < 3; way++) {
        double best = 0;
        for (int r = 0; r < rounds; r++) {
            pthread_t tids[64];
            void *mems[64];
            double start = now();
            for (int i = 0; i < threads; i++)
                pthread_create(&tids[i], NULL, take, NULL);
            for (int i = 0; i < threads; i++)
                pthread_join(tids[i], &mems[i]);
            double rate = (double)threads * SIZE / (now() - start) / (1 << 30);
            best = rate > best ? rate : best;
            for (int i = 0; i < threads; i++)
                munmap(mems[i], SIZE);
        }
        /* MAP_POPULATE populates before the madvise: no huge pages unless "always". */
        printf("%s %.2f\n", names[way], best);
    }
    return 0;
}
