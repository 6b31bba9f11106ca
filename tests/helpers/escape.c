/*
 * escape ATTACK [ARGS...]: try one way out of a sandbox and exit 0 if it
 * worked, with the errno of the refusing call if it did not.
 *
 * The escape battery (tests/test_escapes_*.py) runs every attack twice: in a
 * sandbox, where it must fail, and unconfined, where it must work, so that a
 * refusal means the sandbox held and not that the attack was broken.
 *
 * Exit statuses that are not an errno: 124 the calls worked but had no
 * effect (a setuid bit the kernel dropped, an empty read), 125 a usage
 * error.  Numbers are decimal unless they start with 0 (octal) or 0x.
 * A string argument "s:TEXT" of `raw`, `i386` and `x32` is passed as a
 * pointer to TEXT; "b:N" as a pointer to N zero bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <sys/msg.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>
#include <arpa/inet.h>

#define NOEFFECT 124
#define USAGE 125

static char **arg;
static int nargs;

static const char *A(int i) {
    if (i >= nargs) {
        fprintf(stderr, "escape: missing argument %d\n", i + 1);
        exit(USAGE);
    }
    return arg[i];
}

static long N(int i) { return strtol(A(i), NULL, 0); }

static int res(long rc) { return rc < 0 ? errno : 0; }

/* -- files ----------------------------------------------------------------- */

static int open_flags(const char *how) {
    if (!strcmp(how, "r"))
        return O_RDONLY;
    if (!strcmp(how, "w"))
        return O_WRONLY;
    if (!strcmp(how, "c"))
        return O_WRONLY | O_CREAT | O_EXCL;
    if (!strcmp(how, "t"))
        return O_WRONLY | O_TRUNC;
    if (!strcmp(how, "d"))
        return O_RDONLY | O_DIRECTORY;
    if (!strcmp(how, "tmp"))
        return O_RDWR | O_TMPFILE;
    fprintf(stderr, "escape: bad open mode %s\n", how);
    exit(USAGE);
}

/* Open and, for reading, read a byte: a directory or an empty file counts. */
static int opened(int fd) {
    if (fd < 0)
        return errno;
    return 0;
}

static int do_open(void) { return opened(open(A(0), open_flags(A(1)), 0644)); }
static int do_open_legacy(void) { return opened((int)syscall(SYS_open, A(0), open_flags(A(1)), 0644)); }

static int do_openat2(void) {
    int flags = open_flags(A(1));
    uint64_t how[3] = {(uint64_t)flags, flags & (O_CREAT | __O_TMPFILE) ? 0644 : 0, 0};
    return opened((int)syscall(SYS_openat2, AT_FDCWD, A(0), how, sizeof how));
}

static int do_openat_dir(void) {
    int dir = open(A(0), O_RDONLY | O_DIRECTORY);
    if (dir < 0)
        return errno;
    return opened(openat(dir, A(1), open_flags(A(2)), 0644));
}

static int do_chdir_open(void) {
    if (chdir(A(0)) < 0)
        return errno;
    return opened(open(A(1), open_flags(A(2)), 0644));
}

/* Reopen a read-only fd for writing through /proc/self/fd. */
static int do_reopen(void) {
    int fd = open(A(0), O_RDONLY);
    if (fd < 0)
        return errno;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return opened(open(path, O_WRONLY));
}

/* Lists the entries but . and ..; none at all is no effect. */
static int do_readdir(void) {
    int fd = open(A(0), O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return errno;
    char buf[4096];
    long n = syscall(SYS_getdents64, fd, buf, sizeof buf), found = 0;
    if (n < 0)
        return errno;
    for (long off = 0; off < n;) {
        struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d =
            (void *)(buf + off);
        if (strcmp(d->name, ".") && strcmp(d->name, "..")) {
            printf("%s\n", d->name);
            found++;
        }
        off += d->reclen;
    }
    return found ? 0 : NOEFFECT;
}

static int do_readlink(void) {
    char buf[4096];
    return res(readlink(A(0), buf, sizeof buf));
}

static int do_symlink_open(void) {
    if (symlink(A(0), A(1)) < 0)
        return errno;
    return opened(open(A(1), open_flags(A(2))));
}

static int do_link_open(void) {
    if (link(A(0), A(1)) < 0)
        return errno;
    return opened(open(A(1), open_flags(A(2))));
}

static int do_unlink(void) { return res(unlink(A(0))); }
static int do_rename(void) { return res(rename(A(0), A(1))); }
static int do_mkdir(void) { return res(mkdir(A(0), 0755)); }

static int do_stat(void) {
    struct stat st;
    if (stat(A(0), &st) < 0)
        return errno;
    printf("%lu %o\n", (unsigned long)st.st_ino, st.st_mode);
    return 0;
}

static int do_exchange(void) {
    return res(syscall(SYS_renameat2, AT_FDCWD, A(0), AT_FDCWD, A(1), 2 /* RENAME_EXCHANGE */));
}

/* A file handle as hex, computed unconfined by the test. */
struct handle {
    unsigned int bytes;
    int type;
    unsigned char data[128];
};

static int do_handle(void) {
    struct handle h = {.bytes = sizeof h.data};
    int mount_id;
    if (syscall(SYS_name_to_handle_at, AT_FDCWD, A(0), &h, &mount_id, 0) < 0)
        return errno;
    printf("%d:", h.type);
    for (unsigned i = 0; i < h.bytes; i++)
        printf("%02x", h.data[i]);
    printf("\n");
    return 0;
}

static int do_open_handle(void) {
    struct handle h = {0};
    const char *hex = A(1);
    h.type = atoi(hex);
    hex = strchr(hex, ':');
    if (!hex)
        return USAGE;
    for (hex++; hex[0] && hex[1] && h.bytes < sizeof h.data; hex += 2)
        sscanf(hex, "%2hhx", &h.data[h.bytes++]);
    int mount = open(A(0), O_RDONLY | O_DIRECTORY);
    if (mount < 0)
        return errno;
    int fd = (int)syscall(SYS_open_by_handle_at, mount, &h, O_RDONLY);
    if (fd < 0)
        return errno;
    char c;
    return res(read(fd, &c, 1));
}

static int do_exec(void) {
    char *argv[] = {(char *)A(0), NULL};
    execv(A(0), argv);
    return errno;
}

/* Run a file of the writable tree through the dynamic loader, which maps it
 * PROT_EXEC after opening it for reading only. */
static int do_ldso(void) {
    char *argv[] = {(char *)A(0), (char *)A(1), NULL};
    execv(A(0), argv);
    return errno;
}

static int do_memfd_exec(void) {
    int src = open(A(0), O_RDONLY);
    if (src < 0)
        return errno;
    int fd = (int)syscall(SYS_memfd_create, "x", 0);
    if (fd < 0)
        return errno;
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0)
        if (write(fd, buf, (size_t)n) != n)
            return errno;
    char *argv[] = {"x", NULL}, *envp[] = {NULL};
    syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
    return errno;
}

/* Exit 0 only if the file ended up with the special bits asked for. */
static int special_bits(const char *path, long rc, mode_t mode) {
    if (rc < 0)
        return errno;
    struct stat st;
    if (stat(path, &st) < 0)
        return errno;
    return (st.st_mode & mode & 06000) ? 0 : NOEFFECT;
}

static int do_creat_mode(void) {
    mode_t mode = (mode_t)N(1);
    return special_bits(A(0), syscall(SYS_creat, A(0), mode), mode);
}

static int do_open_mode(void) {
    mode_t mode = (mode_t)N(1);
    return special_bits(A(0), open(A(0), O_WRONLY | O_CREAT | O_EXCL, mode), mode);
}

static int do_mknod(void) {
    mode_t mode = (mode_t)N(1);
    unsigned maj = nargs > 2 ? (unsigned)N(2) : 0, min = nargs > 3 ? (unsigned)N(3) : 0;
    long rc = mknod(A(0), mode, makedev(maj, min));
    if (S_ISREG(mode))
        return special_bits(A(0), rc, mode);
    return res(rc);
}

/* -- metadata -------------------------------------------------------------- */

static int do_chmod(void) { return res(chmod(A(0), (mode_t)N(1))); }

static int do_fchmod(void) {
    int fd = open(A(0), O_RDONLY);
    return fd < 0 ? errno : res(fchmod(fd, (mode_t)N(1)));
}

static int do_fchmodat(void) { return res(syscall(SYS_fchmodat, AT_FDCWD, A(0), N(1))); }

static int do_fchmodat2_empty(void) {
    int fd = open(A(0), O_PATH);
    return fd < 0 ? errno : res(syscall(452 /* fchmodat2 */, fd, "", N(1), AT_EMPTY_PATH));
}

static int do_fchmodat2(void) { return res(syscall(452, AT_FDCWD, A(0), N(1), 0)); }

static int do_chmod_procfd(void) {
    int fd = open(A(0), O_PATH);
    if (fd < 0)
        return errno;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return res(chmod(path, (mode_t)N(1)));
}

/* chown to the owner it has (or to uid ARG1): no capability is needed to
 * "give" a file to yourself, and it still clears setuid bits and ctime. */
static int chown_args(uid_t *uid, gid_t *gid) {
    struct stat st;
    if (lstat(A(0), &st) < 0)
        return errno;
    *uid = nargs > 1 ? (uid_t)N(1) : st.st_uid;
    *gid = nargs > 1 ? (gid_t)N(1) : st.st_gid;
    return 0;
}

static int do_chown(void) {
    uid_t u; gid_t g;
    int e = chown_args(&u, &g);
    return e ? e : res(syscall(SYS_chown, A(0), u, g));
}

static int do_lchown(void) {
    uid_t u; gid_t g;
    int e = chown_args(&u, &g);
    return e ? e : res(syscall(SYS_lchown, A(0), u, g));
}

static int do_fchownat(void) {
    uid_t u; gid_t g;
    int e = chown_args(&u, &g);
    return e ? e : res(syscall(SYS_fchownat, AT_FDCWD, A(0), u, g, 0));
}

static int do_fchown(void) {
    uid_t u; gid_t g;
    int e = chown_args(&u, &g);
    if (e)
        return e;
    int fd = open(A(0), O_RDONLY);
    return fd < 0 ? errno : res(fchown(fd, u, g));
}

static int do_utimensat(void) {
    struct timespec t[2] = {{1000000000, 0}, {1000000000, 0}};
    return res(syscall(SYS_utimensat, AT_FDCWD, A(0), t, 0));
}

static int do_futimens(void) {
    struct timespec t[2] = {{1000000000, 0}, {1000000000, 0}};
    int fd = open(A(0), O_RDONLY);
    return fd < 0 ? errno : res(syscall(SYS_utimensat, fd, NULL, t, 0));
}

static int do_utimes(void) {
    struct timeval t[2] = {{1000000000, 0}, {1000000000, 0}};
    return res(syscall(SYS_utimes, A(0), t));
}

static int do_utime(void) {
    struct utimbuf t = {1000000000, 1000000000};
    return res(syscall(SYS_utime, A(0), &t));
}

static int do_futimesat(void) {
    struct timeval t[2] = {{1000000000, 0}, {1000000000, 0}};
    return res(syscall(SYS_futimesat, AT_FDCWD, A(0), t));
}

static int do_setxattr(void) { return res(setxattr(A(0), A(1), A(2), strlen(A(2)), 0)); }
static int do_lsetxattr(void) { return res(lsetxattr(A(0), A(1), A(2), strlen(A(2)), 0)); }

static int do_fsetxattr(void) {
    int fd = open(A(0), O_RDONLY);
    return fd < 0 ? errno : res(fsetxattr(fd, A(1), A(2), strlen(A(2)), 0));
}

static int do_removexattr(void) { return res(removexattr(A(0), A(1))); }
static int do_lremovexattr(void) { return res(lremovexattr(A(0), A(1))); }

static int do_fremovexattr(void) {
    int fd = open(A(0), O_RDONLY);
    return fd < 0 ? errno : res(fremovexattr(fd, A(1)));
}

static int do_setxattrat(void) {
    struct { uint64_t value; uint32_t size, flags; } args = {
        (uint64_t)(uintptr_t)A(2), (uint32_t)strlen(A(2)), 0};
    return res(syscall(463 /* setxattrat */, AT_FDCWD, A(0), 0, A(1), &args, sizeof args));
}

static int do_removexattrat(void) {
    return res(syscall(466 /* removexattrat */, AT_FDCWD, A(0), 0, A(1)));
}

/* security.capability: CAP_SETUID for whoever runs the file. */
static int do_setcap(void) {
    struct vfs_cap_data cap;
    memset(&cap, 0, sizeof cap);
    cap.magic_etc = VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE;
    cap.data[0].permitted = 1u << CAP_SETUID;
    return res(setxattr(A(0), "security.capability", &cap, XATTR_CAPS_SZ_2, 0));
}

/* A POSIX ACL giving everyone read and write. */
static int do_acl(void) {
    struct { uint32_t version; struct { uint16_t tag, perm; uint32_t id; } e[3]; } acl = {
        2, {{0x01, 7, (uint32_t)-1}, {0x04, 6, (uint32_t)-1}, {0x20, 6, (uint32_t)-1}}};
    return res(setxattr(A(0), "system.posix_acl_access", &acl, sizeof acl, 0));
}

/* -- network --------------------------------------------------------------- */

/* FAMILY: 4 (127.0.0.1), 6 ([::1]) or m ([::ffff:127.0.0.1]). */
static int sock_addr(const char *fam, long port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    if (!strcmp(fam, "4")) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *len = sizeof *in;
        return AF_INET;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    inet_pton(AF_INET6, !strcmp(fam, "m") ? "::ffff:127.0.0.1" : "::1", &in6->sin6_addr);
    *len = sizeof *in6;
    return AF_INET6;
}

static int tcp_socket(int family) { return socket(family, SOCK_STREAM, 0); }

static int do_connect(void) {
    struct sockaddr_storage ss;
    socklen_t len;
    int fd = tcp_socket(sock_addr(A(0), N(1), &ss, &len));
    return fd < 0 ? errno : res(connect(fd, (struct sockaddr *)&ss, len));
}

static int do_bind(void) {
    struct sockaddr_storage ss;
    socklen_t len;
    int fd = tcp_socket(sock_addr(A(0), N(1), &ss, &len));
    return fd < 0 ? errno : res(bind(fd, (struct sockaddr *)&ss, len));
}

static int do_bind_listen(void) {
    struct sockaddr_storage ss;
    socklen_t len;
    int fd = tcp_socket(sock_addr(A(0), N(1), &ss, &len));
    if (fd < 0 || bind(fd, (struct sockaddr *)&ss, len) < 0)
        return errno;
    return res(listen(fd, 1));
}

/* listen() on a socket never bound: the kernel picks a port on every address. */
static int do_listen(void) {
    int fd = tcp_socket(!strcmp(A(0), "4") ? AF_INET : AF_INET6);
    return fd < 0 ? errno : res(listen(fd, 1));
}

static char payload[] = "fastopen";

static int do_fastopen(void) {
    struct sockaddr_storage ss;
    socklen_t len;
    int fd = tcp_socket(sock_addr(A(1), N(2), &ss, &len));
    if (fd < 0)
        return errno;
    const char *how = A(0);
    if (!strcmp(how, "sendto"))
        return res(sendto(fd, payload, sizeof payload, MSG_FASTOPEN, (struct sockaddr *)&ss, len));
    struct iovec iov = {payload, sizeof payload};
    struct msghdr msg = {.msg_name = &ss, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1};
    if (!strcmp(how, "sendmsg"))
        return res(sendmsg(fd, &msg, MSG_FASTOPEN));
    if (!strcmp(how, "sendmmsg")) {
        struct mmsghdr m = {.msg_hdr = msg};
        long rc = sendmmsg(fd, &m, 1, MSG_FASTOPEN);
        return rc == 1 ? 0 : rc < 0 ? errno : NOEFFECT;
    }
    if (!strcmp(how, "connect")) {
        int one = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &one, sizeof one) < 0)
            return errno;
        if (connect(fd, (struct sockaddr *)&ss, len) < 0)
            return errno;
        return res(write(fd, payload, sizeof payload));
    }
    return USAGE;
}

static int do_socket(void) { return res(socket((int)N(0), (int)N(1), (int)N(2))); }

static int do_unix_connect(void) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    const char *name = A(0);
    socklen_t len;
    if (name[0] == '@') { /* abstract */
        strncpy(addr.sun_path + 1, name + 1, sizeof addr.sun_path - 2);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));
    } else {
        strncpy(addr.sun_path, name, sizeof addr.sun_path - 1);
        len = sizeof addr;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    return fd < 0 ? errno : res(connect(fd, (struct sockaddr *)&addr, len));
}

/* -- signals and other processes ------------------------------------------- */

static int do_kill(void) { return res(kill((pid_t)N(0), (int)N(1))); }
static int do_tgkill(void) { return res(syscall(SYS_tgkill, N(0), N(1), N(2))); }
static int do_tkill(void) { return res(syscall(SYS_tkill, N(0), N(1))); }

static int do_sigqueue(void) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    info.si_code = SI_QUEUE;
    info.si_pid = getpid();
    info.si_uid = getuid();
    if (nargs > 2)
        return res(syscall(SYS_rt_tgsigqueueinfo, N(0), N(1), N(2), &info));
    return res(syscall(SYS_rt_sigqueueinfo, N(0), N(1), &info));
}

static int pidfd(long pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

static int do_pidfd_signal(void) {
    int fd = pidfd(N(0));
    return fd < 0 ? errno : res(syscall(SYS_pidfd_send_signal, fd, N(1), NULL, 0));
}

/* SIGIO to the owner of a file: the owner is set now, the signal sent later. */
static int do_sigio(void) {
    int p[2];
    if (pipe(p) < 0)
        return errno;
    if (fcntl(p[0], F_SETOWN, (int)N(0)) < 0 || fcntl(p[0], F_SETFL, O_ASYNC) < 0)
        return errno;
    if (write(p[1], "x", 1) < 0)
        return errno;
    return 0;
}

static int do_ptrace(void) {
    long req = !strcmp(A(0), "attach") ? 16 : !strcmp(A(0), "seize") ? 0x4206 : 0;
    return res(syscall(SYS_ptrace, req, req ? N(1) : 0, 0, 0));
}

static int do_vm(void) {
    char buf[8];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)(uintptr_t)strtoull(A(2), NULL, 0), sizeof buf};
    long rc = syscall(SYS_process_vm_readv, N(1), &local, 1, &remote, 1, 0);
    if (rc < 0 || !strcmp(A(0), "read"))
        return res(rc);
    /* write back what was there */
    return res(syscall(SYS_process_vm_writev, N(1), &local, 1, &remote, 1, 0));
}

/* Zero bytes: nothing changes, but the kernel checks the access first. */
static int do_vm_write(void) {
    char buf[1];
    struct iovec local = {buf, 0}, remote = {(void *)(uintptr_t)strtoull(A(1), NULL, 0), 1};
    return res(syscall(SYS_process_vm_writev, N(0), &local, 1, &remote, 1, 0));
}

static int do_pidfd_getfd(void) {
    int fd = pidfd(N(0));
    return fd < 0 ? errno : res(syscall(SYS_pidfd_getfd, fd, N(1), 0));
}

static int do_kcmp(void) { return res(syscall(SYS_kcmp, N(0), N(1), N(2), 0, 0)); }

static int do_prlimit(void) {
    struct rlimit old, new;
    if (syscall(SYS_prlimit64, N(0), RLIMIT_NOFILE, NULL, &old) < 0)
        return errno;
    new = old;
    new.rlim_cur = (rlim_t)N(1);
    return res(syscall(SYS_prlimit64, N(0), RLIMIT_NOFILE, &new, NULL));
}

static int do_setpriority(void) { return res(setpriority((int)N(0), (id_t)N(1), (int)N(2))); }

static int do_affinity(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)N(1), &set);
    return res(sched_setaffinity((pid_t)N(0), sizeof set, &set));
}

static int do_setscheduler(void) {
    struct sched_param p = {0};
    return res(sched_setscheduler((pid_t)N(0), (int)N(1), &p));
}

static int do_setparam(void) {
    struct sched_param p = {0};
    return res(sched_setparam((pid_t)N(0), &p));
}

static int do_setattr(void) {
    uint32_t attr[14] = {0};
    attr[0] = 56;                                /* size (SCHED_ATTR_SIZE_VER0 is 48) */
    attr[1] = (uint32_t)SCHED_OTHER;             /* policy */
    ((int32_t *)attr)[4] = (int32_t)N(1);        /* sched_nice, after the u64 flags */
    return res(syscall(SYS_sched_setattr, N(0), attr, 0));
}

static int do_ioprio(void) {
    /* IOPRIO_CLASS_BE (2) << 13 | level */
    return res(syscall(SYS_ioprio_set, N(0), N(1), (2 << 13) | N(2)));
}

static int do_migrate_pages(void) {
    unsigned long mask = 1;
    return res(syscall(SYS_migrate_pages, N(0), 2, &mask, &mask));
}

static int do_move_pages(void) {
    void *page = (void *)(uintptr_t)strtoull(A(1), NULL, 0);
    int status;
    /* nodes NULL: only ask where the page is */
    return res(syscall(SYS_move_pages, N(0), 1, &page, NULL, &status, 0));
}

static int do_process_madvise(void) {
    int fd = pidfd(N(0));
    if (fd < 0)
        return errno;
    struct iovec iov = {(void *)(uintptr_t)strtoull(A(1), NULL, 0), 4096};
    return res(syscall(SYS_process_madvise, fd, &iov, 1, 20 /* MADV_COLD */, 0));
}

/* clone(CLONE_PARENT): the new process is the caller's child.  Prints its pid
 * so that the test can reap it. */
static int do_clone_parent(void) {
    long pid = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid < 0)
        return errno;
    printf("%ld\n", pid);
    return 0;
}

/* -- namespaces and kernel calls ------------------------------------------- */

static int do_unshare(void) { return res(unshare((int)N(0))); }

static int forked(long rc) {
    if (rc == 0)
        _exit(0);
    if (rc > 0)
        waitpid((pid_t)rc, NULL, __WALL);
    return res(rc);
}

static int do_clone(void) { return forked(syscall(SYS_clone, N(0) | SIGCHLD, 0, 0, 0, 0)); }

static int do_clone3(void) {
    uint64_t args[11] = {0};
    args[0] = (uint64_t)N(0);
    args[4] = SIGCHLD;
    return forked(syscall(SYS_clone3, args, sizeof args));
}

static int do_setns(void) {
    int fd = pidfd(N(0));
    return fd < 0 ? errno : res(setns(fd, (int)N(1)));
}

static long word(const char *a) {
    static char *buffers[6];
    static int used;
    if (!strncmp(a, "s:", 2))
        return (long)(uintptr_t)(a + 2);
    if (!strncmp(a, "b:", 2)) {
        buffers[used] = calloc(1, (size_t)strtol(a + 2, NULL, 0));
        return (long)(uintptr_t)buffers[used++];
    }
    return strtol(a, NULL, 0);
}

static int do_raw(void) {
    long w[6] = {0};
    for (int i = 1; i < nargs && i <= 6; i++)
        w[i - 1] = word(arg[i]);
    return res(syscall(N(0), w[0], w[1], w[2], w[3], w[4], w[5]));
}

static int do_x32(void) {
    long w[6] = {0};
    for (int i = 1; i < nargs && i <= 6; i++)
        w[i - 1] = word(arg[i]);
    return res(syscall(0x40000000L | N(0), w[0], w[1], w[2], w[3], w[4], w[5]));
}

/* The i386 ABI through int 0x80: pointers must be below 4 GiB. */
static int do_i386(void) {
    char *low = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low == MAP_FAILED)
        return errno;
    long w[5] = {0};
    size_t off = 0;
    for (int i = 1; i < nargs && i <= 5; i++) {
        if (!strncmp(arg[i], "s:", 2)) {
            strcpy(low + off, arg[i] + 2);
            w[i - 1] = (long)(uintptr_t)(low + off);
            off += strlen(arg[i]) + 1;
        } else if (!strncmp(arg[i], "b:", 2)) {
            w[i - 1] = (long)(uintptr_t)(low + off);
            off += (size_t)strtol(arg[i] + 2, NULL, 0);
        } else {
            w[i - 1] = strtol(arg[i], NULL, 0);
        }
    }
    long rc;
    __asm__ volatile("int $0x80"
                     : "=a"(rc)
                     : "a"(N(0)), "b"(w[0]), "c"(w[1]), "d"(w[2]), "S"(w[3]), "D"(w[4])
                     : "memory");
    return rc < 0 && rc > -4096 ? (int)-rc : 0;
}

/* A one-entry hash map: what loading BPF programs starts with. */
static int do_bpf_map(void) {
    uint32_t attr[30] = {0};
    attr[0] = 1; /* BPF_MAP_TYPE_HASH */
    attr[1] = attr[2] = 4; /* key and value size */
    attr[3] = 1; /* max_entries */
    return res(syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, attr, sizeof attr));
}

/* A software clock counter on this process. */
static int do_perf(void) {
    uint32_t attr[32] = {0};
    attr[0] = 1; /* PERF_TYPE_SOFTWARE; config (u64 at 8) 0 = CPU_CLOCK */
    attr[1] = sizeof attr;
    return res(syscall(SYS_perf_event_open, attr, 0, -1, -1, 0));
}

static int do_personality(void) { return res(personality((unsigned long)N(0))); }

/* -- IPC ------------------------------------------------------------------- */

static const char secret[] = "outside-secret";

/* shm KEY, sem KEY+1 (value 1), msg KEY+2 (one message); prints the ids. */
static int ipc_setup(key_t key) {
    int shm = shmget(key, 4096, IPC_CREAT | 0600);
    if (shm < 0)
        return errno;
    char *mem = shmat(shm, NULL, 0);
    if (mem == (void *)-1)
        return errno;
    memcpy(mem, secret, sizeof secret);
    shmdt(mem);
    int sem = semget(key + 1, 1, IPC_CREAT | 0600);
    if (sem < 0 || semctl(sem, 0, SETVAL, 1) < 0)
        return errno;
    int msg = msgget(key + 2, IPC_CREAT | 0600);
    struct { long type; char text[32]; } m = {1, "outside-message"};
    if (msg < 0 || msgsnd(msg, &m, sizeof m.text, IPC_NOWAIT) < 0)
        return errno;
    printf("%d %d %d\n", shm, sem, msg);
    return 0;
}

/* Prints "SHM SEMVAL MSGS" for KEY (-1 where the object is gone). */
static int ipc_state(key_t key) {
    int shm = shmget(key, 0, 0), sem = semget(key + 1, 0, 0), msg = msgget(key + 2, 0);
    int semval = sem < 0 ? -1 : semctl(sem, 0, GETVAL);
    struct msqid_ds ds;
    long msgs = msg < 0 || msgctl(msg, IPC_STAT, &ds) < 0 ? -1 : (long)ds.msg_qnum;
    int same = -1;
    if (shm >= 0) {
        char *mem = shmat(shm, NULL, SHM_RDONLY);
        same = mem != (void *)-1 && !memcmp(mem, secret, sizeof secret);
    }
    printf("%d %d %ld\n", same, semval, msgs);
    return 0;
}

static int ipc_cleanup(key_t key) {
    int shm = shmget(key, 0, 0), sem = semget(key + 1, 0, 0), msg = msgget(key + 2, 0);
    if (shm >= 0)
        shmctl(shm, IPC_RMID, NULL);
    if (sem >= 0)
        semctl(sem, 0, IPC_RMID);
    if (msg >= 0)
        msgctl(msg, IPC_RMID, NULL);
    return 0;
}

static int do_shm_read(void) {
    int id = shmget((key_t)N(0), 0, 0);
    if (id < 0)
        return errno;
    char *mem = shmat(id, NULL, SHM_RDONLY);
    if (mem == (void *)-1)
        return errno;
    return memcmp(mem, secret, sizeof secret) ? NOEFFECT : 0;
}

static int do_shmat_id(void) {
    char *mem = shmat((int)N(0), NULL, SHM_RDONLY);
    if (mem == (void *)-1)
        return errno;
    return memcmp(mem, secret, sizeof secret) ? NOEFFECT : 0;
}

static int do_shmctl(void) {
    struct shmid_ds ds;
    return res(shmctl((int)N(0), (int)N(1), &ds));
}

static int do_semop(void) {
    int id = semget((key_t)N(0), 0, 0);
    if (id < 0)
        return errno;
    struct sembuf op = {0, -1, IPC_NOWAIT};
    return res(semop(id, &op, 1));
}

static int do_semctl(void) { return res(semctl((int)N(0), 0, (int)N(1))); }

static int do_msgrcv(void) {
    int id = msgget((key_t)N(0), 0);
    if (id < 0)
        return errno;
    struct { long type; char text[32]; } m;
    return res(msgrcv(id, &m, sizeof m.text, 0, IPC_NOWAIT));
}

static int do_msgsnd(void) {
    int id = msgget((key_t)N(0), 0);
    if (id < 0)
        return errno;
    struct { long type; char text[32]; } m = {1, "inside"};
    return res(msgsnd(id, &m, sizeof m.text, IPC_NOWAIT));
}

static int do_msgctl(void) {
    struct msqid_ds ds;
    return res(msgctl((int)N(0), (int)N(1), &ds));
}

/* A new private object of each kind, removed again at once. */
static int do_ipc_create(void) {
    const char *kind = A(0);
    int id;
    if (!strcmp(kind, "shm")) {
        id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
        return id < 0 ? errno : res(shmctl(id, IPC_RMID, NULL));
    }
    if (!strcmp(kind, "sem")) {
        id = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
        return id < 0 ? errno : res(semctl(id, 0, IPC_RMID));
    }
    id = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    return id < 0 ? errno : res(msgctl(id, IPC_RMID, NULL));
}

static struct mq_attr mq_small = {.mq_maxmsg = 4, .mq_msgsize = 32};

static long mq_messages(const char *name) {
    mqd_t q = mq_open(name, O_RDONLY);
    struct mq_attr now;
    long n = q < 0 || mq_getattr(q, &now) < 0 ? -1L : (long)now.mq_curmsgs;
    if (q >= 0)
        mq_close(q);
    return n;
}

static int do_mq(void) {
    const char *how = A(0), *name = A(1);
    if (!strcmp(how, "unlink"))
        return res(mq_unlink(name));
    if (!strcmp(how, "create")) /* the test checks that nothing was created */
        return res(mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &mq_small));
    if (!strcmp(how, "take")) {
        mqd_t q = mq_open(name, O_RDONLY | O_NONBLOCK);
        char buf[32];
        return q < 0 ? errno : res(mq_receive(q, buf, sizeof buf, NULL));
    }
    if (!strcmp(how, "send")) {
        mqd_t q = mq_open(name, O_WRONLY | O_NONBLOCK);
        return q < 0 ? errno : res(mq_send(q, "x", 1, 0));
    }
    return USAGE;
}

/* world-reset KEY MQ NEWMQ: the IPC objects afresh (the queue MQ with one
 * message, NEWMQ absent); prints their ids. */
static int do_world_reset(void) {
    key_t key = (key_t)N(0);
    ipc_cleanup(key);
    mq_unlink(A(1));
    mq_unlink(A(2));
    int e = ipc_setup(key);
    if (e)
        return e;
    mqd_t q = mq_open(A(1), O_WRONLY | O_CREAT, 0600, &mq_small);
    if (q < 0 || mq_send(q, secret, sizeof secret, 0) < 0)
        return errno;
    mq_close(q);
    return 0;
}

/* world-state KEY MQ NEWMQ: one line of what an attack on them could change. */
static int do_world_state(void) {
    ipc_state((key_t)N(0));
    printf("%ld %ld\n", mq_messages(A(1)), mq_messages(A(2)));
    return 0;
}

static int do_world_cleanup(void) {
    ipc_cleanup((key_t)N(0));
    mq_unlink(A(1));
    mq_unlink(A(2));
    return 0;
}

/* -- the terminal ---------------------------------------------------------- */

/* Attacks on the terminal on fd 0.  Job control would stop a background
 * process group that touches it: an attacker ignores SIGTTOU and SIGTTIN. */
static int take_foreground(void) {
    pid_t me = getpgrp();
    return res(ioctl(0, TIOCSPGRP, &me));
}

static int do_tty(void) {
    const char *how = A(0);
    signal(SIGTTOU, SIG_IGN);
    signal(SIGTTIN, SIG_IGN);
    if (!strcmp(how, "sti")) {
        char c = '\n';
        return res(ioctl(0, TIOCSTI, &c));
    }
    if (!strcmp(how, "spgrp"))
        return take_foreground();
    if (!strcmp(how, "swinsz")) {
        struct winsize ws;
        if (ioctl(0, TIOCGWINSZ, &ws) < 0)
            return errno;
        ws.ws_row++;
        return res(ioctl(0, TIOCSWINSZ, &ws));
    }
    if (!strcmp(how, "notty"))
        return res(ioctl(0, TIOCNOTTY));
    if (!strcmp(how, "cons")) { /* console output to this terminal, then back */
        if (ioctl(0, TIOCCONS) < 0)
            return errno;
        int console = open("/dev/console", O_WRONLY | O_NOCTTY);
        if (console < 0 || ioctl(console, TIOCCONS) < 0)
            fprintf(stderr, "escape: could not undo TIOCCONS: %s\n", strerror(errno));
        return 0;
    }
    if (!strcmp(how, "sctty")) { /* a new session stealing the terminal */
        pid_t pid = fork();
        if (pid == 0) {
            if (setsid() < 0)
                _exit(errno);
            _exit(res(ioctl(0, TIOCSCTTY, 1)));
        }
        int status;
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : USAGE;
    }
    if (!strcmp(how, "devtty"))
        return opened(open("/dev/tty", O_RDWR));
    if (!strcmp(how, "read")) { /* what the user typed, if stdin is theirs */
        take_foreground();
        struct pollfd p = {0, POLLIN, 0};
        char buf[64];
        if (poll(&p, 1, 500) <= 0)
            return NOEFFECT;
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0)
            return errno;
        if (n == 0)
            return NOEFFECT;
        fwrite(buf, 1, (size_t)n, stdout);
        return 0;
    }
    return USAGE;
}

/* -- fds, environment, resources, process groups --------------------------- */

/* Any fd beyond stdio is something the caller handed over. */
static int do_fd_scan(void) {
    int found = 0;
    for (int fd = 3; fd < 1024; fd++) {
        if (fcntl(fd, F_GETFD) < 0)
            continue;
        char path[64], target[256] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        if (readlink(path, target, sizeof target - 1) < 0)
            strcpy(target, "?");
        printf("%d %s\n", fd, target);
        found = 1;
    }
    return found ? 0 : NOEFFECT;
}

static int do_env(void) {
    const char *value = getenv(A(0));
    if (!value)
        return NOEFFECT;
    printf("%s\n", value);
    return 0;
}

static int do_setrlimit(void) {
    struct rlimit r;
    if (getrlimit((int)N(0), &r) < 0)
        return errno;
    r.rlim_cur = r.rlim_max = (rlim_t)N(1);
    return res(setrlimit((int)N(0), &r));
}

static int in_child(int (*what)(void)) {
    pid_t pid = fork();
    if (pid < 0)
        return errno;
    if (pid == 0)
        _exit(what());
    int status;
    if (waitpid(pid, &status, 0) < 0)
        return errno;
    return WIFEXITED(status) ? WEXITSTATUS(status) : USAGE;
}

static int setsid_now(void) { return res(setsid()); }
static int setpgid_now(void) { return res(setpgid(0, nargs > 0 ? (pid_t)N(0) : 0)); }
static int do_setsid(void) { return in_child(setsid_now); }
static int do_setpgid(void) { return in_child(setpgid_now); }

/* A grandchild that outlives its parent: prints its pid, then sleeps. */
static int do_daemon(void) {
    int out[2];
    if (pipe(out) < 0)
        return errno;
    pid_t pid = fork();
    if (pid < 0)
        return errno;
    if (pid == 0) {
        if (fork() != 0)
            _exit(0);
        pid_t me = getpid();
        if (write(out[1], &me, sizeof me) != sizeof me)
            _exit(1);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        close(out[1]);
        for (;;)
            pause();
    }
    close(out[1]);
    pid_t grandchild;
    if (read(out[0], &grandchild, sizeof grandchild) != sizeof grandchild)
        return EIO;
    waitpid(pid, NULL, 0);
    printf("%d\n", (int)grandchild);
    fflush(stdout);
    if (nargs > 0) /* and then wait to be killed with the caller */
        for (;;)
            pause();
    return 0;
}

static int do_inotify(void) {
    int fd = inotify_init1(0);
    return fd < 0 ? errno : res(inotify_add_watch(fd, A(0), IN_ALL_EVENTS));
}


static const struct {
    const char *name;
    int (*run)(void);
} attacks[] = {
    {"open", do_open}, {"open-legacy", do_open_legacy}, {"openat2", do_openat2},
    {"openat-dir", do_openat_dir}, {"chdir-open", do_chdir_open}, {"reopen", do_reopen},
    {"readdir", do_readdir}, {"readlink", do_readlink}, {"symlink-open", do_symlink_open},
    {"link-open", do_link_open}, {"unlink", do_unlink}, {"rename", do_rename},
    {"mkdir", do_mkdir}, {"stat", do_stat}, {"exchange", do_exchange}, {"handle", do_handle},
    {"open-handle", do_open_handle}, {"exec", do_exec}, {"ldso", do_ldso},
    {"memfd-exec", do_memfd_exec}, {"creat-mode", do_creat_mode}, {"open-mode", do_open_mode},
    {"mknod", do_mknod},
    {"chmod", do_chmod}, {"fchmod", do_fchmod}, {"fchmodat", do_fchmodat},
    {"fchmodat2", do_fchmodat2}, {"fchmodat2-empty", do_fchmodat2_empty},
    {"chmod-procfd", do_chmod_procfd}, {"chown", do_chown}, {"lchown", do_lchown},
    {"fchownat", do_fchownat}, {"fchown", do_fchown}, {"utimensat", do_utimensat},
    {"futimens", do_futimens}, {"utimes", do_utimes}, {"utime", do_utime},
    {"futimesat", do_futimesat}, {"setxattr", do_setxattr}, {"lsetxattr", do_lsetxattr},
    {"fsetxattr", do_fsetxattr}, {"removexattr", do_removexattr},
    {"lremovexattr", do_lremovexattr}, {"fremovexattr", do_fremovexattr},
    {"setxattrat", do_setxattrat}, {"removexattrat", do_removexattrat},
    {"setcap", do_setcap}, {"acl", do_acl},
    {"connect", do_connect}, {"bind", do_bind}, {"listen", do_listen},
    {"bind-listen", do_bind_listen},
    {"fastopen", do_fastopen}, {"socket", do_socket}, {"unix-connect", do_unix_connect},
    {"kill", do_kill}, {"tgkill", do_tgkill}, {"tkill", do_tkill}, {"sigqueue", do_sigqueue},
    {"pidfd-signal", do_pidfd_signal}, {"sigio", do_sigio}, {"ptrace", do_ptrace},
    {"vm", do_vm}, {"vm-write", do_vm_write}, {"pidfd-getfd", do_pidfd_getfd},
    {"kcmp", do_kcmp}, {"prlimit", do_prlimit}, {"setpriority", do_setpriority},
    {"affinity", do_affinity}, {"setscheduler", do_setscheduler}, {"setparam", do_setparam},
    {"setattr", do_setattr}, {"ioprio", do_ioprio}, {"migrate-pages", do_migrate_pages},
    {"move-pages", do_move_pages}, {"process-madvise", do_process_madvise},
    {"clone-parent", do_clone_parent},
    {"unshare", do_unshare}, {"clone", do_clone}, {"clone3", do_clone3}, {"setns", do_setns},
    {"raw", do_raw}, {"x32", do_x32}, {"i386", do_i386}, {"personality", do_personality},
    {"bpf-map", do_bpf_map}, {"perf", do_perf},
    {"world-reset", do_world_reset}, {"world-state", do_world_state},
    {"world-cleanup", do_world_cleanup},
    {"shm-read", do_shm_read}, {"shmat-id", do_shmat_id}, {"shmctl", do_shmctl},
    {"semop", do_semop}, {"semctl", do_semctl}, {"msgrcv", do_msgrcv}, {"msgsnd", do_msgsnd},
    {"msgctl", do_msgctl}, {"ipc-create", do_ipc_create}, {"mq", do_mq},
    {"tty", do_tty},
    {"fd-scan", do_fd_scan}, {"env", do_env}, {"setrlimit", do_setrlimit},
    {"setsid", do_setsid}, {"setpgid", do_setpgid}, {"daemon", do_daemon},
    {"inotify", do_inotify},
};

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: escape ATTACK [ARGS...]\n");
        return USAGE;
    }
    arg = argv + 2;
    nargs = argc - 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++)
        if (!strcmp(attacks[i].name, argv[1])) {
            errno = 0;
            return attacks[i].run();
        }
    fprintf(stderr, "escape: unknown attack %s\n", argv[1]);
    return USAGE;
}
