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
    ("env", {"env": {"A": 1}}),
    ("env", {"env": {"A": b"x"}}),
    ("env", {"env": {"A=B": "c"}}),
    ("env", {"env": {"": "x"}}),
    ("env", {"env": {"A": "x\0y"}}),
    ("env", {"env": [("A", "b")]}),
    ("clean_env", {"clean_env": "yes"}),
    ("clean_env", {"clean_env": 1}),
    ("cwd", {"cwd": "/nonexistent/asyncsandlock-path"}),
    ("cwd", {"cwd": "/etc/passwd"}),
    ("cwd", {"cwd": 3}),
    ("net_allow", {"net_allow": "*"}),
    ("net_allow", {"net_allow": ["example.com:80"]}),
    ("net_allow", {"net_allow": ["1.2.3.4:80"]}),
    ("net_allow", {"net_allow": ["[::1]:80"]}),
    ("net_allow", {"net_allow": ["udp://:53"]}),
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
    ("net_allow_bind", {"net_allow_bind": [0]}),
    ("net_allow_bind", {"net_allow_bind": [70000]}),
    ("net_allow_bind", {"net_allow_bind": [-1]}),
    ("net_allow_bind", {"net_allow_bind": ["abc"]}),
    ("net_allow_bind", {"net_allow_bind": [True]}),
    ("net_allow_bind", {"net_allow_bind": [8080.0]}),
    ("max_open_files", {"max_open_files": 0}),
    ("max_open_files", {"max_open_files": -1}),
    ("max_open_files", {"max_open_files": True}),
    ("max_open_files", {"max_open_files": "16"}),
    ("max_open_files", {"max_open_files": 1.5}),
    ("max_open_files", {"max_open_files": 1 << 70}),  # would overflow the rlimit
    ("max_processes", {"max_processes": 0}),
    ("max_processes", {"max_processes": "10"}),
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
    ("on_unavailable", {"on_unavailable": 42}),
    ("name", {"name": 5}),
]


@pytest.mark.parametrize(("field", "kwargs"), BAD_POLICIES,
                         ids=[f"{f}={v[f]!r}" for f, v in BAD_POLICIES])
def test_bad_policy(field: str, kwargs: dict[str, Any], no_spawn: None) -> None:
    with pytest.raises(PolicyError) as info:
        Sandbox(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("kwargs", "shown"), [
    ({"net_allow": ["example.com:80"]}, "example.com:80"),
    ({"net_allow": ["udp://:53"]}, "udp://:53"),
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
    {"net_allow_bind": [8080, "9000-9010", "80,443"]},
    {"max_open_files": 64, "max_processes": 10, "max_memory": "512M"},
    {"max_memory": 1 << 30},
    {"extra_deny_syscalls": ["uname", "getcwd"]},
    {"handlers": [OpenatHandler()]},
    {"env": {"A": "1"}, "clean_env": True, "cwd": "/", "name": "ok"},
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


@pytest.mark.anyio
async def test_handler_on_a_denied_syscall(no_spawn: None) -> None:
    """Registering a handler on a syscall the policy denies is refused (at
    construction or, at the latest, before the first process)."""
    with pytest.raises(PolicyError) as info:
        sb = Sandbox(fs_readable=SYSTEM_READABLE, handlers=[MountHandler()])
        await sb.run(["true"])
    assert info.value.field == "handlers"
    with pytest.raises(PolicyError) as info:
        sb = Sandbox(fs_readable=SYSTEM_READABLE, extra_deny_syscalls=["openat"],
                     handlers=[OpenatHandler()])
        await sb.run(["true"])
    assert info.value.field == "handlers"
