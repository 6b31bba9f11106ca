"""The handler examples run, on asyncio and on Trio, and do what they say.

Each example runs both backends itself and exits 0 only if its claim held;
the checks here look at what it printed.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                          text=True, timeout=120, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def sections(output: str) -> list[str]:
    """The output of each backend, for examples that print a ``--- name ---`` header."""
    parts = output.split("--- ")[1:]
    assert [part.split(" ---", 1)[0] for part in parts] == ["asyncio", "trio"]
    return parts


def test_audit_openat() -> None:
    for part in sections(run_example("audit_openat.py")):
        assert "openat /etc/os-release" in part
        assert "libc.so" in part
        assert "NAME=" in part


def test_fake_getpid() -> None:
    assert run_example("fake_getpid.py").splitlines() == [
        "asyncio: my pid is 4242", "trio: my pid is 4242"]


def test_deny_file() -> None:
    for part in sections(run_example("deny_file.py")):
        assert "public: hello" in part
        assert "secret.txt: Permission denied" in part
        assert "hunter2" not in part


@pytest.mark.skipif(not os.path.exists("/usr/bin/id"), reason="needs /usr/bin/id")
def test_approval() -> None:
    for part in sections(run_example("approval.py")):
        assert "['/bin/ls', '-d', '/usr']: yes" in part
        assert "['/usr/bin/id', '-u']: no" in part
        assert "['sh'" not in part  # the sandbox's own execve is not asked about
        assert "/usr/bin/id: Permission denied" in part
        assert "shell done" in part
