"""Shared fixtures: both anyio backends, fd/child/thread leak checks, helpers."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import anyio
import pytest

import asyncsandlock
from asyncsandlock import _linksweep, _netns, _netpool, _reaper
from asyncsandlock._plan import compile_plan

HELPERS = pathlib.Path(__file__).parent / "helpers"
_BUILD = pathlib.Path(os.environ.get("ASYNCSANDLOCK_TEST_BUILD", "/tmp/asyncsandlock-test-build"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _hang_guard() -> Iterator[None]:
    """A per-test timeout: dump every stack and exit rather than hang CI."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def open_fds() -> set[str]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the fd listdir itself used
            out.add(f"{name}->{os.readlink(f'/proc/self/fd/{name}')}")
    return out


def child_pids() -> set[int]:
    """Direct children of this process (zombies included)."""
    me = os.getpid()
    out = set()
    for task in os.listdir(f"/proc/{me}/task"):
        try:
            text = pathlib.Path(f"/proc/{me}/task/{task}/children").read_text()
        except FileNotFoundError:
            continue
        out.update(int(p) for p in text.split())
    return out


def thread_ids() -> set[int]:
    """This process's threads, C-level ones included, but not Trio's I/O thread.

    anyio's pytest runner runs Trio in guest mode, which waits for I/O in a
    worker thread ("Trio thread N") of its own; that one is not ours.
    """
    trio_io = {t.native_id for t in threading.enumerate() if t.name.startswith("Trio thread")}
    return {int(t) for t in os.listdir("/proc/self/task")} - trio_io


def _not_reaper(fds: set[str], kids: set[int]) -> tuple[set[str], set[int]]:
    """Without the reaper's process and fds, which live as long as this process
    (started by the first spawn, replaced when it dies), nor the namespace
    pool's (``_netpool.py``: namespaces made ahead, the maker under way), nor
    the link sweeper's socket (``_linksweep.py``)."""
    pid, held = _reaper.held()
    pool_kids, pool_fds = _netpool.held()
    held |= pool_fds | _linksweep.held() | _netns.held()  # and the uplinks built ahead
    kids = kids - pool_kids
    return ({fd for fd in fds if int(fd.split("->", 1)[0]) not in held},
            kids - {pid} if pid is not None else kids)


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail if the test leaves an fd, a child process or a thread behind."""
    fds, kids, threads = open_fds(), child_pids(), thread_ids()
    yield
    fds_now, kids_now = _not_reaper(open_fds(), child_pids())
    assert fds_now - fds == set(), "leaked fds"
    assert kids_now - kids == set(), "leaked child processes"
    assert thread_ids() - threads == set(), "threads were created"


def build_helper(name: str) -> str:
    """Compile tests/helpers/NAME.c once per session; returns the binary path."""
    _BUILD.mkdir(parents=True, exist_ok=True)
    _BUILD.chmod(0o755)
    src = HELPERS / f"{name}.c"
    out = _BUILD / name
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O1", "-o", str(out), str(src)], check=True)
    return str(out)


@pytest.fixture(scope="session")
def try_syscall() -> str:
    return build_helper("try_syscall")


@pytest.fixture
def sandbox_tmp(tmp_path: pathlib.Path) -> pathlib.Path:
    """A writable scratch directory that a uid-65534 child can use too."""
    tmp_path.chmod(0o777)
    return tmp_path


def past_the_tick() -> None:
    """Let the clock tick of the last change made by a test's setup pass: a
    file changed in the tick a workspace's run starts in is a conflict
    (asyncsandlock/_workspace.py, "Conflicts")."""
    time.sleep(0.02)


def system_sandbox(**kwargs: object) -> asyncsandlock.Sandbox:
    """The system directories readable, plus ``kwargs``."""
    readable = (*asyncsandlock.SYSTEM_READABLE, *kwargs.pop("fs_readable", ()))  # type: ignore[misc]
    return asyncsandlock.Sandbox(fs_readable=readable, **kwargs)  # type: ignore[arg-type]


def warmed(sandbox: asyncsandlock.Sandbox) -> asyncsandlock.Sandbox:
    """``sandbox`` with its Landlock ruleset built now.

    A policy shared by several tests (a module-scoped fixture) holds that fd
    for its lifetime; built here, it is not a leak of the first test using it.
    """
    anyio.run(compile_plan, sandbox)
    return sandbox


PYTHON = sys.executable


@pytest.fixture(params=["overlay", "snapshot"])
def mechanism(request: pytest.FixtureRequest) -> str:
    """Each copy-on-write workspace mechanism in turn (``workdir_mechanism``)."""
    return str(request.param)
