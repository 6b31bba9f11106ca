/*
 * refuse SPEC... -- CMD [ARGS...]: run CMD under a seccomp filter that makes
 * chosen system calls fail with chosen errnos, the way a host that lacks a
 * feature would: gVisor (landlock_create_ruleset=ENOSYS, seccomp-listener=
 * EINVAL), a process already under a seccomp listener (seccomp-listener=
 * EBUSY), a container profile (unshare=EPERM, clone3=ENOSYS).
 *
 * SPEC is NAME=ERRNO.  NAME is a system call from the table below, or
 * "seccomp-listener": seccomp(SECCOMP_SET_MODE_FILTER, flags) with
 * SECCOMP_FILTER_FLAG_NEW_LISTENER in flags, so that installing a plain
 * filter still works.  ERRNO is a name from the table below or a number,
 * or KILL: the calling process is killed (SIGSYS), as by a hardened host's
 * filter that answers what it does not know with death.
 *
 * The filter is inherited by CMD and everything it starts, so a library run
 * under it meets the refusals for real: nothing is mocked.
 * Exit status 125 means a usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Numbers the C library headers may be too old to know (same on every arch). */
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "refuse supports x86_64 and aarch64"
#endif

#define LISTENER (-1) /* pseudo syscall number for "seccomp-listener" */
#define KILL (-1)     /* pseudo errno for SECCOMP_RET_KILL_PROCESS */
#define MAX_RULES 32
#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i)) /* little-endian */

static const struct {
    const char *name;
    int nr;
} SYSCALLS[] = {
    {"seccomp-listener", LISTENER},
    {"seccomp", SYS_seccomp},
    {"landlock_create_ruleset", SYS_landlock_create_ruleset},
    {"landlock_add_rule", SYS_landlock_add_rule},
    {"landlock_restrict_self", SYS_landlock_restrict_self},
    {"unshare", SYS_unshare},
    {"clone3", SYS_clone3},
    {"pidfd_open", SYS_pidfd_open},
    {"setpgid", SYS_setpgid},
    {"prctl", SYS_prctl},
    {"capset", SYS_capset},
};

static const struct {
    const char *name;
    int value;
} ERRNOS[] = {
    {"ENOSYS", ENOSYS}, {"EPERM", EPERM},   {"EINVAL", EINVAL},         {"EBUSY", EBUSY},
    {"EACCES", EACCES}, {"E2BIG", E2BIG},   {"EOPNOTSUPP", EOPNOTSUPP}, {"ENOMEM", ENOMEM},
};

struct rule {
    int nr;
    int err;
};

static int usage(const char *why)
{
    fprintf(stderr, "refuse: %s\nusage: refuse NAME=ERRNO... -- CMD [ARGS...]\n", why);
    return 125;
}

static int parse(const char *spec, struct rule *out)
{
    const char *eq = strchr(spec, '=');
    if (!eq)
        return -1;
    size_t len = (size_t)(eq - spec);
    out->nr = -2;
    for (size_t i = 0; i < sizeof SYSCALLS / sizeof SYSCALLS[0]; i++)
        if (strlen(SYSCALLS[i].name) == len && !strncmp(SYSCALLS[i].name, spec, len))
            out->nr = SYSCALLS[i].nr;
    if (out->nr == -2)
        return -1;
    out->err = strcmp(eq + 1, "KILL") ? 0 : KILL;
    for (size_t i = 0; i < sizeof ERRNOS / sizeof ERRNOS[0]; i++)
        if (!strcmp(ERRNOS[i].name, eq + 1))
            out->err = ERRNOS[i].value;
    if (!out->err) {
        char *end;
        long value = strtol(eq + 1, &end, 10);
        if (*end || value <= 0 || value > 4095)
            return -1;
        out->err = (int)value;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct rule rules[MAX_RULES];
    int nrules = 0, i = 1;
    for (; i < argc && strcmp(argv[i], "--"); i++) {
        if (nrules == MAX_RULES)
            return usage("too many rules");
        if (parse(argv[i], &rules[nrules++]) < 0)
            return usage(argv[i]);
    }
    if (i + 1 >= argc)
        return usage("no command after --");

    struct sock_filter prog[8 + 8 * MAX_RULES];
    int n = 0;
    /* Another arch's system calls have other numbers: leave them alone. */
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                             offsetof(struct seccomp_data, arch));
    prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0);
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                             offsetof(struct seccomp_data, nr));
    for (int r = 0; r < nrules; r++) {
        unsigned int ret = rules[r].err == KILL ? SECCOMP_RET_KILL_PROCESS
                                                : SECCOMP_RET_ERRNO | (unsigned int)rules[r].err;
        if (rules[r].nr == LISTENER) {
            /* seccomp(SECCOMP_SET_MODE_FILTER, flags & NEW_LISTENER, ...) */
            prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_seccomp, 0, 6);
            prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(0));
            prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                                     SECCOMP_SET_MODE_FILTER, 0, 3);
            prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(1));
            prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K,
                                                     SECCOMP_FILTER_FLAG_NEW_LISTENER, 0, 1);
            prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ret);
            prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                                     offsetof(struct seccomp_data, nr));
        } else {
            prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                                     (unsigned int)rules[r].nr, 0, 1);
            prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ret);
        }
    }
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);

    struct sock_fprog fprog = {(unsigned short)n, prog};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        perror("refuse: prctl(PR_SET_NO_NEW_PRIVS)");
        return 125;
    }
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) < 0) {
        perror("refuse: seccomp");
        return 125;
    }
    execvp(argv[i + 1], argv + i + 1);
    perror("refuse: execvp");
    return 127;
}
