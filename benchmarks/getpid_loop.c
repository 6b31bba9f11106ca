/*
 * getpid_loop N: make N raw getpid() system calls and print the last result.
 *
 * The workload of bench_notify.py: every call is trapped and answered by a
 * supervisor, so the run time is N notification round trips plus one spawn.
 * syscall(2), not getpid(3), so that no libc can cache or skip the call.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    long pid = 0;
    for (long i = 0; i < n; i++)
        pid = syscall(SYS_getpid);
    printf("%ld\n", pid);
    return 0;
}
