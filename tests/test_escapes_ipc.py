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

import pytest

from escapes import (
    DENIED,
    Attempt,
    World,
    attempt,
    battery,
    ids,
    world_fixture,
)

pytestmark = pytest.mark.anyio

ITEM = "5"  # issue 8, item 5
HELD = {*DENIED, errno.ENOSYS}

IPC = [
    attempt("shm-read-by-key", "shm-read", "{ipckey}", held=HELD, item=ITEM),
    attempt("shmat-by-id", "shmat-id", "{shmid}", held=HELD, item=ITEM),
    attempt("shmctl-stat", "shmctl", "{shmid}", "2", held=HELD, item=ITEM),
    attempt("shmctl-rmid", "shmctl", "{shmid}", "0", held=HELD, item=ITEM),
    attempt("shmget-create", "ipc-create", "shm", held=HELD, item=ITEM),
    attempt("semop-take", "semop", "{semkey}", held=HELD, item=ITEM),
    attempt("semctl-getval", "semctl", "{semid}", "12", held=HELD, item=ITEM),
    attempt("semctl-rmid", "semctl", "{semid}", "0", held=HELD, item=ITEM),
    attempt("semget-create", "ipc-create", "sem", held=HELD, item=ITEM),
    attempt("msgrcv-take", "msgrcv", "{msgkey}", held=HELD, item=ITEM),
    attempt("msgsnd", "msgsnd", "{msgkey}", held=HELD, item=ITEM),
    attempt("msgctl-stat", "msgctl", "{msgid}", "2", held=HELD, item=ITEM),
    attempt("msgctl-rmid", "msgctl", "{msgid}", "0", held=HELD, item=ITEM),
    attempt("msgget-create", "ipc-create", "msg", held=HELD, item=ITEM),
    attempt("mq-open-create", "mq", "create", "{newmq}", held=HELD, item=ITEM),
    attempt("mq-receive-take", "mq", "take", "{mq}", held=HELD, item=ITEM),
    attempt("mq-send", "mq", "send", "{mq}", held=HELD, item=ITEM),
    attempt("mq-unlink", "mq", "unlink", "{mq}", held=HELD, item=ITEM),
]


world = world_fixture()


test_held, test_control = battery(IPC)


# With the permission granted (allow_sysv_ipc=True) the same attempts work.
# (Not mq_open of an existing queue: Landlock refuses to open a file on the
# mqueue mount, which no rule covers, whatever the policy says.)
GRANTED = [attempt(f"granted:{a.id}", *a.args, policy="ipc") for a in IPC
           if a.id in ("shm-read-by-key", "semop-take", "msgrcv-take")]


@pytest.mark.parametrize("a", GRANTED, ids=ids(GRANTED))
async def test_granted(world: World, a: Attempt, no_leaks: None) -> None:
    code, stdout, _ = await world.confined(a)
    assert code == 0, (a.id, code, stdout)
