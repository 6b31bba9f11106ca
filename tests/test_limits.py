"""Escape tests for the resource limits: max_processes (supervised), and
that threads are not processes.  max_memory, which was RLIMIT_AS, is a
budget for the whole sandbox now: tests/test_limits_memory.py."""

from __future__ import annotations

import sys

import pytest

from conftest import system_sandbox

pytestmark = pytest.mark.anyio

PYTHON_ROOTS = (sys.base_prefix, sys.prefix)

FORK_BOMB = """
import os, sys, time
made, refused = 0, 0
for _ in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except BlockingIOError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    made += 1
print(made, refused)
"""


async def test_max_processes_stops_a_fork_bomb() -> None:
    sb = system_sandbox(fs_readable=PYTHON_ROOTS, max_processes=5)
    result = await sb.run([sys.executable, "-c", FORK_BOMB, "30"], timeout=60)
    made, refused = map(int, result.stdout.split())
    # The Python process itself is one of the five.
    assert (made, refused) == (4, 26), result.stderr


async def test_without_max_processes_forks_are_not_counted() -> None:
    sb = system_sandbox(fs_readable=PYTHON_ROOTS)
    result = await sb.run([sys.executable, "-c", FORK_BOMB, "10"], timeout=60)
    assert result.stdout.split() == [b"10", b"0"]


async def test_threads_are_not_processes() -> None:
    script = ("import threading\n"
              "ts = [threading.Thread(target=lambda: None) for _ in range(8)]\n"
              "[t.start() for t in ts]; [t.join() for t in ts]; print('threads ok')\n")
    sb = system_sandbox(fs_readable=PYTHON_ROOTS, max_processes=1)
    result = await sb.run([sys.executable, "-c", script], timeout=60)
    assert result.stdout == b"threads ok\n", result.stderr


async def test_a_shell_cannot_exceed_max_processes() -> None:
    """The limit holds for fork() through libc's clone() as well (sh)."""
    sb = system_sandbox(max_processes=3)
    result = await sb.run(["sh", "-c", "sleep 5 & sleep 5 & sleep 5 & echo done"], timeout=60)
    assert result.stdout == b"" and b"Cannot fork" in result.stderr, result
