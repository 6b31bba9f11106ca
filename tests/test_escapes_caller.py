"""Escape battery, what the caller has and is: its fds, its environment,
its limits and process group, and its death (issue 8, items 8 and 10).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import pytest

from asyncsandlock import PIPE, SYSTEM_READABLE, Sandbox

import escapes
from conftest import PYTHON, build_helper
from escapes import (
    DENIED,
    NOEFFECT,
    World,
    attempt,
    battery,
    check_held,
    world_fixture,
)

pytestmark = pytest.mark.anyio

CALLER = [
    attempt("setsid", "setsid", held={errno.EPERM}),
    attempt("setpgid-own-group", "setpgid", held={errno.EPERM}),
    attempt("setpgid-join-caller-group", "setpgid", "{callerpgid}", held={errno.EPERM}),
    attempt("raise-rlimit-nofile", "setrlimit", "7", "4096", held=DENIED, policy="limits"),
    # max_memory is a budget watched from outside now, no rlimit; no_coredump
    # is a hard RLIMIT_CORE of 0, which the child must not raise.
    attempt("raise-rlimit-core", "setrlimit", "4", "-1", held=DENIED, policy="limits"),
]


world = world_fixture()


test_held, test_control = battery(CALLER)


# -- fds the caller opened without O_CLOEXEC -----------------------------------

FD_SCAN = attempt("fd-scan", "fd-scan", held={NOEFFECT})


@contextlib.contextmanager
def inheritable_fd(world: World, kind: str) -> Iterator[int]:
    """An fd of the caller's that a fork+exec would pass on."""
    if kind == "file":
        fd = os.open(world.base / "held", os.O_RDONLY)
    elif kind == "directory":
        fd = os.open(world.base / "out", os.O_RDONLY | os.O_DIRECTORY)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        fd = sock.detach()
    os.set_inheritable(fd, True)
    try:
        yield fd
    finally:
        os.close(fd)


FD_KINDS = ["file", "directory", "listening-socket"]


@pytest.mark.parametrize("kind", FD_KINDS)
@pytest.mark.parametrize("policy", ["readme", "limits"])  # "limits" is supervised
async def test_inherited_fd_held(world: World, kind: str, policy: str, no_leaks: None) -> None:
    a = attempt(f"inherited-{kind}-fd", "fd-scan", held={NOEFFECT}, policy=policy)
    with inheritable_fd(world, kind):
        code, stdout, damage = await world.confined(a)
    check_held(a, code, damage, stdout)


@pytest.mark.parametrize("kind", FD_KINDS)
def test_inherited_fd_control(world: World, kind: str) -> None:
    with inheritable_fd(world, kind) as fd:
        done = subprocess.run(world.argv(FD_SCAN), capture_output=True, close_fds=False)
    assert done.returncode == 0 and f"{fd} ".encode() in done.stdout, done


# -- the caller's environment (item 10) ---------------------------------------

SECRET = "asl-escape-secret-token"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SECRET_TOKEN", SECRET)
    return SECRET


def env_sandbox(world: World, **kwargs: object) -> Sandbox:
    return Sandbox(fs_readable=[*SYSTEM_READABLE, world.ctx["helperdir"]], **kwargs)  # type: ignore[arg-type]


async def read_env(world: World, how: str, sb: Sandbox) -> bytes:
    argv = [world.helper, "env", "SECRET_TOKEN"]
    if how == "run":
        return (await sb.run(argv, timeout=30)).stdout or b""
    if how == "run-with-env":
        return (await sb.run(argv, env={"LANG": "C"}, timeout=30)).stdout or b""
    if how == "open":
        async with await sb.open(argv, stdin=None, stdout=PIPE, stderr=None) as proc:
            assert proc.stdout is not None
            out = b"".join([chunk async for chunk in proc.stdout])
            await proc.wait()
            return out
    if how == "pipeline":
        return (await (sb.cmd(["true"]) | sb.cmd(argv)).run(timeout=30)).stdout or b""
    raise AssertionError(how)


ENV_WAYS = ["run", "run-with-env", "open", "pipeline"]


@pytest.mark.parametrize("how", ENV_WAYS)
async def test_secret_env_held(world: World, secret_env: str, how: str) -> None:
    assert secret_env.encode() not in await read_env(world, how, env_sandbox(world))


@pytest.mark.parametrize("how", ENV_WAYS)
async def test_secret_env_control(world: World, secret_env: str, how: str) -> None:
    """With the permission granted (clean_env=False) the same read works."""
    inherit = env_sandbox(world, clean_env=False)
    assert secret_env.encode() in await read_env(world, how, inherit)


# -- the caller's death (item 8) ----------------------------------------------

SIGNALS = (signal.SIGKILL, signal.SIGTERM)
UIDS = (0, 65534)
Case = tuple[str, str, int, int]  # how, backend, signal, uid
CASES: list[Case] = [("confined", backend, sig, uid) for sig in SIGNALS for uid in UIDS
                     for backend in ("asyncio", "trio")]
CASES += [("unconfined", "asyncio", sig, uid) for sig in SIGNALS for uid in UIDS]


@pytest.fixture(scope="module")
def survivors() -> dict[Case, list[int]]:
    """Every case's dying caller (``escapes.py dying``) at once, each killed by its signal; the
    pids of what it started that are still alive 1 s later."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534")
    helper = build_helper("escape")
    with contextlib.ExitStack() as stack:
        callers = {case: stack.enter_context(subprocess.Popen(
            [PYTHON, escapes.__file__, "dying", "--uid", str(case[3]), helper, case[0], case[1]],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)) for case in CASES}
        pidfds: dict[int, tuple[Case, int]] = {}
        try:
            for case, caller in callers.items():
                assert caller.stdout is not None
                line = caller.stdout.readline().split()
                assert len(line) == 2, (case, line)
                pidfds.update({os.pidfd_open(int(pid)): (case, int(pid)) for pid in line})
        finally:
            for case, caller in callers.items():
                caller.send_signal(case[2])
            for caller in callers.values():
                caller.wait()
    deadline = time.monotonic() + 1.0
    alive = set(pidfds)
    while alive and (left := deadline - time.monotonic()) > 0:
        alive -= set(select.select(list(alive), [], [], left)[0])
    out: dict[Case, list[int]] = {case: [] for case in CASES}
    for fd, (case, pid) in pidfds.items():
        if fd in alive:
            out[case].append(pid)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)
    return out


def case_id(case: Case) -> str:
    return f"{signal.Signals(case[2]).name}-uid{case[3]}" + (
        f"-{case[1]}" if case[0] == "confined" else "")


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "confined"], ids=case_id)
def test_nothing_outlives_the_caller(survivors: dict[Case, list[int]], case: Case) -> None:
    """Within 1 s of the caller's death every process it started is gone."""
    assert survivors[case] == []


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "unconfined"], ids=case_id)
def test_nothing_outlives_the_caller_control(survivors: dict[Case, list[int]],
                                            case: Case) -> None:
    """Unconfined, the double-forked grandchild lives on."""
    assert len(survivors[case]) >= 1


assert anyio and sys
