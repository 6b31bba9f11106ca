"""Escape battery, IPC without a namespace (issue 8, item 5): SysV shared
memory, semaphores and message queues, and POSIX message queues.

The world holds one of each, created by the caller (a segment holding a
secret, a semaphore at 1, a queue with one message, a POSIX queue with one
message); reading, taking, sending, removing, and creating new objects that
would outlive the run must all fail under the default policy
(``allow_sysv_ipc=False``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from conftest import build_helper
from escapes import DENIED, Attempt, World, assert_control, assert_held, attempt, ids

pytestmark = pytest.mark.anyio

I = "5"  # issue 8, item 5
HELD = {*DENIED, errno.ENOSYS}

IPC = [
    attempt("shm-read-by-key", "shm-read", "{ipckey}", held=HELD, item=I),
    attempt("shmat-by-id", "shmat-id", "{shmid}", held=HELD, item=I),
    attempt("shmctl-stat", "shmctl", "{shmid}", "2", held=HELD, item=I),
    attempt("shmctl-rmid", "shmctl", "{shmid}", "0", held=HELD, item=I),
    attempt("shmget-create", "ipc-create", "shm", held=HELD, item=I),
    attempt("semop-take", "semop", "{semkey}", held=HELD, item=I),
    attempt("semctl-getval", "semctl", "{semid}", "12", held=HELD, item=I),
    attempt("semctl-rmid", "semctl", "{semid}", "0", held=HELD, item=I),
    attempt("semget-create", "ipc-create", "sem", held=HELD, item=I),
    attempt("msgrcv-take", "msgrcv", "{msgkey}", held=HELD, item=I),
    attempt("msgsnd", "msgsnd", "{msgkey}", held=HELD, item=I),
    attempt("msgctl-stat", "msgctl", "{msgid}", "2", held=HELD, item=I),
    attempt("msgctl-rmid", "msgctl", "{msgid}", "0", held=HELD, item=I),
    attempt("msgget-create", "ipc-create", "msg", held=HELD, item=I),
    attempt("mq-open-create", "mq", "create", "{newmq}", held=HELD, item=I),
    attempt("mq-receive-take", "mq", "take", "{mq}", held=HELD, item=I),
    attempt("mq-send", "mq", "send", "{mq}", held=HELD, item=I),
    attempt("mq-unlink", "mq", "unlink", "{mq}", held=HELD, item=I),
]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World.create(build_helper("escape"))
    yield w
    w.close()


@pytest.mark.parametrize("a", IPC, ids=ids(IPC))
async def test_held(world: World, a: Attempt, no_leaks: None) -> None:
    await assert_held(world, a)


@pytest.mark.parametrize("a", IPC, ids=ids(IPC))
def test_control(world: World, a: Attempt) -> None:
    assert_control(world, a)
