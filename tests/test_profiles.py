"""Profiles: TOML policies, ``extends``, sandlock's keys, the CLI."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from asyncsandlock import SYSTEM_READABLE, PolicyError, Sandbox
from asyncsandlock._profiles import (
    SANDLOCK_KEYS,
    builtin_names,
    describe,
    load_profile,
    sandbox_fields,
)

pytestmark = pytest.mark.usefixtures("no_leaks")


def write(tmp_path: pathlib.Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", ["untrusted-python", "shell", "build"])
def test_builtins_load_and_are_safe_by_default(name: str) -> None:
    assert name in builtin_names()
    profile = load_profile(name)
    sandbox = profile.sandbox()
    assert sandbox.clean_env is True
    assert sandbox.net_allow == () and sandbox.fs_writable == ()
    assert sandbox.max_processes and sandbox.max_memory and profile.timeout
    assert set(SYSTEM_READABLE) <= set(map(str, sandbox.fs_readable))
    assert "/etc/shadow" not in sandbox.fs_readable


def test_extends_overrides_and_from_profile() -> None:
    assert load_profile("shell").fields["max_processes"] == 64
    assert load_profile("build").fields["max_processes"] == 512
    assert load_profile("build").mcp == load_profile("untrusted-python").mcp
    sandbox = Sandbox.from_profile("shell", max_processes=3, env={"A": "b"})
    assert sandbox.max_processes == 3 and dict(sandbox.env) == {"A": "b"}


def test_unknown_key_is_a_policy_error_naming_it(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "p.toml", 'fs_readable = ["/usr"]\nmax_procs = 3\n')
    with pytest.raises(PolicyError) as info:
        load_profile(path)
    assert info.value.field == "max_procs"
    with pytest.raises(PolicyError) as info:
        Sandbox.from_profile("shell", nope=1)
    assert info.value.field == "nope"


def test_bad_value_is_the_policys_own_error(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "p.toml", 'max_memory = "lots"\n')
    with pytest.raises(PolicyError) as info:
        load_profile(path)
    assert info.value.field == "max_memory"
    with pytest.raises(PolicyError, match="max_processes"):
        load_profile(write(tmp_path, "q.toml", "max_processes = -1\n"))


def test_keys_follow_the_dataclass() -> None:
    """A field added to Sandbox is a profile key with no change to the loader."""
    import dataclasses

    assert sandbox_fields() == {f.name for f in dataclasses.fields(Sandbox)}


def test_extends_relative_path_and_cycles(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "base.toml", 'extends = "shell"\nmax_open_files = 99\ntimeout = 5\n')
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\nmax_processes = 7\n')
    profile = load_profile(child)
    assert profile.fields["max_open_files"] == 99 and profile.fields["max_processes"] == 7
    assert profile.timeout == 5
    write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(PolicyError, match="cycle") as info:
        load_profile(str(tmp_path / "a.toml"))
    assert info.value.field == "extends"


def test_sandlock_sections_map_to_our_fields(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "sl.toml", """
[filesystem]
read = ["/usr", "/etc/hosts"]
write = ["/tmp"]
[network]
allow = [":443"]
[limits]
memory = "512M"
processes = 10
open_files = 64
[program]
clean_env = true
env = { LANG = "C" }
""")
    sandbox = load_profile(path).sandbox()
    assert list(map(str, sandbox.fs_readable)) == ["/usr", "/etc/hosts"]
    assert list(map(str, sandbox.fs_writable)) == ["/tmp"]
    assert sandbox.net_allow == (":443",)
    assert (sandbox.max_memory, sandbox.max_processes, sandbox.max_open_files) == (
        512 * 1024 * 1024, 10, 64)
    assert dict(sandbox.env) == {"LANG": "C"}


def test_sandlock_key_without_a_field_here_is_named(tmp_path: pathlib.Path) -> None:
    missing = [(s, k) for (s, k), f in SANDLOCK_KEYS.items() if f not in sandbox_fields()]
    section, key = missing[0] if missing else ("filesystem", "chroot")
    path = write(tmp_path, "sl.toml", f'[{section}]\n{key} = 1\n')
    with pytest.raises(PolicyError) as info:
        load_profile(path)
    assert info.value.field == f"{section}.{key}"


def test_handlers_and_on_unavailable(tmp_path: pathlib.Path) -> None:
    with pytest.raises(PolicyError, match="in code") as info:
        load_profile(write(tmp_path, "h.toml", "handlers = []\n"))
    assert info.value.field == "handlers"
    profile = load_profile(write(tmp_path, "u.toml", 'on_unavailable = ["supervisor"]\n'))
    assert "SUPERVISOR" in profile.fields["on_unavailable"].__name__
    with pytest.raises(PolicyError) as info:
        load_profile(write(tmp_path, "v.toml", 'on_unavailable = ["warp-drive"]\n'))
    assert info.value.field == "on_unavailable"


def test_unknown_builtin_lists_the_builtins() -> None:
    with pytest.raises(PolicyError, match="untrusted-python"):
        load_profile("no-such-profile")


def test_describe_shows_every_field() -> None:
    text = describe(load_profile("shell"))
    for name in sandbox_fields():
        assert f"\n{name} = " in text
    assert "timeout = 60.0" in text and "mcp.max_output" in text


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "asyncsandlock", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_profile_show_and_list() -> None:
    proc = cli("profile", "show", "build")
    assert proc.returncode == 0 and "max_processes = 512" in proc.stdout
    assert "untrusted-python" in cli("profile", "list").stdout
    proc = cli("profile", "show", "nope")
    assert proc.returncode == 2 and "no built-in profile" in proc.stderr


def test_cli_run_profile_confines_and_flags_override(tmp_path: pathlib.Path) -> None:
    # The escape: the profile's policy refuses /etc/shadow and writes.
    proc = cli("run", "--profile", "shell", "--", "sh", "-c",
               f"cat /etc/shadow; echo x > {tmp_path}/f")
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
    assert not (tmp_path / "f").exists()
    # The control: a flag widens the profile, and the same write succeeds.
    proc = cli("run", "--profile", "shell", "-w", str(tmp_path), "--", "sh", "-c",
               f"echo x > {tmp_path}/f")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "f").read_text() == "x\n"
    # The profile's timeout applies unless -t is given.
    proc = cli("run", "--profile", write(tmp_path, "t.toml", 'extends = "shell"\ntimeout = 0.3\n'),
               "--", "sleep", "30")
    assert proc.returncode == 128 + 9 and "timed out after 0.3 s" in proc.stderr


@pytest.mark.anyio
async def test_from_profile_runs_confined() -> None:
    sandbox = Sandbox.from_profile("untrusted-python")
    result = await sandbox.run([sys.executable, "-I", "-c",
                                "print(6*7); open('/etc/shadow').read()"], timeout=30)
    assert result.stdout == b"42\n" and b"PermissionError" in (result.stderr or b"")
    granted = Sandbox.from_profile("untrusted-python",
                                   fs_readable=[*sandbox.fs_readable, "/etc/shadow"])
    result = await granted.run([sys.executable, "-I", "-c", "open('/etc/shadow').read()"],
                               timeout=30)
    assert result.returncode == 0, result.stderr
