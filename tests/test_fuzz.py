"""Fuzzing of ``Sandbox(...)`` and ``run(...)`` with hypothesis.

Every outcome is either success or a :class:`PolicyError` naming a real field
(or a :class:`TypeError` that names one): never another exception, and never
a process.  ``spawn`` is replaced by a stub that does what the real one does
before it clones (encode argv, envp, cwd and the fd map for the C core, which
is where a value that slipped through validation used to blow up) and then
stops the run, so a request that passes validation is known to be one the C
core can take.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncsandlock._run
from asyncsandlock import (
    SYSTEM_READABLE,
    PolicyError,
    Sandbox,
    SpawnError,
    strict,
)
from asyncsandlock._core import ffi
from asyncsandlock._plan import compile_plan
from asyncsandlock._reaper import prepare
from asyncsandlock._spawn import _strings

from conftest import child_pids, open_fds
from test_policy import CLOSED_FILE, BytesPath, MountHandler, OpenatHandler

# Derandomized: the same examples on every run, so CI cannot flake on a new one.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

SANDBOX_FIELDS = frozenset(f.name for f in dataclasses.fields(Sandbox) if f.init)
RUN_FIELDS = frozenset({"args", "input", "stdin", "stdout", "stderr", "timeout", "env", "cwd",
                        "handlers", "extra_fds"})


class UnameHandler(OpenatHandler):
    syscalls = ("uname",)


class StrPath:
    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path


# -- strategies -------------------------------------------------------------

#: Any code point, lone surrogates included (hypothesis leaves them out by default).
TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
PATHS = st.sampled_from(["/usr", "/tmp", "/", ".", "", "/nonexistent/x", "/etc/passwd",
                         "/usr/\0", "/usr/\ud800", "/tmp/\udcff"])
#: An int too long for repr() (and so for a careless error message).
HUGE = st.just(5000).map(lambda digits: 10**digits)
JUNK_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), HUGE,
                        st.just(2**31), st.just(2**64), st.floats(), TEXT, st.binary(max_size=8),
                        st.just(object()))
JUNK = st.one_of(JUNK_SCALAR, st.lists(JUNK_SCALAR, max_size=3),
                 st.dictionaries(TEXT, JUNK_SCALAR, max_size=2))
PATH_ITEM = st.one_of(PATHS, TEXT, PATHS.map(StrPath),
                      PATHS.map(lambda p: BytesPath(p.encode("utf-8", "surrogatepass"))),
                      JUNK_SCALAR)
PATH_LIST = st.one_of(JUNK, st.lists(PATH_ITEM, max_size=3), PATHS)
ENV = st.one_of(JUNK, st.dictionaries(TEXT, TEXT, max_size=3),
                st.dictionaries(JUNK_SCALAR, JUNK_SCALAR, max_size=2))
HANDLERS = st.one_of(JUNK, st.lists(st.one_of(
    st.sampled_from([OpenatHandler(), MountHandler(), UnameHandler()]), JUNK_SCALAR),
    max_size=3))
LIMIT = st.one_of(st.none(), st.integers(), st.integers(min_value=1, max_value=1 << 20),
                  st.just(1 << 63), HUGE, JUNK_SCALAR)

#: Text the kernel can take: no NUL, and no lone surrogate but the
#: surrogateescape ones that stand for undecodable bytes.
GOOD_TEXT = st.text(st.one_of(st.characters(exclude_characters="\0"),
                              st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)),
                    max_size=12)
GOOD_PATHS = st.sampled_from(["/usr", "/tmp", "/", ".", "/usr/"])


def _list_of(item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(JUNK, st.lists(st.one_of(item, JUNK_SCALAR), max_size=3))


#: Per field: (values that are mostly valid, values from anywhere).  An
#: example takes valid values for some fields and a wild one for at most one
#: field, so that a wild value is not hidden behind another field's error.
Fields = Mapping[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]

SANDBOX_KWARGS: Fields = {
    "fs_readable": (st.lists(GOOD_PATHS, max_size=2), PATH_LIST),
    "fs_writable": (st.lists(GOOD_PATHS, max_size=2), PATH_LIST),
    "env": (st.dictionaries(st.sampled_from(["A", "B_1", "LANG"]), GOOD_TEXT, max_size=2), ENV),
    "clean_env": (st.booleans(), JUNK_SCALAR),
    "cwd": (st.one_of(st.none(), GOOD_PATHS), st.one_of(st.none(), PATH_ITEM)),
    "net_allow": (st.lists(st.sampled_from([":80", "tcp://:443", "udp://*", "*", ":1-65535",
                                            "host:80", "10.0.0.0/8:22", "[::1]:53",
                                            "icmp://*"]),
                           max_size=2),
                  _list_of(st.one_of(st.sampled_from([":0", "host", ":65536", "x://:1",
                                                      "::1:80", "[1.2.3.4]:1"]),
                                     TEXT))),
    "net_deny": (st.lists(st.sampled_from(["10.0.0.0/8", "[::1]:22", "udp://1.2.3.4:53"]),
                          max_size=2),
                 _list_of(st.one_of(st.sampled_from(["*", "host:80", "10.0.0.1/8"]), TEXT))),
    "net_deny_bind": (st.lists(st.one_of(st.integers(0, 65535), st.just("*")), max_size=2),
                      _list_of(st.one_of(st.integers(), HUGE, TEXT))),
    "net_allow_bind": (st.lists(st.one_of(st.integers(1, 65535),
                                          st.sampled_from(["8080", "80,443", "9000-9010"])),
                                max_size=2),
                       _list_of(st.one_of(st.integers(), HUGE, TEXT))),
    "unix_allow": (st.lists(GOOD_PATHS, max_size=2), PATH_LIST),
    "allow_unix_sockets": (st.booleans(), JUNK_SCALAR),
    "allow_sysv_ipc": (st.booleans(), JUNK_SCALAR),
    "interactive": (st.booleans(), JUNK_SCALAR),
    "max_open_files": (st.one_of(st.none(), st.integers(1, 1 << 20)), LIMIT),
    "max_processes": (st.one_of(st.none(), st.integers(1, 1 << 20)), LIMIT),
    "max_memory": (st.one_of(st.none(), st.integers(1, 1 << 40),
                             st.sampled_from(["512M", "2G", "1.5K", "64 kib"])),
                   st.one_of(LIMIT, st.sampled_from(["1e400", "inf", "-1K", "nan", "M", ""]))),
    "extra_deny_syscalls": (st.lists(st.sampled_from(["uname", "getcwd", "openat"]), max_size=2),
                            _list_of(st.one_of(st.sampled_from(["mount", "no_such"]), TEXT))),
    "handlers": (st.lists(st.sampled_from([OpenatHandler(), UnameHandler()]), max_size=2),
                 HANDLERS),
    "on_unavailable": (st.just(strict), JUNK_SCALAR),
    # Resource limits (branch limits).
    "max_cpu": (st.one_of(st.none(), st.integers(1, 100), st.floats(0.5, 100)),
                st.one_of(LIMIT, st.floats(), st.sampled_from([0, -1, 10**6]))),
    "cpu_time": (st.one_of(st.none(), st.integers(1, 1 << 20), st.floats(1e-3, 1e6)),
                 st.one_of(LIMIT, st.floats())),
    "cpu_cores": (st.one_of(st.none(), st.lists(st.sampled_from(sorted(os.sched_getaffinity(0))),
                                                min_size=1, max_size=2)),
                  _list_of(st.one_of(st.integers(), HUGE, JUNK_SCALAR))),
    "max_threads": (st.one_of(st.none(), st.integers(1, 1 << 20)), LIMIT),
    "max_output": (st.one_of(st.none(), st.integers(1, 1 << 40), st.sampled_from(["1M", "12K"])),
                   st.one_of(LIMIT, st.sampled_from(["12Q", "-1K", "nan", ""]))),
    "on_output_limit": (st.sampled_from(["truncate", "kill"]), st.one_of(TEXT, JUNK_SCALAR)),
    # Files and identity (branch files).
    "fs_denied": (st.lists(st.sampled_from(["/etc/shadow", "/tmp/x", "/nonexistent"]),
                           max_size=2), PATH_LIST),
    "uid": (st.one_of(st.none(), st.integers(0, 65534)), LIMIT),
    "gid": (st.one_of(st.none(), st.integers(0, 65534)), LIMIT),
    "no_coredump": (st.booleans(), JUNK_SCALAR),
    # Network namespaces (branch netns).
    "network": (st.sampled_from(["host", "loopback", "uplink"]), st.one_of(TEXT, JUNK_SCALAR)),
    "publish": (st.just(()), _list_of(st.one_of(st.integers(), HUGE, TEXT))),
    # Copy-on-write workspaces (branch workdir).
    "workdir": (st.one_of(st.none(), st.just("/tmp")), st.one_of(st.none(), PATH_ITEM)),
    "on_exit": (st.sampled_from(["commit", "abort", "keep"]), st.one_of(TEXT, JUNK_SCALAR)),
    "max_disk": (st.one_of(st.none(), st.sampled_from(["1G", "64M"])),
                 st.one_of(LIMIT, st.sampled_from(["12Q", "-1K", ""]))),
    "workdir_mechanism": (st.sampled_from(["auto", "overlay", "snapshot"]),
                          st.one_of(TEXT, JUNK_SCALAR)),
    # max_memory in a cgroup (branch cgmem).
    "memory_mechanism": (st.sampled_from(["sampled", "cgroup"]), st.one_of(TEXT, JUNK_SCALAR)),
    "name": (st.one_of(st.none(), st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True)),
             st.one_of(TEXT, st.sampled_from(["x" * 65, "-x", ".x", "a b"]), JUNK_SCALAR)),
}
assert set(SANDBOX_KWARGS) == SANDBOX_FIELDS, "fuzz every Sandbox field"

FD = st.one_of(st.integers(min_value=-5, max_value=5), st.just(2**31), st.just(2**64),
               st.just(CLOSED_FILE), JUNK_SCALAR)
GOOD_STDIO = st.sampled_from([subprocess.PIPE, subprocess.DEVNULL, None, 1, 2])
STDIO = st.one_of(st.sampled_from([subprocess.STDOUT, sys.stderr]), FD)
RUN_KWARGS: Fields = {
    # The command line, run()'s positional argument.
    "args": (st.lists(GOOD_TEXT, max_size=3).map(lambda a: ["/bin/true", *a]),
             st.one_of(JUNK, st.lists(st.one_of(TEXT, PATH_ITEM), max_size=3)
                       .map(lambda a: ["/bin/true", *a]))),
    "input": (st.one_of(st.none(), st.binary(max_size=4)), JUNK_SCALAR),
    "stdin": (st.sampled_from([subprocess.DEVNULL, None]), STDIO),
    "stdout": (GOOD_STDIO, STDIO),
    "stderr": (GOOD_STDIO, STDIO),
    "timeout": (st.one_of(st.none(), st.floats(1e-3, 1e300), st.integers(1, 10**300)),
                st.one_of(st.floats(), st.integers(), st.just(10**400), JUNK_SCALAR)),
    "env": (st.one_of(st.none(), st.dictionaries(st.sampled_from(["A", "PATH"]), GOOD_TEXT,
                                                 max_size=2)), ENV),
    "cwd": (st.one_of(st.none(), GOOD_PATHS), PATH_ITEM),
    "handlers": (st.lists(st.sampled_from([OpenatHandler(), UnameHandler()]), max_size=2),
                 HANDLERS),
    "extra_fds": (st.lists(st.sampled_from([0, 1, 2]), max_size=2),
                  st.one_of(st.lists(FD, max_size=3), JUNK_SCALAR)),
}
@st.composite
def _kwargs(draw: st.DrawFn, table: Fields) -> dict[str, Any]:
    """Valid values for some fields, then (most often) one field drawn from anywhere."""
    out = draw(st.fixed_dictionaries({}, optional={k: good for k, (good, _) in table.items()}))
    wild = draw(st.sampled_from([None, *sorted(table)]))
    if wild is not None:
        out[wild] = draw(table[wild][1])
    return out


# -- the property -----------------------------------------------------------

def _names_a_field(exc: BaseException, fields: frozenset[str]) -> bool:
    if isinstance(exc, PolicyError):
        return exc.field in fields and str(exc).startswith(f"{exc.field}:")
    return isinstance(exc, TypeError) and any(name in str(exc) for name in fields)


class Reached(Exception):
    """The stub spawn was called: the request passed validation."""


@pytest.fixture
def stub_spawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Replace spawn() (the refuse-spawn pattern of test_policy.py) with a stub
    that prepares the C request as spawn() does, then stops the run."""
    reached: list[object] = []

    def stub(plan: object, *, path: str, args: Sequence[bytes], env: Mapping[str, str] | None,
             cwd: str | None, fds: Sequence[int], notify: frozenset[str],
             self_trapped: frozenset[str] = frozenset(), netns_fd: int = -1,
             workspace: object = None, hosts: object = None, cgroup_procs: int = -1) -> None:
        req = ffi.new("struct asl_spawn_req *")
        _strings(req, path, args, env, cwd)
        ffi.new("struct asl_fd_map[]", [(src, dst) for dst, src in enumerate(fds)] or 1)
        reached.append(path)
        raise Reached

    kids = child_pids()
    monkeypatch.setattr(asyncsandlock._run, "spawn", stub)
    yield reached
    assert child_pids() == kids, "a process was started"


@FUZZ
@given(kwargs=_kwargs(SANDBOX_KWARGS))
def test_fuzz_sandbox(kwargs: dict[str, Any], stub_spawn: list[object]) -> None:
    try:
        Sandbox(**kwargs)
    except (PolicyError, TypeError) as exc:
        assert _names_a_field(exc, SANDBOX_FIELDS), repr(exc)


@pytest.fixture
def fuzzed_sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(fs_readable=SYSTEM_READABLE)
    anyio.run(compile_plan, sb)  # its ruleset fd is not a leak of the runs below
    prepare()  # nor is the reaper, which the first run would start (its pipe and pidfd)
    yield sb


def _outcome_is_valid(start: Callable[[], Awaitable[object]], backend: str) -> None:
    """Run ``start()`` (which passes fuzzed arguments on) and check the property."""
    fds = open_fds()

    async def main() -> None:
        try:
            await start()
        except Reached:
            pass
        except (PolicyError, TypeError) as exc:
            assert _names_a_field(exc, RUN_FIELDS), repr(exc)
        except SpawnError as exc:
            # A command that is not there (a wild args[0]): found missing
            # before any clone, with FileNotFoundError semantics.
            assert exc.step == "execve" and exc.errno in (errno.ENOENT, errno.EACCES), repr(exc)
        else:
            raise AssertionError("returned without spawning")

    anyio.run(main, backend=backend)
    assert open_fds() - fds == set(), "leaked fds"


@FUZZ
@given(kwargs=_kwargs(RUN_KWARGS))
def test_fuzz_run(kwargs: dict[str, Any], anyio_backend: str,
                  fuzzed_sandbox: Sandbox, stub_spawn: list[object]) -> None:
    args = kwargs.pop("args", ["/bin/true"])
    _outcome_is_valid(lambda: fuzzed_sandbox.run(args, **kwargs), anyio_backend)


def test_fuzz_run_reaches_spawn(anyio_backend: str, fuzzed_sandbox: Sandbox,
                                stub_spawn: list[object]) -> None:
    """Control: a valid request does get to the stub, so the fuzz above can
    tell valid input from invalid (and surrogateescape text is valid)."""
    async def main() -> None:
        with pytest.raises(Reached):
            await fuzzed_sandbox.run(["/bin/true", "\udcff"], env={"A": "\udcfe"},
                                     stdin=subprocess.DEVNULL, timeout=10**300)

    anyio.run(main, backend=anyio_backend)
    assert stub_spawn == [("/bin/true",)]


#: What Sandbox.cmd() takes: run()'s arguments but extra_fds.
STAGE_KWARGS = {k: v for k, v in RUN_KWARGS.items() if k != "extra_fds"}


@FUZZ
@given(kwargs=_kwargs(STAGE_KWARGS))
def test_fuzz_pipeline_stage(kwargs: dict[str, Any], anyio_backend: str,
                             fuzzed_sandbox: Sandbox, stub_spawn: list[object]) -> None:
    """The same arguments through Sandbox.cmd() and a two-stage pipeline."""
    args = kwargs.pop("args", ["/bin/true"])
    timeout = kwargs.pop("timeout", None)

    async def start() -> object:
        stage = fuzzed_sandbox.cmd(args, **kwargs)
        # First: what is checked only at a stage's spawn is checked before
        # the stub stops the pipeline.
        return await (stage | fuzzed_sandbox.cmd(["/bin/cat"])).run(timeout=timeout)

    _outcome_is_valid(start, anyio_backend)
