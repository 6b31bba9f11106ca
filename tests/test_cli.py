"""``asyncsandlock run``: exit statuses, options, errors, the terminal."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from asyncsandlock import SYSTEM_READABLE

READ = [arg for path in SYSTEM_READABLE for arg in ("-r", path)]


def cli(*args: str, stdin: str | None = None, timeout: float = 30,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "asyncsandlock", "run", *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


def test_exit_status_and_output_pass_through() -> None:
    proc = cli(*READ, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")


def test_signal_is_128_plus_signo() -> None:
    assert cli(*READ, "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15


def test_timeout_kills_and_says_so() -> None:
    proc = cli(*READ, "-t", "0.3", "--", "sleep", "30")
    assert proc.returncode == 128 + 9
    assert "timed out after 0.3 s" in proc.stderr


def test_confinement_holds_from_the_command_line(tmp_path: pathlib.Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    script = f"echo ok > {work}/f && echo no > {outside}/f"
    proc = cli(*READ, "-w", str(work), "--", "sh", "-c", script)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
    assert (work / "f").read_text() == "ok\n"
    assert not (outside / "f").exists()


def test_env_clean_env_and_cwd(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "SECRET_TOKEN": "s3cret"}
    proc = cli(*READ, "--env", "GREETING=hi", "--cwd", str(tmp_path),
               "--", "/bin/sh", "-c", 'echo "$GREETING $SECRET_TOKEN"; pwd', env=env)
    assert proc.stdout == f"hi \n{tmp_path}\n", proc.stderr
    proc = cli(*READ, "--inherit-env", "--", "/bin/sh", "-c", 'echo "$SECRET_TOKEN"', env=env)
    assert proc.stdout == "s3cret\n", proc.stderr


def test_stdin_is_the_commands() -> None:
    assert cli(*READ, "--", "tr", "a-z", "A-Z", stdin="shout\n").stdout == "SHOUT\n"


def test_missing_command_is_127_with_the_name() -> None:
    proc = cli(*READ, "--", "no-such-command-xyz")
    assert proc.returncode == 127
    assert "no-such-command-xyz" in proc.stderr and "ENOENT" in proc.stderr


def test_bad_policy_is_125_and_names_the_field() -> None:
    proc = cli("-r", "/no/such/path", "--", "true")
    assert proc.returncode == 125 and "fs_readable" in proc.stderr


def test_no_command_is_a_usage_error() -> None:
    proc = cli(*READ)
    assert proc.returncode != 0 and "no command" in proc.stderr


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script(1)")
def test_command_reads_the_terminal_as_foreground_group() -> None:
    """Regression test: the sandbox is its own process group, so on a
    terminal it must be made the foreground group or a read stops it."""
    command = (f"{sys.executable} -m asyncsandlock run {' '.join(READ)} -- "
               "sh -c 'read line; echo got $line'")
    proc = subprocess.run(["script", "-qec", command, os.devnull], input="typed\n",
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert "got typed" in proc.stdout
