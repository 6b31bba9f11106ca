"""Bad policies and bad run arguments: a PolicyError naming the field, and
no process started."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

import asyncsandlock._run
from asyncsandlock import (
    PIPE,
    STDOUT,
    SYSTEM_READABLE,
    Handler,
    HandlerCtx,
    NotifAction,
    PolicyError,
    Sandbox,
)
from asyncsandlock._validate import show

from conftest import child_pids


class OpenatHandler(Handler):
    syscalls = ("openat",)

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        return NotifAction.continue_()


class MountHandler(OpenatHandler):
    syscalls = ("mount",)


class NoSyscalls(OpenatHandler):
    syscalls = ()


class UnknownSyscall(OpenatHandler):
    syscalls = ("no_such_call",)


class BytesPath:
    """A PathLike whose __fspath__ gives bytes (os.PathLike[bytes])."""

    def __init__(self, path: bytes) -> None:
        self.path = path

    def __fspath__(self) -> bytes:
        return self.path

    def __repr__(self) -> str:
        return f"BytesPath({self.path!r})"


def _closed_file() -> Any:
    file = open(os.devnull, "rb")  # noqa: SIM115
    file.close()
    return file


CLOSED_FILE = _closed_file()


@pytest.fixture
def no_spawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail if a process is started (or even attempted) during the test."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError("spawn() was called for an invalid request")

    kids = child_pids()
    monkeypatch.setattr(asyncsandlock._run, "spawn", refuse)
    yield
    assert attempts == []
    assert child_pids() == kids


BAD_POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("fs_readable", {"fs_readable": ["/nonexistent/asyncsandlock-path"]}),
    ("fs_readable", {"fs_readable": "/usr"}),
    ("fs_readable", {"fs_readable": pathlib.Path("/usr")}),
    ("fs_readable", {"fs_readable": [42]}),
    ("fs_readable", {"fs_readable": [b"/usr"]}),
    ("fs_readable", {"fs_readable": ["/us\0r"]}),
    ("fs_readable", {"fs_readable": None}),
    ("fs_writable", {"fs_writable": "/tmp"}),
    ("fs_writable", {"fs_writable": ["/nonexistent/asyncsandlock-path"]}),
    # Regression tests for bug 12: "" was the caller's cwd, a bytes PathLike
    # and a lone surrogate failed with bare TypeError / UnicodeEncodeError.
    ("fs_writable", {"fs_writable": [""]}),
    ("fs_readable", {"fs_readable": [""]}),
    ("fs_readable", {"fs_readable": [BytesPath(b"/usr")]}),
    ("fs_readable", {"fs_readable": ["/usr/\ud800"]}),
    ("env", {"env": {"A": 1}}),
    ("env", {"env": {"A": b"x"}}),
    ("env", {"env": {"A=B": "c"}}),
    ("env", {"env": {"": "x"}}),
    ("env", {"env": {"A": "x\0y"}}),
    ("env", {"env": [("A", "b")]}),
    ("env", {"env": {"A": "\ud800"}}),
    ("env", {"env": {"\udfff": "x"}}),
    ("clean_env", {"clean_env": "yes"}),
    ("clean_env", {"clean_env": 1}),
    ("cwd", {"cwd": "/nonexistent/asyncsandlock-path"}),
    ("cwd", {"cwd": "/etc/passwd"}),
    ("cwd", {"cwd": 3}),
    ("cwd", {"cwd": b"/"}),
    ("cwd", {"cwd": BytesPath(b"/")}),
    ("cwd", {"cwd": ""}),
    ("net_allow", {"net_allow": "*"}),
    ("net_allow", {"net_allow": ["example.com"]}),
    ("net_allow", {"net_allow": ["1.2.3.4/8:80"]}),
    ("net_allow", {"net_allow": ["::1:80"]}),
    ("net_allow", {"net_allow": ["icmp://:53"]}),
    ("net_allow", {"net_allow": ["ftp://:21"]}),
    ("net_allow", {"net_allow": [":0"]}),
    ("net_allow", {"net_allow": [":65536"]}),
    ("net_allow", {"net_allow": [":http"]}),
    ("net_allow", {"net_allow": [":90-80"]}),
    ("net_allow", {"net_allow": ["80"]}),
    ("net_allow", {"net_allow": [""]}),
    ("net_allow", {"net_allow": [80]}),
    ("net_allow_bind", {"net_allow_bind": 8080}),
    ("net_allow_bind", {"net_allow_bind": "8080"}),
    ("net_allow_bind", {"net_allow_bind": [-5]}),
    ("net_deny", {"net_deny": ["example.com:80"]}),
    ("net_deny", {"net_deny": ["*"]}),
    ("net_deny", {"net_deny": "10.0.0.0/8"}),
    ("net_deny_bind", {"net_deny_bind": ["x"]}),
    ("net_allow_bind", {"net_allow_bind": [70000]}),
    ("net_allow_bind", {"net_allow_bind": [-1]}),
    ("net_allow_bind", {"net_allow_bind": ["abc"]}),
    ("net_allow_bind", {"net_allow_bind": [True]}),
    ("net_allow_bind", {"net_allow_bind": [8080.0]}),
    ("net_allow_bind", {"net_allow_bind": [10**5000]}),  # str() of it is a ValueError
    ("max_open_files", {"max_open_files": 0}),
    ("max_open_files", {"max_open_files": -1}),
    ("max_open_files", {"max_open_files": True}),
    ("max_open_files", {"max_open_files": "16"}),
    ("max_open_files", {"max_open_files": 1.5}),
    ("max_open_files", {"max_open_files": 1 << 70}),  # would overflow the rlimit
    ("max_processes", {"max_processes": 0}),
    ("max_processes", {"max_processes": "10"}),
    ("max_processes", {"max_processes": 1 << 64}),
    ("max_processes", {"max_processes": -(1 << 64)}),
    ("max_memory", {"max_memory": 0}),
    ("max_memory", {"max_memory": -5}),
    ("max_memory", {"max_memory": "lots"}),
    ("max_memory", {"max_memory": "-1M"}),
    ("max_memory", {"max_memory": "inf"}),
    ("max_memory", {"max_memory": "1e400"}),
    ("max_memory", {"max_memory": 1 << 70}),
    ("max_memory", {"max_memory": "1e30"}),
    ("max_memory", {"max_memory": True}),
    ("max_memory", {"max_memory": [1]}),
    ("extra_deny_syscalls", {"extra_deny_syscalls": ["no_such_call"]}),
    ("extra_deny_syscalls", {"extra_deny_syscalls": "mount"}),
    ("extra_deny_syscalls", {"extra_deny_syscalls": [1]}),
    ("handlers", {"handlers": [object()]}),
    ("handlers", {"handlers": OpenatHandler()}),
    ("handlers", {"handlers": [OpenatHandler]}),
    ("handlers", {"handlers": [NoSyscalls()]}),
    ("handlers", {"handlers": [UnknownSyscall()]}),
    # A handler on a denied syscall fails at construction, not at first run.
    ("handlers", {"handlers": [MountHandler()]}),
    ("handlers", {"extra_deny_syscalls": ["openat"], "handlers": [OpenatHandler()]}),
    ("on_unavailable", {"on_unavailable": 42}),
    # Regression tests for bug 7: name is to become the child's hostname.
    ("name", {"name": 5}),
    ("name", {"name": ""}),
    ("name", {"name": "a\0b"}),
    ("name", {"name": "x" * 65}),
    ("name", {"name": "-x"}),
    ("name", {"name": ".x"}),
    ("name", {"name": "a b"}),
    ("name", {"name": "a/b"}),
    ("name", {"name": "caf\u00e9"}),
    ("name", {"name": "\ud800"}),
]


@pytest.mark.parametrize(("field", "kwargs"), BAD_POLICIES,
                         ids=[f"{f}={show(v[f])}" for f, v in BAD_POLICIES])
def test_bad_policy(field: str, kwargs: dict[str, Any], no_spawn: None) -> None:
    with pytest.raises(PolicyError) as info:
        Sandbox(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("kwargs", "shown"), [
    ({"net_allow": ["example.com"]}, "example.com"),
    ({"net_allow": ["udp://:0"]}, "udp://:0"),
    ({"net_allow_bind": [65536]}, "65536"),
    ({"fs_readable": ["/nonexistent/asyncsandlock-path"]}, "/nonexistent/asyncsandlock-path"),
    ({"extra_deny_syscalls": ["no_such_call"]}, "no_such_call"),
    ({"max_memory": "lots"}, "lots"),
])
def test_policy_error_shows_the_value(kwargs: dict[str, Any], shown: str) -> None:
    with pytest.raises(PolicyError) as info:
        Sandbox(**kwargs)
    assert shown in str(info.value)


@pytest.mark.parametrize("kwargs", [
    {"fs_readable": SYSTEM_READABLE, "fs_writable": [os.getcwd()]},
    {"net_allow": [":80", "tcp://:443", ":8000-8010,9000", "*", "tcp://*", "udp://*"]},
    {"net_allow": ["example.com:80", "1.2.3.4:80", "[::1]:80", "udp://:53", "icmp://*"],
     "net_deny": ["10.0.0.0/8", "[::1]:22"], "net_allow_bind": ["80-90", 0],
     "net_deny_bind": [22]},
    {"net_allow_bind": ["*"]},
    {"net_allow_bind": [8080, "9000-9010", "80,443"]},
    {"max_open_files": 64, "max_processes": 10, "max_memory": "512M"},
    {"max_memory": 1 << 30},
    {"extra_deny_syscalls": ["uname", "getcwd"]},
    {"handlers": [OpenatHandler()]},
    {"env": {"A": "1"}, "clean_env": True, "cwd": "/", "name": "ok"},
    {"name": "x" * 64}, {"name": "0"}, {"name": "build-1.worker_2"},
    {"fs_readable": ["."], "cwd": "."},
    # surrogateescape stands for bytes that are not UTF-8: those are fine.
    {"env": {"A": "\udcff"}},
])
def test_good_policy(kwargs: dict[str, Any]) -> None:
    Sandbox(**kwargs)


def test_policy_is_frozen_and_normalised() -> None:
    sb = Sandbox(fs_readable=["/usr", pathlib.Path("/usr/"), "/etc"], max_memory="1K")
    assert tuple(sb.fs_readable) == ("/usr", "/etc")
    assert sb.max_memory == 1024
    with pytest.raises(AttributeError):
        sb.fs_readable = ("/",)  # type: ignore[misc]


def test_env_is_copied() -> None:
    env = {"A": "1"}
    sb = Sandbox(env=env)
    env["A"] = "changed"
    assert sb.env["A"] == "1"


BAD_RUNS: list[tuple[str, object, dict[str, Any]]] = [
    ("args", "ls", {}),
    ("args", b"ls", {}),
    ("args", [], {}),
    ("args", ["ls", 3], {}),
    ("args", ["a\0b"], {}),
    ("args", None, {}),
    ("timeout", ["true"], {"timeout": 0}),
    ("timeout", ["true"], {"timeout": -1}),
    ("timeout", ["true"], {"timeout": "5"}),
    ("timeout", ["true"], {"timeout": True}),
    ("timeout", ["true"], {"timeout": float("nan")}),
    ("input", ["cat"], {"input": "text"}),
    ("stdin", ["cat"], {"input": b"x", "stdin": PIPE}),
    ("stdin", ["cat"], {"stdin": STDOUT}),
    ("stdin", ["cat"], {"stdin": "file"}),
    ("stdout", ["true"], {"stdout": STDOUT}),
    ("stdout", ["true"], {"stdout": "x"}),
    ("stderr", ["true"], {"stderr": 1.5}),
    ("env", ["true"], {"env": {"A": 1}}),
    ("env", ["true"], {"env": "A=1"}),
    ("cwd", ["true"], {"cwd": "/nonexistent/asyncsandlock-path"}),
    ("handlers", ["true"], {"handlers": [object()]}),
    ("handlers", ["true"], {"handlers": [MountHandler()]}),
    # Regression tests for bug 12.
    ("stdin", ["cat"], {"stdin": 2**31}),  # was OverflowError
    ("stdout", ["true"], {"stdout": 2**64}),
    ("stderr", ["true"], {"stderr": -7}),
    ("stdout", ["true"], {"stdout": CLOSED_FILE}),  # was a bare ValueError
    ("extra_fds", ["true"], {"extra_fds": [2**31]}),
    ("extra_fds", ["true"], {"extra_fds": [-1]}),
    ("timeout", ["true"], {"timeout": 10**400}),  # was ExceptionGroup[OverflowError]
    ("timeout", ["true"], {"timeout": float("inf")}),
    ("timeout", ["true"], {"timeout": float("-inf")}),
    ("args", [BytesPath(b"/bin/true")], {}),  # was a bare TypeError
    ("args", ["true", "\ud800"], {}),  # was UnicodeEncodeError
    ("args", ["\udfff"], {}),
    ("args", ["", "x"], {}),  # found by tests/test_fuzz.py: was a SpawnError
    ("env", ["true"], {"env": {"A": "\ud800"}}),
    ("cwd", ["true"], {"cwd": b"/"}),
    ("cwd", ["true"], {"cwd": BytesPath(b"/")}),  # was ENOENT for "b'/'"
    ("cwd", ["true"], {"cwd": ""}),
]


# open() takes the same arguments but timeout= and input=.
CALLS = [("run", *r) for r in BAD_RUNS] + [
    ("open", *r) for r in BAD_RUNS if not {"timeout", "input"} & r[2].keys()]


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "field", "args", "kwargs"), CALLS,
                         ids=[f"{m}-{f}-{i}" for i, (m, f, _, _) in enumerate(CALLS)])
async def test_bad_run_arguments(method: str, field: str, args: Any, kwargs: dict[str, Any],
                                 no_spawn: None) -> None:
    sb = Sandbox(fs_readable=SYSTEM_READABLE)
    with pytest.raises(PolicyError) as info:
        await getattr(sb, method)(args, **kwargs)
    assert info.value.field == field


def test_handler_on_a_denied_syscall_fails_at_construction(no_spawn: None) -> None:
    """Registering a handler on a syscall the policy denies is refused when
    the Sandbox is made (it used to wait for the first run)."""
    for kwargs in ({"handlers": [MountHandler()]},
                   {"extra_deny_syscalls": ["openat"], "handlers": [OpenatHandler()]}):
        with pytest.raises(PolicyError) as info:
            Sandbox(fs_readable=SYSTEM_READABLE, **kwargs)
        assert info.value.field == "handlers"
        assert "denies outright" in str(info.value)


@pytest.mark.anyio
async def test_a_run_handler_on_a_denied_syscall_fails_before_spawn(no_spawn: None) -> None:
    sb = Sandbox(fs_readable=SYSTEM_READABLE, extra_deny_syscalls=["openat"])
    with pytest.raises(PolicyError) as info:
        await sb.run(["true"], handlers=[OpenatHandler()])
    assert info.value.field == "handlers"


@pytest.mark.anyio
async def test_huge_finite_timeout_runs(anyio_backend: str, no_leaks: None) -> None:
    """Control for the 10**400 case above: a huge timeout that is still a
    float is no timeout in practice, not an error."""
    sb = Sandbox(fs_readable=SYSTEM_READABLE)
    for timeout in (10**300, 1e300):
        result = await sb.run(["true"], timeout=timeout)
        assert result.success


def test_a_stage_handler_on_a_denied_syscall_fails_at_cmd(no_spawn: None) -> None:
    """Not when the pipeline reaches that stage, with earlier stages running."""
    sb = Sandbox(fs_readable=SYSTEM_READABLE, extra_deny_syscalls=["openat"])
    for handler in (MountHandler(), OpenatHandler()):
        with pytest.raises(PolicyError) as info:
            sb.cmd(["cat"], handlers=[handler])
        assert info.value.field == "handlers"
