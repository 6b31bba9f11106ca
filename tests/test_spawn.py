"""The C spawn and its Python side (``_spawn``): PATH search inside the
sandbox, step reports, fd mapping, the fd bound, a child that dies before it
can report, and the order of the steps (limits after the listener)."""

from __future__ import annotations

import ast
import dataclasses
import errno
import fcntl
import gc
import os
import pathlib
import re
import resource
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from test_unavailable import drive, ran

from asyncsandlock import (
    Handler,
    HandlerCtx,
    NotifAction,
    PolicyError,
    Protection,
    SpawnError,
    Subsystem,
)
from asyncsandlock._core import ffi
from asyncsandlock._plan import probe_plan
from asyncsandlock._spawn import (
    _KEPT_SIZE,
    DEVNULL_FD,
    MAX_FDS,
    STEPS,
    Spawned,
    _strings,
    resolve_executable,
    spawn,
)

from conftest import build_helper, child_pids, system_sandbox

PYTHON_ROOTS = (sys.base_prefix, sys.prefix)
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def freed(no_leaks: None) -> Iterator[None]:
    """``no_leaks`` for a test that makes its own Sandbox: each holds its
    Landlock ruleset fd until it is collected, which this does first."""
    yield
    gc.collect()


def reap(child: Spawned) -> int:
    """Wait for a directly spawned child; its exit status."""
    try:
        info = os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED)
        assert info is not None
        return info.si_status
    finally:
        os.close(child.pidfd)
        if child.listener is not None:
            os.close(child.listener)


def script(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# -- the step enum ----------------------------------------------------------


def test_steps_are_numbered_in_the_order_the_docs_and_the_child_run_them() -> None:
    assert list(STEPS) == list(range(1, len(STEPS) + 1))
    # The C child enters each step in enum order.
    source = (ROOT / "csrc" / "spawn.c").read_text()
    body = source[source.index("static int child_main"):]
    entered = re.findall(r"enter\(req, ASL_STEP_(\w+)\)", body)
    assert [name.lower() for name in entered] == list(STEPS.values())
    # docs/confinement.md's table lists them in that order too.
    docs = (ROOT / "docs" / "confinement.md").read_text()
    docs = docs[docs.index("## 3. The spawn"):docs.index("## 4.")]
    table = re.findall(r"^\| `(\w+)` \|", docs, re.MULTILINE)
    assert table == list(STEPS.values())


# -- resolve_executable: the candidates, in execvp's order ------------------


def test_an_absolute_name_is_its_only_candidate() -> None:
    assert resolve_executable("/bin/sh", {"PATH": "/nonexistent"}, None) == ("/bin/sh",)


def test_a_relative_name_with_a_slash_is_taken_from_cwd(tmp_path: pathlib.Path) -> None:
    prog = script(tmp_path / "sub" / "prog", "")
    assert resolve_executable("sub/prog", {}, str(tmp_path)) == (str(prog),)


def test_path_candidates_keep_path_order_and_drop_missing_names(tmp_path: pathlib.Path) -> None:
    first = script(tmp_path / "a" / "prog", "")
    second = script(tmp_path / "c" / "prog", "")
    second.chmod(0o644)  # not executable here: still a candidate, the child decides
    env = {"PATH": f"{tmp_path}/a:{tmp_path}/b:{tmp_path}/c/:relative"}
    (tmp_path / "relative").mkdir()
    third = script(tmp_path / "relative" / "prog", "")
    assert resolve_executable("prog", env, str(tmp_path)) == (
        str(first), str(second), str(third))


def test_an_empty_path_entry_is_the_cwd(tmp_path: pathlib.Path) -> None:
    prog = script(tmp_path / "prog", "")
    assert resolve_executable("prog", {"PATH": "/nonexistent:"}, str(tmp_path)) == (
        f"{tmp_path}/./prog",)
    assert os.path.samefile(resolve_executable("prog", {"PATH": ":"}, str(tmp_path))[0], prog)


def test_no_candidate_at_all_is_file_not_found_before_any_process() -> None:
    before = child_pids()
    with pytest.raises(FileNotFoundError) as info:
        resolve_executable("no-such-command-here", {"PATH": "/nonexistent:/usr/bin"}, None)
    assert isinstance(info.value, SpawnError) and info.value.step == "execve"
    for name in ("", "/no/such/file", "no/such/file"):
        with pytest.raises(FileNotFoundError):
            resolve_executable(name, {}, None)
    assert child_pids() == before


# -- spawn() directly ---------------------------------------------------------


def read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def test_a_failing_chdir_is_reported_as_its_step(no_leaks: None) -> None:
    with pytest.raises(FileNotFoundError) as info:
        spawn(probe_plan(seccomp=False), path="/bin/true", args=[b"true"], env={},
              cwd="/nonexistent/dir", fds=[], notify=frozenset())
    assert isinstance(info.value, SpawnError)
    assert (info.value.step, info.value.errno) == ("chdir", errno.ENOENT)


def test_a_failing_execve_names_its_step_and_candidate(no_leaks: None) -> None:
    with pytest.raises(PermissionError) as info:
        spawn(probe_plan(seccomp=False), path="/", args=[b"x"], env={}, cwd=None, fds=[],
              notify=frozenset())
    assert isinstance(info.value, SpawnError)
    assert (info.value.step, info.value.filename) == ("execve", "/")


def test_fds_land_in_place_whatever_their_numbers(no_leaks: None) -> None:
    """Sources numbered among the destinations (fd 7 to become fd 3, fd 3 to
    become fd 7, ...) must not overwrite each other."""
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(12)]
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        writers = [w for _, w in pipes]
        nfds = max(writers) + 2
        fds = [devnull] * nfds
        # Each pipe's write end goes to another pipe's write end's number.
        targets = writers[1:] + writers[:1]
        for src, dst in zip(writers, targets, strict=True):
            fds[dst] = src
        code = ("import os, sys\n"
                "for fd in map(int, sys.argv[1:]):\n"
                "    os.write(fd, str(fd).encode())\n")
        child = spawn(probe_plan(seccomp=False), path=sys.executable,
                      args=[b"python", b"-I", b"-S", b"-c", code.encode(),
                            *(str(t).encode() for t in targets)],
                      env={}, cwd=None, fds=fds, notify=frozenset())
        for _, w in pipes:
            os.close(w)
        assert reap(child) == 0
        for (r, _), dst in zip(pipes, targets, strict=True):
            assert read_all(r) == str(dst).encode()
    finally:
        for r, _ in pipes:
            os.close(r)
        os.close(devnull)


def test_devnull_opened_by_the_child_lands_in_its_slots_and_clobbers_none(
        no_leaks: None) -> None:
    """``DEVNULL_FD`` slots get the /dev/null the child opens itself.  It
    opens it at the lowest free fd, here made a destination (a gap among
    ours): moved above them first, it neither lands in a slot nor is
    overwritten by the dup3 into that slot."""
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(8)]
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    gap_r, gap_w = pipes.pop(0)
    gap_read = fcntl.fcntl(gap_r, fcntl.F_DUPFD_CLOEXEC, 512)
    os.close(gap_r)
    try:
        nfds = max(w for _, w in pipes) + 2
        assert gap_r < nfds
        fds = [out_w] * nfds
        fds[0] = fds[nfds - 1] = DEVNULL_FD
        fds[gap_r] = gap_w  # the slot the child's open would otherwise take
        code = ("import os, sys\n"
                "os.write(1, repr([os.readlink(f'/proc/self/fd/{fd}') for fd in "
                "map(int, sys.argv[1:])]).encode())\n"
                "os.write(int(sys.argv[2]), b'gap')\n")
        child = spawn(probe_plan(seccomp=False), path=sys.executable,
                      args=[b"python", b"-I", b"-S", b"-c", code.encode(),
                            b"0", str(gap_r).encode(), str(nfds - 1).encode()],
                      env={}, cwd=None, fds=fds, notify=frozenset())
        os.close(out_w)
        os.close(gap_w)
        out_w = gap_w = -1
        assert reap(child) == 0
        null, gap, last = ast.literal_eval(read_all(out_r).decode())
        assert null == last == "/dev/null"
        assert gap.startswith("pipe:")
        assert read_all(gap_read) == b"gap"
    finally:
        for fd in (out_r, out_w, gap_read, gap_w, *(fd for pair in pipes for fd in pair)):
            if fd >= 0:
                os.close(fd)


@pytest.fixture
def many_fds() -> Iterator[None]:
    """A soft RLIMIT_NOFILE high enough for a child given MAX_FDS fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * MAX_FDS:
        pytest.skip("the hard fd limit is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4 * MAX_FDS, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_our_own_fds_are_moved_above_the_childs(no_leaks: None, many_fds: None) -> None:
    """With the child taking fds 0..MAX_FDS-1, the ruleset and the child's
    end of its channel (both numbered lower) are copied above them: the
    failure report and the listener still reach us."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        plan = probe_plan()
        fds = [devnull] * MAX_FDS
        with pytest.raises(SpawnError) as info:
            spawn(plan, path="/bin/true", args=[b"true"], env={}, cwd="/nonexistent",
                  fds=fds, notify=frozenset({"getppid"}))
        assert info.value.step == "chdir"
        child = spawn(plan, path="/bin/true", args=[b"true"], env={}, cwd=None, fds=fds,
                      notify=frozenset({"getppid"}))
        assert child.listener is not None
        assert reap(child) == 0
    finally:
        os.close(devnull)


def test_more_fds_than_the_bound_is_a_policy_error_before_any_process(no_leaks: None) -> None:
    before = child_pids()
    with pytest.raises(PolicyError) as info:
        spawn(probe_plan(seccomp=False), path="/bin/true", args=[b"true"], env={}, cwd=None,
              fds=[0] * (MAX_FDS + 1), notify=frozenset())
    assert info.value.field == "extra_fds"
    assert child_pids() == before


# -- bug: the fd bound, through run() ----------------------------------------


@pytest.mark.anyio
async def test_extra_fds_beyond_the_bound_fail_early_and_at_the_bound_run(
        anyio_backend: str, freed: None, many_fds: None, tmp_path: pathlib.Path) -> None:
    sb = system_sandbox(fs_readable=PYTHON_ROOTS)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    marker = tmp_path / "ran"
    code = f"import os; os.fstat({MAX_FDS - 1}); open({str(marker)!r}, 'w')"
    try:
        with pytest.raises(PolicyError) as info:
            await sb.run([sys.executable, "-c", code], extra_fds=[devnull] * (MAX_FDS - 2))
        assert info.value.field == "extra_fds" and str(MAX_FDS - 3) in str(info.value)
        assert not marker.exists()
        # Control: at the bound, the child gets its last fd.
        sb = system_sandbox(fs_readable=PYTHON_ROOTS, fs_writable=[tmp_path])
        result = await sb.run([sys.executable, "-c", code],
                              extra_fds=[devnull] * (MAX_FDS - 3), timeout=60)
        assert result.success, result.stderr
        assert marker.exists()
    finally:
        os.close(devnull)


# -- bug: execvp's search, inside the sandbox --------------------------------


@pytest.mark.anyio
async def test_a_path_entry_the_sandbox_cannot_read_is_skipped(
        anyio_backend: str, freed: None, tmp_path: pathlib.Path) -> None:
    script(tmp_path / "unlisted" / "true", "#!/bin/sh\necho unlisted\n")
    env = {"PATH": f"{tmp_path}/unlisted:/usr/bin:/bin"}
    result = await system_sandbox().run(["true"], env=env, timeout=60)
    assert result.success and result.stdout == b"", result
    # Control: where the sandbox can run it, the first candidate wins.
    readable = system_sandbox(fs_readable=[tmp_path / "unlisted"])
    result = await readable.run(["true"], env=env, timeout=60)
    assert result.stdout == b"unlisted\n", result


@pytest.mark.anyio
async def test_a_python3_shim_outside_fs_readable_is_skipped(
        anyio_backend: str, freed: None, tmp_path: pathlib.Path) -> None:
    script(tmp_path / "shims" / "python3", "#!/bin/sh\necho shim\n")
    python_dir = os.path.dirname(sys.executable)
    assert os.path.exists(os.path.join(python_dir, "python3"))
    env = {"PATH": f"{tmp_path}/shims:{python_dir}"}
    args = ["python3", "-c", "print('real')"]
    result = await system_sandbox(fs_readable=PYTHON_ROOTS).run(args, env=env, timeout=60)
    assert result.stdout == b"real\n", result
    # Control: the caller itself would run the shim.
    result = await system_sandbox(fs_readable=[*PYTHON_ROOTS, tmp_path / "shims"]).run(
        args, env=env, timeout=60)
    assert result.stdout == b"shim\n", result


@pytest.mark.anyio
async def test_eacces_only_when_nothing_can_run_and_it_says_why(
        anyio_backend: str, freed: None, tmp_path: pathlib.Path) -> None:
    first = script(tmp_path / "a" / "prog", "#!/bin/sh\necho a\n")
    second = script(tmp_path / "b" / "prog", "#!/bin/sh\necho b\n")
    env = {"PATH": f"{tmp_path}/a:{tmp_path}/b"}
    with pytest.raises(PermissionError) as info:
        await system_sandbox().run(["prog"], env=env, timeout=60)
    assert isinstance(info.value, SpawnError) and info.value.step == "execve"
    assert info.value.filename == str(first)
    message = str(info.value)
    assert f"{first}: EACCES" in message and f"{second}: EACCES" in message
    assert "fs_readable" in message
    # Control: the second one, readable, runs.
    result = await system_sandbox(fs_readable=[tmp_path / "b"]).run(["prog"], env=env,
                                                                      timeout=60)
    assert result.stdout == b"b\n", result


@pytest.mark.anyio
async def test_an_error_other_than_not_found_or_denied_stops_the_search(
        anyio_backend: str, freed: None, tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bin" / "true"
    bad.parent.mkdir()
    bad.write_bytes(b"\x7fELF garbage")
    bad.chmod(0o755)
    sb = system_sandbox(fs_readable=[tmp_path / "bin"])
    with pytest.raises(OSError) as info:
        await sb.run(["true"], env={"PATH": f"{tmp_path}/bin:/usr/bin:/bin"}, timeout=60)
    assert isinstance(info.value, SpawnError)
    assert (info.value.errno, info.value.filename) == (errno.ENOEXEC, str(bad))
    # Control: without it in PATH, true runs.
    result = await sb.run(["true"], env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.success


# -- bug: max_open_files took the supervisor's listener ----------------------


class CountUname(Handler):
    syscalls = ("uname",)

    def __init__(self) -> None:
        self.seen = 0

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        self.seen += 1
        return NotifAction.continue_()


LIMITED = """
import os, resource, sys, time
print(*resource.getrlimit(resource.RLIMIT_NOFILE))
opened = []
try:
    while True:
        opened.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    print(len(opened) < 64, exc.errno)
for fd in opened:
    os.close(fd)
os.uname()
made, refused = 0, 0
for _ in range(5):
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


@pytest.mark.anyio
async def test_max_open_files_below_the_callers_fds_keeps_the_supervisor(
        anyio_backend: str, freed: None) -> None:
    held = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(100)]
    try:
        counter = CountUname()
        sb = system_sandbox(fs_readable=PYTHON_ROOTS, max_open_files=64, max_processes=3,
                            handlers=[counter])
        result = await sb.run([sys.executable, "-c", LIMITED], timeout=60)
    finally:
        for fd in held:
            os.close(fd)
    assert result.protections[Subsystem.SUPERVISOR] is Protection.ACTIVE
    # The limit holds (the child cannot open a 64th fd)...
    lines = (result.stdout or b"").decode().splitlines()
    assert lines[:2] == ["64 64", f"True {errno.EMFILE}"], result
    # ... and so do the handler and max_processes, which need the listener.
    assert counter.seen >= 1
    assert lines[2] == "2 3", result


# -- bug: a child killed before it hands over its listener -------------------


@pytest.fixture(scope="module")
def refuse() -> str:
    return build_helper("refuse")


def died_at_landlock(run: dict[str, Any]) -> None:
    assert run["ok"] is False, run
    assert run["type"] == "SpawnChildProcessError", run
    assert (run["step"], run["errno"]) == ("landlock", errno.ECHILD), run
    assert f"signal {signal.SIGSYS.value}" in run["message"], run


@pytest.mark.parametrize("handler", [True, False], ids=["supervised", "unsupervised"])
def test_a_child_killed_before_exec_is_a_spawn_error_not_a_hang(
        refuse: str, anyio_backend: str, tmp_path: pathlib.Path, handler: bool) -> None:
    rules = ["landlock_restrict_self=KILL"]
    report = drive(refuse, rules, anyio_backend, tmp_path, policy="strict", handler=handler,
                   runs=2)
    for run in report["runs"]:
        died_at_landlock(run)
    assert ran(tmp_path) == 0
    # The same death is no refusal that allow_degraded(LANDLOCK) could waive.
    report = drive(refuse, rules, anyio_backend, tmp_path, policy=["LANDLOCK"],
                   handler=handler)
    died_at_landlock(report["runs"][0])
    assert ran(tmp_path) == 0
    # Control: under a filter that kills for something the child never calls, it runs.
    report = drive(refuse, ["unshare=KILL"], anyio_backend, tmp_path, policy="strict",
                   handler=handler)
    assert report["runs"][0]["ok"] is True, report
    assert ran(tmp_path) == 1


def test_limits_are_set_only_with_a_key_that_is_no_user_address(no_leaks: None) -> None:
    """The keyed prlimit64 passes key[0] as its old-limit pointer: a key that
    could point into our memory is refused, not written through."""
    limits = ((resource.RLIMIT_NOFILE, 64, 64),)
    plan = probe_plan(seccomp=False)
    assert plan.key[0] >> 63 & 1 and plan.key[0] >> 55 & 1
    unsafe = dataclasses.replace(probe_plan(seccomp=False), key=(0x1000, 2, 3),
                                 rlimits=limits)
    with pytest.raises(SpawnError) as info:
        spawn(unsafe, path="/bin/true", args=[b"true"], env={}, cwd=None, fds=[],
              notify=frozenset())
    assert (info.value.step, info.value.errno) == ("rlimit", errno.EINVAL)
    # Control: the plan's own key sets the limit.
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        child = spawn(dataclasses.replace(plan, rlimits=limits),
                      path="/bin/sh",
                      args=[b"sh", b"-c", b"ulimit -n; ulimit -Hn"], env={}, cwd=None,
                      fds=[out_w, out_w, out_w], notify=frozenset())
        os.close(out_w)
        out_w = -1
        assert reap(child) == 0
        assert read_all(out_r) == b"64\n64\n"
    finally:
        os.close(out_r)
        if out_w >= 0:
            os.close(out_w)


class CountPrlimit(CountUname):
    syscalls = ("prlimit64",)


@pytest.mark.anyio
async def test_a_handler_on_prlimit64_neither_blocks_the_childs_own_limits_nor_misses_the_programs(
        anyio_backend: str, freed: None) -> None:
    counter = CountPrlimit()
    sb = system_sandbox(max_open_files=64, handlers=[counter])
    result = await sb.run(["sh", "-c", "ulimit -n"], timeout=30)
    assert result.stdout == b"64\n", result
    # The program's own call (ulimit's getrlimit) reached the handler.
    assert counter.seen >= 1


def test_a_command_line_is_laid_out_once_and_a_long_one_each_time() -> None:
    """The C request points into one buffer per command line: a short one is
    kept and shared by the spawns that repeat it (the child only reads it),
    a long one (``_KEPT_SIZE``) is laid out for its spawn alone, so that a
    program passing megabytes of arguments does not keep 64 copies."""
    def laid_out(args: list[bytes], env: dict[str, str] | None) -> object:
        req = ffi.new("struct asl_spawn_req *")
        line = _strings(req, ("/bin/echo",), args, env, "/")
        assert ffi.string(req.argv[len(args) - 1]) == args[-1]
        assert ffi.string(req.cwd) == b"/"
        if env is not None:
            assert ffi.string(req.envp[0]) == f"A={env['A']}".encode()
        return line

    short = [b"echo", b"hello"]
    assert laid_out(short, {"A": "1"}) is laid_out(list(short), {"A": "1"})
    assert laid_out(short, {"A": "1"}) is not laid_out(short, {"A": "2"})
    long = [b"echo", b"x" * (_KEPT_SIZE + 1)]
    assert laid_out(long, {"A": "1"}) is not laid_out(long, {"A": "1"})


def test_a_long_command_line_reaches_the_child_whole(no_leaks: None) -> None:
    """Past ``_KEPT_SIZE`` the layout is the spawn's own: the child still
    gets every byte of its arguments and environment."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        big = "y" * (3 * _KEPT_SIZE)
        code = ("import os, sys\n"
                "os.write(1, f'{len(sys.argv[1])} {len(os.environ[\"BIG\"])}'.encode())")
        child = spawn(probe_plan(seccomp=False), path=sys.executable,
                      args=[b"python", b"-I", b"-S", b"-c", code.encode(), big.encode()],
                      env={"BIG": big}, cwd=None, fds=[DEVNULL_FD, w, w], notify=frozenset())
        os.close(w)
        w = -1
        assert reap(child) == 0
        assert read_all(r) == f"{len(big)} {len(big)}".encode()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
