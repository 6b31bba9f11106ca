/*
 * leaderless N: fork N children; each starts a thread that sleeps, then ends
 * its first thread alone (the exit system call, not exit_group).  Such a
 * child runs on, yet its /proc/PID/stat says Z: the state shown is the
 * first thread's.  A process count that skips every "Z" misses it, and a
 * sandbox could fork past max_processes that way.
 *
 * Prints "MADE REFUSED" (forks that succeeded / failed with EAGAIN) once
 * every child made has reached that state, and exits 0.  Exit status 125
 * means a usage or unexpected error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ready[2];

/* Waits for the first thread's end (the kernel clears its tid word as it
 * exits; pthread_join waits for that), tells the parent, sleeps on. */
static void *survivor(void *first)
{
    if (pthread_join(*(pthread_t *)first, NULL) != 0 || write(ready[1], "x", 1) != 1)
        _exit(125);
    sleep(30);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 125;
    int n = atoi(argv[1]), made = 0, refused = 0;
    if (pipe(ready) != 0)
        return 125;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            if (errno != EAGAIN)
                return 125;
            refused++;
            continue;
        }
        if (pid == 0) {
            /* Not holding the output open: a reader sees its end when the
             * parent exits. */
            close(STDOUT_FILENO);
            static pthread_t first, thread;
            first = pthread_self();
            if (pthread_create(&thread, NULL, survivor, &first) != 0)
                _exit(125);
            syscall(SYS_exit, 0);
        }
        made++;
        char byte;
        if (read(ready[0], &byte, 1) != 1)
            return 125;
        /* Its tid is cleared a moment before the state turns Z. */
        usleep(10000);
    }
    printf("%d %d\n", made, refused);
    return 0;
}
