"""The handler presets next to the profiles: deny/allow by path, audit, log."""

from __future__ import annotations

import pathlib

import pytest

from asyncsandlock import SYSTEM_READABLE, Sandbox
from asyncsandlock.handlers.presets import AllowPaths, AuditPaths, DenyPaths, LogSyscalls

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "f").write_text("secret\n")
    (tmp_path / "secret" / "tool").write_text("#!/bin/sh\necho ran\n")
    (tmp_path / "secret" / "tool").chmod(0o755)
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "f").write_text("ok\n")
    (tmp_path / "link").symlink_to(tmp_path / "secret" / "f")
    return tmp_path


def policy(tree: pathlib.Path, *handlers: object) -> Sandbox:
    return Sandbox(fs_readable=[*SYSTEM_READABLE, tree], cwd=tree,
                   handlers=handlers)  # type: ignore[arg-type]


async def sh(sandbox: Sandbox, script: str) -> tuple[str, str]:
    result = await sandbox.run(["/bin/sh", "-c", script], timeout=30)
    return (result.stdout or b"").decode(), (result.stderr or b"").decode()


async def test_deny_paths_covers_open_stat_exec_and_symlinks(tree: pathlib.Path) -> None:
    denied = policy(tree, DenyPaths([tree / "secret"]))
    attempts = ["cat secret/f", f"cat {tree}/ok/../secret/f", "cat link", "stat secret/f",
                "secret/tool", "test -e secret/f && echo exists"]
    for attempt in attempts:
        out, err = await sh(denied, attempt)
        assert out == "" and ("denied" in err or attempt.startswith("test")), (attempt, err)
    # The control: without the handler every attempt gets through...
    plain = policy(tree)
    for attempt in attempts:
        out, _ = await sh(plain, attempt)
        assert out, attempt
    # ...and with it, a file outside the denied tree still does.
    assert (await sh(denied, "cat ok/f"))[0] == "ok\n"


async def test_allow_paths(tree: pathlib.Path) -> None:
    allowed = policy(tree, AllowPaths([*SYSTEM_READABLE, tree / "ok"]))
    out, err = await sh(allowed, "cat ok/f; cat secret/f")
    assert out == "ok\n" and "denied" in err


async def test_audit_paths_reports_the_real_file(tree: pathlib.Path) -> None:
    seen: list[tuple[str, str]] = []
    audited = policy(tree, AuditPaths(lambda call, path: seen.append((call, path))))
    out, _ = await sh(audited, "cat link")
    assert out == "secret\n"
    assert any(path == str(tree / "secret" / "f") and call.startswith("open")
               for call, path in seen), seen


async def test_log_syscalls(tree: pathlib.Path) -> None:
    seen: list[str] = []
    logged = policy(tree, LogSyscalls(["uname"], lambda call, pid, args: seen.append(call)))
    result = await logged.run(["uname", "-s"], timeout=30)
    assert result.returncode == 0 and "uname" in seen
