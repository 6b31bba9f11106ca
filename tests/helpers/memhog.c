/*
 * memhog RESERVE_MB TOUCH_MB PROCS SECONDS [leaderless]
 *
 * Runs PROCS processes (itself and PROCS-1 children); each reserves
 * RESERVE_MB of address space with PROT_NONE (as Go, the JVM and wasm
 * runtimes do), touches TOUCH_MB of fresh memory, and sleeps SECONDS.
 * With "leaderless", each child does its touching in a second thread and
 * ends its first thread alone, so that /proc/PID/stat shows no memory.
 * Then the first prints "done" and exits 0; 125 on a usage or setup error.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long reserve_mb, touch_mb, seconds;

static void *hog(void *unused)
{
    (void)unused;
    if (reserve_mb && mmap(NULL, (size_t)reserve_mb << 20, PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) == MAP_FAILED)
        _exit(125);
    char *mem = mmap(NULL, (size_t)touch_mb << 20, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        _exit(125);
    memset(mem, 1, (size_t)touch_mb << 20);
    sleep((unsigned)seconds);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 5)
        return 125;
    reserve_mb = atol(argv[1]);
    touch_mb = atol(argv[2]);
    long procs = atol(argv[3]);
    seconds = atol(argv[4]);
    int leaderless = argc > 5 && strcmp(argv[5], "leaderless") == 0;
    for (long i = 1; i < procs; i++) {
        pid_t pid = fork();
        if (pid < 0)
            return 125;
        if (pid == 0) {
            if (!leaderless) {
                hog(NULL);
                _exit(0);
            }
            pthread_t thread;
            if (pthread_create(&thread, NULL, hog, NULL) != 0)
                _exit(125);
            syscall(SYS_exit, 0); /* this thread only: the other runs on */
        }
    }
    hog(NULL);
    while (wait(NULL) > 0)
        ;
    puts("done");
    return 0;
}
