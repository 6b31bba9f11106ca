/*
 * The siblings of an fs_denied hole, granted in one crossing from Python
 * (asyncsandlock/_holes.py, _kernel/_landlock.py).
 *
 * A hole is made by granting every entry of its directory but the one on
 * the way to it; for a snapshot's private directory that directory is the
 * workdir's parent, which may hold thousands of entries, and each run needs
 * a ruleset of its own.  From Python each entry was an os.open of its whole
 * path, an fstat, a landlock_add_rule through cffi's argument conversion and
 * a close: ~30-40 us an entry on a loaded host, 200 entries ~8-16 ms.  Here
 * it is one getdents64 batch and, per entry, an openat of one name relative
 * to the directory (no path walk), fstat, landlock_add_rule, close.
 */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif

struct holes_dirent {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

struct holes_beneath {             /* struct landlock_path_beneath_attr */
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

/* Whether `name` is one of the NUL-terminated names packed in skip[0..len). */
static int holes_skipped(const char *name, const char *skip, size_t len)
{
    size_t at = 0;
    while (at < len) {
        if (strcmp(name, skip + at) == 0)
            return 1;
        at += strlen(skip + at) + 1;
    }
    return 0;
}

int asl_landlock_entries(int ruleset, int dirfd, const char *skip, size_t skip_len,
                         uint64_t rights, uint64_t file_rights)
{
    char buf[16384] __attribute__((aligned(8)));
    int added = 0;
    /* The listing from the start, whoever read dirfd before. */
    if (lseek(dirfd, 0, SEEK_SET) < 0)
        return -errno;
    for (;;) {
        long got = syscall(SYS_getdents64, dirfd, buf, sizeof buf);
        if (got < 0)
            return -errno;
        if (got == 0)
            return added;
        for (long at = 0; at < got;) {
            struct holes_dirent *d = (struct holes_dirent *)(buf + at);
            at += d->d_reclen;
            const char *name = d->d_name;
            if ((name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
                || d->d_type == DT_LNK || holes_skipped(name, skip, skip_len))
                continue;
            /* O_NOFOLLOW with O_PATH opens a link itself (an entry swapped for
             * one since it was listed): seen by fstat below, and given no rule,
             * which would land on the link's target. */
            int target = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
            if (target < 0) {
                if (errno == ENOENT)
                    continue;      /* removed since it was listed: nothing to grant */
                return -errno;
            }
            struct stat st;
            if (fstat(target, &st) < 0) {
                int err = errno;
                close(target);
                return -err;
            }
            if (S_ISLNK(st.st_mode)) {
                close(target);
                continue;
            }
            struct holes_beneath attr = {
                S_ISDIR(st.st_mode) ? rights : (rights & file_rights), target};
            long rc = attr.allowed_access
                ? syscall(SYS_landlock_add_rule, ruleset, 1 /* PATH_BENEATH */, &attr, 0) : 0;
            int err = errno;
            close(target);
            if (rc < 0)
                return -err;
            added++;
        }
    }
}

/* A Recipe's copy (_kernel/_landlock.py, Recipe.build): `count` rules of
 * `packed` (struct landlock_path_beneath_attr each, 12 bytes) added in one
 * crossing; from Python each was a cffi call with its arguments converted,
 * 2-4 us a rule on a loaded host against ~1 us for the system call. */
int asl_landlock_add_rules(int ruleset, const void *packed, size_t count)
{
    const char *at = packed;
    for (size_t i = 0; i < count; i++, at += sizeof(struct holes_beneath))
        if (syscall(SYS_landlock_add_rule, ruleset, 1 /* PATH_BENEATH */, at, 0) < 0)
            return -errno;
    return 0;
}
