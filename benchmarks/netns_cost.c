/*
 * Where the cost of network="loopback" goes (docs/network-namespaces.md, "Cost").
 *
 *     cc -O2 -o /tmp/netns_cost benchmarks/netns_cost.c && sudo /tmp/netns_cost [ROUNDS]
 *
 * Each contender spawns /bin/true the way csrc/spawn.c does (clone with
 * CLONE_VM | CLONE_VFORK, the parent back once the child has exec'd) and
 * reaps it; the child first does nothing, unshare(CLONE_NEWNET), the same
 * with lo up, or setns into a namespace made ahead (what a pool would give).
 * Rounds are interleaved.  Printed: medians and 90th percentiles of the
 * spawn (clone until the parent is back), of the child's unshare (wall and
 * CPU), of lo up, and of an unshare on the calling thread, switched back
 * with setns, with the namespaces kept (no teardown meanwhile) or not.
 * Root only (CAP_SYS_ADMIN).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { PLAIN, UNSHARE, UNSHARE_LO, SETNS, CONTENDERS };
static const char *names[CONTENDERS] = {"nothing", "unshare", "unshare + lo up", "setns (pool)"};

static double ms(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, int n, int p)
{
    qsort(v, n, sizeof *v, by_value);
    return v[n * p / 100];
}

static int lo_up(void)
{
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    int rc = ioctl(sock, SIOCGIFFLAGS, &ifr);
    ifr.ifr_flags |= IFF_UP;
    if (rc == 0)
        rc = ioctl(sock, SIOCSIFFLAGS, &ifr);
    close(sock);
    return rc;
}

/* Written by the child, read by the parent: they share memory (CLONE_VM). */
static volatile double unshare_wall, unshare_cpu, lo_wall;
static int contender, pool_fd = -1;
static char stack[64 * 1024];

static int child(void *arg)
{
    (void)arg;
    if (contender == UNSHARE || contender == UNSHARE_LO) {
        double t0 = ms(CLOCK_MONOTONIC), c0 = ms(CLOCK_THREAD_CPUTIME_ID);
        if (unshare(CLONE_NEWNET) < 0)
            _exit(1);
        unshare_wall = ms(CLOCK_MONOTONIC) - t0;
        unshare_cpu = ms(CLOCK_THREAD_CPUTIME_ID) - c0;
        t0 = ms(CLOCK_MONOTONIC);
        if (contender == UNSHARE_LO && lo_up() < 0)
            _exit(2);
        lo_wall = ms(CLOCK_MONOTONIC) - t0;
    } else if (contender == SETNS && setns(pool_fd, CLONE_NEWNET) < 0) {
        _exit(3);
    }
    char *argv[] = {"/bin/true", NULL};
    execve(argv[0], argv, NULL);
    _exit(4);
}

/* A new namespace on the calling thread, and back; its fd if keep. */
static double unshare_here(int home, int keep)
{
    double t0 = ms(CLOCK_MONOTONIC);
    if (unshare(CLONE_NEWNET) < 0) {
        perror("unshare");
        exit(1);
    }
    double took = ms(CLOCK_MONOTONIC) - t0;
    if (keep)
        open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC); /* leaked on purpose */
    setns(home, CLONE_NEWNET);
    return took;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 300;
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    double *spawn[CONTENDERS], *uw = calloc(n, sizeof(double)), *uc = calloc(n, sizeof(double));
    double *lo = calloc(n, sizeof(double)), *kept = calloc(n, sizeof(double));
    double *dropped = calloc(n, sizeof(double));
    for (int c = 0; c < CONTENDERS; c++)
        spawn[c] = calloc(n, sizeof(double));
    for (int i = 0; i < n; i++) {
        /* A fresh pooled namespace per round: used once, as a pool must. */
        unshare(CLONE_NEWNET);
        lo_up();
        pool_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        setns(home, CLONE_NEWNET);
        for (contender = 0; contender < CONTENDERS; contender++) {
            double t0 = ms(CLOCK_MONOTONIC);
            int pid = clone(child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
            spawn[contender][i] = ms(CLOCK_MONOTONIC) - t0;
            int status;
            waitpid(pid, &status, 0);
            if (!WIFEXITED(status) || WEXITSTATUS(status)) {
                fprintf(stderr, "%s: the child failed (%#x)\n", names[contender], status);
                return 1;
            }
        }
        close(pool_fd);
        uw[i] = unshare_wall, uc[i] = unshare_cpu, lo[i] = lo_wall;
        kept[i] = unshare_here(home, 1);
        dropped[i] = unshare_here(home, 0);
    }
    printf("%d rounds; ms, median (90th percentile)\n", n);
    for (int c = 0; c < CONTENDERS; c++)
        printf("spawn, child does %-16s %.3f (%.3f)\n", names[c], pct(spawn[c], n, 50),
               pct(spawn[c], n, 90));
    printf("the child's unshare, wall       %.3f (%.3f)\n", pct(uw, n, 50), pct(uw, n, 90));
    printf("the child's unshare, CPU        %.3f (%.3f)\n", pct(uc, n, 50), pct(uc, n, 90));
    printf("lo up                           %.3f (%.3f)\n", pct(lo, n, 50), pct(lo, n, 90));
    printf("unshare here, namespaces kept   %.3f (%.3f)\n", pct(kept, n, 50), pct(kept, n, 90));
    printf("unshare here, each torn down    %.3f (%.3f)\n", pct(dropped, n, 50),
           pct(dropped, n, 90));
    return 0;
}
