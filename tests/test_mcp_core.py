"""The MCP server's core without a transport: settings, expiry, limits."""

from __future__ import annotations

import os
import pathlib

import anyio
import pytest

from asyncsandlock import PolicyError
from asyncsandlock.mcp import SandboxServer
from asyncsandlock.mcp._output import Captured, fit, render

pytestmark = pytest.mark.anyio


def test_settings_are_checked_by_name(tmp_path: pathlib.Path) -> None:
    with pytest.raises(PolicyError) as info:
        SandboxServer(max_output=10 * 1024 * 1024)
    assert info.value.field == "mcp.max_output"
    with pytest.raises(PolicyError) as info:
        SandboxServer(max_concurrent=0)
    assert info.value.field == "mcp.max_concurrent"
    profile = tmp_path / "p.toml"
    profile.write_text('extends = "untrusted-python"\n[mcp]\nmax_outptu = 5\n')
    with pytest.raises(PolicyError) as info:
        SandboxServer(str(profile))
    assert info.value.field == "mcp.max_outptu"
    # The control: a known key is taken, and flags override the profile.
    profile.write_text('extends = "untrusted-python"\n[mcp]\nmax_output = 5\n')
    assert SandboxServer(str(profile)).settings.max_output == 5
    assert SandboxServer(str(profile), max_output=7).settings.max_output == 7


def test_fit_bounds_the_encoded_size() -> None:
    text, cut = fit("\x00" * 100_000, 1000)
    assert cut and len(text) * 6 + 2 <= 1000
    assert fit("short", 1000) == ("short", False)
    captured = Captured(cap=4, data=bytearray(b"abcd"), total=10)
    assert render("stdout", captured, 1000).endswith(
        "[... stdout truncated: 10 bytes written, about 4 shown ...]")


async def test_idle_workspaces_expire_and_all_go_at_the_end(tmp_path: pathlib.Path) -> None:
    core = SandboxServer(workspace_root=str(tmp_path), session_ttl=100)
    async with core.running():
        await core.call("a", "write_file", {"path": "f", "content": "x"})
        await core.call("b", "write_file", {"path": "f", "content": "y"})
        paths = {key: ws.path for key, ws in core._workspaces.items()}
        core._workspaces["a"].last_used -= 101  # idle for longer than the TTL
        core._workspaces["b"].last_used -= 99
        await core.expire()
        assert not os.path.exists(paths["a"]) and os.path.exists(paths["b"])
    assert not os.path.exists(paths["b"])
    assert os.listdir(tmp_path) == []


async def test_a_server_runs_again_after_it_ended(tmp_path: pathlib.Path) -> None:
    # Its workspace root went with its first run: the second makes another.
    core = SandboxServer(workspace_root=str(tmp_path))
    for content in ("first", "second"):
        async with core.running():
            await core.call("a", "write_file", {"path": "f", "content": content})
            result = await core.call("a", "read_file", {"path": "f"})
            assert content in str(result)
        assert os.listdir(tmp_path) == []


async def test_per_session_limit_queues_runs(tmp_path: pathlib.Path) -> None:
    core = SandboxServer(workspace_root=str(tmp_path), max_concurrent_per_session=1)
    async with core.running():
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(core.call, "s", "run_shell", {"command": "sleep 0.3"})
        assert anyio.current_time() - start >= 0.55  # one after the other
        # The control: two sessions run side by side.
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for key in ("s", "t"):
                tg.start_soon(core.call, key, "run_shell", {"command": "sleep 0.3"})
        assert anyio.current_time() - start < 0.55


async def test_a_session_ending_mid_call_keeps_its_workspace_until_the_call_ends(
        tmp_path: pathlib.Path) -> None:
    core = SandboxServer(workspace_root=str(tmp_path))
    async with core.running(), anyio.create_task_group() as tg:
        done = anyio.Event()

        async def long_call() -> None:
            text, _, _ = await core.call("s", "run_shell",
                                         {"command": "sleep 0.5; echo still here > f; cat f"})
            assert "still here" in text
            done.set()

        tg.start_soon(long_call)
        while "s" not in core._workspaces or not core._workspaces["s"].active:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        path = core._workspaces["s"].path
        await core.remove_workspace("s")  # the session ends (HTTP DELETE)
        assert os.path.exists(path)
        await done.wait()
    assert not os.path.exists(path)


async def test_refusals_carry_our_message(tmp_path: pathlib.Path) -> None:
    core = SandboxServer(workspace_root=str(tmp_path), python="/no/such/python")
    async with core.running():
        text, info, error = await core.call("s", "execute_python", {"code": "print(1)"})
        assert error and info["type"] == "SpawnError"
        assert text.startswith("SpawnError: execve failed (ENOENT)"), text
        text, info, error = await core.call("s", "run_shell", {"command": "a\x00b"})
        assert error and info["type"] == "PolicyError" and "NUL" in text, text
        # The control: a good command in the same session runs.
        text, info, error = await core.call("s", "run_shell", {"command": "echo ok"})
        assert not error and info["returncode"] == 0


async def test_a_session_less_call_leaves_no_workspace(tmp_path: pathlib.Path,
                                                       no_leaks: None) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    core = SandboxServer(workspace_root=str(tmp_path / "root"))
    async with core.running():
        # Nothing written: the empty workspace goes with an rmdir.
        text, info, error = await core.call(None, "execute_python", {"code": "print(1)"})
        assert not error and info["returncode"] == 0, text
        assert os.listdir(core.root) == []
        # Files, a read-only directory and a link out of the workspace: rm
        # removes them all and follows nothing.
        command = (f"mkdir -p d/e && echo x > d/e/f && chmod 500 d && "
                   f"ln -s {outside} out && ln -s {outside}/keep k")
        text, info, error = await core.call(None, "run_shell", {"command": command})
        assert not error and info["returncode"] == 0, text
        assert os.listdir(core.root) == []
    assert sorted(os.listdir(outside)) == ["keep"]
    # The control: in a session, the same workspace is kept between calls.
    core = SandboxServer(workspace_root=str(tmp_path / "root"))
    async with core.running():
        await core.call("s", "execute_python", {"code": "print(1)"})
        assert len(os.listdir(core.root)) == 1
