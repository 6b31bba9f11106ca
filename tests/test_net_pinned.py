"""Pinned names: a sandbox whose rules name hosts sees a synthetic /etc/hosts
mapping each name to the addresses the rule was checked against (issue 10)."""

from __future__ import annotations

import os
import pathlib

import pytest

from asyncsandlock import SYSTEM_READABLE, Protection, Sandbox, Subsystem
from asyncsandlock._pinned import MARK, hosts_text
from asyncsandlock.handlers.net import net_targets

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0, reason="attaching the hosts file needs CAP_SYS_ADMIN"),
]


def _mounts() -> str:
    return pathlib.Path("/proc/self/mountinfo").read_text()


@pytest.mark.usefixtures("no_leaks")
async def test_a_name_rule_pins_the_checked_addresses() -> None:
    before, host_file = _mounts(), pathlib.Path("/etc/hosts").read_bytes()
    sb = Sandbox(fs_readable=SYSTEM_READABLE, net_allow=["localhost:8080"])
    result = await sb.run(["sh", "-c", "cat /etc/hosts; echo ==; getent ahosts localhost; "
                           "echo x > /etc/hosts"])
    seen, _, resolved = (result.stdout or b"").partition(b"==\n")
    targets = net_targets(sb)
    assert targets is not None
    checked = {str(a) for a in targets.pinned()["localhost"]}
    assert seen.startswith(MARK + b"\n")
    assert {line.split()[0].decode() for line in resolved.splitlines()} == checked
    assert result.returncode != 0  # the child cannot rewrite it
    assert result.protections[Subsystem.PINNED_NAMES] is Protection.ACTIVE
    # Nor uncover the host's file; and a second run gets a mount of its own.
    again = await sb.run(["sh", "-c", "umount /etc/hosts; head -1 /etc/hosts"])
    assert again.stdout == MARK + b"\n"
    # The caller's namespace and file are as they were.
    assert _mounts() == before
    assert pathlib.Path("/etc/hosts").read_bytes() == host_file


@pytest.mark.usefixtures("no_leaks")
async def test_control_without_a_name_the_host_file() -> None:
    sb = Sandbox(fs_readable=SYSTEM_READABLE, net_allow=["127.0.0.1:8080"])
    result = await sb.run(["cat", "/etc/hosts"])
    assert result.stdout == pathlib.Path("/etc/hosts").read_bytes()
    assert result.protections[Subsystem.PINNED_NAMES] is Protection.NOT_REQUESTED


def test_the_host_lines_keep_other_names_only() -> None:
    text = hosts_text({"api.example": ["192.0.2.1", "2001:db8::1"]},
                      b"# c\n10.0.0.1 api.example alias\n10.0.0.2 API.example\n10.0.0.3 other\n")
    assert text.splitlines() == [MARK, b"192.0.2.1 api.example", b"2001:db8::1 api.example",
                                 b"10.0.0.1 alias", b"10.0.0.3 other"]


@pytest.mark.usefixtures("no_leaks")
async def test_one_ruleset_serves_a_few_runs_then_is_built_anew(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run adds the rule on its own hosts file to the Sandbox's pinned
    ruleset; after RUNS_PER_RULESET runs it is built anew, and every run
    reads its own file (a rule on an earlier run's file would not do)."""
    from asyncsandlock import _pinned
    from asyncsandlock._plan import owner_of

    monkeypatch.setattr(_pinned, "RUNS_PER_RULESET", 2)
    sb = Sandbox(fs_readable=SYSTEM_READABLE, net_allow=["localhost:8080"])
    held = []
    for _ in range(3):
        result = await sb.run(["head", "-1", "/etc/hosts"])
        assert result.stdout == MARK + b"\n", result
        held.append(_pinned._held[await owner_of(sb)])
    assert held[0] is held[1] is not held[2]
    # The rule on the run's own file is what lets it read the pinned file:
    # a policy that may not read /etc reads nothing there without a name
    # (the control), and the pinned file with one.
    denied = await Sandbox(fs_readable=["/usr", "/lib", "/lib64", "/bin"],
                           net_allow=["127.0.0.1:8080"]).run(["head", "-1", "/etc/hosts"])
    assert denied.returncode != 0
    pinned = await Sandbox(fs_readable=["/usr", "/lib", "/lib64", "/bin"],
                           net_allow=["localhost:8080"]).run(["head", "-1", "/etc/hosts"])
    assert pinned.stdout == MARK + b"\n", pinned


@pytest.mark.usefixtures("no_leaks")
async def test_names_are_pinned_in_a_workspace_too(tmp_path: pathlib.Path) -> None:
    """With a workdir, the file goes into the workspace's mount namespace
    and its rule into the workspace's ruleset (control: an address rule)."""
    script = ["sh", "-c", "head -1 /etc/hosts > seen"]
    for rule, project in (("localhost:8080", "a"), ("127.0.0.1:8080", "b")):
        (tmp_path / project).mkdir()
        result = await Sandbox(fs_readable=SYSTEM_READABLE, net_allow=[rule],
                               workdir=tmp_path / project).run(script)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "a" / "seen").read_bytes() == MARK + b"\n"
    assert (tmp_path / "b" / "seen").read_bytes() != MARK + b"\n"


@pytest.mark.usefixtures("no_leaks")
async def test_no_run_rewrites_the_sandboxs_file() -> None:
    """One file serves every run of a Sandbox: its mount is read-only, even
    to a root child whose Landlock rules let it write /etc (the attempt is
    made only where /etc/hosts is the pinned file, never the host's)."""
    sb = Sandbox(fs_readable=SYSTEM_READABLE, fs_writable=["/etc"],
                 net_allow=["localhost:8080"])
    attempt = await sb.run(["sh", "-c", f"head -1 /etc/hosts | grep -qxF '{MARK.decode()}' && "
                                        "echo 127.0.0.9 localhost >> /etc/hosts"])
    assert b"Read-only file system" in attempt.stderr, attempt
    again = await sb.run(["cat", "/etc/hosts"])
    assert b"127.0.0.9" not in again.stdout and again.stdout.startswith(MARK)
