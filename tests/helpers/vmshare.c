/*
 * vmshare MB pause|exec
 *
 * Memory taken by a process that shares its parent's mm without being one
 * of its threads (clone(CLONE_VM), as vfork): the child touches MB of the
 * parent's memory, then pauses ("pause") or execs sleep 30 ("exec"),
 * leaving the memory to the parent, which itself never runs again after
 * the clone (it pauses).  The watcher must charge it all the same: its
 * looks skip only a sandbox none of whose processes ran
 * (csrc/group.c, asl_skip_unchanged).  125 on a usage or setup error.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static char stack[64 * 1024] __attribute__((aligned(16)));
static size_t bytes;
static int exec_after;

static int child(void *unused)
{
    (void)unused;
    char *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        syscall(SYS_exit, 125);
    for (size_t at = 0; at < bytes; at += 4096)
        mem[at] = 1;
    if (exec_after) {
        char *argv[] = {"sleep", "30", NULL};
        execv("/bin/sleep", argv);
        execv("/usr/bin/sleep", argv);
        syscall(SYS_exit, 125);
    }
    for (;;)
        pause();
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 125;
    bytes = (size_t)atol(argv[1]) << 20;
    exec_after = strcmp(argv[2], "exec") == 0;
    if (clone(child, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL) < 0)
        return 125;
    for (;;)
        pause();
}
