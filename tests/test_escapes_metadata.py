"""Escape battery, file metadata (issue 8, item 3).

chmod, chown, utimes and xattrs need no write access to a file, only to own
it, and Landlock does not govern them: for a root caller every root-owned
file under ``fs_readable`` was the child's to chmod 4777.  Required: they
fail on every object outside ``fs_writable``, named by path or by fd, and
setuid/setgid bits can be set nowhere, while builds keep chmodding their own
files.  The policy and world are those of ``test_escapes_files.py``.
"""

from __future__ import annotations

import errno

import pytest

from escapes import (
    DENIED,
    NOEFFECT,
    Attempt,
    World,
    attempt,
    battery,
    ids,
    world_fixture,
)

pytestmark = pytest.mark.anyio

M = "3"  # issue 8, item 3
# The kernel strips a setuid bit it may not set: that is refused too.
STRIPPED = {*DENIED, NOEFFECT}

METADATA = [
    attempt("chmod-4777-root-owned-binary", "chmod", "{ro}/bin", "04777", item=M),
    attempt("chmod-readable", "chmod", "{ro}/file", "0666", item=M),
    attempt("chmod-unlisted", "chmod", "{out}/file", "0666", item=M),
    attempt("chmod-unlisted-dir", "chmod", "{out}", "0777", item=M),
    attempt("chmod-through-symlink", "chmod", "{ro}/link", "0666", item=M),
    attempt("chmod-via-proc-self-fd", "chmod-procfd", "{ro}/file", "0666", item=M),
    attempt("fchmod-readable", "fchmod", "{ro}/file", "0666", item=M),
    attempt("fchmodat-readable", "fchmodat", "{ro}/file", "0666", item=M),
    attempt("fchmodat2-readable", "fchmodat2", "{ro}/file", "0666", item=M),
    attempt("fchmodat2-o-path-fd", "fchmodat2-empty", "{ro}/file", "0666", item=M),
    attempt("chown-readable", "chown", "{ro}/file", item=M),
    attempt("lchown-readable-symlink", "lchown", "{ro}/link", item=M),
    attempt("fchown-readable", "fchown", "{ro}/file", item=M),
    attempt("fchownat-readable", "fchownat", "{ro}/file", item=M),
    attempt("chown-unlisted", "chown", "{out}/file", item=M),
    attempt("utimensat-readable", "utimensat", "{ro}/file", item=M),
    attempt("futimens-readable-fd", "futimens", "{ro}/file", item=M),
    attempt("utimes-readable", "utimes", "{ro}/file", item=M),
    attempt("utime-readable", "utime", "{ro}/file", item=M),
    attempt("futimesat-readable", "futimesat", "{ro}/file", item=M),
    attempt("utimensat-unlisted-dir", "utimensat", "{out}", item=M),
    attempt("setxattr-readable", "setxattr", "{ro}/file", "user.x", "1", item=M),
    attempt("lsetxattr-readable", "lsetxattr", "{ro}/file", "user.x", "1", item=M),
    attempt("fsetxattr-readable", "fsetxattr", "{ro}/file", "user.x", "1", item=M),
    attempt("setxattrat-readable", "setxattrat", "{ro}/file", "user.x", "1", item=M),
    attempt("setxattr-unlisted", "setxattr", "{out}/file", "user.x", "1", item=M),
    attempt("removexattr-readable", "removexattr", "{ro}/file", "user.keep", item=M),
    attempt("lremovexattr-readable", "lremovexattr", "{ro}/file", "user.keep", item=M),
    attempt("fremovexattr-readable", "fremovexattr", "{ro}/file", "user.keep", item=M),
    attempt("removexattrat-readable", "removexattrat", "{ro}/file", "user.keep", item=M),
    attempt("posix-acl-readable", "acl", "{ro}/file", item=M),
    attempt("security-capability-readable", "setcap", "{ro}/bin", item=M),
    attempt("trusted-xattr-readable", "setxattr", "{ro}/file", "trusted.x", "1", item=M),
    # setuid/setgid bits, even on the sandbox's own files
    attempt("chmod-setuid-own", "chmod", "{work}/true", "04755", held=STRIPPED, item=M),
    attempt("chmod-setgid-own", "chmod", "{work}/true", "02755", held=STRIPPED, item=M),
    attempt("fchmod-setuid-own", "fchmod", "{work}/true", "04755", held=STRIPPED, item=M),
    attempt("fchmodat2-setuid-own-fd", "fchmodat2-empty", "{work}/true", "04755",
            held=STRIPPED, item=M),
    attempt("open-creat-setuid", "open-mode", "{work}/s", "04755", held=STRIPPED, item=M),
    attempt("creat-setuid", "creat-mode", "{work}/s", "04755", held=STRIPPED, item=M),
    attempt("open-creat-setgid", "open-mode", "{work}/s", "02755", held=STRIPPED, item=M),
    attempt("mknod-setuid-regular", "mknod", "{work}/s", "0104755", held=STRIPPED, item=M),
    attempt("chown-own-to-another-uid", "chown", "{work}/own", "12345", held={errno.EPERM}),
]

# What builds do in their work directory (tar, pip, git) keeps working.
WORKS = [
    attempt("chmod-own", "chmod", "{work}/own", "0600"),
    attempt("fchmod-own", "fchmod", "{work}/own", "0755"),
    attempt("utimensat-own", "utimensat", "{work}/own"),
    attempt("setxattr-own", "setxattr", "{work}/own", "user.x", "1"),
    attempt("chown-own-to-self", "chown", "{work}/own"),
]


world = world_fixture()


test_held, test_control = battery(METADATA)


@pytest.mark.parametrize("a", WORKS, ids=ids(WORKS))
async def test_own_files_keep_working(world: World, a: Attempt, no_leaks: None) -> None:
    code, stdout, _ = await world.confined(a)
    assert code == 0, (a.id, code, stdout)
