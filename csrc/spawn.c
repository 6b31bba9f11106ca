/*
 * The child side of a confined spawn.
 *
 * The child is started with clone(CLONE_VM | CLONE_VFORK): it runs on its own
 * small stack but in the caller's memory, and the calling thread sleeps until
 * the child has called execve or exited.  That keeps the cost of a spawn flat
 * whatever the caller's RSS (fork copies page tables: ~3 ms, ~35 ms for a
 * 1 GiB caller), but it sets hard rules for the code below:
 *
 *  - only raw system calls.  No libc call that could touch shared state: not
 *    malloc, not stdio, not even errno, which lives in the caller thread's TLS.
 *    raw_syscall() returns -errno instead.
 *  - everything the child reads (argv, envp, the BPF program, the Landlock
 *    ruleset fd) was prepared by the parent, which is asleep and so cannot
 *    change it.
 *  - the parent blocks every signal around clone() and the child resets every
 *    handler to SIG_DFL before unblocking: a Python signal handler must never
 *    run on this stack.
 *  - there is no "go" handshake: the parent cannot answer anything until the
 *    child has exec'd.  In particular it cannot serve seccomp notifications,
 *    so the system calls the child makes *after* installing its filter
 *    (sendmsg of the listener, prlimit64, write of an error report,
 *    exit_group, execve) must never be sent to the supervisor.  The filter
 *    lets those five through when their argument registers 3..5 carry `key`,
 *    192 random bits chosen by the parent per policy (it compares the 64 of
 *    key[1], in register 4, where the call's own rule would not let it
 *    through anyway: asyncsandlock/_kernel/_bpf.py).  The sandboxed program
 *    cannot learn the key: it lives only in the parent's memory and in the
 *    kernel's copy of the filter, which cannot be read back without ptrace,
 *    which is denied.
 *
 * Every failing step sends {step, errno} on its end of the channel (a CLOEXEC
 * SEQPACKET socket pair: one message, whole) and exits with 127; a successful
 * execve closes its end.  The listener goes the same way, as SCM_RIGHTS, so
 * the parent reads one channel for both (collect, in asl_spawn).
 * Before each step the child also stores the step's number in req->reached,
 * in the parent's memory: when something outside kills it (an outer seccomp
 * filter, the OOM killer), that is all the parent learns of where it died.
 */
#define _GNU_SOURCE
#include "spawn.h"
#include "fdmsg.h"
#include "raw_syscall.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <errno.h>
#include <unistd.h>
#include <net/if.h>
#include <sys/ioctl.h>

#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
/* SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, by value: older headers lack it. */
#define ASL_WAIT_KILLABLE_RECV (1UL << 5)

/* The deepest frame is map_fds() with its ASL_MAX_FDS ints; the rest of the
 * child needs well under 4 KiB.  No signal handler ever runs on this stack
 * (see above), so nothing else can deepen it. */
#define CHILD_STACK_SIZE (sizeof(int) * ASL_MAX_FDS + 28 * 1024)
#define KERNEL_SIGSET_SIZE 8

_Static_assert(sizeof(((struct asl_report *)0)->errs) == sizeof(int32_t) * ASL_REPORT_ERRS,
               "the cdef cannot spell ASL_REPORT_ERRS: keep the two in step");

/* A call the filter must let through before the parent can supervise. */
#define KEYED(req, n, a, b, c)                                              \
    raw_syscall((n), (long)(a), (long)(b), (long)(c), (long)(req)->key[0], \
                (long)(req)->key[1], (long)(req)->key[2])

/* The parent reads this after the child is gone; volatile because nothing
 * in the child reads it back. */
static inline void enter(struct asl_spawn_req *req, int step)
{
    *(volatile int32_t *)&req->reached = step;
}

__attribute__((noreturn)) static void report_and_exit(const struct asl_spawn_req *req,
                                                      const struct asl_report *report)
{
    KEYED(req, SYS_write, req->channel, report, sizeof *report);
    for (;;)
        KEYED(req, SYS_exit_group, 127, 0, 0);
}

/* The step the child is in failed with -err. */
__attribute__((noreturn)) static void fail(const struct asl_spawn_req *req, long err)
{
    struct asl_report report;
    memset(&report, 0, sizeof report);
    report.step = req->reached;
    report.err = (int32_t)-err;
    report_and_exit(req, &report);
}

static long reset_signals(void)
{
    /* All-zero is SIG_DFL with no flags in every arch's kernel sigaction. */
    unsigned long action[4] = {0, 0, 0, 0};
    for (int sig = 1; sig < 65; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        long rc = raw_syscall(SYS_rt_sigaction, sig, (long)action, 0, KERNEL_SIGSET_SIZE, 0, 0);
        if (rc < 0 && rc != -EINVAL) /* 32 and 33 belong to the C library */
            return rc;
    }
    return 0;
}

/* ASL_FD_DEVNULL's file, numbered at least `above` (below it, a dup3 into
 * its number would close it); CLOEXEC like every source. */
static long open_devnull(int above)
{
    long fd = SYS3(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0 || fd >= above)
        return fd;
    long high = SYS3(SYS_fcntl, fd, F_DUPFD_CLOEXEC, above);
    SYS3(SYS_close, fd, 0, 0);
    return high;
}

static long map_fds(const struct asl_spawn_req *req)
{
    /* Sources may collide with destinations (stdout=0, say): move every
     * source that is not already in place above all destinations first. */
    int above = req->nfds;
    int moved[ASL_MAX_FDS]; /* asl_spawn() refuses a larger nfds */
    long devnull = -1;
    for (int i = 0; i < req->nfds; i++) {
        int src = req->fds[i].src;
        /* Opened here rather than by the parent, which would open and
         * close it around every spawn; before Landlock, as the parent's. */
        if (src == ASL_FD_DEVNULL) {
            if (devnull < 0 && (devnull = open_devnull(above)) < 0)
                return devnull;
            moved[i] = (int)devnull;
            continue;
        }
        if (src != req->fds[i].dst && src < above) {
            long fd = SYS3(SYS_fcntl, src, F_DUPFD_CLOEXEC, above);
            if (fd < 0)
                return fd;
            moved[i] = (int)fd;
        } else {
            moved[i] = src;
        }
    }
    for (int i = 0; i < req->nfds; i++) {
        long rc;
        if (moved[i] == req->fds[i].dst)
            rc = SYS3(SYS_fcntl, moved[i], F_SETFD, 0);
        else
            rc = SYS3(SYS_dup3, moved[i], req->fds[i].dst, 0);
        if (rc < 0)
            return rc;
    }
    /* Nothing else crosses exec, whatever the caller forgot to mark. */
    return SYS3(SYS_close_range, req->nfds, ~0U, CLOSE_RANGE_CLOEXEC);
}

/* Raising a hard limit needs CAP_SYS_RESOURCE, which the next step drops:
 * raise any hard limit that is too low now, leaving the soft limit alone so
 * that nothing is lowered before the listener fd exists. */
static long raise_rlimits(const struct asl_spawn_req *req)
{
    for (int i = 0; i < req->nrlimits; i++) {
        uint64_t old[2];
        long rc = raw_syscall(SYS_prlimit64, 0, req->rlimits[i].resource, 0, (long)old, 0, 0);
        if (rc < 0)
            return rc;
        if (old[1] >= req->rlimits[i].max)
            continue;
        uint64_t lim[2] = {old[0], req->rlimits[i].max};
        rc = raw_syscall(SYS_prlimit64, 0, req->rlimits[i].resource, (long)lim, 0, 0, 0);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Last before execve, so that RLIMIT_NOFILE cannot stop the seccomp step
 * from creating the listener fd: it would if the limit were at or below the
 * lowest free fd, which the caller's own fds (CLOEXEC, still open here)
 * decide.
 *
 * The key lands in prlimit64's fourth argument, the pointer the kernel
 * writes the old limit to once the new one is set.  The parent sets bits 63
 * and 55 of key[0], which makes it a kernel address on x86_64 (with or
 * without LAM tags) and on arm64 (with or without top-byte-ignore), so that
 * copy_to_user refuses it: the call returns EFAULT after the limit is set,
 * and writes nothing into our memory. */
#define NOT_A_USER_ADDRESS ((1ULL << 63) | (1ULL << 55))
static long set_rlimits(const struct asl_spawn_req *req)
{
    /* max_memory in a cgroup (asyncsandlock/_cgroup.py): into the sandbox's
     * own group, before anything of the command runs (its exec's new mm is
     * charged there, and everything it starts is born inside).  "0" names
     * the writer.  The filter lets the write through by its key, Landlock
     * checked the fd when the parent opened it, and the kernel checks the
     * opener's credentials (the parent's), not ours, dropped by now.  Late
     * rather than first: what the steps above allocate, being the caller's
     * work, stays the caller's. */
    if (req->cgroup_procs_fd >= 0) {
        long rc = KEYED(req, SYS_write, req->cgroup_procs_fd, "0", 1);
        if (rc < 0)
            return rc;
    }
    if (req->nrlimits && (req->key[0] & NOT_A_USER_ADDRESS) != NOT_A_USER_ADDRESS)
        return -EINVAL;
    for (int i = 0; i < req->nrlimits; i++) {
        uint64_t lim[2] = {req->rlimits[i].cur, req->rlimits[i].max};
        long rc = KEYED(req, SYS_prlimit64, 0, req->rlimits[i].resource, lim);
        if (rc < 0 && rc != -EFAULT)
            return rc;
    }
    return 0;
}

/* execvp's search, run where it counts: inside the sandbox.  A candidate the
 * sandbox cannot see or execute is skipped as execvp skips it; any other
 * error stops the search.  EACCES wins over a later ENOENT, as in execvp. */
__attribute__((noreturn)) static void exec_candidates(const struct asl_spawn_req *req)
{
    struct asl_report report;
    memset(&report, 0, sizeof report);
    report.step = ASL_STEP_EXECVE;
    long rc = -ENOENT;
    int denied = 0;
    for (int i = 0; i < req->npaths; i++) {
        rc = KEYED(req, SYS_execve, req->paths[i], req->argv, req->envp);
        if (i < ASL_REPORT_ERRS)
            report.errs[i] = (int32_t)-rc;
        report.tried = i + 1;
        if (rc == -EACCES)
            denied = 1;
        else if (rc != -ENOENT && rc != -ENOTDIR)
            break;
    }
    if (denied && (rc == -ENOENT || rc == -ENOTDIR))
        rc = -EACCES;
    report.err = (int32_t)-rc;
    report_and_exit(req, &report);
}

/* Write `text` whole to `path` (a file of /proc/self). */
static long write_whole(const char *path, const char *text)
{
    size_t len = 0;
    while (text[len])
        len++;
    long fd = SYS3(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return fd;
    long rc = SYS3(SYS_write, fd, text, len);
    SYS3(SYS_close, fd, 0, 0);
    if (rc < 0)
        return rc;
    return rc == (long)len ? 0 : -EIO;
}

/* The id maps of the user namespace the child has just made: its own
 * setgroups must be denied before an unprivileged gid_map write is allowed.
 * The maps of a non-dumpable process belong to root; dumpable for the writes. */
static long write_id_maps(const char *uid_map, const char *gid_map)
{
    long rc;
    long dumpable = SYS3(SYS_prctl, PR_GET_DUMPABLE, 0, 0);
    if (dumpable == 0 && (rc = SYS3(SYS_prctl, PR_SET_DUMPABLE, 1, 0)) < 0)
        return rc;
    if ((rc = write_whole("/proc/self/uid_map", uid_map)) >= 0 &&
        (rc = write_whole("/proc/self/setgroups", "deny")) >= 0)
        rc = write_whole("/proc/self/gid_map", gid_map);
    if (dumpable == 0)
        SYS3(SYS_prctl, PR_SET_DUMPABLE, 0, 0);
    return rc;
}

/* Whether pin_hosts makes the user namespace (and with it the identity's and
 * the network's): not inside the one a workspace built (build_workspace),
 * whose mount namespace it uses. */
static int hosts_own_userns(const struct asl_spawn_req *req)
{
    return req->hosts_mode == ASL_HOSTS_USERNS && !req->workspace_path;
}

/* A fresh namespace has lo, down: up it is 127.0.0.1/8 and ::1.  Raw system
 * calls only: the namespace maker (netns.c) runs it beside the caller. */
long asl_loopback_up(void)
{
    long sock = SYS3(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return sock;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    long rc = SYS3(SYS_ioctl, sock, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        ifr.ifr_flags |= IFF_UP;
        rc = SYS3(SYS_ioctl, sock, SIOCSIFFLAGS, &ifr);
    }
    SYS3(SYS_close, sock, 0, 0);
    return rc;
}

/* A network namespace of its own (Sandbox.network, asyncsandlock/_netns.py).
 * Here, after raise_rlimits (CAP_SYS_RESOURCE counts in the *initial* user
 * namespace, which ASL_NET_USERNS leaves) and before drop_capabilities (lo
 * needs CAP_NET_ADMIN over the new namespace).
 *
 * ASL_NET_USERNS is the unprivileged way: a user namespace first, which gives
 * the child every capability over the network namespace made with it, and
 * nothing over anything the caller's namespaces own.  Its uid and gid map
 * each id to itself, so files, signals, /proc and the supervisor's
 * process_vm_readv see the same ids as without it (ids without a mapping,
 * root's files say, show as the overflow id 65534).  setgroups must be
 * denied before an unprivileged gid_map write is allowed: the child cannot
 * drop the groups it has (setgroups is in the filter's deny list anyway).
 * Writing one's own maps needs no parent: the rule "map only your own
 * euid/egid" is met.  A vfork child may unshare a user namespace: the
 * kernel refuses that only to a process that shares its thread group or its
 * fs_struct (CLONE_THREAD, CLONE_FS), not its memory. */
static long new_network(const struct asl_spawn_req *req)
{
    long rc;
    switch (req->net_mode) {
    case ASL_NET_JOIN: /* made and configured (lo too) by the parent */
        return SYS3(SYS_setns, req->netns_fd, CLONE_NEWNET, 0);
    case ASL_NET_NEW:
        if ((rc = SYS3(SYS_unshare, CLONE_NEWNET, 0, 0)) < 0)
            return rc;
        return asl_loopback_up();
    case ASL_NET_USERNS:
        /* Made, lo up, with the hosts step's user namespace (pin_hosts). */
        if (hosts_own_userns(req))
            return 0;
        /* With ASL_IDENTITY_USERNS, one user namespace for both: the
         * identity's maps, and set_identity has nothing left to do (see
         * identity_first). */
        if ((rc = SYS3(SYS_unshare, CLONE_NEWUSER | CLONE_NEWNET, 0, 0)) < 0 ||
            (rc = req->identity == ASL_IDENTITY_USERNS
                      ? write_id_maps(req->uid_map, req->gid_map)
                      : write_id_maps(req->net_uid_map, req->net_gid_map)) < 0)
            return rc;
        return asl_loopback_up();
    default:
        return 0;
    }
}

static long enter_network(const struct asl_spawn_req *req)
{
    long rc = new_network(req);
    /* Never for ASL_NET_HOST: that would be the host's sysctl.  The child
     * holds CAP_NET_ADMIN over the network it is now in (root of the
     * caller's namespaces, or of its own user namespace, which owns it),
     * and /proc/sys/net is the network of whoever opens it. */
    if (rc == 0 && req->port_start && req->net_mode != ASL_NET_HOST)
        rc = write_whole("/proc/sys/net/ipv4/ip_unprivileged_port_start", req->port_start);
    return rc;
}

/* A root child keeps only what the policy needs (CAP_NET_BIND_SERVICE for a
 * low net_allow_bind port): no CAP_SYS_ADMIN, CAP_SYS_NICE or CAP_SYS_RESOURCE
 * over processes outside, no CAP_DAC_OVERRIDE.
 *
 * The bounding set is left alone on purpose: emptying it costs ~40 prctl
 * calls per spawn and adds nothing once no_new_privs is set (the next step).
 * execve as uid 0, or of a setuid or file-capability binary, would grant
 * capabilities; under no_new_privs the kernel cuts the new permitted set to
 * the old one (cap_bprm_creds_from_file), which capset has just emptied. */
static long drop_capabilities(const struct asl_spawn_req *req)
{
    long rc = raw_syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0);
    if (rc < 0 && rc != -EINVAL) /* EINVAL: a kernel without ambient capabilities */
        return rc;
    struct {
        uint32_t version;
        int pid;
    } header = {0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */, 0};
    struct {
        uint32_t effective, permitted, inheritable;
    } data[2] = {{(uint32_t)req->keep_caps, (uint32_t)req->keep_caps, 0},
                 {(uint32_t)(req->keep_caps >> 32), (uint32_t)(req->keep_caps >> 32), 0}};
    return SYS3(SYS_capset, &header, data, 0);
}

/* files: the policy's uid and gid, without supplementary groups.
 *
 * After raise_rlimits, which needs CAP_SYS_RESOURCE in the caller's namespace:
 * setresuid to a non-zero uid empties the permitted set, and a new user
 * namespace gives capabilities only over itself.  Before drop_capabilities,
 * which then lowers what is left (nothing, or all of a namespace's) to
 * keep_caps, and before no_new_privs, Landlock and the filter (which denies
 * set*id).
 *
 * A user namespace: the child maps its own ids, which an unprivileged
 * process may do for itself alone; setgroups must be denied before gid_map
 * is written.  CLONE_NEWUSER implies unsharing the thread group and fs
 * struct, never the memory: this vfork child may make it.
 *
 * /proc/self/ files belong to root, not to us, while the process is not
 * dumpable, as a caller that dropped root's uid is not.  Dumpability is a
 * flag of the memory, which this child shares with the caller: it is made
 * dumpable for the writes and put back at once (execve resets it anyway,
 * which is also why no_coredump is an rlimit and not PR_SET_DUMPABLE). */
static long set_identity(const struct asl_spawn_req *req)
{
    long rc;
    if (req->identity == ASL_IDENTITY_USERNS && req->net_mode != ASL_NET_USERNS &&
        !hosts_own_userns(req)) {
        if ((rc = SYS3(SYS_unshare, CLONE_NEWUSER, 0, 0)) < 0 ||
            (rc = write_id_maps(req->uid_map, req->gid_map)) < 0)
            return rc;
    } else if (req->identity == ASL_IDENTITY_SET) {
        /* Changing the euid makes the memory undumpable (suid_dumpable), the
         * caller's too, and clears the parent-death signal: both are put
         * back, and the parent checked again as in the pdeathsig step. */
        long dumpable = SYS3(SYS_prctl, PR_GET_DUMPABLE, 0, 0);
        if ((rc = SYS3(SYS_setgroups, 0, 0, 0)) >= 0 &&
            (rc = SYS3(SYS_setresgid, req->gid, req->gid, req->gid)) >= 0)
            rc = SYS3(SYS_setresuid, req->uid, req->uid, req->uid);
        if (dumpable >= 0)
            SYS3(SYS_prctl, PR_SET_DUMPABLE, dumpable, 0);
        if (rc < 0)
            return rc;
        if ((rc = SYS3(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0)) < 0)
            return rc;
        if (SYS3(SYS_getppid, 0, 0, 0) != req->parent_pid)
            return -ESRCH;
    }
    return 0;
}

/* Send `n` fds (at most 2) over `sock`, SCM_RIGHTS.  Keyed: the listener
 * goes after the filter exists. */
static long send_fds(const struct asl_spawn_req *req, int sock, const int *fds, int n)
{
    struct fd_message m;
    return KEYED(req, SYS_sendmsg, sock, fd_message(&m, fds, n), 0);
}

static long send_listener(const struct asl_spawn_req *req, int listener)
{
    return send_fds(req, req->channel, &listener, 1);
}

#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#define ASL_FSCONFIG_SET_FLAG 0
#define ASL_FSCONFIG_SET_STRING 1
#define ASL_FSCONFIG_SET_FD 5
#define ASL_FSCONFIG_CMD_CREATE 6
#define ASL_CLOEXEC_FLAG 1 /* FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC */

static long fs_string(long ctx, const char *key, const char *value)
{
    return raw_syscall(SYS_fsconfig, ctx, ASL_FSCONFIG_SET_STRING, (long)key, (long)value, 0, 0);
}

/* The detached mount of fs context `ctx`, or -errno. */
static long fs_mount(long ctx)
{
    long rc = raw_syscall(SYS_fsconfig, ctx, ASL_FSCONFIG_CMD_CREATE, 0, 0, 0, 0);
    if (rc < 0)
        return rc;
    return SYS3(SYS_fsmount, ctx, ASL_CLOEXEC_FLAG, 0);
}

/* "/proc/self/fd/<fd>/<leaf>" into buf (64 bytes: leaf at most 8). */
static const char *fd_path(char *buf, long fd, const char *leaf)
{
    static const char head[] = "/proc/self/fd/";
    char digits[24];
    int n = 0, i = 0;
    do {
        digits[n++] = (char)('0' + fd % 10);
        fd /= 10;
    } while (fd && n < 20);
    for (const char *c = head; *c; c++)
        buf[i++] = *c;
    while (n)
        buf[i++] = digits[--n];
    buf[i++] = '/';
    for (const char *c = leaf; *c && i < 62; c++)
        buf[i++] = *c;
    buf[i] = 0;
    return buf;
}

/* Layer `key` is the directory open as `fd` (at `path`): by fd where the
 * kernel takes one (Linux 6.13+), else by its path. */
static long overlay_layer(long ctx, const char *key, long fd, const char *fallback_key,
                          const char *path)
{
    long rc = raw_syscall(SYS_fsconfig, ctx, ASL_FSCONFIG_SET_FD, (long)key, 0, fd, 0);
    if (rc == -EINVAL || rc == -EOPNOTSUPP)
        rc = fs_string(ctx, fallback_key, path);
    return rc;
}

/* ASL_WORKSPACE_USERNS: the layer and the overlay, made here as the parent
 * makes them with CAP_SYS_ADMIN (asyncsandlock/_kernel/_overlay.py), inside
 * a user namespace whose only id is our own (an unprivileged caller may map
 * itself): it owns the mount namespace made with it, and tmpfs and (Linux
 * 5.11+) overlayfs may be mounted there.  Overlay's xattrs are then
 * user.overlay.* (userxattr, which also implies redirect_dir=nofollow and
 * metacopy=off: every upper entry holds its whole data at its own path).
 * Nothing is cleaned up on failure: the child exits, and every fd here is
 * CLOEXEC and closed with it. */
static long build_workspace(const struct asl_spawn_req *req, long *tmpfs, long *overlay)
{
    long rc, ctx, upper, work, lower;
    char upper_path[64], work_path[64];
    if ((rc = SYS3(SYS_unshare, CLONE_NEWUSER | CLONE_NEWNS, 0, 0)) < 0 ||
        (rc = write_id_maps(req->workspace_uid_map, req->workspace_gid_map)) < 0)
        return rc;
    if ((ctx = SYS3(SYS_fsopen, "tmpfs", ASL_CLOEXEC_FLAG, 0)) < 0)
        return ctx;
    if ((req->workspace_size && (rc = fs_string(ctx, "size", req->workspace_size)) < 0) ||
        (rc = fs_string(ctx, "mode", "0700")) < 0)
        return rc;
    if ((*tmpfs = fs_mount(ctx)) < 0)
        return *tmpfs;
    SYS3(SYS_close, ctx, 0, 0);
    /* The overlay's root takes the upper root's mode: the workdir's. */
    if ((rc = SYS3(SYS_mkdirat, *tmpfs, "upper", 0700)) < 0 ||
        (rc = SYS3(SYS_fchmodat, *tmpfs, "upper", req->workspace_root_mode)) < 0 ||
        (rc = SYS3(SYS_mkdirat, *tmpfs, "work", 0700)) < 0)
        return rc;
    if ((upper = SYS3(SYS_openat, *tmpfs, "upper", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        return upper;
    if ((work = SYS3(SYS_openat, *tmpfs, "work", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        return work;
    /* Opened here: overlayfs clones each layer's mount, which must be in
     * our mount namespace (an fd the parent opened is in its own). */
    if ((lower = SYS3(SYS_openat, AT_FDCWD, req->workspace_path,
                      O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        return lower;
    if ((ctx = SYS3(SYS_fsopen, "overlay", ASL_CLOEXEC_FLAG, 0)) < 0)
        return ctx;
    if ((rc = overlay_layer(ctx, "lowerdir+", lower, "lowerdir",
                            req->workspace_lower)) < 0 ||
        (rc = overlay_layer(ctx, "upperdir", upper, "upperdir",
                            fd_path(upper_path, *tmpfs, "upper"))) < 0 ||
        (rc = overlay_layer(ctx, "workdir", work, "workdir",
                            fd_path(work_path, *tmpfs, "work"))) < 0 ||
        (rc = fs_string(ctx, "metacopy", "off")) < 0 || (rc = fs_string(ctx, "index", "off")) < 0 ||
        (rc = fs_string(ctx, "xino", "off")) < 0 ||
        (rc = raw_syscall(SYS_fsconfig, ctx, ASL_FSCONFIG_SET_FLAG, (long)"userxattr", 0, 0, 0)) < 0 ||
        (rc = raw_syscall(SYS_fsconfig, ctx, ASL_FSCONFIG_SET_FLAG, (long)"volatile", 0, 0, 0)) < 0)
        return rc;
    if ((*overlay = fs_mount(ctx)) < 0)
        return *overlay;
    SYS3(SYS_close, ctx, 0, 0);
    SYS3(SYS_close, upper, 0, 0);
    SYS3(SYS_close, work, 0, 0);
    SYS3(SYS_close, lower, 0, 0);
    return 0;
}

/* Every mount of the child's new mount namespace made private: a mount
 * attached there must not propagate back into the caller's namespace. */
static long all_private(void)
{
    return raw_syscall(SYS_mount, (long)"none", (long)"/", 0, MS_REC | MS_PRIVATE, 0, 0);
}

/* The copy-on-write workspace: the overlay, built as a detached mount by the
 * parent (ASL_WORKSPACE_ATTACH: asyncsandlock/_kernel/_overlay.py) or by
 * build_workspace() above, is attached over the workspace's path in a mount
 * namespace of the child's own.  Every mount is made private first: the
 * host's root is usually shared, and a mount made in a copy of a shared
 * mount propagates back to the caller's namespace.  Before chdir, so that a
 * cwd inside the workspace is the overlay's.
 *
 * Landlock: a rule on the workdir grants nothing inside a mount over it
 * (Landlock skips a mount point on its way up), so the overlay's root gets
 * a rule of its own, here, in the run's own ruleset (never the policy's).
 *
 * A layer built here lives in our mount namespace, which dies with the
 * sandbox: the parent gets the tmpfs (to read and commit the layer after
 * that) and the overlay (its mount id, for the metadata guard). */
static long mount_workspace(const struct asl_spawn_req *req)
{
    long rc, tmpfs = -1, overlay = req->workspace_fd;
    if (req->workspace_mode == ASL_WORKSPACE_USERNS)
        rc = build_workspace(req, &tmpfs, &overlay);
    else
        rc = SYS3(SYS_unshare, CLONE_NEWNS, 0, 0);
    if (rc < 0 || (rc = all_private()) < 0)
        return rc;
    rc = raw_syscall(SYS_move_mount, overlay, (long)"", AT_FDCWD, (long)req->workspace_path,
                     MOVE_MOUNT_F_EMPTY_PATH, 0);
    if (rc < 0)
        return rc;
    if (req->workspace_access && req->landlock_fd >= 0) {
        struct __attribute__((packed)) {
            uint64_t allowed_access;
            int32_t parent_fd;
        } rule = {req->workspace_access, (int32_t)overlay};
        if ((rc = raw_syscall(SYS_landlock_add_rule, req->landlock_fd, 1 /* PATH_BENEATH */,
                              (long)&rule, 0, 0, 0)) < 0)
            return rc;
    }
    if (tmpfs >= 0) {
        int fds[2] = {(int)tmpfs, (int)overlay};
        if ((rc = send_fds(req, req->workspace_sock, fds, 2)) < 0)
            return rc;
    }
    return 0;
}

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#define ASL_OPEN_TREE_CLONE 1
#define ASL_AT_EMPTY_PATH 0x1000
#define ASL_MOUNT_ATTR_RDONLY 0x1

/* The detached mount `tree` made read-only: the Sandbox's hosts file is
 * every run's (one tmpfs per Sandbox), and no run may write it, whatever
 * its Landlock rights on /etc. */
static long read_only(long tree)
{
    /* struct mount_attr: attr_set, attr_clr, propagation, userns_fd. */
    uint64_t attr[4] = {ASL_MOUNT_ATTR_RDONLY, 0, 0, 0};
    return raw_syscall(SYS_mount_setattr, tree, (long)"", ASL_AT_EMPTY_PATH, (long)attr,
                       sizeof attr, 0);
}

/* Landlock skips a mount point on its way up from a mount's root: the
 * hosts file mounted over /etc/hosts gets a rule of its own (hosts_access),
 * in the run's ruleset (the Sandbox's pinned one, or the workspace's copy):
 * `file` is the file, open. */
static long hosts_rule(const struct asl_spawn_req *req, long file)
{
    if (!req->hosts_access || req->landlock_fd < 0)
        return 0;
    struct __attribute__((packed)) {
        uint64_t allowed_access;
        int32_t parent_fd;
    } rule = {req->hosts_access, (int32_t)file};
    return raw_syscall(SYS_landlock_add_rule, req->landlock_fd, 1 /* PATH_BENEATH */,
                       (long)&rule, 0, 0, 0);
}

/* Pinned names: the parent's synthetic hosts file, a detached bind mount
 * (asyncsandlock/_pinned.py), attached over /etc/hosts in a mount namespace
 * of the child's own: made here, private as in mount_workspace, unless the
 * workspace made one already. */
static long mount_hosts(const struct asl_spawn_req *req)
{
    long rc;
    if (!req->workspace_path &&
        ((rc = SYS3(SYS_unshare, CLONE_NEWNS, 0, 0)) < 0 || (rc = all_private()) < 0))
        return rc;
    if ((rc = hosts_rule(req, req->hosts_fd)) < 0 || (rc = read_only(req->hosts_fd)) < 0)
        return rc;
    return raw_syscall(SYS_move_mount, req->hosts_fd, (long)"", AT_FDCWD,
                       (long)"/etc/hosts", MOVE_MOUNT_F_EMPTY_PATH, 0);
}

/* ASL_HOSTS_USERNS: pinned names for a caller without CAP_SYS_ADMIN, which
 * can neither make the parent's detached tmpfs nor attach anything in a
 * mount namespace owned by the caller's user namespace.  The child makes a
 * user namespace whose only ids are its own (the identity's maps with
 * ASL_IDENTITY_USERNS: ONE namespace for both, set_identity then has
 * nothing left to do; with ASL_NET_USERNS the network namespace is made
 * with it, lo up, and new_network has nothing left to do), with a mount
 * namespace it owns; every mount made private as in mount_workspace; then
 * the parent's text written on a small tmpfs (write_hosts; the Sandbox's
 * first child only: later ones get that tmpfs, kept by the parent, in
 * hosts_fd), and a read-only bind mount of just that file (a clone, so that
 * the tmpfs itself is never reachable) attached over /etc/hosts.  Landlock
 * skips a mount point on its way up, so the file gets a rule of its own in
 * the run's own ruleset (hosts_rule).  In a workspace's user namespace
 * (ASL_WORKSPACE_USERNS) no other is made.  Nothing is cleaned up on
 * failure: the child exits, every fd is CLOEXEC. */
/* pin_hosts' file: the parent's text on a small tmpfs of the child's own
 * (its mount fd into *tmpfs), with its rule; the tmpfs sent to the parent
 * (hosts_sock), which hands it to the Sandbox's later children instead. */
static long write_hosts(const struct asl_spawn_req *req, long *tmpfs)
{
    long rc, ctx, file;
    if ((ctx = SYS3(SYS_fsopen, "tmpfs", ASL_CLOEXEC_FLAG, 0)) < 0)
        return ctx;
    if ((rc = fs_string(ctx, "size", "1m")) < 0 || (rc = fs_string(ctx, "mode", "0755")) < 0)
        return rc;
    if ((*tmpfs = fs_mount(ctx)) < 0)
        return *tmpfs;
    SYS3(SYS_close, ctx, 0, 0);
    file = raw_syscall(SYS_openat, *tmpfs, (long)"hosts", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                       0644, 0, 0);
    if (file < 0)
        return file;
    for (size_t done = 0; done < req->hosts_len; done += (size_t)rc)
        if ((rc = SYS3(SYS_write, file, req->hosts_text + done, req->hosts_len - done)) <= 0)
            return rc < 0 ? rc : -EIO;
    /* 0644 whatever the caller's umask (the child has a copy of it). */
    if ((rc = SYS3(SYS_fchmod, file, 0644, 0)) < 0 || (rc = hosts_rule(req, file)) < 0)
        return rc;
    SYS3(SYS_close, file, 0, 0);
    if (req->hosts_sock > 0) {
        int fd = (int)*tmpfs;
        if ((rc = send_fds(req, req->hosts_sock, &fd, 1)) < 0)
            return rc;
    }
    return 0;
}

static long pin_hosts(const struct asl_spawn_req *req)
{
    long rc, tmpfs, file, tree;
    long flags = CLONE_NEWUSER | CLONE_NEWNS;
    if (req->net_mode == ASL_NET_USERNS)
        flags |= CLONE_NEWNET;
    if (hosts_own_userns(req) &&
        ((rc = SYS3(SYS_unshare, flags, 0, 0)) < 0 ||
         (rc = write_id_maps(req->hosts_uid_map, req->hosts_gid_map)) < 0 ||
         (rc = all_private()) < 0 || ((flags & CLONE_NEWNET) && (rc = asl_loopback_up()) < 0)))
        return rc;
    if (req->hosts_fd > 0) {
        /* An earlier child's tmpfs, the file written: its rule only. */
        tmpfs = req->hosts_fd;
        if ((file = SYS3(SYS_openat, tmpfs, "hosts", O_PATH | O_CLOEXEC)) < 0 ||
            (rc = hosts_rule(req, file)) < 0)
            return file < 0 ? file : rc;
        SYS3(SYS_close, file, 0, 0);
    } else if ((rc = write_hosts(req, &tmpfs)) < 0) {
        return rc;
    }
    if ((tree = SYS3(SYS_open_tree, tmpfs, "hosts", ASL_OPEN_TREE_CLONE | O_CLOEXEC)) < 0)
        return tree;
    if ((rc = read_only(tree)) < 0 ||
        (rc = raw_syscall(SYS_move_mount, tree, (long)"", AT_FDCWD, (long)"/etc/hosts",
                          MOVE_MOUNT_F_EMPTY_PATH, 0)) < 0)
        return rc;
    SYS3(SYS_close, tree, 0, 0);
    if (tmpfs != req->hosts_fd)
        SYS3(SYS_close, tmpfs, 0, 0);
    return 0;
}

/* pin_hosts after the identity step: a caller with CAP_SETUID (identity
 * ASL_IDENTITY_SET: once in a user namespace, the child could only become
 * the one id mapped there, so it takes the policy's ids first and maps those
 * to themselves) or a network the caller's namespaces own (ASL_NET_NEW,
 * ASL_NET_JOIN: entered with CAP_SYS_ADMIN over them, before the user
 * namespace takes it away). */
static int hosts_late(const struct asl_spawn_req *req)
{
    return req->hosts_mode == ASL_HOSTS_USERNS &&
           (req->identity == ASL_IDENTITY_SET || req->net_mode == ASL_NET_NEW ||
            req->net_mode == ASL_NET_JOIN);
}

/* Sandbox.network with uid/gid (docs/network-namespaces.md), in the order
 * the privileges each needs allow:
 *  - ASL_NET_NEW and ASL_NET_JOIN need CAP_SYS_ADMIN over the caller's
 *    namespaces, which setresuid to another uid (ASL_IDENTITY_SET) takes
 *    away, and which a user namespace of the identity's (ASL_IDENTITY_USERNS)
 *    does not give: the network first.
 *  - ASL_NET_USERNS with ASL_IDENTITY_SET (a caller with CAP_SETUID but not
 *    CAP_SYS_ADMIN): the identity first.  Once in a user namespace the child
 *    could only become the one id mapped there; after setresuid it makes the
 *    namespace as the new uid, and the parent wrote the policy's ids, mapped
 *    to themselves, into net_uid_map and net_gid_map.
 *  - ASL_NET_USERNS with ASL_IDENTITY_USERNS (an unprivileged caller): one
 *    user namespace for both, made by the network step with the identity's
 *    maps; it owns the network namespace, so that the capabilities kept
 *    (CAP_NET_BIND_SERVICE for uid 0) reach the sandbox's own network. */
static int identity_first(const struct asl_spawn_req *req)
{
    return req->net_mode == ASL_NET_USERNS && req->identity == ASL_IDENTITY_SET;
}

/* The network step where identity_first: after the identity step. */
static void network_after_identity(struct asl_spawn_req *req)
{
    long rc;
    enter(req, ASL_STEP_NETWORK);
    if ((rc = enter_network(req)) < 0)
        fail(req, rc);
}

/* The hosts step where hosts_late: after the identity step, before the
 * network's (identity_first), so that pin_hosts makes the one user
 * namespace. */
static void hosts_after_identity(struct asl_spawn_req *req)
{
    long rc;
    enter(req, ASL_STEP_HOSTS);
    if ((rc = pin_hosts(req)) < 0)
        fail(req, rc);
}

static int child_main(void *arg)
{
    struct asl_spawn_req *req = arg;
    long rc;

    enter(req, ASL_STEP_SIGNALS);
    if ((rc = reset_signals()) < 0)
        fail(req, rc);
    /* Its own process group, so that the whole sandbox can be signalled;
     * setsid and setpgid are denied inside, so nothing can leave it (which
     * is also why a sandbox nested in ours cannot make one). */
    enter(req, ASL_STEP_SETPGID);
    if (req->own_group && (rc = SYS3(SYS_setpgid, 0, 0, 0)) < 0)
        fail(req, rc);
    enter(req, ASL_STEP_PDEATHSIG);
    if ((rc = SYS3(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0)) < 0)
        fail(req, rc);
    /* The parent may have died before PDEATHSIG was armed.  Compare with the
     * pid it recorded, never with 1: the caller may itself be PID 1. */
    if (SYS3(SYS_getppid, 0, 0, 0) != req->parent_pid)
        fail(req, -ESRCH);
    enter(req, ASL_STEP_FDS);
    if ((rc = map_fds(req)) < 0)
        fail(req, rc);
    /* Before the workspace, which may leave for a user namespace of its
     * own: raising a hard limit needs CAP_SYS_RESOURCE in ours. */
    enter(req, ASL_STEP_RAISE_RLIMIT);
    if ((rc = raise_rlimits(req)) < 0)
        fail(req, rc);
    enter(req, ASL_STEP_WORKSPACE);
    if (req->workspace_path && (rc = mount_workspace(req)) < 0)
        fail(req, rc);
    enter(req, ASL_STEP_HOSTS);
    if (req->hosts_mode == ASL_HOSTS_ATTACH && req->hosts_fd > 0 && (rc = mount_hosts(req)) < 0)
        fail(req, rc);
    if (req->hosts_mode == ASL_HOSTS_USERNS && !hosts_late(req) && (rc = pin_hosts(req)) < 0)
        fail(req, rc);
    enter(req, ASL_STEP_CHDIR);
    if (req->cwd && (rc = SYS3(SYS_chdir, req->cwd, 0, 0)) < 0)
        fail(req, rc);
    /* The network first, but see identity_first. */
    enter(req, ASL_STEP_NETWORK);
    if (!identity_first(req) && (rc = enter_network(req)) < 0)
        fail(req, rc);
    enter(req, ASL_STEP_IDENTITY);
    if ((rc = set_identity(req)) < 0)
        fail(req, rc);
    if (hosts_late(req))
        hosts_after_identity(req);
    if (identity_first(req))
        network_after_identity(req);
    enter(req, ASL_STEP_CAPABILITIES);
    if ((rc = drop_capabilities(req)) < 0)
        fail(req, rc);
    enter(req, ASL_STEP_NO_NEW_PRIVS);
    if ((rc = raw_syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0)) < 0)
        fail(req, rc);
    enter(req, ASL_STEP_LANDLOCK);
    if (req->landlock_fd >= 0 &&
        (rc = SYS3(SYS_landlock_restrict_self, req->landlock_fd, req->landlock_flags, 0)) < 0)
        fail(req, rc);
    /* max_memory: huge pages off, on the mm we share with the caller; its
     * exec takes the flag along (see thp_hold). */
    enter(req, ASL_STEP_THP);
    if (req->thp_disable &&
        (rc = raw_syscall(SYS_prctl, PR_SET_THP_DISABLE, 1, 0, 0, 0, 0)) < 0)
        fail(req, rc);
    /* cpu_cores: set by the child on itself, not inherited from a caller's
     * thread bound around the clone: bound so, the caller's thread stayed on
     * the child's core after the spawn and the two took turns on it while
     * the other cores idled (a run of /bin/true took 1.2x as long).  Before
     * exec, so the command's first instruction runs there. */
    enter(req, ASL_STEP_CPUS);
    if (req->cpus_words > 0 &&
        (rc = SYS3(SYS_sched_setaffinity, 0, req->cpus_words * 8, req->cpus)) < 0)
        fail(req, rc);
    /* Unblock before the filter exists: a user handler may trap sigprocmask. */
    enter(req, ASL_STEP_SIGMASK);
    uint64_t empty = 0;
    if ((rc = raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, (long)&empty, 0,
                          KERNEL_SIGSET_SIZE, 0, 0)) < 0)
        fail(req, rc);
    if (req->filter) {
        enter(req, ASL_STEP_SECCOMP);
        struct sock_fprog prog = {req->filter_len, (struct sock_filter *)req->filter};
        long listener = SYS3(SYS_seccomp, SECCOMP_SET_MODE_FILTER, req->seccomp_flags, &prog);
        /* WAIT_KILLABLE_RECV is 5.19: an older kernel refuses the unknown
         * flag with EINVAL, before anything is installed.  Without it the
         * sandbox runs as before (a signal can end a trapped syscall). */
        if (listener == -EINVAL && (req->seccomp_flags & ASL_WAIT_KILLABLE_RECV))
            listener = SYS3(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                            req->seccomp_flags & ~ASL_WAIT_KILLABLE_RECV, &prog);
        if (listener < 0)
            fail(req, listener);
        /* The listener is CLOEXEC: once sent, exec closes our copy, and the
         * program never holds the fd that answers its own notifications. */
        enter(req, ASL_STEP_LISTENER);
        if ((req->seccomp_flags & SECCOMP_FILTER_FLAG_NEW_LISTENER) &&
            (rc = send_listener(req, (int)listener)) < 0)
            fail(req, rc);
    }
    enter(req, ASL_STEP_RLIMIT);
    if ((rc = set_rlimits(req)) < 0)
        fail(req, rc);
    enter(req, ASL_STEP_EXECVE);
    exec_candidates(req);
}

/* The stack of the last spawn, kept for the next: a fresh mapping each time
 * would cost an munmap, and with it a TLB shootdown on every CPU the child
 * ran our memory on (tens of microseconds in a VM).  One slot, taken and
 * given back atomically, so that concurrent spawns from several threads
 * each get a stack of their own. */
static char *_Atomic spare_stack;

/* A stack with a PROT_NONE guard page below it, as posix_spawn makes: an
 * overflow faults instead of writing over the memory of the process the
 * child shares it with.  Returns its lowest address; NULL and errno set on
 * failure. */
static char *take_stack(size_t page, size_t size)
{
    char *stack = atomic_exchange(&spare_stack, NULL);
    if (stack)
        return stack;
    stack = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED)
        return NULL;
    if (mprotect(stack, page, PROT_NONE) < 0) {
        int err = errno;
        munmap(stack, size);
        errno = err;
        return NULL;
    }
    return stack;
}

/* The listener's channel, made and read here rather than with Python
 * socket objects: those cost ~35 us per supervised spawn, these ~4. */
int asl_channel(int *sv)
{
    return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0 ? -errno : 0;
}

/* One message from `sock`, never waiting: its bytes into buf[len], and the
 * first fd it carried (SCM_RIGHTS; any other is closed) into *fd, else -1.
 * Returns its length, 0 at the end, or -errno (-EAGAIN: none yet). */
static ssize_t receive(int sock, void *buf, size_t len, int *fd)
{
    struct iovec iov = {buf, len};
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    *fd = -1;
    ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return -errno;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    if (cmsg && cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
        int fds[2];
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        memcpy(fds, CMSG_DATA(cmsg), count * sizeof(int));
        for (size_t i = 0; i < count; i++) {
            if (i == 0)
                *fd = fds[i];
            else
                close(fds[i]);
        }
    }
    return n;
}

/* What the child sent on its channel, read without waiting: the vfork
 * returns when the child has released our memory, in execve (before its
 * CLOEXEC fds are closed) or in _exit, and a failing child sends its report
 * before it exits: all it sends is there, or never will be.  0 or -errno. */
static int collect(int sock, struct asl_report *report, int *listener)
{
    *listener = -1;
    memset(report, 0, sizeof *report);
    for (;;) {
        struct asl_report data;
        int fd;
        ssize_t n = receive(sock, &data, sizeof data, &fd);
        /* -EAGAIN: the child's end is still open (it is in execve); 0: it
         * is closed.  Either way, nothing more will come (above). */
        if (n == -EAGAIN || n == 0)
            return 0;
        if (n < 0) {
            if (*listener >= 0)
                close(*listener);
            *listener = -1;
            return (int)n;
        }
        if (fd >= 0 && *listener < 0)
            *listener = fd;
        else if (fd >= 0)
            close(fd);
        else if ((size_t)n == sizeof data)
            *report = data;
    }
}

int asl_receive_fd(int sock)
{
    char byte;
    int fd;
    ssize_t n = receive(sock, &byte, 1, &fd);
    if (n < 0)
        return (int)n;
    return fd >= 0 ? fd : -ENOMSG;
}

/*
 * max_memory: transparent huge pages off in the sandbox (docs/limits.md).
 * A process given huge pages (MADV_HUGEPAGE, or THP "always") takes fresh
 * memory at up to 11 GiB/s on one core here, with 4 KiB pages 2.2: the
 * watcher's sampling interval (asyncsandlock/_watch.py, GROWTH) is set for
 * the latter.  PR_SET_THP_DISABLE is a flag of the mm, not of the task: fork
 * inherits it and execve copies it into the new mm from the one that execs.
 * So the vfork child's ASL_STEP_THP sets it on the mm it shares with us, the
 * caller, and its exec takes it along; the caller gets its own setting back
 * once the clone returns (the child has exec'd or exited by then).  Spawns
 * from several threads at once overlap: the first to hold saves the
 * caller's setting, the last to let go restores it, so that no child can
 * exec between someone's restore and its own exec.  A spawn without
 * max_memory that overlaps one gets huge pages off as well (harmless), and
 * so do the caller's own page faults meanwhile (a spawn's time).  6.18's
 * PR_THP_DISABLE_EXCEPT_ADVISED (huge pages where madvised) is never asked
 * for: the filter refuses it and turning the flag off (_kernel/_bpf.py).
 */
#ifndef PR_THP_DISABLE_EXCEPT_ADVISED
#define PR_THP_DISABLE_EXCEPT_ADVISED (1 << 1)
#endif
static pthread_mutex_t thp_lock = PTHREAD_MUTEX_INITIALIZER;
static int thp_holders;
static int thp_saved; /* PR_GET_THP_DISABLE before the first holder */

static void thp_hold(void)
{
    pthread_mutex_lock(&thp_lock);
    if (thp_holders++ == 0)
        thp_saved = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    pthread_mutex_unlock(&thp_lock);
}

static void thp_release(void)
{
    pthread_mutex_lock(&thp_lock);
    /* Best effort: a caller that may not turn it back on (nested in a
     * sandbox of ours) keeps it off, which costs it nothing but speed. */
    if (--thp_holders == 0 && thp_saved == 0)
        prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0);
    else if (thp_holders == 0 && thp_saved == (1 | PR_THP_DISABLE_EXCEPT_ADVISED))
        prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0);
    pthread_mutex_unlock(&thp_lock);
}

static int start(const struct asl_spawn_req *req, int *pidfd)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t size = page + ((CHILD_STACK_SIZE + page - 1) & ~(page - 1));
    char *stack = take_stack(page, size);
    if (!stack)
        return -errno;
    if (req->thp_disable)
        thp_hold();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* glibc's clone() wrapper issues the clone syscall, never clone3, so this
     * works where a container profile answers clone3 with ENOSYS.  The child
     * writes req->reached: the request is the parent's, and only const here. */
    int pid = clone(child_main, stack + size, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD,
                    (void *)req, pidfd);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (req->thp_disable)
        thp_release();
    char *none = NULL;
    if (!atomic_compare_exchange_strong(&spare_stack, &none, stack))
        munmap(stack, size);
    return pid < 0 ? -err : pid;
}

/* The channel, the clone and the reading of the channel in one call: made
 * from Python they cost a dozen cffi and ExitStack steps per spawn. */
int asl_spawn(struct asl_spawn_req *req, struct asl_spawned *out)
{
    out->pidfd = out->listener = -1;
    out->err = 0;
    memset(&out->report, 0, sizeof out->report);
    if (req->nfds < 0 || req->nfds > ASL_MAX_FDS)
        return -EINVAL;
    int sv[2];
    int rc = asl_channel(sv);
    if (rc < 0)
        return rc;
    /* The child installs its fds 0 .. nfds-1 before it reports anything:
     * its end must lie above them. */
    if (sv[1] < req->nfds) {
        int high = fcntl(sv[1], F_DUPFD_CLOEXEC, req->nfds);
        int err = errno;
        close(sv[1]);
        if (high < 0) {
            close(sv[0]);
            return -err;
        }
        sv[1] = high;
    }
    req->channel = sv[1];
    int pid = start(req, &out->pidfd);
    /* The child has exec'd or is on its way out: with our copy of its end
     * closed, the channel cannot wait on anything else. */
    close(sv[1]);
    if (pid >= 0)
        out->err = collect(sv[0], &out->report, &out->listener);
    close(sv[0]);
    return pid;
}
