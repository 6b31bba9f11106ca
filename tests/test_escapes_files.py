"""Escape battery, files: reading and writing outside the policy's trees.

The policy is the README's, ``fs_readable=SYSTEM_READABLE`` and
``fs_writable=[work]``, plus the helper's directory and a read-only tree
``ro`` listed in ``fs_readable``; ``out`` is listed nowhere.  Each attempt
is paired with its control: the same command, unconfined, works.  See
``tests/escapes.py`` for how attempts run and what "held" means.
"""

from __future__ import annotations

import errno
import os

import pytest

from escapes import (
    DENIED,
    NOEFFECT,
    Attempt,
    World,
    accepted_battery,
    attempt,
    battery,
    ids,
    world_fixture,
)

pytestmark = pytest.mark.anyio

EXDEV = {*DENIED, errno.EXDEV}
WATCH = {*DENIED, errno.ENOENT}  # a guard may hide the path altogether

FILES = [
    attempt("read-unlisted", "open", "{out}/file", "r"),
    attempt("list-unlisted", "readdir", "{out}"),
    attempt("write-unlisted", "open", "{out}/file", "w"),
    attempt("create-unlisted", "open", "{out}/new", "c"),
    attempt("tmpfile-unlisted", "open", "{out}", "tmp"),
    attempt("create-in-world-root", "open", "{base}/new", "c"),
    attempt("mkdir-unlisted", "mkdir", "{out}/sub"),
    attempt("write-readable", "open", "{ro}/file", "w"),
    attempt("truncate-readable", "open", "{ro}/file", "t"),
    attempt("create-readable", "open", "{ro}/new", "c"),
    attempt("mkdir-readable", "mkdir", "{ro}/sub"),
    attempt("unlink-readable", "unlink", "{ro}/file"),
    attempt("rename-within-readable", "rename", "{ro}/file", "{ro}/moved"),
    attempt("rename-readable-to-work", "rename", "{ro}/file", "{work}/moved", held=EXDEV),
    attempt("rename-work-over-readable", "rename", "{work}/own", "{ro}/file", held=EXDEV),
    attempt("exchange-work-readable", "exchange", "{work}/own", "{ro}/file", held=EXDEV),
    attempt("legacy-open-unlisted", "open-legacy", "{out}/file", "r"),
    attempt("legacy-open-write-readable", "open-legacy", "{ro}/file", "w"),
    # openat2 is ENOSYS (its mode is out of BPF's sight): callers fall back to openat.
    attempt("openat2-unlisted", "openat2", "{out}/file", "r", held=(*DENIED, errno.ENOSYS)),
    attempt("openat2-write-readable", "openat2", "{ro}/file", "w",
            held=(*DENIED, errno.ENOSYS)),
    attempt("dotdot-from-work", "open", "{work}/../out/file", "r"),
    attempt("openat-dotdot-from-work-fd", "openat-dir", "{work}", "../out/file", "r"),
    attempt("openat-dotdot-from-readable-fd", "openat-dir", "{ro}", "../out/file", "r"),
    attempt("chdir-unlisted-then-relative", "chdir-open", "{out}", "file", "r"),
    attempt("symlink-in-work-to-unlisted", "symlink-open", "{out}/file", "{work}/l", "r"),
    attempt("symlink-in-work-to-readable-write", "symlink-open", "{ro}/file", "{work}/l", "w"),
    attempt("hardlink-unlisted-into-work", "link-open", "{out}/file", "{work}/h", "r", held=EXDEV),
    attempt("hardlink-readable-into-work-write", "link-open", "{ro}/file", "{work}/h", "w",
            held=EXDEV),
    attempt("proc-self-root", "open", "/proc/self/root{out}/file", "r"),
    attempt("proc-caller-root", "open", "/proc/{caller}/root{out}/file", "r"),
    attempt("proc-caller-cwd", "readdir", "/proc/{caller}/cwd/"),
    attempt("reopen-read-fd-for-write", "reopen", "{ro}/file"),
    attempt("name-to-handle-at", "handle", "{ro}/file", held={errno.EPERM}),
    attempt("open-by-handle-at-unlisted", "open-handle", "{work}", "{handle}",
            held={errno.EPERM}),
    attempt("exec-from-writable", "exec", "{work}/true", held={errno.EACCES}),
    attempt("mknod-device-in-work", "mknod", "{work}/null", "020666", "1", "3"),
    attempt("mkfifo-readable", "mknod", "{ro}/fifo", "010644"),
    attempt("list-root-home", "readdir", "/root"),
    attempt("list-sys", "readdir", "/sys/kernel"),
    attempt("write-dev-zero", "open", "/dev/zero", "w"),
    # watching what the caller does outside the policy (issue 8, item 9)
    attempt("inotify-unlisted-dir", "inotify", "{out}", held=WATCH, item="9"),
    attempt("inotify-unlisted-file", "inotify", "{out}/file", held=WATCH, item="9"),
    attempt("inotify-world-root", "inotify", "{base}", held=WATCH, item="9"),
    attempt("inotify-root-home", "inotify", "/root", held=WATCH, item="9"),
]

# What Landlock (up to ABI 7) does not govern, accepted and documented in
# docs/confinement.md ("What the battery accepts").  Each still has its control.
ACCEPTED = [
    (attempt("ldso-runs-writable-file", "ldso", "{ldso}", "{work}/true", held=None),
     "Landlock's execute right is checked by execve only: the dynamic loader "
     "maps a file it opened for reading"),
    (attempt("memfd-exec", "memfd-exec", "/bin/true", held=None),
     "a memfd is on an internal mount that Landlock does not govern"),
    (attempt("stat-unlisted", "stat", "{out}/file", held=None),
     "Landlock has no right for stat(): names, sizes and modes outside the "
     "policy are visible (not contents)"),
]

if os.geteuid() == 0:
    # SYSTEM_READABLE grants the parts of /etc programs need, not shadow.
    FILES.append(attempt("read-etc-shadow-as-root", "open", "/etc/shadow", "r"))


world = world_fixture()


test_held, test_control = battery(FILES)


test_accepted, test_accepted_control = accepted_battery(ACCEPTED)


# The attacks are not refused for being odd: the same calls on the sandbox's
# own tree work confined.
WORKS = [
    attempt("read-readable", "open", "{ro}/file", "r"),
    attempt("write-work", "open", "{work}/own", "w"),
    attempt("create-work", "open", "{work}/new", "c"),
    attempt("symlink-in-work-to-readable", "symlink-open", "{ro}/file", "{work}/l", "r"),
    attempt("dotdot-within-work", "openat-dir", "{work}", "../work/own", "r"),
    attempt("mkfifo-work", "mknod", "{work}/fifo", "010644"),
    attempt("inotify-readable", "inotify", "{ro}"),
    attempt("inotify-work", "inotify", "{work}"),
]


@pytest.mark.parametrize("a", WORKS, ids=ids(WORKS))
async def test_same_calls_work_on_own_files(world: World, a: Attempt, no_leaks: None) -> None:
    code, stdout, _ = await world.confined(a)
    assert code == 0, (a.id, code, stdout)


assert NOEFFECT  # re-exported for tables that accept "no effect"
