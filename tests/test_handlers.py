"""Syscall handlers seen from a real child: every action, the ctx, the
exception policies, the order of handlers, and the policy checks.

Every async test runs on asyncio and on Trio.  The child is a small C
program (``CHILD_SOURCE``, built once per session) that makes exactly the
trapped calls a test needs and prints what they returned.
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
from collections.abc import Sequence
from typing import ClassVar

import anyio
import anyio.lowlevel
import pytest

from asyncsandlock import (
    ExceptionPolicy,
    ExitReason,
    Handler,
    HandlerCtx,
    NotifAction,
    PolicyError,
    Result,
)
from asyncsandlock._handler import route
from asyncsandlock._kernel._sys import AUDIT_ARCH, SYSCALLS

from conftest import _BUILD, system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

#: The test child.  Output goes through write(2) so nothing sits in a stdio
#: buffer when the child is killed.
CHILD_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *fmt, ...) {
    char buf[4200];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (write(1, buf, (size_t)n) < 0) _exit(99);
}

static long trap(long nr) {
    errno = 0;
    return syscall(nr);
}

static void on_usr1(int sig) { (void)sig; }

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    long n = argc > 2 ? atol(argv[2]) : 1;
    if (!strcmp(mode, "getpid")) {            /* n trapped getpid() */
        long rc = 0;
        for (long i = 0; i < n; i++) rc = trap(SYS_getpid);
        say("getpid %ld\n", rc);
    } else if (!strcmp(mode, "getppid")) {    /* one trapped getppid() */
        long rc = trap(SYS_getppid);
        say("getppid %ld %d\n", rc, errno);
    } else if (!strcmp(mode, "before-after")) {
        say("before\n");
        trap(SYS_getppid);
        say("after\n");
    } else if (!strcmp(mode, "open")) {       /* open argv[2], print fd, flags, data */
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) { say("open -1 %d\n", errno); return 0; }
        char buf[4096];
        ssize_t got = read(fd, buf, sizeof buf - 1);
        buf[got < 0 ? 0 : got] = 0;
        say("open %d cloexec=%d data=%s\n", fd, (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0, buf);
    } else if (!strcmp(mode, "getcwd")) {
        char buf[256];
        memset(buf, 'x', sizeof buf);
        long rc = syscall(SYS_getcwd, buf, sizeof buf);
        buf[255] = 0;
        say("getcwd %ld %s\n", rc, rc > 0 ? buf : "-");
    } else if (!strcmp(mode, "fork-slow")) {  /* child: slow getppid; parent: n getpid */
        pid_t pid = fork();
        if (pid == 0) {
            long rc = trap(SYS_getppid);
            say("slow done %d\n", rc > 0);
            _exit(0);
        }
        long rc = 0;
        for (long i = 0; i < n; i++) rc = trap(SYS_getpid);
        say("fast done %d\n", rc == getpid());
        int status;
        waitpid(pid, &status, 0);
        say("reaped %d\n", status);
    } else if (!strcmp(mode, "signal")) {     /* a signal interrupts a trapped call */
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_usr1;              /* no SA_RESTART: the call fails EINTR */
        sigaction(SIGUSR1, &sa, NULL);
        long rc = trap(SYS_getppid);
        say("getppid %ld %d\n", rc, errno);
        for (long i = 0; i < n; i++) rc = trap(SYS_getpid);
        say("done %d\n", rc == getpid());
    } else {
        say("usage\n");
        return 2;
    }
    return 0;
}
"""


def child_binary() -> str:
    """The test child, compiled once per session (and again if the source changes)."""
    _BUILD.mkdir(parents=True, exist_ok=True)
    _BUILD.chmod(0o755)
    src = _BUILD / "handler_child.c"
    out = _BUILD / "handler_child"
    if not out.exists() or not src.exists() or src.read_text() != CHILD_SOURCE:
        src.write_text(CHILD_SOURCE)
        subprocess.run(["gcc", "-O1", "-o", str(out), str(src)], check=True)
    return str(out)


@pytest.fixture(scope="session")
def child() -> str:
    return child_binary()


async def run_child(child: str, *args: str, handlers: Sequence[Handler] = (),
                    readable: Sequence[str] = (), **policy: object) -> Result:
    sb = system_sandbox(fs_readable=[os.path.dirname(child), *readable],
                        handlers=list(handlers), **policy)
    return await sb.run([child, *args], timeout=60)


def out(result: Result) -> str:
    assert result.stdout is not None
    return result.stdout.decode()


class Const(Handler):
    """Answers every call of ``syscalls`` with ``action``, counting them."""

    syscalls: ClassVar[tuple[str, ...]] = ("getppid",)

    def __init__(self, action: NotifAction, syscalls: tuple[str, ...] = ("getppid",)) -> None:
        self.action = action
        self.syscalls = syscalls  # type: ignore[misc]
        self.calls = 0

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.calls += 1
        return self.action


# -- every action, end to end -------------------------------------------------


async def test_continue_lets_the_call_run(child: str) -> None:
    handler = Const(NotifAction.continue_())
    result = await run_child(child, "getppid", handlers=[handler])
    assert out(result) == f"getppid {os.getpid()} 0\n"
    assert handler.calls == 1


async def test_errno_fails_the_call(child: str) -> None:
    result = await run_child(child, "getppid", handlers=[Const(NotifAction.errno(errno.EPERM))])
    assert out(result) == f"getppid -1 {errno.EPERM}\n"
    assert result.returncode == 0


async def test_return_value_fakes_the_result(child: str) -> None:
    handler = Const(NotifAction.return_value(4242), ("getpid",))
    result = await run_child(child, "getpid", "3", handlers=[handler])
    assert out(result) == "getpid 4242\n"
    assert handler.calls == 3


async def test_kill_stops_the_sandbox_at_the_trapped_call(child: str) -> None:
    result = await run_child(child, "before-after", handlers=[Const(NotifAction.kill())])
    assert out(result) == "before\n"  # "after" would mean the call completed
    assert result.returncode == -9
    assert result.reason is ExitReason.KILLED


class VirtualFile(Handler):
    """Serves openat of ``path`` from a memfd made here (the call never runs)."""

    syscalls = ("openat",)

    def __init__(self, path: bytes, data: bytes, *, cloexec: bool = False,
                 close: bool = True) -> None:
        self.path, self.data, self.cloexec, self.close = path, data, cloexec, close
        self.kept: list[int] = []

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        if await ctx.read_cstr(ctx.args[1]) != self.path:
            return NotifAction.continue_()
        fd = os.memfd_create("virtual", os.MFD_CLOEXEC)
        os.write(fd, self.data)
        os.lseek(fd, 0, os.SEEK_SET)
        if not self.close:
            self.kept.append(fd)
        return NotifAction.inject_fd(fd, cloexec=self.cloexec, close=self.close)


async def test_inject_fd_is_readable_in_the_child(child: str) -> None:
    handler = VirtualFile(b"/virtual/greeting", b"hello from the parent")
    result = await run_child(child, "open", "/virtual/greeting", handlers=[handler])
    fd = int(out(result).split()[1])
    assert fd >= 3
    assert out(result) == f"open {fd} cloexec=0 data=hello from the parent\n"


async def test_inject_fd_cloexec_and_caller_keeps_its_fd(child: str) -> None:
    handler = VirtualFile(b"/virtual/x", b"data", cloexec=True, close=False)
    result = await run_child(child, "open", "/virtual/x", handlers=[handler])
    assert out(result).endswith("cloexec=1 data=data\n")
    (fd,) = handler.kept
    os.fstat(fd)  # still ours, still open
    os.close(fd)


def documented_handler(marker: str) -> type[Handler]:
    """The handler class of the code block after ``<!-- tested: MARKER`` in
    docs/handlers.md, so that the documented example is the tested one."""
    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "handlers.md").read_text()
    block = doc.split(f"<!-- tested: {marker}", 1)[1].split("```python\n", 1)[1]
    namespace: dict[str, object] = {}
    exec(compile(block.split("\n```", 1)[0], "docs/handlers.md", "exec"), namespace)
    found = [v for v in namespace.values()
             if isinstance(v, type) and issubclass(v, Handler) and v is not Handler]
    assert len(found) == 1
    return found[0]


async def test_open_on_behalf_is_toctou_safe(child: str, tmp_path: pathlib.Path) -> None:
    """The worked example of docs/handlers.md: grants through inject_fd,
    everything else left to Landlock."""
    on_behalf = documented_handler("on-behalf-open")
    root, outside, shared = tmp_path / "root", tmp_path / "outside", tmp_path / "shared"
    for directory in (root, outside, shared):
        directory.mkdir()
        directory.chmod(0o755)
    (root / "report.txt").write_text("granted")
    (outside / "other.txt").write_text("leaked")
    (shared / "public.txt").write_text("public")
    # Neither root nor outside is readable by the policy.
    assert out(await run_child(child, "open", str(root / "report.txt"))) == \
        f"open -1 {errno.EACCES}\n"

    async def attempt(path: str, cwd: pathlib.Path | None = None) -> str:
        handler = on_behalf(str(root))  # type: ignore[call-arg]
        return out(await run_child(child, "open", path, handlers=[handler],
                                   readable=[str(shared)],
                                   cwd=str(cwd) if cwd else None))

    assert (await attempt(str(root / "report.txt"))).endswith(" cloexec=0 data=granted\n")
    assert (await attempt("report.txt", cwd=root)).endswith(" data=granted\n")
    assert await attempt(f"{root}/../outside/other.txt") == f"open -1 {errno.EACCES}\n"
    assert (await attempt(str(shared / "public.txt"))).endswith(" data=public\n")


async def test_inject_fd_of_a_closed_fd_fails_the_call(child: str) -> None:
    handler = Const(NotifAction.inject_fd(2**31 - 2), ("getppid",))  # never an open fd
    result = await run_child(child, "getppid", handlers=[handler])
    assert out(result) == f"getppid -1 {errno.EBADF}\n"


# -- the ctx ------------------------------------------------------------------


class Inspect(Handler):
    syscalls = ("getcwd",)

    def __init__(self) -> None:
        self.seen: list[HandlerCtx] = []
        self.fields: dict[str, object] = {}

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.seen.append(ctx)
        self.fields = {"pid": ctx.pid, "syscall": ctx.syscall, "nr": ctx.nr, "arch": ctx.arch,
                       "args": ctx.args, "ip": ctx.instruction_pointer, "valid": ctx.is_valid()}
        before = await ctx.read(ctx.args[0], 4)
        await ctx.write(ctx.args[0], b"/fake\0")
        self.fields["before"] = before
        self.fields["after"] = await ctx.read_cstr(ctx.args[0])
        with pytest.raises(OSError) as info:
            await ctx.read(0, 8)
        self.fields["unmapped"] = info.value.errno
        return NotifAction.return_value(6)


async def test_ctx_fields_and_memory(child: str) -> None:
    handler = Inspect()
    sb = system_sandbox(fs_readable=[os.path.dirname(child)], handlers=[handler])
    async with await sb.open([child, "getcwd"]) as proc:
        assert proc.stdout is not None
        output = b"".join([chunk async for chunk in proc.stdout])
        pid = proc.pid
    assert output == b"getcwd 6 /fake\n"
    fields = handler.fields
    assert fields["pid"] == pid
    assert fields["syscall"] == "getcwd"
    assert fields["nr"] == SYSCALLS["getcwd"]
    assert fields["arch"] == AUDIT_ARCH
    assert fields["args"][1] == 256  # type: ignore[index]
    assert isinstance(fields["ip"], int) and fields["ip"]
    assert fields["valid"] is True
    assert fields["before"] == b"xxxx"
    assert fields["after"] == b"/fake"
    assert fields["unmapped"] == errno.EFAULT


async def test_retained_ctx_fails_safe(child: str) -> None:
    handler = Inspect()
    await run_child(child, "getcwd", handlers=[handler])
    (ctx,) = handler.seen
    assert not ctx.is_valid()
    assert "answered" in repr(ctx)
    with pytest.raises(RuntimeError):
        await ctx.read(ctx.args[0], 1)
    with pytest.raises(RuntimeError):
        await ctx.read_cstr(ctx.args[0])
    with pytest.raises(RuntimeError):
        await ctx.write(ctx.args[0], b"x")


class ReadAfterDeath(Handler):
    """Kills its target, then reads: the ID_VALID check must refuse."""

    syscalls = ("getppid",)
    outcome: BaseException | None = None

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        os.kill(ctx.pid, 9)
        # No await until the read: the run must not end (and cancel us) first.
        while ctx.is_valid():
            os.sched_yield()
        try:
            await ctx.read(ctx.instruction_pointer, 1)
        except ProcessLookupError as exc:
            self.outcome = exc
        return NotifAction.continue_()


async def test_memory_of_a_dead_target_is_refused(child: str) -> None:
    handler = ReadAfterDeath()
    result = await run_child(child, "before-after", handlers=[handler])
    assert isinstance(handler.outcome, ProcessLookupError)
    assert result.returncode == -9
    assert out(result) == "before\n"


def test_ctx_and_actions_have_no_public_constructor() -> None:
    with pytest.raises(TypeError):
        HandlerCtx()
    with pytest.raises(ValueError, match="errno"):
        NotifAction.errno(0)
    with pytest.raises(ValueError, match="return value"):
        NotifAction.return_value(1 << 64)
    with pytest.raises(ValueError, match="inject_fd"):
        NotifAction.inject_fd(-1)


# -- exceptions -----------------------------------------------------------------


class Failing(Handler):
    syscalls = ("getppid",)

    def __init__(self, policy: ExceptionPolicy, returns: object = None,
                 suspend: bool = False) -> None:
        self.on_exception = policy  # type: ignore[misc]
        self.returns, self.suspend = returns, suspend

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        if self.suspend:
            await anyio.lowlevel.checkpoint()
        if self.returns is None:
            raise ValueError("handler bug")
        return self.returns  # type: ignore[return-value]


@pytest.mark.parametrize("suspend", [False, True], ids=["inline", "suspended"])
@pytest.mark.parametrize(("policy", "expected"), [
    (ExceptionPolicy.DENY_EPERM, f"getppid -1 {errno.EPERM}\n"),
    (ExceptionPolicy.DENY_EIO, f"getppid -1 {errno.EIO}\n"),
    (ExceptionPolicy.CONTINUE, f"getppid {os.getpid()} 0\n"),
])
async def test_on_exception_policies(child: str, policy: ExceptionPolicy, expected: str,
                                     suspend: bool) -> None:
    result = await run_child(child, "getppid", handlers=[Failing(policy, suspend=suspend)])
    assert out(result) == expected


@pytest.mark.parametrize("returns", [None, "not an action", 0], ids=["raises", "str", "int"])
async def test_kill_policy_is_the_default(child: str, returns: object) -> None:
    handler = Failing(ExceptionPolicy.KILL, returns=returns)
    assert Handler.on_exception is ExceptionPolicy.KILL
    result = await run_child(child, "before-after", handlers=[handler])
    assert out(result) == "before\n"
    assert result.reason is ExitReason.KILLED


async def test_non_action_return_is_an_exception(child: str) -> None:
    handler = Failing(ExceptionPolicy.DENY_EIO, returns=NotifAction, suspend=True)
    result = await run_child(child, "getppid", handlers=[handler])
    assert out(result) == f"getppid -1 {errno.EIO}\n"


# -- order ----------------------------------------------------------------------


class Recorder(Handler):
    syscalls = ("getppid",)

    def __init__(self, name: str, log: list[str], action: NotifAction,
                 suspend: bool = False) -> None:
        self.name, self.log, self.action, self.suspend = name, log, action, suspend

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        if self.suspend:
            await anyio.lowlevel.checkpoint()
        self.log.append(self.name)
        return self.action


@pytest.mark.parametrize("suspend", [False, True], ids=["inline", "suspended"])
async def test_handlers_run_in_order_and_the_first_answer_decides(child: str,
                                                                  suspend: bool) -> None:
    log: list[str] = []
    handlers = [Recorder("a", log, NotifAction.continue_(), suspend),
                Recorder("b", log, NotifAction.errno(errno.EACCES), suspend),
                Recorder("c", log, NotifAction.errno(errno.EIO))]
    result = await run_child(child, "getppid", handlers=handlers)
    assert out(result) == f"getppid -1 {errno.EACCES}\n"
    assert log == ["a", "b"]


async def test_policy_handlers_come_before_run_handlers(child: str) -> None:
    log: list[str] = []
    sb = system_sandbox(fs_readable=[os.path.dirname(child)],
                        handlers=[Recorder("policy", log, NotifAction.continue_())])
    result = await sb.run([child, "getppid"],
                          handlers=[Recorder("run", log, NotifAction.errno(errno.EPERM))])
    assert result.stdout == f"getppid -1 {errno.EPERM}\n".encode()
    assert log == ["policy", "run"]


async def test_filter_decides_before_handlers(child: str, try_syscall: str) -> None:
    # clone with a namespace flag is refused by the filter: the handler on
    # clone never hears of it.
    handler = Const(NotifAction.continue_(), ("clone",))
    sb = system_sandbox(fs_readable=[os.path.dirname(try_syscall)], handlers=[handler])
    result = await sb.run([try_syscall, "clone-newns"], timeout=60)
    assert result.returncode == errno.EPERM
    assert handler.calls == 0
    result = await sb.run([try_syscall, "fork"], timeout=60)
    assert result.returncode == 0
    assert handler.calls == 1


# -- policy errors, before anything runs ----------------------------------------


class Named(Handler):
    def __init__(self, *names: str) -> None:
        self.syscalls = names  # type: ignore[misc]

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        return NotifAction.continue_()


class NotAsync(Handler):
    syscalls = ("getpid",)

    def handle(self, ctx: HandlerCtx) -> NotifAction:  # type: ignore[override]
        return NotifAction.continue_()


@pytest.mark.parametrize("handlers", [
    [object()],
    Named("getpid"),
    [Named("no_such_syscall")],
    [Named()],
    [NotAsync()],
], ids=["not-a-handler", "not-a-sequence", "unknown-name", "no-names", "not-async"])
def test_bad_handlers_are_refused_by_the_policy(handlers: object) -> None:
    with pytest.raises(PolicyError, match="handlers"):
        system_sandbox(handlers=handlers)


@pytest.mark.parametrize(("names", "policy"), [
    (("mount",), {}),
    (("getppid",), {"extra_deny_syscalls": ["getppid"]}),
    (("clone3",), {}),
], ids=["default-deny", "extra-deny", "filter-answers"])
async def test_handler_on_a_denied_syscall_is_refused_before_spawning(
        child: str, names: tuple[str, ...], policy: dict[str, object]) -> None:
    with pytest.raises(PolicyError, match="denies outright"):
        await run_child(child, "getppid", handlers=[Named(*names)],
                        **policy)  # type: ignore[arg-type]
    sb = system_sandbox(fs_readable=[os.path.dirname(child)], **policy)
    with pytest.raises(PolicyError, match="denies outright"):
        await sb.run([child, "getppid"], handlers=[Named(*names)])


def test_names_are_resolved_for_the_running_arch() -> None:
    table = {"openat": 257, "getpid": 39}
    routes, names = route([Named("open", "openat"), Named("getpid")], table)
    assert set(routes) == {257, 39}
    assert names == {257: "openat", 39: "getpid"}
    with pytest.raises(PolicyError, match="architecture"):
        route([Named("open")], table)
