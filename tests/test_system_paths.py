"""SYSTEM_READABLE: programs start and work with it, and a root caller's
child reads none of the host's secrets through it (issue 12, item 2).

Each secret is read three ways: unconfined (the control: as root it works),
with ``/etc`` granted whole (the old SYSTEM_READABLE: it works, so the
attempt is real), and with SYSTEM_READABLE (it must fail).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from asyncsandlock import SYSTEM_READABLE, Sandbox

from conftest import warmed

pytestmark = [pytest.mark.anyio]

_SECRETS = [path for path in ("/etc/shadow", "/etc/gshadow", "/etc/sudoers",
                              *glob.glob("/etc/ssh/ssh_host_*_key"), "/etc/ssl/private",
                              "/root") if os.path.exists(path)]
_ROOT_ONLY = pytest.mark.skipif(os.getuid() != 0, reason="the secrets are root's: needs root")


def _read(path: str) -> list[str]:
    return ["ls", "-a", path] if os.path.isdir(path) else ["head", "-c", "1", path]


@pytest.fixture(scope="module")
def system() -> Sandbox:
    return warmed(Sandbox(fs_readable=SYSTEM_READABLE))


@pytest.fixture(scope="module")
def whole_etc() -> Sandbox:
    return warmed(Sandbox(fs_readable=[*SYSTEM_READABLE, "/etc", "/root"]))


@_ROOT_ONLY
@pytest.mark.parametrize("secret", _SECRETS)
async def test_root_child_cannot_read_secret(secret: str, system: Sandbox,
                                             whole_etc: Sandbox) -> None:
    assert subprocess.run(_read(secret), capture_output=True).returncode == 0  # control
    granted = await whole_etc.run(_read(secret), timeout=30)
    assert granted.returncode == 0, granted.stderr  # control: the same child, /etc granted
    denied = await system.run(_read(secret), timeout=30)
    assert denied.returncode != 0
    assert b"Permission denied" in denied.stderr


def test_shadow_is_among_the_attempts() -> None:
    assert "/etc/shadow" in _SECRETS and "/etc" not in SYSTEM_READABLE


@pytest.mark.parametrize("cmd", [
    ["sh", "-c", "echo ok"],
    ["/usr/bin/python3", "-c", "import ssl, json, urllib.request; print('ok')"],
    ["git", "--version"],
    ["/usr/bin/python3", "-m", "pip", "--version"],
    ["curl", "--version"],
    ["id", "-un"],
    ["date"],
], ids=lambda cmd: " ".join(cmd)[:24])
async def test_programs_work(cmd: list[str], system: Sandbox) -> None:
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed")
    result = await system.run(cmd, timeout=60)
    assert result.success, result.stderr
    assert result.stdout
