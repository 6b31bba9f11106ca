"""The MCP server, driven by the SDK's own client over stdio and Streamable HTTP.

Three servers: stdio (one per client, as a stdio server is); Streamable HTTP
under uvicorn on 127.0.0.1 (one for the module); and stdio in a simulated
Kubernetes pod: PID 1 of a new PID namespace, under the clone3-ENOSYS
seccomp filter of container runtimes with no_new_privs
(tests/helpers/clone3_enosys.c), uid 1000 with no capabilities, the root
file system read-only but for the workspace directory (a mount namespace).
Every escape is paired with a control that shows the same attempt works
where it is allowed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp")
pytest.importorskip("uvicorn")

from mcp import Client
from mcp.client.stdio import StdioServerParameters

from conftest import build_helper

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECRET = "sk-fake-" + uuid.uuid4().hex
SITE = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
#: The pod's Python: uid 1000 cannot enter /root, where this one may live.
SYSTEM_PYTHON = "/usr/bin/python3"


def server_env(**extra: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "FAKE_API_KEY": SECRET,
            "PYTHONPATH": f"{ROOT}:{SITE}", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_pids(marker: str) -> list[int]:
    """Pids (in our namespace) of the server whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv and b"asyncsandlock.mcp" in argv:
                found.append(int(entry))
    return found


async def poll(condition: Any, seconds: float) -> bool:
    """Poll ``condition()`` (the state of /proc: no event to wait on) until
    true or ``seconds`` have passed; its last value."""
    with anyio.move_on_after(seconds):
        while not condition():  # noqa: ASYNC110 - /proc has no event to wait on
            await anyio.sleep(0.05)
    return bool(condition())


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def alive_with(token: str) -> list[int]:
    """Pids of processes whose argv has ``token`` (not zombies)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if token.encode() not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


# -- the servers ----------------------------------------------------------


class Server:
    """How to reach one kind of server, and the marker that finds its process."""

    def __init__(self, kind: str, target: Any = None, marker: str = "") -> None:
        self.kind = kind
        self.target = target
        self.marker = marker

    def client(self, **kwargs: Any) -> Client:
        if self.kind == "http":
            return Client(self.target, mode="legacy", **kwargs)
        return Client(self.target, **kwargs)

    def pid(self) -> int:
        pids = server_pids(self.marker)
        assert pids, f"no server process with {self.marker}"
        return max(pids)  # in a pod: python, not the unshare above it


def stdio_server(tmp: pathlib.Path, *prefix: str, python: str = sys.executable,
                 options: tuple[str, ...] = ()) -> Server:
    marker = str(tmp / f"ws-{uuid.uuid4().hex[:8]}")
    os.makedirs(marker, exist_ok=True)
    params = StdioServerParameters(
        command=prefix[0] if prefix else python,
        args=[*prefix[1:], *([python] if prefix else []), "-m", "asyncsandlock.mcp",
              "--workspace-root", marker, *options],
        env=server_env())
    return Server("stdio", params, marker)


@contextlib.contextmanager
def running_http(prefix: list[str], python: str, root: str) -> Iterator[Server]:
    """A Streamable HTTP server on a free port of 127.0.0.1, started with ``prefix``."""
    port = free_port()
    proc = subprocess.Popen([*prefix, python, "-m", "asyncsandlock.mcp", "--transport", "http",
                             "--port", str(port), "--workspace-root", root],
                            env=server_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Server("http", f"http://127.0.0.1:{port}/mcp", root)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the HTTP server did not start"
            time.sleep(0.05)
        yield server
    finally:
        # The server itself, not a launcher above it: in a pod it is PID 1,
        # and unshare does not pass signals on.
        for pid in server_pids(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = str(tmp_path_factory.mktemp("mcp-http"))
    with running_http([], sys.executable, root) as server:
        yield server
    left = [str(p) for p in pathlib.Path(root).rglob("*")]
    assert left == [], f"workspaces left behind after shutdown: {left}"


@pytest.fixture(scope="module")
def pod_http_server() -> Iterator[Server]:
    """Streamable HTTP in the simulated pod (its network is the host's)."""
    root = tempfile.mkdtemp(prefix="asl-pod-")
    try:
        prefix = pod_prefix(root)
        if isinstance(prefix, str):
            pytest.skip(prefix)
        with running_http(prefix, SYSTEM_PYTHON, root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _pod_command(workspace: str) -> list[str]:
    os.chmod(workspace, 0o777)
    launcher = build_helper("clone3_enosys")
    script = ('set -e; mount -t tmpfs -o mode=1777 tmpfs "$1"; mount -o remount,bind,ro /; '
              'shift; exec setpriv --reuid 1000 --regid 1000 --clear-groups '
              '--inh-caps=-all --bounding-set=-all "$@"')
    return ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--propagation",
            "private", "/bin/sh", "-c", script, "sh", workspace, launcher]


@functools.cache
def pod_unavailable() -> str | None:
    """Why the simulated pod cannot be built here, or None (asked once)."""
    if os.geteuid() != 0:
        return "the simulated pod needs root to make its namespaces and mounts"
    missing = [tool for tool in ("unshare", "setpriv", "gcc") if shutil.which(tool) is None]
    if missing or not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"missing here: {', '.join(missing) or SYSTEM_PYTHON}"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != str(sys.version_info[:2]):
        return f"{SYSTEM_PYTHON} is not Python {sys.version_info[:2]} (compiled modules)"
    workspace = tempfile.mkdtemp(prefix="asl-pod-")
    try:
        prefix = _pod_command(workspace)
        shell = ('test "$$" = 1 && test "$(id -u)" = 1000 && ! touch /pod-probe 2>/dev/null'
                 f' && {SYSTEM_PYTHON} -c "import asyncsandlock.mcp._app"')
        check = subprocess.run([*prefix, "/bin/sh", "-c", shell], capture_output=True,
                               text=True, timeout=60, env=server_env())
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    if check.returncode != 0:
        # e.g. uid 1000 cannot read this checkout (under a 0700 home directory).
        return f"cannot build the simulated pod here: {check.stderr.strip()[-200:]}"
    return None


def pod_prefix(workspace: str) -> list[str] | str:
    """The command line that starts a program in a simulated pod whose
    workspace directory is ``workspace``, or why it cannot be built."""
    reason = pod_unavailable()
    return reason if reason is not None else _pod_command(workspace)


@pytest.fixture(params=["stdio", "http", "pod"])
def server(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Server:
    if request.param == "http":
        return request.getfixturevalue("http_server")  # type: ignore[no-any-return]
    if request.param == "stdio":
        return stdio_server(tmp_path)
    # uid 1000 must reach it: not under pytest's 0700 directory.
    workspace = pathlib.Path(tempfile.mkdtemp(prefix="asl-pod-"))
    request.addfinalizer(lambda: shutil.rmtree(workspace, ignore_errors=True))
    prefix = pod_prefix(str(workspace))
    if isinstance(prefix, str):
        pytest.skip(prefix)
    params = StdioServerParameters(
        command=prefix[0], args=[*prefix[1:], SYSTEM_PYTHON, "-m", "asyncsandlock.mcp",
                                 "--workspace-root", str(workspace)],
        env=server_env())
    return Server("pod", params, str(workspace))


# -- helpers --------------------------------------------------------------


async def call(client: Client, tool: str, **arguments: Any) -> tuple[str, dict[str, Any], bool]:
    result = await client.call_tool(tool, arguments)
    text = result.content[0].text  # type: ignore[union-attr]
    return text, result.structured_content or {}, bool(result.is_error)


def stdout_of(text: str) -> str:
    return text.split("--- stdout ---\n", 1)[1].split("\n--- stderr ---\n", 1)[0]


@contextlib.asynccontextmanager
async def connected(server: Server) -> AsyncIterator[Client]:
    async with server.client() as client:
        yield client


pytestmark = [
    pytest.mark.anyio,
    # The SDK's HTTP client (httpx2) on Trio drops its response generators
    # unclosed: its warnings, not ours.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:Async generator 'httpx2:ResourceWarning"),
]


# -- the battery ----------------------------------------------------------


async def check_computation(client: Client, server: Server,
                            tmp_path: pathlib.Path) -> None:
    text, info, error = await call(client, "execute_python", code="print(6 * 7)")
    assert not error and stdout_of(text) == "42\n", text
    assert info["returncode"] == 0 and info["reason"] == "exited"
    assert text.startswith("exit status: 0 (exited) in ")
    tools = {tool.name for tool in (await client.list_tools()).tools}
    assert tools == {"execute_python", "run_shell", "read_file", "write_file",
                     "list_files"}



async def check_stdin_is_empty(client: Client, server: Server,
                               tmp_path: pathlib.Path) -> None:
    """A run's stdin is empty, never the server's protocol stream."""
    text, _, _ = await call(client, "run_shell", command="cat; echo done")
    assert stdout_of(text) == "done\n", text


async def check_file_round_trip(client: Client, server: Server,
                                tmp_path: pathlib.Path) -> None:
    _, _, error = await call(client, "write_file", path="dir/a.txt", content="hello ü\n")
    assert not error
    text, info, error = await call(client, "read_file", path="dir/a.txt")
    assert (text, error) == ("hello ü\n", False) and info["size"] == 9
    text, _, _ = await call(client, "run_shell",
                            command="cat dir/a.txt; echo more >> dir/a.txt")
    assert stdout_of(text) == "hello ü\n"
    text, _, _ = await call(client, "read_file", path="dir/a.txt")
    assert text == "hello ü\nmore\n"
    text, info, _ = await call(client, "list_files")
    assert info["entries"] == [{"name": "dir", "type": "directory", "size": 4096}] \
        or [e["name"] for e in info["entries"]] == ["dir"]
    assert json.loads(text)[0]["name"] == "dir"



async def check_reading_outside_the_workspace(client: Client, server: Server,
                                              tmp_path: pathlib.Path) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("outside")
    secret.chmod(0o644)
    for path in ("../outside.txt", str(secret), "/etc/hostname", "dir/../../x"):
        text, _, error = await call(client, "read_file", path=path)
        assert error and ("outside the session workspace" in text
                          or "No such file" in text), text
    # A symlink planted by sandboxed code is not followed out...
    await call(client, "run_shell", command=f"ln -s {secret} out; ln -s /etc/passwd pw; "
                                            "echo in > in.txt; ln -s in.txt link")
    for path in ("out", "pw"):
        text, _, error = await call(client, "read_file", path=path)
        assert error and "outside the session workspace" in text, text
    text, _, _ = await call(client, "write_file", path="pw", content="x")
    assert "symlink" in text or "outside" in text
    # ...and the control: one that stays inside is.
    text, _, error = await call(client, "read_file", path="link")
    assert (text, error) == ("in\n", False)
    text, _, _ = await call(client, "run_shell", command=f"cat {secret}")
    assert "Permission denied" in text and "outside\n" not in stdout_of(text)
    assert secret.read_text() == "outside"  # the control: it is there to read



async def check_etc_shadow(client: Client, server: Server,
                           tmp_path: pathlib.Path) -> None:
    text, _, _ = await call(client, "run_shell", command="cat /etc/shadow")
    assert stdout_of(text) == "" and "Permission denied" in text
    text, _, error = await call(client, "read_file", path="/etc/shadow")
    assert error and "outside the session workspace" in text
    text, _, _ = await call(client, "execute_python",
                            code="print(open('/etc/passwd').read()[:4])")
    assert stdout_of(text) == "root\n"  # the control: a system path is readable



async def check_server_environment_does_not_leak(client: Client, server: Server,
                                                 tmp_path: pathlib.Path) -> None:
    text, _, _ = await call(client, "run_shell", command="env; cat /proc/1/environ")
    assert SECRET not in text and "FAKE_API_KEY" not in text
    text, _, _ = await call(client, "execute_python",
                            code="import os; print(sorted(os.environ))")
    assert "FAKE_API_KEY" not in text and "HOME" in text
    # The control: the server itself has the key.
    with open(f"/proc/{server.pid()}/environ", "rb") as f:
        assert SECRET.encode() in f.read()



async def check_network_connection_fails(client: Client, server: Server,
                                         tmp_path: pathlib.Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        code = (f"import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}), 3)\n"
                " print('connected')\nexcept OSError as e:\n print('refused', e.errno)")
        text, _, _ = await call(client, "execute_python", code=code)
        assert stdout_of(text).startswith("refused"), text
        # The control: from here the same connection is made.
        socket.create_connection(("127.0.0.1", port), 3).close()
    finally:
        listener.close()



async def check_fork_bomb_is_contained(client: Client, server: Server,
                                       tmp_path: pathlib.Path) -> None:
    token = f"bomb{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    text, info, _ = await call(client, "run_shell", timeout=3,
                               command=f"b() {{ b | b & }}; b; sleep 1 # {token}")
    assert time.monotonic() - start < 20
    assert info["reason"] in ("exited", "timeout", "killed"), text
    assert "Cannot fork" in text  # max_processes said no
    await anyio.sleep(0.5)
    assert alive_with(token) == []
    text, _, _ = await call(client, "execute_python", code="print(1)")
    assert stdout_of(text) == "1\n"  # the server is still there



async def check_infinite_loop_times_out(client: Client, server: Server,
                                        tmp_path: pathlib.Path) -> None:
    start = time.monotonic()
    text, info, _ = await call(client, "execute_python", code="while True: pass", timeout=1)
    assert info["reason"] == "timeout" and "timed out after 1 s" in text
    assert 0.9 < time.monotonic() - start < 10



async def check_ten_megabytes_of_output_are_cut_to_fit(client: Client, server: Server,
                                                       tmp_path: pathlib.Path) -> None:
    for command in ("head -c 10000000 /dev/zero | tr '\\0' x",
                    "head -c 10000000 /dev/zero"):  # NULs: 6 bytes each in JSON
        result = await client.call_tool("run_shell", {"command": command})
        text = result.content[0].text  # type: ignore[union-attr]
        info = result.structured_content or {}
        assert info["stdout_bytes"] == 10_000_000 and info["truncated"] is True
        assert "stdout truncated: 10000000 bytes written" in text
        assert len(result.model_dump_json(by_alias=True).encode()) < 1024 * 1024



async def check_twenty_concurrent_calls(client: Client, server: Server,
                                        tmp_path: pathlib.Path) -> None:
    await call(client, "execute_python", code="pass")
    threads = threads_of(server.pid())
    outputs: dict[int, str] = {}

    async def one(i: int) -> None:
        text, _, _ = await call(client, "execute_python", code=f"print({i} * 2)")
        outputs[i] = stdout_of(text)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert outputs == {i: f"{i * 2}\n" for i in range(20)}
    assert threads_of(server.pid()) == threads, "the server made threads"



async def check_cancellation_stops_the_sandbox(client: Client, server: Server,
                                               tmp_path: pathlib.Path) -> None:
    token = f"61.{uuid.uuid4().int % 10**6}"
    with anyio.move_on_after(20) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: call(client, "run_shell", command=f"sleep {token}"))
            assert await poll(lambda: alive_with(token), 15)
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught, "the sandbox never started"
    await poll(lambda: not alive_with(token), 5)
    assert alive_with(token) == [], "the sandbox outlived the cancelled call"
    text, _, _ = await call(client, "execute_python", code="print('next')")
    assert stdout_of(text) == "next\n"



async def test_disconnect_stops_the_sandbox(server: Server) -> None:
    token = f"62.{uuid.uuid4().int % 10**6}"
    with anyio.move_on_after(20) as scope:
        async with connected(server) as client, anyio.create_task_group() as tg:
            tg.start_soon(lambda: call(client, "run_shell", command=f"sleep {token}"))
            assert await poll(lambda: alive_with(token), 15)
            tg.cancel_scope.cancel()  # and the client goes away with it
    assert not scope.cancelled_caught
    await poll(lambda: not alive_with(token), 10)
    assert alive_with(token) == []


CHECKS = [check_computation, check_stdin_is_empty, check_file_round_trip,
          check_reading_outside_the_workspace,
          check_etc_shadow, check_server_environment_does_not_leak,
          check_network_connection_fails, check_fork_bomb_is_contained,
          check_infinite_loop_times_out, check_ten_megabytes_of_output_are_cut_to_fit,
          check_twenty_concurrent_calls, check_cancellation_stops_the_sandbox]


@pytest.mark.parametrize("where", ["http_server", "pod_http_server"],
                         ids=["host", "pod"])
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_over_http(request: pytest.FixtureRequest, where: str, check: Any,
                         tmp_path: pathlib.Path) -> None:
    """Each check on a fresh session of a Streamable HTTP server shared by the
    module: on the host, and in the simulated pod."""
    server: Server = request.getfixturevalue(where)
    async with connected(server) as client:
        await check(client, server, tmp_path)


@pytest.mark.parametrize("server", ["stdio", "pod"], indirect=True)
async def test_battery_over_stdio(server: Server, tmp_path: pathlib.Path) -> None:
    """The same checks over one stdio connection (a server start costs seconds;
    one per check would make this file slow), plain and in a simulated pod."""
    async with connected(server) as client:
        for check in CHECKS:
            await check(client, server, tmp_path)


@pytest.mark.parametrize("server", ["stdio", "http"], indirect=True)
async def test_another_sessions_workspace(server: Server) -> None:
    await cross_session(server)


async def test_another_sessions_workspace_in_the_pod(pod_http_server: Server) -> None:
    """Two sessions of one server in the simulated pod."""
    await cross_session(pod_http_server)


async def cross_session(server: Server) -> None:
    other = (server if server.kind == "http" else
             Server(server.kind, server.target, server.marker))
    async with connected(server) as first:
        text, _, _ = await call(first, "run_shell", command="echo mine > f.txt; pwd")
        mine = stdout_of(text).strip()
        assert os.path.basename(os.path.dirname(mine)).startswith("mcp-")
        # The control: its own session reads it, by relative and absolute path.
        assert (await call(first, "read_file", path=f"{mine}/f.txt"))[0] == "mine\n"
        async with connected(other) as second:
            text, _, _ = await call(second, "run_shell", command="pwd")
            assert stdout_of(text).strip() != mine
            text, _, _ = await call(second, "run_shell",
                                    command=f"cat {mine}/f.txt; ls {mine}")
            assert stdout_of(text) == "" and "Permission denied" in text, text
            text, _, error = await call(second, "read_file", path=f"{mine}/f.txt")
            assert error and "outside the session workspace" in text
            text, _, error = await call(second, "list_files", path=mine)
            assert error and "outside the session workspace" in text
    if server.kind == "http":
        # The session ended (the client's DELETE): its workspace goes.
        assert await poll(lambda: not os.path.exists(mine), 10)


async def test_session_less_requests_get_a_workspace_per_call(http_server: Server) -> None:
    """A 2026-07-28 client has no session: each call its own workspace, removed after it."""
    async with Client(http_server.target) as client:
        text, _, error = await call(client, "run_shell", command="echo x > f; pwd")
        assert not error, text
        first = stdout_of(text).strip()
        text, _, error = await call(client, "run_shell", command="ls; pwd")
        assert not error, text
        *listed, where = stdout_of(text).split()  # ls's names, then pwd's line
        assert where != first and "f" not in listed, text
        assert await poll(lambda: not os.path.exists(first), 10), first


async def test_refused_landlock_reaches_the_client(tmp_path: pathlib.Path) -> None:
    refuse = build_helper("refuse")
    server = stdio_server(tmp_path, refuse, "landlock_create_ruleset=ENOSYS", "--")
    async with connected(server) as client:
        text, info, error = await call(client, "execute_python", code="print(1)")
    assert error and info["type"] == "ConfinementUnavailable"
    assert text.startswith("ConfinementUnavailable: landlock is unavailable on this host "
                           "(ENOSYS"), text
    assert "hint: Landlock needs Linux >= 5.13" in text
    assert "fs_readable" in text  # what running without it would leave unenforced


async def test_bad_arguments_are_tool_errors(http_server: Server) -> None:
    async with connected(http_server) as client:
        text, _, error = await call(client, "run_shell", command="true", timeout=-1)
        assert error and "timeout" in text
        text, _, error = await call(client, "read_file", path="no-such-file")
        assert error and "No such file" in text
        text, _, error = await call(client, "read_file", path=".")
        assert error and "not a regular file" in text


def test_check_inside_the_simulated_pod() -> None:
    """``asyncsandlock check`` says what holds in a pod, and that sandboxes run."""
    workspace = tempfile.mkdtemp(prefix="asl-pod-")
    try:
        prefix = pod_prefix(workspace)
        if isinstance(prefix, str):
            pytest.skip(prefix)
        proc = subprocess.run([*prefix, SYSTEM_PYTHON, "-m", "asyncsandlock", "check"],
                              capture_output=True, text=True, timeout=120, env=server_env())
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in ("PID 1: orphans", "uid 1000, capabilities none", "no_new_privs", "read-only",
                 "clone3                     no (ENOSYS", "a default (strict) sandbox runs here",
                 "syscall handlers and max_processes run here"):
        assert text in proc.stdout, proc.stdout


async def test_degraded_run_says_so(tmp_path: pathlib.Path) -> None:
    """A profile that may run without the supervisor, on a host that refuses it."""
    profile = tmp_path / "degradable.toml"
    profile.write_text('extends = "untrusted-python"\non_unavailable = ["supervisor"]\n')
    refuse = build_helper("refuse")
    server = stdio_server(tmp_path, refuse, "seccomp-listener=EBUSY", "--",
                          options=("--profile", str(profile)))
    async with connected(server) as client:
        text, info, error = await call(client, "execute_python", code="print(1)")
    assert not error and stdout_of(text) == "1\n"
    assert "DEGRADED run: the host refused supervisor (unenforced: " in text
    assert "max_processes" in info["degraded"]["supervisor"]
    # The control: the same profile where the host allows it says nothing of the kind.
    async with connected(stdio_server(tmp_path, options=("--profile", str(profile)))) as client:
        text, info, _ = await call(client, "execute_python", code="print(1)")
    assert "DEGRADED" not in text and info["degraded"] == {}
