"""Escape battery as uid 65534: the caller drops to ``nobody`` in a fresh
interpreter, builds its own world (owned by 65534: files, a victim process,
listeners, IPC objects) and runs these attempts, each confined on both
backends and unconfined as the control; see ``escapes.main``.

Without capabilities on either side, the owner-based checks (renicing,
re-limiting, chmodding one's own files) are all the kernel has, so this is
where a missing argument check shows.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import pytest
import test_escapes_files
import test_escapes_ipc
import test_escapes_kernel
import test_escapes_metadata
import test_escapes_network
import test_escapes_process

from conftest import build_helper
from escapes import BACKENDS, Attempt, check_control, check_held, run_caller

CHOSEN = [
    (test_escapes_files.FILES, [
        "read-unlisted", "write-unlisted", "create-in-world-root", "write-readable",
        "unlink-readable", "symlink-in-work-to-unlisted", "hardlink-unlisted-into-work",
        "inotify-unlisted-dir", "inotify-world-root",
    ]),
    (test_escapes_metadata.METADATA, [
        "chmod-readable", "chmod-unlisted", "fchmod-readable", "chown-readable",
        "utimensat-readable", "setxattr-readable", "removexattr-readable", "posix-acl-readable",
        "chmod-setuid-own", "open-creat-setuid",
    ]),
    (test_escapes_process.PROCESS, [
        "kill-caller", "kill-victim", "pidfd-send-signal-victim", "ptrace-seize-victim",
        "process-vm-readv-victim", "pidfd-getfd-victim",
        "prlimit64-victim", "setpriority-victim", "sched-setaffinity-victim",
        "sched-setscheduler-victim", "sched-setattr-victim", "ioprio-set-victim",
        "move-pages-victim", "clone-parent",
    ]),
    (test_escapes_network.NETWORK, [
        "readme:connect-v4", "readme:fastopen-sendto-v4", "readme:fastopen-sendmsg-v6",
        "readme:fastopen-sendmmsg-v4mapped", "readme:listen-autobind-v4",
        "netother:fastopen-sendto-v4", "unix-pathname-connect",
    ]),
    (test_escapes_ipc.IPC, [
        "shm-read-by-key", "semop-take", "msgrcv-take", "mq-open-create", "mq-unlink",
    ]),
    (test_escapes_kernel.KERNEL, [
        "unshare-user", "clone-newuser", "personality-addr-no-randomize",
        *(["i386-getpid", "i386-chmod-4777"] if platform.machine() == "x86_64" else []),
    ]),
]
NOBODY: list[Attempt] = [a for table, chosen in CHOSEN for a in table if a.id in chosen]


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534")
    return run_caller("battery", build_helper("escape"), "test_escapes_nobody:NOBODY", uid=65534)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a", NOBODY, ids=[a.id for a in NOBODY])
def test_held(outcomes: dict[str, Any], a: Attempt, backend: str) -> None:
    code, damage, stdout = outcomes[a.id][backend]
    check_held(a, code, damage, stdout.encode())


@pytest.mark.parametrize("a", NOBODY, ids=[a.id for a in NOBODY])
def test_control(outcomes: dict[str, Any], a: Attempt) -> None:
    check_control(a, outcomes[a.id]["control"])
