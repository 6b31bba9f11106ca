"""``max_threads``: the threads of all the sandbox's processes together,
counted by the supervisor; a thread bomb ends like a fork bomb (EAGAIN)."""

from __future__ import annotations

import sys

import pytest

from asyncsandlock import PolicyError, Sandbox, Subsystem
from asyncsandlock._enforcement import unenforced

from conftest import system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

PYTHON_ROOTS = (sys.base_prefix, sys.prefix)

#: Starts up to argv[1] threads that sleep; prints how many started and how
#: many were refused.
THREAD_BOMB = """
import sys, threading, time
made = refused = 0
for _ in range(int(sys.argv[1])):
    try:
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
    except RuntimeError:
        refused += 1
    else:
        made += 1
print(made, refused, flush=True)
"""

#: The parent holds 5 threads beside its own, then a child tries 10 more.
ACROSS_PROCESSES = """
import os, sys, threading, time
for _ in range(5):
    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
pid = os.fork()
if pid == 0:
    made = 0
    for _ in range(10):
        try:
            threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        except RuntimeError:
            continue
        made += 1
    print(made, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


async def test_a_thread_bomb_is_stopped() -> None:
    sb = system_sandbox(fs_readable=PYTHON_ROOTS, max_threads=20)
    result = await sb.run([sys.executable, "-c", THREAD_BOMB, "200"], timeout=60)
    # The main thread is one of the twenty.
    assert result.stdout.split() == [b"19", b"181"], result.stderr


async def test_without_max_threads_threads_are_not_counted() -> None:
    """Control: the same bomb, smaller, with max_processes only."""
    sb = system_sandbox(fs_readable=PYTHON_ROOTS, max_processes=2)
    result = await sb.run([sys.executable, "-c", THREAD_BOMB, "60"], timeout=60)
    assert result.stdout.split() == [b"60", b"0"], result.stderr


async def test_threads_of_every_process_count_together() -> None:
    sb = system_sandbox(fs_readable=PYTHON_ROOTS, max_threads=10)
    result = await sb.run([sys.executable, "-c", ACROSS_PROCESSES], timeout=60)
    # 6 threads in the parent, 1 in the child: 3 more fit.
    assert result.stdout == b"3\n", result.stderr


async def test_a_process_is_a_thread_too() -> None:
    """Forks are refused once the threads are used up, without max_processes."""
    script = ("import os, threading, time\n"
              "for _ in range(3):\n"
              "    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
              "try:\n"
              "    pid = os.fork()\n"
              "except BlockingIOError:\n"
              "    print('refused')\n"
              "else:\n"
              "    if pid == 0:\n"
              "        os._exit(0)\n"
              "    os.waitpid(pid, 0)\n"
              "    print('forked')\n")
    full = system_sandbox(fs_readable=PYTHON_ROOTS, max_threads=4)
    assert (await full.run([sys.executable, "-c", script], timeout=60)).stdout == b"refused\n"
    roomy = system_sandbox(fs_readable=PYTHON_ROOTS, max_threads=5)
    assert (await roomy.run([sys.executable, "-c", script], timeout=60)).stdout == b"forked\n"


async def test_max_threads_is_the_supervisors() -> None:
    sb = Sandbox(max_threads=3)
    result = await system_sandbox(max_threads=3).run(["true"])
    assert result.success
    assert "max_threads" in unenforced(sb, Subsystem.SUPERVISOR)


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True])
async def test_bad_max_threads_is_a_policy_error(value: object) -> None:
    with pytest.raises(PolicyError, match="max_threads"):
        Sandbox(max_threads=value)  # type: ignore[arg-type]
