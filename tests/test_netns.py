"""``Sandbox(network=..., publish=...)``: a network stack of the sandbox's own.

Every test touches only what it creates: servers on the caller's loopback,
and the namespaces and veth pairs the library makes for its sandboxes
(named ``aslu<slot>``, listed before and after to show none is left).
Escape tests pair with a control: the same attempt on ``network="host"``
succeeds.  Refusals are real (``tests/helpers/refuse.c``), and the
unprivileged path runs as uid 65534 in a fresh interpreter.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from asyncsandlock import (
    SYSTEM_READABLE,
    NetworkInfo,
    PolicyError,
    Protection,
    Sandbox,
    Subsystem,
    _linksweep,
    _netns,
)
from asyncsandlock._netns import UPLINK_NETWORK
from asyncsandlock._plan import peek

from conftest import PYTHON, build_helper

ROOT = pathlib.Path(__file__).resolve().parent.parent
READABLE = (*SYSTEM_READABLE, sys.base_prefix, sys.prefix, "/proc")

# Connects to argv[1]:argv[2] (TCP) and prints "connected" or the errno's name.
CONNECT = r"""
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.settimeout(5)
try:
    s.connect((host, port))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"""

# Binds port argv[1] on argv[2] (prints "bound" or the errno), serves argv[3]
# connections (echoes "hello " + what it reads), and stays until stdin closes.
SERVE = r"""
import errno, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:  # with SO_REUSEADDR two binds may both pass, and listen() refuses the second
    s.bind((sys.argv[2], int(sys.argv[1])))
    s.listen()
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno), flush=True)
    sys.exit(1)
print("bound", flush=True)
for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 0):
    c, _ = s.accept()
    c.sendall(b"hello " + c.recv(100))
    c.close()
sys.stdin.read()
"""


def links() -> set[str]:
    """The caller's uplink interfaces (this namespace's ``aslu*`` links), as
    ``ip link`` lists them (a netlink dump).  Not /sys/class/net: a deleted
    link's sysfs entry stays until the last reference to the device drops,
    after it has left every list and its name is free again."""
    return {name for _index, name in socket.if_nameindex() if name.startswith("aslu")}


@pytest.fixture
def no_link_left() -> Iterator[None]:
    before = links()
    yield
    # A run returns before the kernel has removed its link (_linksweep.py):
    # each must be gone within the grace the sweeper gives the kernel.
    # The uplinks built ahead (_netns.py) are not left behind: they are the
    # pool's, drained when the event loop ends (tested below).
    deadline = time.monotonic() + _linksweep.LINK_GRACE + 5
    while links() - before - _netns.ready_uplinks() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert links() - before - _netns.ready_uplinks() == set(), "veth pairs left behind"


def link_of(info: NetworkInfo | None) -> str:
    """The caller's end of a sandbox's uplink, named by its /30 (_netns.py)."""
    assert info is not None and info.gateway is not None
    offset = int(ipaddress.IPv4Address(info.gateway)) - int(UPLINK_NETWORK.network_address)
    return f"aslu{offset // 4}"


async def warm() -> frozenset[str]:
    """Have the pool build its uplinks, and wait until they are ready."""
    _netns.want_uplinks()
    for _ in range(3000):  # 30 s on a loaded machine
        if len(_netns.ready_uplinks()) == _netns.UPLINKS_READY:
            break
        await anyio.sleep(0.01)
    ready = _netns.ready_uplinks()
    assert len(ready) == _netns.UPLINKS_READY
    assert ready <= links()
    for name in ready:  # who made it, for the next caller's sweep (_linksweep.py)
        assert pathlib.Path(f"/sys/class/net/{name}/ifalias").read_text().strip() \
            == _linksweep.owner()
    return ready


def release(sb: Sandbox) -> None:
    """Close ``sb``'s ruleset fd now, not when a reference cycle (a traceback,
    a finished task) lets it be collected: no_leaks looks before that."""
    owner = peek(sb)
    if owner is not None:
        owner.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- validation, before any process ------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"network": "bridge"}, "network"),
    ({"network": None}, "network"),
    ({"network": "loopback", "publish": [0]}, "publish"),
    ({"network": "loopback", "publish": [65536]}, "publish"),
    ({"network": "loopback", "publish": [True]}, "publish"),
    ({"network": "loopback", "publish": ["80"]}, "publish"),
    ({"network": "loopback", "publish": 8080}, "publish"),
    ({"publish": [8080]}, "publish"),  # host network: nothing to publish
])
def test_bad_values_are_policy_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as info:
        Sandbox(**kwargs)
    assert info.value.field == field


def test_publish_is_normalised() -> None:
    sb = Sandbox(network="uplink", publish=[9000, 80, 9000])
    assert sb.publish == (80, 9000)
    assert Sandbox().network == "host"


# -- loopback: no route out, its own port space -------------------------------


async def _connect_from(network: str, host: str, port: int) -> str:
    sb = Sandbox(fs_readable=READABLE, network=network, net_allow=[f":{port}"])
    result = await sb.run([PYTHON, "-c", CONNECT, host, str(port)], timeout=30)
    assert result.returncode == 0, result.stderr
    expected = Protection.NOT_REQUESTED if network == "host" else Protection.ACTIVE
    assert result.protections[Subsystem.NETWORK_NAMESPACE] is expected
    release(sb)
    return result.stdout.decode().strip()


@pytest.mark.anyio
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
async def test_loopback_cannot_reach_the_callers_loopback(anyio_backend: str, no_leaks: None,
                                                          family: int) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        port = server.getsockname()[1]
        # Escape: the caller's server, from the sandbox's own loopback.
        assert await _connect_from("loopback", host, port) == "ECONNREFUSED"
        # Control: the same connect on the caller's network.
        assert await _connect_from("host", host, port) == "connected"


@pytest.mark.anyio
async def test_loopback_has_no_route_out(anyio_backend: str, no_leaks: None) -> None:
    # An address off the host (TEST-NET-1): no route at all, whatever the rules.
    assert await _connect_from("loopback", "192.0.2.1", 9) == "ENETUNREACH"
    assert await _connect_from("loopback", "2001:db8::1", 9) == "ENETUNREACH"


async def _bind_both(network: str, port: int) -> list[str]:
    sb = Sandbox(fs_readable=READABLE, network=network, net_allow_bind=[port])
    seen: list[str] = []
    async with await sb.open([PYTHON, "-c", SERVE, str(port), "127.0.0.1"]) as first, \
            await sb.open([PYTHON, "-c", SERVE, str(port), "127.0.0.1"]) as second:
        for proc in (first, second):
            assert proc.stdout is not None
            try:
                seen.append((await proc.stdout.receive()).decode().strip())
            except anyio.EndOfStream:
                assert proc.stderr is not None
                error = await proc.stderr.receive()
                raise AssertionError(f"{network}: {error.decode()}") from None
        for proc in (first, second):
            assert proc.stdin is not None
            await proc.stdin.aclose()
    release(sb)
    return seen


@pytest.mark.anyio
async def test_two_loopback_sandboxes_bind_the_same_port(anyio_backend: str,
                                                         no_leaks: None) -> None:
    port = free_port()
    assert await _bind_both("loopback", port) == ["bound", "bound"]
    # Control: on the caller's network the second one cannot.
    assert sorted(await _bind_both("host", port)) == ["EADDRINUSE", "bound"]


# -- uplink and publish ------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("network", ["loopback", "uplink"])
async def test_published_port_reached_from_the_caller(anyio_backend: str, no_leaks: None,
                                                      no_link_left: None, network: str) -> None:
    sb = Sandbox(fs_readable=READABLE, network=network, publish=[8080], net_allow_bind=[8080])
    bind = "0.0.0.0" if network == "uplink" else "127.0.0.1"
    serves = "2" if network == "uplink" else "1"
    async with await sb.open([PYTHON, "-c", SERVE, "8080", bind, serves],
                             stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert await proc.stdout.receive() == b"bound\n"
        info = proc.network
        assert isinstance(info, NetworkInfo) and info.network == network
        host, port = info.published[8080]
        assert host == "127.0.0.1"
        stream = await anyio.connect_tcp(host, port)
        async with stream:
            await stream.send(b"world")
            assert await stream.receive() == b"hello world"
        if network == "uplink":
            assert info.address is not None and info.gateway is not None
            assert info.address in {str(a) for a in UPLINK_NETWORK}
            assert links(), "the caller's end of the veth pair"
            # The server's second connection, straight to its uplink address.
            async with await anyio.connect_tcp(info.address, 8080) as direct:
                await direct.send(b"direct")
                assert await direct.receive() == b"hello direct"
        await proc.stdin.aclose()
    assert proc.network is not None and proc.returncode == 0
    release(sb)


@pytest.mark.anyio
async def test_uplink_does_not_share_the_callers_loopback(anyio_backend: str, no_leaks: None,
                                                            no_link_left: None) -> None:
    sb = Sandbox(fs_readable=READABLE, network="uplink", net_allow=["*"])
    # The caller's loopback is not the sandbox's, even with an uplink.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = await sb.run([PYTHON, "-c", CONNECT, "127.0.0.1", str(port)], timeout=30)
        assert result.stdout.strip() == b"ECONNREFUSED"
    release(sb)


@pytest.mark.anyio
async def test_uplink_connects_to_the_gateway(anyio_backend: str, no_leaks: None,
                                              no_link_left: None) -> None:
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        script = ("import sys\nhost = sys.stdin.readline().strip()\nsys.argv[1:] = [host, "
                  f"'{port}']\n" + CONNECT)
        sb = Sandbox(fs_readable=READABLE, network="uplink", publish=[1], net_allow=[f":{port}"])
        async with await sb.open([PYTHON, "-c", script], stderr=subprocess.DEVNULL) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            assert proc.network is not None and proc.network.gateway is not None
            await proc.stdin.send(proc.network.gateway.encode() + b"\n")
            assert (await proc.stdout.receive()).strip() == b"connected"
            await proc.wait()
        release(sb)


@pytest.mark.anyio
async def test_nothing_left_after_a_failed_spawn(anyio_backend: str, no_leaks: None,
                                                 no_link_left: None, tmp_path: pathlib.Path
                                                 ) -> None:
    hidden = tmp_path / "prog"
    hidden.write_text("#!/bin/sh\n")
    hidden.chmod(0o755)
    sb = Sandbox(fs_readable=SYSTEM_READABLE, network="uplink", publish=[80])
    with pytest.raises(PermissionError):  # execve refused: tmp_path is not readable
        await sb.run([str(hidden)])
    release(sb)


@pytest.mark.anyio
async def test_nothing_left_after_timeout_and_cancellation(anyio_backend: str, no_leaks: None,
                                                           no_link_left: None) -> None:
    sb = Sandbox(fs_readable=SYSTEM_READABLE, network="uplink", publish=[80])
    result = await sb.run(["sleep", "30"], timeout=0.3)
    assert result.reason.value == "timeout"
    with anyio.move_on_after(0.3):
        await sb.run(["sleep", "30"])
    # Cancelled at every await of the setup too (each run is cut sooner).
    for delay in (0.0, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02):
        with anyio.move_on_after(delay):
            await sb.run(["sleep", "30"])
    release(sb)


@pytest.mark.anyio
async def test_a_link_whose_namespace_is_kept_alive_is_deleted_after_the_grace(
        anyio_backend: str, no_leaks: None, no_link_left: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Someone else (here: the test) holds the sandbox's namespace, so the
    # kernel does not tear it down, nor the link, when the sandbox ends.
    monkeypatch.setattr(_linksweep, "LINK_GRACE", 0.2)
    sb = Sandbox(fs_readable=SYSTEM_READABLE, network="uplink", publish=[1])
    proc = await sb.open(["sleep", "30"])
    link = link_of(proc.network)
    kept = os.open(f"/proc/{proc.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        proc.kill()
        await proc.wait()
        assert link in links(), "the namespace lives on, and its link with it"
        for _ in range(500):  # 10 s
            if link not in links():
                break
            await anyio.sleep(0.02)
        assert link not in links(), "deleted by the sweeper after the grace"
        assert link not in _linksweep.pending()
    finally:
        os.close(kept)
        await proc.aclose()
    release(sb)


# -- uplinks built ahead (_netns.py: the pool) ------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("publish", [False, True])
async def test_a_run_takes_a_ready_uplink_once_and_reaches_the_caller(
        anyio_backend: str, no_leaks: None, no_link_left: None, publish: bool) -> None:
    ready = await warm()
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen()
        port = server.getsockname()[1]
        script = ("import sys\nhost = sys.stdin.readline().strip()\nsys.argv[1:] = [host, "
                  f"'{port}']\n" + CONNECT + "sys.stdout.flush()\nsys.stdin.read()\n")
        sb = Sandbox(fs_readable=READABLE, network="uplink", net_allow=[f":{port}"],
                     publish=[8080] if publish else [])
        async with await sb.open([PYTHON, "-c", script], stderr=subprocess.DEVNULL) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            link = link_of(proc.network)
            assert link in ready, "built ahead"
            assert link not in _netns.ready_uplinks(), "taken: no other run gets it"
            assert proc.network is not None and proc.network.gateway is not None
            assert bool(proc.network.published) is publish
            await proc.stdin.send(proc.network.gateway.encode() + b"\n")
            assert (await proc.stdout.receive()).strip() == b"connected"
            await proc.stdin.aclose()
            assert await proc.wait() == 0
        release(sb)
    # Single use: the spent uplink goes, and is never handed out again.
    for _ in range(1000):
        if link not in links():
            break
        await anyio.sleep(0.01)
    assert link not in links() and link not in _netns.ready_uplinks()


@pytest.mark.anyio
async def test_a_published_port_of_a_ready_uplink_is_reached(anyio_backend: str, no_leaks: None,
                                                               no_link_left: None) -> None:
    ready = await warm()
    sb = Sandbox(fs_readable=READABLE, network="uplink", publish=[8080], net_allow_bind=[8080])
    async with await sb.open([PYTHON, "-c", SERVE, "8080", "0.0.0.0", "1"],
                             stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert await proc.stdout.receive() == b"bound\n"
        assert link_of(proc.network) in ready
        assert proc.network is not None
        host, port = proc.network.published[8080]
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"world")
            assert await stream.receive() == b"hello world"
        await proc.stdin.aclose()
    assert proc.returncode == 0
    release(sb)


@pytest.mark.anyio
async def test_concurrent_uplink_runs_get_distinct_links(anyio_backend: str, no_leaks: None,
                                                         no_link_left: None) -> None:
    await warm()
    sb = Sandbox(fs_readable=SYSTEM_READABLE, network="uplink", publish=[1])
    # One more than the pool holds: the last one is built in its run.
    procs = [await sb.open(["sleep", "30"]) for _ in range(_netns.UPLINKS_READY + 1)]
    try:
        names = {link_of(proc.network) for proc in procs}
        addresses = {proc.network.address for proc in procs if proc.network is not None}
        assert len(names) == len(addresses) == len(procs)
        assert names <= links()
    finally:
        for proc in procs:
            proc.kill()
            await proc.aclose()
    release(sb)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_pool_empties_when_its_loop_ends(backend: str, no_leaks: None,
                                             no_link_left: None) -> None:
    ready = anyio.run(warm, backend=backend)
    # The keeper was cancelled with its loop: every ready uplink closed.
    assert _netns.ready_uplinks() == frozenset() and _netns.held() == frozenset()
    deadline = time.monotonic() + 10
    while ready & links() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready & links() == set(), "the kernel removed each with its namespace"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_loop_ending_while_the_pool_builds_leaves_nothing(backend: str, no_leaks: None,
                                                            no_link_left: None) -> None:
    async def cut(delay: float) -> None:
        _netns.want_uplinks()
        await anyio.sleep(delay)

    before = links()
    for delay in (0.0, 0.001, 0.002, 0.004, 0.008, 0.016):  # at each request of a build
        anyio.run(cut, delay, backend=backend)
        assert _netns.ready_uplinks() == frozenset() and _netns.held() == frozenset()
    deadline = time.monotonic() + 10
    while links() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert links() - before == set(), "each half-built uplink went with its namespace"


@pytest.mark.anyio
async def test_close_uplinks_empties_the_pool(anyio_backend: str, no_leaks: None,
                                              no_link_left: None) -> None:
    ready = await warm()
    await _netns.close_uplinks()
    assert _netns.ready_uplinks() == frozenset() and _netns.held() == frozenset()
    for _ in range(1000):
        if not ready & links():
            break
        await anyio.sleep(0.01)
    assert ready & links() == set()


@pytest.mark.anyio
async def test_a_dead_callers_link_is_swept_and_a_live_ones_is_not(
        anyio_backend: str, no_leaks: None, no_link_left: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from asyncsandlock._core import lib
    from asyncsandlock._rtnl import Rtnl

    # A SIGKILLed caller's link outlives it only while something holds its
    # namespace (a sandbox process that escaped PDEATHSIG): here, our fds.
    monkeypatch.setattr(_linksweep, "LINK_GRACE", 0.2)
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidns = os.stat("/proc/self/ns/pid").st_ino
    aliases = {"dead": f"asyncsandlock {pidns} {gone.pid} 1",
               "live": _linksweep.owner(),
               "foreign": "asyncsandlock 1 1 1"}  # another PID namespace: not ours to judge
    names = {kind: f"aslu{60000 + os.getpid() % 1000 * 3 + i}"  # beyond the library's slots
             for i, kind in enumerate(aliases)}
    fds = []
    host = Rtnl.open()
    try:
        for kind, alias in aliases.items():
            fds.append(lib.asl_netns_new())
            assert fds[-1] >= 0
            await host.request(_netns._veth(ifinfmsg, names[kind], fds[-1]), 0x600)
            index = socket.if_nametoindex(names[kind])
            await _netns._alias(host, ifinfmsg, index, alias)
        swept = await _linksweep.sweep_stale()
        assert names["dead"] in swept
        assert names["live"] not in swept and names["foreign"] not in swept
        for _ in range(1000):
            if names["dead"] not in links():
                break
            await anyio.sleep(0.01)
        assert names["dead"] not in links(), "deleted, though its namespace is held"
        assert {names["live"], names["foreign"]} <= links(), "the control: left alone"
    finally:
        host.close()
        for fd in fds:
            os.close(fd)


# -- refusals and the unprivileged path (in a fresh interpreter) ----------

DRIVER = r"""
import json, os, sys
cfg = json.loads(sys.argv[1])
import anyio
import asyncsandlock as asl

async def main():
    decide = asl.allow_degraded(asl.Subsystem.NETWORK_NAMESPACE) if cfg["degrade"] else asl.strict
    sb = asl.Sandbox(fs_readable=cfg["readable"], network=cfg["network"],
                     publish=cfg.get("publish", ()), net_allow=cfg.get("net_allow", ()),
                     net_allow_bind=cfg.get("bind", ()), on_unavailable=decide)
    out = []
    try:
        for _ in range(cfg.get("runs", 1)):
            r = await sb.run(cfg["cmd"], timeout=30)
            out.append({"ok": r.success, "stdout": r.stdout.decode(), "stderr": r.stderr.decode(),
                        "ns": r.protections[asl.Subsystem.NETWORK_NAMESPACE].name,
                        "unenforced": {k.name: list(v) for k, v in r.unenforced.items()}})
    except asl.ConfinementUnavailable as exc:
        out.append({"refused": exc.subsystem.name, "errno": exc.errno, "message": str(exc)})
    print(json.dumps(out))

anyio.run(main, backend=cfg["backend"])
"""


def drive(backend: str, *, refuse: list[str] | None = None, **cfg: Any) -> list[dict[str, Any]]:
    config = {"backend": backend, "readable": list(READABLE), "degrade": False, **cfg}
    prefix = []
    if cfg.get("nobody"):  # a fresh interpreter as uid 65534, no capabilities
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if refuse:
        prefix = [build_helper("refuse"), *refuse, "--", *prefix]
    proc = subprocess.run([*prefix, PYTHON, "-c", DRIVER, json.dumps(config)],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    report: list[dict[str, Any]] = json.loads(proc.stdout)
    return report


COUNT_LINKS = ["sh", "-c", "tail -n +3 /proc/self/net/dev | cut -d: -f1"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("network", ["loopback", "uplink"])
def test_refused_unshare_strict_runs_nothing(backend: str, network: str) -> None:
    (run,) = drive(backend, refuse=["unshare=EPERM"], network=network, cmd=COUNT_LINKS)
    assert run["refused"] == "NETWORK_NAMESPACE" and run["errno"] == 1, run
    assert "hint:" in run["message"] and "network" in run["message"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("network", ["loopback", "uplink"])
def test_refused_unshare_allowed_runs_on_the_host_network_and_says_so(backend: str,
                                                                      network: str) -> None:
    runs = drive(backend, refuse=["unshare=EPERM"], network=network, cmd=COUNT_LINKS,
                 degrade=True, runs=2)
    for run in runs:
        assert run["ok"], run
        assert run["ns"] == "DEGRADED"
        assert run["unenforced"] == {"NETWORK_NAMESPACE": ["network"]}
        assert len(run["stdout"].split()) > 1  # the host's links, not only lo


def _nobody_has_user_namespaces() -> bool:
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "unshare", "--user", "--net", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _nobody_has_user_namespaces(),
                    reason="this host gives uid 65534 no user namespace")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_loopback_as_nobody_in_a_user_namespace(backend: str) -> None:
    readable = [*SYSTEM_READABLE, "/proc"]  # as 65534, the sandboxed side is bash
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe = ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"]
        (run,) = drive(backend, nobody=True, network="loopback", cmd=probe,
                       net_allow=[f":{port}"], readable=readable)
        assert run["ns"] == "ACTIVE", run
        assert "Connection refused" in run["stderr"] and not run["ok"]  # escape: held
        (run,) = drive(backend, nobody=True, network="host", cmd=probe, net_allow=[f":{port}"],
                       readable=readable)
        assert run["ok"] and run["stdout"].strip() == "connected", run  # control
    (run,) = drive(backend, nobody=True, network="loopback", cmd=COUNT_LINKS, readable=readable)
    assert run["stdout"].split() == ["lo"], run


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_uplink_as_nobody_is_refused_through_on_unavailable(backend: str) -> None:
    (run,) = drive(backend, nobody=True, network="uplink", cmd=COUNT_LINKS,
                   readable=[*SYSTEM_READABLE, "/proc"])
    assert run["refused"] == "NETWORK_NAMESPACE" and run["errno"] == 1, run


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_loopback_as_nobody_without_user_namespaces_is_refused(backend: str) -> None:
    # What a host with unprivileged user namespaces off (or a profile
    # refusing unshare) answers: the child's network step fails.
    (run,) = drive(backend, nobody=True, refuse=["unshare=EPERM"], network="loopback",
                   cmd=COUNT_LINKS, readable=[*SYSTEM_READABLE, "/proc"])
    assert run["refused"] == "NETWORK_NAMESPACE" and run["errno"] == 1, run
