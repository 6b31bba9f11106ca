"""Escape tests for hardening beyond the Landlock rules: capabilities of a root
child, pathname unix sockets, and the process-group containment."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from asyncsandlock import Sandbox

from conftest import system_sandbox

pytestmark = pytest.mark.anyio

PYTHON_ROOTS = (sys.base_prefix, sys.prefix)


def _cap_masks(text: str) -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1], 16)
            for line in text.splitlines() if line.startswith("Cap")}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root caller")
async def test_root_child_has_no_capabilities() -> None:
    """Regression test for a root child keeping CAP_SYS_ADMIN & co."""
    result = await system_sandbox(fs_readable=["/proc"]).run(["cat", "/proc/self/status"])
    caps = _cap_masks(result.stdout.decode())
    assert (caps["CapInh"], caps["CapPrm"], caps["CapEff"], caps["CapAmb"]) == (0, 0, 0, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root caller")
async def test_setuid_root_binary_gains_nothing(sandbox_tmp: object) -> None:
    """The bounding set is kept (see drop_capabilities in csrc/spawn.c):
    no_new_privs must still stop a setuid-root binary from regaining any
    capability or euid."""
    import shutil

    binary = os.path.join(str(sandbox_tmp), "grep-suid")
    shutil.copy("/bin/grep", binary)
    os.chmod(binary, 0o4755)
    sb = system_sandbox(fs_readable=["/proc", str(sandbox_tmp)])
    result = await sb.run([binary, "-E", "^(Cap(Prm|Eff)|Uid):", "/proc/self/status"])
    caps = _cap_masks(result.stdout.decode())
    assert caps == {"CapPrm": 0, "CapEff": 0}, result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root caller")
async def test_low_bind_port_keeps_only_net_bind_service() -> None:
    result = await system_sandbox(fs_readable=["/proc"], net_allow_bind=[80]).run(
        ["cat", "/proc/self/status"])
    caps = _cap_masks(result.stdout.decode())
    assert caps["CapEff"] == caps["CapPrm"] == 1 << 10  # CAP_NET_BIND_SERVICE


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root caller")
async def test_root_child_cannot_chown_or_read_others_files(sandbox_tmp: object) -> None:
    """Without CAP_CHOWN / CAP_DAC_OVERRIDE, uid 0 is an ordinary owner."""
    path = os.path.join(str(sandbox_tmp), "private")
    with open(path, "w") as f:
        f.write("x")
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o600)
    sb = system_sandbox(fs_writable=[str(sandbox_tmp)])
    chown = await sb.run(["chown", "0:0", path])
    read = await sb.run(["cat", path])
    assert chown.returncode != 0 and b"not permitted" in chown.stderr
    assert read.returncode != 0 and b"Permission denied" in read.stderr


async def test_pathname_unix_socket_outside_policy_is_unreachable(sandbox_tmp: object) -> None:
    """Regression test: Landlock (<= ABI 7) does not govern connect() to a
    pathname unix socket, so socket(AF_UNIX) itself is refused."""
    path = os.path.join(str(sandbox_tmp), "host.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        server.setblocking(False)
        script = ("import socket,sys\n"
                  "try:\n"
                  "    c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1])\n"
                  "except OSError as e:\n"
                  "    sys.exit(e.errno)\n")
        sb = system_sandbox(fs_readable=PYTHON_ROOTS)
        result = await sb.run([sys.executable, "-c", script, path])
        assert result.returncode == 13, result.stderr  # EACCES
        with pytest.raises(BlockingIOError):
            server.accept()


async def test_unix_sockets_can_be_allowed_and_socketpair_always_works() -> None:
    script = ("import socket\n"
              "a, b = socket.socketpair(); a.send(b'pair'); print(b.recv(4).decode())\n"
              "socket.socket(socket.AF_UNIX).close(); print('socket')\n")
    denied = await system_sandbox(fs_readable=PYTHON_ROOTS).run([sys.executable, "-c", script])
    assert denied.stdout == b"pair\n" and b"PermissionError" in denied.stderr
    allowed = await system_sandbox(fs_readable=PYTHON_ROOTS, allow_unix_sockets=True).run(
        [sys.executable, "-c", script])
    assert allowed.stdout == b"pair\nsocket\n", allowed.stderr


def test_allow_unix_sockets_must_be_a_bool() -> None:
    from asyncsandlock import PolicyError

    with pytest.raises(PolicyError, match="allow_unix_sockets"):
        Sandbox(allow_unix_sockets="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-7, 10_000, "x", True])
async def test_bad_fds_fail_before_any_process(bad: object) -> None:
    """Regression test: a closed fd used to fail in the child (step 'fds')."""
    from asyncsandlock import PolicyError

    from conftest import child_pids

    before = child_pids()
    sb = system_sandbox()
    for kwargs in ({"stdout": bad}, {"extra_fds": [bad]}):
        with pytest.raises(PolicyError):
            await sb.run(["true"], **kwargs)  # type: ignore[arg-type]
    assert child_pids() == before


@pytest.mark.parametrize("denied", [("exit_group",), ("write",), ("execve", "exit_group", "write")])
async def test_denying_the_childs_own_calls_still_reports_the_failure(
        denied: tuple[str, ...]) -> None:
    """Regression test: with exit_group denied and nothing supervised, a
    failing child spun in its error path while the caller sat in vfork for
    ever; with write denied its report was lost (an ordinary exit 127)."""
    from asyncsandlock import SpawnError

    sb = Sandbox(fs_readable=["/etc"], extra_deny_syscalls=denied)  # /bin not executable
    with pytest.raises(SpawnError) as info:
        await sb.run(["/bin/true"])
    assert (info.value.step, info.value.errno) == ("execve", 13)


async def test_denying_execve_still_runs_the_command_but_not_what_it_execs() -> None:
    sb = system_sandbox(extra_deny_syscalls=["execve", "exit_group"])
    result = await sb.run(["sh", "-c", "echo first; /bin/true || echo refused"])
    assert result.stdout == b"first\nrefused\n", result
