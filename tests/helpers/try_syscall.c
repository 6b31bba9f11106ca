/*
 * try_syscall NAME [ARGS...]: make one system call (raw where libc might
 * fall back or fake it) and exit with its errno, 0 on success.
 *
 * The sandbox tests run this inside a sandbox and compare the exit status
 * with the errno the confinement layer is expected to return, which tells a
 * seccomp refusal (EPERM, EAFNOSUPPORT, ENOSYS) from a Landlock one (EACCES,
 * EPERM for scoped signals and sockets) and from "the kernel said no anyway".
 * Exit 125 means a usage error, so it never collides with a real errno.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <arpa/inet.h>

#define USAGE 125

static int result(long rc) { return rc < 0 ? errno : 0; }

static int need(int argc, int n) {
    if (argc < n) {
        fprintf(stderr, "try_syscall: missing argument\n");
        exit(USAGE);
    }
    return 0;
}

static struct sockaddr_in loopback(const char *port) {
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
}

static int tcp(const char *port, int do_bind) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return errno;
    struct sockaddr_in addr = loopback(port);
    long rc = do_bind ? bind(fd, (struct sockaddr *)&addr, sizeof addr)
                      : connect(fd, (struct sockaddr *)&addr, sizeof addr);
    return result(rc);
}

static int abstract_connect(const char *name) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return errno;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t len = strlen(name);
    if (len + 1 > sizeof addr.sun_path)
        return USAGE;
    memcpy(addr.sun_path + 1, name, len); /* sun_path[0] == 0: abstract */
    socklen_t size = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
    return result(connect(fd, (struct sockaddr *)&addr, size));
}

/* Run `what` in a forked child that is not a process group leader (the
 * sandboxed process is one, and setsid() always fails for a leader). */
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

/* After a fork-like call: the child leaves at once, the parent reaps it. */
static int forked(long rc) {
    if (rc == 0)
        _exit(0);
    if (rc > 0)
        waitpid((pid_t)rc, NULL, 0);
    return result(rc);
}

static int do_setsid(void) { return result(setsid()); }
static int do_setpgid(void) { return result(setpgid(0, 0)); }

/* Try every way out of the process group, then live on quietly: prints the
 * pid of a detached grandchild that sleeps for a long time. */
static int daemonize(void) {
    int out[2];
    if (pipe(out) < 0)
        return errno;
    pid_t pid = fork();
    if (pid < 0)
        return errno;
    if (pid == 0) {
        setsid();
        setpgid(0, 0);
        if (fork() != 0)
            _exit(0);
        setsid();
        pid_t me = getpid();
        if (write(out[1], &me, sizeof me) != sizeof me)
            _exit(1);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        for (;;)
            pause();
    }
    close(out[1]);
    pid_t grandchild;
    if (read(out[0], &grandchild, sizeof grandchild) != sizeof grandchild)
        return EIO;
    waitpid(pid, NULL, 0);
    printf("%d\n", (int)grandchild);
    return 0;
}

static int open_many(int n) {
    for (int i = 0; i < n; i++)
        if (open("/dev/null", O_RDONLY) < 0)
            return errno;
    return 0;
}

int main(int argc, char **argv) {
    need(argc, 2);
    const char *name = argv[1];
    errno = 0;
    if (!strcmp(name, "mount"))
        return result(mount("none", "/tmp", "tmpfs", 0, NULL));
    if (!strcmp(name, "unshare"))
        return result(unshare(CLONE_NEWNS));
    if (!strcmp(name, "unshare-user"))
        return result(unshare(CLONE_NEWUSER));
    if (!strcmp(name, "ptrace"))
        return result(syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, getppid(), 0, 0));
    if (!strcmp(name, "ptrace-traceme"))
        return result(syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0));
    if (!strcmp(name, "io_uring_setup")) {
        char params[120];
        memset(params, 0, sizeof params);
        return result(syscall(SYS_io_uring_setup, 1, params));
    }
    if (!strcmp(name, "bpf")) {
        char attr[128];
        memset(attr, 0, sizeof attr);
        return result(syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, attr, sizeof attr));
    }
    if (!strcmp(name, "keyctl"))
        return result(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0, 0, 0));
    if (!strcmp(name, "perf_event_open")) {
        char attr[128];
        memset(attr, 0, sizeof attr);
        return result(syscall(SYS_perf_event_open, attr, 0, -1, -1, 0));
    }
    if (!strcmp(name, "userfaultfd"))
        return result(syscall(SYS_userfaultfd, 0));
    if (!strcmp(name, "process_vm_readv")) {
        char buf[8];
        struct iovec local = {buf, sizeof buf}, remote = {buf, sizeof buf};
        return result(syscall(SYS_process_vm_readv, getppid(), &local, 1, &remote, 1, 0));
    }
    if (!strcmp(name, "setsid"))
        return in_child(do_setsid);
    if (!strcmp(name, "setpgid"))
        return in_child(do_setpgid);
    if (!strcmp(name, "clone-newns"))
        return forked(syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(name, "clone3")) {
        unsigned long args[11]; /* struct clone_args, version 2 */
        memset(args, 0, sizeof args);
        args[4] = SIGCHLD; /* exit_signal */
        return forked(syscall(SYS_clone3, args, sizeof args));
    }
    if (!strcmp(name, "fork"))
        return forked(fork());
    if (!strcmp(name, "ioctl-tiocsti")) {
        char c = 'x';
        return result(ioctl(0, TIOCSTI, &c));
    }
    if (!strcmp(name, "personality"))
        return result(personality(ADDR_NO_RANDOMIZE));
    if (!strcmp(name, "personality-query"))
        return result(personality(0xffffffff));
    if (!strcmp(name, "socket-raw"))
        return result(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
    if (!strcmp(name, "socket-udp"))
        return result(socket(AF_INET, SOCK_DGRAM, 0));
    if (!strcmp(name, "socket-udp6"))
        return result(socket(AF_INET6, SOCK_DGRAM, 0));
    if (!strcmp(name, "socket-ping"))
        return result(socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP));
    if (!strcmp(name, "socket-packet"))
        return result(socket(17 /* AF_PACKET */, SOCK_RAW, 0));
    if (!strcmp(name, "socket-netlink"))
        return result(socket(AF_NETLINK, SOCK_RAW, 0));
    if (!strcmp(name, "socket-tcp"))
        return result(socket(AF_INET, SOCK_STREAM, 0));
    if (!strcmp(name, "socket-unix"))
        return result(socket(AF_UNIX, SOCK_STREAM, 0));
    if (!strcmp(name, "connect-tcp") && !need(argc, 3))
        return tcp(argv[2], 0);
    if (!strcmp(name, "bind-tcp") && !need(argc, 3))
        return tcp(argv[2], 1);
    if (!strcmp(name, "connect-abstract") && !need(argc, 3))
        return abstract_connect(argv[2]);
    if (!strcmp(name, "kill-parent"))
        return result(kill(getppid(), argc > 2 ? atoi(argv[2]) : 0));
    if (!strcmp(name, "kill") && !need(argc, 4))
        return result(kill(atoi(argv[2]), atoi(argv[3])));
    if (!strcmp(name, "uname")) {
        struct utsname u;
        return result(syscall(SYS_uname, &u));
    }
    if (!strcmp(name, "x32-getpid"))
        return result(syscall(0x40000000 | SYS_getpid));
    if (!strcmp(name, "open-many") && !need(argc, 3))
        return open_many(atoi(argv[2]));
    if (!strcmp(name, "daemonize"))
        return daemonize();
    fprintf(stderr, "try_syscall: unknown call %s\n", name);
    return USAGE;
}
