"""``asyncsandlock run --network ... --publish PORT``, from flags and profiles
(docs/network-namespaces.md).  The network tests run as root (the
``"loopback"`` namespace of a root caller; ``publish`` needs CAP_SYS_ADMIN)."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest

from asyncsandlock import SYSTEM_READABLE

READ = [arg for path in (*SYSTEM_READABLE, "/proc") for arg in ("-r", path)]
# One process: under the shell profile's max_processes, a pipeline's second
# fork may fail with EINTR (see test_combinations, the xfail at the end).
LINKS = ["cat", "/proc/self/net/dev"]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root here")


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "asyncsandlock", "run", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def links(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [line.split(":")[0].strip() for line in proc.stdout.splitlines()[2:]]


def profile(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "p.toml"
    path.write_text(f'extends = "shell"\n{text}')
    return str(path)


@root_only
def test_network_loopback_has_only_lo() -> None:
    assert links(cli(*READ, "--network", "loopback", "--", *LINKS)) == ["lo"]
    # The control: the caller's links, without the flag and with "host".
    assert len(links(cli(*READ, "--", *LINKS))) > 1
    assert len(links(cli(*READ, "--network", "host", "--", *LINKS))) > 1


@root_only
def test_network_from_a_profile_and_the_flag_over_it(tmp_path: pathlib.Path) -> None:
    own = profile(tmp_path, 'network = "loopback"\n')
    assert links(cli("--profile", own, "-r", "/proc", "--", *LINKS)) == ["lo"]
    assert len(links(cli("--profile", own, "-r", "/proc", "--network", "host", "--",
                         *LINKS))) > 1
    assert links(cli("--profile", profile(tmp_path, ""), "-r", "/proc", "--network", "loopback",
                     "--", *LINKS)) == ["lo"]


def test_bad_network_values_are_refused_before_running() -> None:
    proc = cli(*READ, "--network", "bridge", "--", "true")
    assert proc.returncode == 2 and "--network" in proc.stderr
    # publish on the caller's network: the policy names the field.
    proc = cli(*READ, "--publish", "8080", "--", "true")
    assert proc.returncode == 125 and "publish" in proc.stderr and "network" in proc.stderr
    proc = cli(*READ, "--network", "loopback", "--publish", "0", "--", "true")
    assert proc.returncode == 125 and "publish" in proc.stderr


def test_publish_from_a_profile_with_network_host_on_the_command_line(
        tmp_path: pathlib.Path) -> None:
    both = profile(tmp_path, 'network = "loopback"\npublish = [8080]\n')
    proc = cli("--profile", both, "--network", "host", "--", "true")
    assert proc.returncode == 125 and "publish" in proc.stderr


# A server on the sandbox's own 127.0.0.1:8080: answers one connection that
# sends something, then exits.
SERVE = r"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8080))
s.listen()
while True:
    c, _ = s.accept()
    data = c.recv(100)
    if data:
        c.sendall(b"hello " + data)
        break
    c.close()
"""


def _ask(host: str, port: int, deadline: float) -> bytes:
    """What the sandbox's server answers through the forward, once it listens
    (before, the forwarder finds nothing there and closes the connection)."""
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.sendall(b"caller")
                answer = conn.recv(100)
        except ConnectionResetError:
            answer = b""
        if answer or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


@root_only
@pytest.mark.parametrize("source", ["flags", "profile"])
def test_publish_reaches_a_server_in_the_sandbox(tmp_path: pathlib.Path, source: str) -> None:
    if source == "flags":
        args = [*READ, "--network", "loopback", "--publish", "8080"]
    else:
        args = ["--profile", profile(tmp_path, 'network = "loopback"\npublish = [8080]\n')]
    proc = subprocess.Popen([sys.executable, "-m", "asyncsandlock", "run", *args,
                             "--net-bind", "8080", "-r", "/usr", "--", "python3", "-c", SERVE],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.fullmatch(r"asyncsandlock: published 8080 at ([\d.]+):(\d+)\n", line)
        assert found, line + proc.stderr.read()
        answer = _ask(found[1], int(found[2]), time.monotonic() + 20)
        assert answer == b"hello caller"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
