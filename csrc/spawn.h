/*
 * asyncsandlock's C core: start one confined child and exec it.
 *
 * Everything between the two CDEF markers is read by asyncsandlock/_ffi_build.py
 * as the cffi cdef, so it must stay plain C declarations (no #include, no macros
 * with expressions).
 */
#ifndef ASL_SPAWN_H
#define ASL_SPAWN_H
#include <stdint.h>
#include <stddef.h>

/* CDEF-BEGIN */
/* Steps the child reports on its channel, numbered in the order it
 * runs them (asyncsandlock/_spawn.py reads the names from here). */
enum asl_step {
    ASL_STEP_SIGNALS = 1,
    ASL_STEP_SETPGID = 2,
    ASL_STEP_PDEATHSIG = 3,
    ASL_STEP_FDS = 4,
    ASL_STEP_RAISE_RLIMIT = 5,
    ASL_STEP_WORKSPACE = 6, /* copy-on-write workspace (issue 12) */
    ASL_STEP_HOSTS = 7,     /* pinned names: synthetic /etc/hosts (issue 10) */
    ASL_STEP_CHDIR = 8,
    ASL_STEP_NETWORK = 9,
    ASL_STEP_IDENTITY = 10,
    ASL_STEP_CAPABILITIES = 11,
    ASL_STEP_NO_NEW_PRIVS = 12,
    ASL_STEP_LANDLOCK = 13,
    ASL_STEP_THP = 14,      /* max_memory: transparent huge pages off (issue 11) */
    ASL_STEP_CPUS = 15,     /* cpu_cores: the child's own affinity (issue 11) */
    ASL_STEP_SIGMASK = 16,
    ASL_STEP_SECCOMP = 17,
    ASL_STEP_LISTENER = 18,
    ASL_STEP_RLIMIT = 19,
    ASL_STEP_EXECVE = 20
};

/* How the child takes the identity of a policy's uid/gid (docs/files.md). */
enum asl_identity {
    ASL_IDENTITY_NONE = 0,
    ASL_IDENTITY_SET = 1,    /* setgroups(0) + setresgid + setresuid: a privileged caller */
    ASL_IDENTITY_USERNS = 2  /* a user namespace mapping uid/gid to the caller's own */
};

/* Who builds a copy-on-write workspace's overlay (asyncsandlock/_workspace.py). */
enum asl_workspace {
    ASL_WORKSPACE_ATTACH = 0, /* the parent (CAP_SYS_ADMIN); the child attaches it */
    ASL_WORKSPACE_USERNS = 1  /* the child, in a user + mount namespace of its own */
};

/* How the child gets its pinned names' hosts file (asyncsandlock/_pinned.py). */
enum asl_hosts {
    ASL_HOSTS_ATTACH = 0, /* hosts_fd > 0: a clone of the parent's file (CAP_SYS_ADMIN), attached */
    ASL_HOSTS_USERNS = 1  /* the child writes hosts_text, in a user + mount namespace of its own */
};
/* Where the child's network stack comes from (asyncsandlock/_netns.py). */
enum asl_net_mode {
    ASL_NET_HOST = 0,    /* the caller's */
    ASL_NET_NEW = 1,     /* unshare(CLONE_NEWNET), lo up: needs CAP_SYS_ADMIN */
    ASL_NET_USERNS = 2,  /* the same inside a new user namespace (unprivileged) */
    ASL_NET_JOIN = 3     /* setns(netns_fd): one the parent made and configured */
};

enum {
    /* The child's fds 0 .. nfds-1: nfds is at most this. */
    ASL_MAX_FDS = 1024,
    /* Execve candidates whose errno the report carries. */
    ASL_REPORT_ERRS = 16,
    /* An asl_fd_map src: /dev/null, opened by the child (map_fds). */
    ASL_FD_DEVNULL = -2
};

/* Child fd `dst` becomes a copy of parent fd `src`. */
struct asl_fd_map {
    int src;
    int dst;
};

struct asl_rlimit {
    int resource;
    uint64_t cur;
    uint64_t max;
};

/* The report sent on the channel when a step fails (less than
 * PIPE_BUF, so written whole). */
struct asl_report {
    int32_t step;
    int32_t err;
    int32_t tried;    /* execve: how many candidates were tried */
    int32_t errs[16]; /* execve: the errno of each, up to ASL_REPORT_ERRS */
};

struct asl_spawn_req {
    const char *const *paths;     /* execve candidates, in PATH order */
    int npaths;
    char *const *argv;
    char *const *envp;
    const char *cwd;              /* NULL: inherit the caller's */
    const struct asl_fd_map *fds; /* dst values are exactly 0 .. nfds-1 */
    int nfds;                     /* at most ASL_MAX_FDS */
    const struct asl_rlimit *rlimits;
    int nrlimits;
    int landlock_fd;              /* -1: no Landlock */
    uint32_t landlock_flags;
    const void *filter;           /* struct sock_filter[], NULL: no seccomp */
    unsigned short filter_len;
    unsigned int seccomp_flags;
    uint64_t key[3];              /* the filter lets our own calls through */
    uint64_t keep_caps;           /* capabilities kept; all others dropped */
    int own_group;                /* 1: make a process group (0: nested, refused) */
    int parent_pid;
    /* Set by asl_spawn: the child's end of the CLOEXEC SEQPACKET pair it
     * reports on (a failed step's struct asl_report, and the listener of
     * NEW_LISTENER, SCM_RIGHTS). */
    int channel;
    /* files: the child's identity (set_identity in spawn.c). */
    int identity;                 /* enum asl_identity */
    uint32_t uid;
    uint32_t gid;
    const char *uid_map;          /* ASL_IDENTITY_USERNS: "UID OUTER 1\n" */
    const char *gid_map;
    /* network namespace (issue 10, netns) */
    int net_mode;                 /* enum asl_net_mode */
    int netns_fd;                 /* ASL_NET_JOIN: the namespace to enter */
    const char *net_uid_map;      /* ASL_NET_USERNS: "<uid> <uid> 1", our id to itself */
    const char *net_gid_map;      /* ASL_NET_USERNS: "<gid> <gid> 1" */
    /* The sandbox's own network's net.ipv4.ip_unprivileged_port_start, as
     * text, so that a child without CAP_NET_BIND_SERVICE binds the low
     * net_allow_bind ports there; NULL: left alone. */
    const char *port_start;
    /* copy-on-write workspace (asyncsandlock/_overlay.py): the detached
     * overlay mount the parent made, attached over workspace_path in the
     * child's own mount namespace.  workspace_path NULL: no workspace. */
    int workspace_fd;
    const char *workspace_path;
    /* ASL_WORKSPACE_USERNS (an unprivileged caller): the child builds the
     * layer and the overlay itself, in a user namespace of its own, and
     * sends the layer's tmpfs and the overlay to the parent (workspace_sock,
     * two fds, SCM_RIGHTS) before it attaches nothing else. */
    int workspace_mode;            /* enum asl_workspace */
    int workspace_sock;
    const char *workspace_lower;   /* the workdir escaped, for "lowerdir" */
    const char *workspace_size;    /* the tmpfs's size=, NULL: its default */
    uint32_t workspace_root_mode;  /* the overlay root's mode: the workdir's */
    const char *workspace_uid_map; /* "<uid> <uid> 1": our id to itself */
    const char *workspace_gid_map;
    /* Both modes: the Landlock rights the child grants on the overlay's
     * root in the (per-run) ruleset, 0: none. */
    uint64_t workspace_access;
    /* pinned names (asyncsandlock/_pinned.py): a detached bind mount of the
     * synthetic hosts file, attached over /etc/hosts in the child's own
     * mount namespace.  0: none (fd 0 is always one of the child's own). */
    int hosts_fd;
    /* ASL_HOSTS_USERNS (an unprivileged caller): the file's text, written by
     * the child on a tmpfs of its own; the maps of its user namespace (the
     * identity's with ASL_IDENTITY_USERNS, else its ids to themselves), and
     * the Landlock rights it grants on the file in the (per-run) ruleset. */
    int hosts_mode;               /* enum asl_hosts */
    const char *hosts_text;
    size_t hosts_len;
    const char *hosts_uid_map;
    const char *hosts_gid_map;
    uint64_t hosts_access;
    /* ASL_HOSTS_USERNS: hosts_fd > 0 is the tmpfs an earlier child wrote
     * the file on (the parent keeps it), cloned instead of a new one;
     * else, with hosts_sock > 0, the child sends the tmpfs it made there. */
    int hosts_sock;
    /* max_memory (issue 11, csrc/spawn.c thp_hold): 1 to turn transparent
     * huge pages off for the child and all it starts (PR_SET_THP_DISABLE). */
    int thp_disable;
    /* cpu_cores (issue 11): the child's CPU mask, `cpus_words` 64-bit words
     * (0: the affinity it inherits). */
    const uint64_t *cpus;
    int cpus_words;
    /* max_memory in a cgroup (issue 11, asyncsandlock/_cgroup.py): an fd of
     * the sandbox's own group's cgroup.procs, which the child writes "0" to
     * (moving itself in) in its rlimit step, last before exec; -1: none. */
    int cgroup_procs_fd;
    int32_t reached;              /* written by the child: the step it is in */
};

/* What asl_spawn read of its child: its pidfd, the listener it sent (-1:
 * none), its failure report (step 0: none), and -errno if reading its
 * channel failed (0). */
struct asl_spawned {
    int pidfd;
    int listener;
    int err;
    struct asl_report report;
};

/* Start the child on a channel of its own (req->channel is set here):
 * returns its pid, with `out` filled; or -errno if the channel or the clone
 * failed, leaving nothing behind. */
int asl_spawn(struct asl_spawn_req *req, struct asl_spawned *out);
/* A channel a child sends fds on: a CLOEXEC SOCK_SEQPACKET pair into `sv`;
 * 0 or -errno.  And the fd that came on `sock` (never waits), or -errno:
 * -ENOMSG when none came. */
int asl_channel(int *sv);
int asl_receive_fd(int sock);

/* The reaper (csrc/reaper.c): records of two int32, {op, id}, on its pipe. */
enum asl_reaper_op {
    ASL_REAPER_WATCH_GROUP = 1,   /* id: a sandbox's process group */
    ASL_REAPER_WATCH_PID = 2,     /* id: a sandbox without a group of its own */
    ASL_REAPER_FORGET = 3         /* id: about to be reaped */
};

/* Starts a reaper reading records from pipe read end `fd` (see _reaper.py);
 * returns its pid, or -errno. */
int asl_reaper_start(int fd);
/* csrc/group.c: the live processes of process group `pgid` (a sandbox), or
 * -errno; with `threads`, stores how many threads they run. */
long asl_count_group(int pgid, long *threads);
/* csrc/group.c: one process of a watched group (asyncsandlock/_watch.py). */
struct asl_member {
    int32_t pid;
    int32_t group;      /* index in the pgids given */
    int32_t ppid;       /* -1: not read (its group wants no CPU times) */
    int32_t ended;      /* a zombie: it has exited, not yet reaped */
    uint64_t ticks;     /* utime + stime + cutime + cstime, in clock ticks */
    uint64_t rss_pages; /* resident pages */
};
/* Every process of the groups `pgids` (sorted ascending) into `out` (at most
 * `max`); returns how many there are (more than `max`: call again with
 * room), or -errno.  `want_cpu[i]`: 0 if group i needs its memory only,
 * 2 if its members' pids only (nothing read). */
long asl_scan_groups(const int32_t *pgids, const uint8_t *want_cpu, long ngroups,
                     struct asl_member *out, long max);
/* The members' group indexes of `pids` into result[i]: -1 for a process
 * of none of `pgids` (sorted) or a thread, -2 for a pid that names nothing
 * (yet: allocated, not attached; or gone); returns how many are members. */
long asl_probe_pids(const int32_t *pids, long n, const int32_t *pgids, long ngroups,
                    int32_t *result);
/* The use of processes `pids` into out[i], read through the fds held on
 * their /proc statm and stat files (-1: by path), and the resident pages of
 * each owner (0 .. nowners-1) into rss[owner].  want[owner[i]]: 0 not read
 * (out[i].ended 3), 1 memory (statm), 2 memory and CPU times and ppid
 * (stat).  out[i].ended: 1 a zombie, 2 reaped; returns how many were reaped. */
long asl_read_usage(const int32_t *pids, const int32_t *statm_fds, const int32_t *stat_fds,
                    const int32_t *owner, const uint8_t *want, long n, long nowners,
                    struct asl_member *out, uint64_t *rss);
/* csrc/group.c: when the watcher looks at one sandbox next (one per
 * watched sandbox, owned by asyncsandlock/_watch.py's _Entry; times are
 * time.monotonic() seconds). */
struct asl_schedule {
    uint64_t budget;    /* max_memory in pages; UINT64_MAX: none */
    uint64_t pages;     /* resident pages at the last look */
    double per_page;    /* seconds a sandbox filling memory as fast as it can takes per page */
    double mem_soon;    /* the next memory look may be made from here */
    double mem_due;     /* and is due here */
    double cpu_soon;    /* the same for its CPU times */
    double cpu_due;
    double soon;        /* the earlier of the two */
    double due;
};
/* What each of `n` sandboxes wants looked at now: want[i] 0 nothing, 1 its
 * memory (statm), 2 its CPU times too (stat); returns how many want one. */
long asl_due(struct asl_schedule *const *s, long n, double now, uint8_t *want);
/* want[i] of a sandbox whose members have not run since its last look:
 * its rss (and CPU times) are as then (asl_skip_unchanged); nothing is read
 * by asl_read_usage.  _CPU: its CPU look was due (want 2). */
enum { ASL_WANT_UNCHANGED = 3, ASL_WANT_UNCHANGED_CPU = 4 };
/* For each sandbox with want 1 or 2 whose members (pids[i] of owner[i],
 * grouped by owner) have the CPU clocks of cpu_ns[] (updated), want
 * becomes ASL_WANT_UNCHANGED or _CPU; returns how many. */
long asl_skip_unchanged(const int32_t *pids, const int32_t *owner, uint64_t *cpu_ns,
                        long n, uint8_t *want);
/* The earliest due of `n` sandboxes (INFINITY: none). */
double asl_next_due(struct asl_schedule *const *s, long n);
/* After a look with no member reaped: each sandbox with want[i] == 1 (or
 * ASL_WANT_UNCHANGED: its pages as last seen) and
 * rss[i] resident pages is over its budget (its index into over[], in
 * order; returns how many) or has its next memory look scheduled, as
 * _Entry.memory does: `shortest` while it holds still near the budget,
 * `growing` while it grows there, at most `longest`. */
long asl_schedule_memory(struct asl_schedule *const *s, const uint8_t *want,
                         const uint64_t *rss, long n, double now, double shortest,
                         double growing, double longest, int32_t *over);
/* csrc/netns.c, called by the parent: the calling thread is back in its own
 * network namespace when they return.  A new network namespace (lo down), as
 * an fd; a socket made in network namespace `nsfd`.  -errno on failure. */
int asl_netns_new(void);
int asl_socket_in(int nsfd, int domain, int type, int protocol);
/* The namespace maker (netns.c, asyncsandlock/_netpool.py): `count` new
 * network namespaces with lo up, sent as fds on the SOCK_SEQPACKET `sock` by
 * a process of their own, the caller's child; then one more for each byte
 * the caller writes (its value: how many), until the caller's end closes.
 * out = {the pid of the first step (exiting), a pidfd of it, the maker's pid
 * or -errno}; both are the caller's to reap.  0 or -errno. */
int asl_netns_maker(int sock, int count, int out[3]);
/* lo up in the calling thread's network namespace; raw system calls only. */
long asl_loopback_up(void);
/* Calls the guards make on every trapped syscall (csrc/guardcall.c).
 * asl_peek: process_vm_readv of `len` bytes at `addr` in `pid` into `buf`;
 * the count or -errno.
 * asl_net_take: a copy of the child's fd `number` (pidfd_getfd) with
 * info = {SO_DOMAIN, SO_TYPE, SO_PROTOCOL (0, unread, for a stream socket),
 * F_GETFL}; the fd or -errno.
 * asl_net_connect: connect(); with `wait` (a blocking stream socket) made
 * non-blocking for the call; 0, -errno, or 1: under way, wait until the fd
 * is writable and call asl_net_connected (`started`: connect's errno). */
long asl_peek(int pid, unsigned long addr, void *buf, unsigned long len);
int asl_net_take(int pidfd, int number, int info[4]);
/* asl_net_fetch: asl_net_take, then asl_peek, then ID_VALID on `listener`
 * for notification `id` (the one check covers both looks); the fd or -errno
 * (-ESRCH: the target is gone). */
int asl_net_fetch(int listener, uint64_t id, int pidfd, int number, int pid,
                  unsigned long addr, unsigned long len, void *buf, int info[4]);
int asl_net_connect(int fd, const void *addr, unsigned len, int wait, int *started);
int asl_net_connect_flags(int fd, const void *addr, unsigned len, int wait, int flags,
                          int *started);
/* asl_net_connected: the end of a connect asl_net_connect left under way,
 * once the fd is writable: 0, -errno, or 1 still under way (wait again);
 * `addr`/`len`: the address it was started with. */
int asl_net_connected(int fd, int started, const void *addr, unsigned len);
/* The network guard's connect in one C call from the event loop
 * (csrc/netfast.c, asyncsandlock/_netfast.py).  asl_verdicts: a memo of
 * verdicts by (kind 0 tcp / 1 udp / 2 icmp, family + port + address bytes of
 * a sockaddr), filled by the Python guard; get: 1 allowed, 0 denied, -1
 * unknown, -2 not an inet sockaddr.  asl_fast_pump: answers up to `batch`
 * queued notifications of the listener (out[0]: how many); returns 0 none
 * queued, 3 the listener hung up, 1 `buf` holds a notification for Python,
 * 2 a connect under way for Python to wait on (out[1] the socket's copy,
 * out[2] connect's errno), -errno a RECV or SEND failed. */
struct asl_verdicts;
struct asl_fast;
struct asl_verdicts *asl_verdicts_new(void);
void asl_verdicts_free(struct asl_verdicts *v);
void asl_verdicts_clear(struct asl_verdicts *v);
int asl_verdict_get(struct asl_verdicts *v, int kind, const void *raw, unsigned len);
int asl_verdict_put(struct asl_verdicts *v, int kind, const void *raw, unsigned len,
                    int allowed);
struct asl_fast *asl_fast_new(int listener, int connect_nr, struct asl_verdicts *verdicts);
void asl_fast_close(struct asl_fast *f);
void asl_fast_free(struct asl_fast *f);
int asl_fast_pump(struct asl_fast *f, void *buf, int batch, int out[3]);
/* asl_fast_yield: whether asl_fast_pump may hand the CPU to the child after
 * an answer, for its next connect (netfast.c, yield_to_child); on by default. */
void asl_fast_yield(struct asl_fast *f, int on);
/* The supervisor's hot path (csrc/notifstep.c): answer notification `id`
 * of `listener` when `answer` (a SEND; a target gone meanwhile is not an
 * error), then, when `buf` is not NULL, receive the next queued notification
 * into it without blocking.  1 received, 0 none queued (or not asked), 3 the
 * listener hung up, -1 SEND failed, -2 poll or RECV failed (errno set). */
int asl_notif_step(int listener, int answer, uint64_t id, int64_t val, int32_t error,
                   uint32_t flags, void *buf);
/* asl_notif_continue: asl_notif_step answering CONTINUE to the notification
 * in `buf` (its id read from there), then receiving the next into `buf`: the
 * supervisor's most common step, in a call with two arguments instead of
 * seven (cffi converts each). */
int asl_notif_continue(int listener, void *buf);
/* asl_fast_address: the sockaddr of the connect asl_fast_pump left under
 * way, copied into `into` (128 bytes); its length. */
unsigned asl_fast_address(struct asl_fast *f, void *into);
/* asl_landlock_entries (holes.c): a rule with `rights` (`rights &
 * file_rights` on a non-directory) on every entry of the directory open as
 * `dirfd` (read from its start) but symbolic links and the names packed in
 * skip[0..skip_len) (each NUL-terminated); entries gone since listed are
 * passed over.  The number of rules added, or -errno. */
int asl_landlock_entries(int ruleset, int dirfd, const char *skip, size_t skip_len,
                         uint64_t rights, uint64_t file_rights);
/* asl_landlock_add_rules (holes.c): `count` path-beneath rules, packed
 * (12 bytes each), added to `ruleset`; 0, or -errno. */
int asl_landlock_add_rules(int ruleset, const void *packed, size_t count);
/* CDEF-END */

#endif
