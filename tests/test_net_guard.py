"""The network guard from inside: each rule form lets the child reach exactly
what it names, and nothing else (every escape paired with its control).

Servers on 127.0.0.1, 127.0.0.2 and ::1 (one port number on all three) stand
in for remote hosts; ``localhost`` for name rules.  ``tests/helpers/netprobe.c``
makes one call and exits with its errno; EACCES is the guard's refusal (and
Landlock's, for TCP ports).
"""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from asyncsandlock import DEVNULL, ExitReason, Sandbox, Subsystem
from asyncsandlock._enforcement import unenforced

from conftest import build_helper, system_sandbox

pytestmark = pytest.mark.anyio

HOSTS = ("127.0.0.1", "127.0.0.2", "::1")


@pytest.fixture(scope="session")
def netprobe() -> str:
    return build_helper("netprobe")


@dataclass
class Servers:
    """A TCP listener and a UDP socket on each of HOSTS, one port for each kind."""

    tcp_port: int
    udp_port: int
    tcp: dict[str, socket.socket]
    udp: dict[str, socket.socket]

    def accepted(self, host: str) -> int:
        """Connections waiting on ``host``'s listener (taken off its queue)."""
        count = 0
        while True:
            try:
                conn, _ = self.tcp[host].accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def received(self, host: str) -> int:
        count = 0
        while True:
            try:
                self.udp[host].recv(100)
            except BlockingIOError:
                return count
            count += 1


def _bind_all(kind: int) -> tuple[int, dict[str, socket.socket]]:
    for _ in range(50):
        socks: dict[str, socket.socket] = {}
        port = 0
        try:
            for host in HOSTS:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
                socks[host] = sock
                sock.bind((host, port))
                port = sock.getsockname()[1]
                if kind == socket.SOCK_STREAM:
                    sock.listen(64)
                sock.setblocking(False)
            return port, socks
        except OSError:
            for sock in socks.values():
                sock.close()
    raise RuntimeError("no port free on all three loopback addresses")


@pytest.fixture
def servers() -> Iterator[Servers]:
    tcp_port, tcp = _bind_all(socket.SOCK_STREAM)
    udp_port, udp = _bind_all(socket.SOCK_DGRAM)
    try:
        yield Servers(tcp_port, udp_port, tcp, udp)
    finally:
        for sock in (*tcp.values(), *udp.values()):
            sock.close()


def sandbox(netprobe: str, **kwargs: object) -> Sandbox:
    readable = (os.path.dirname(netprobe), *kwargs.pop("fs_readable", ()))  # type: ignore[misc]
    return system_sandbox(fs_readable=readable, **kwargs)


async def probe(sb: Sandbox | None, netprobe: str, *args: object) -> tuple[int, str]:
    """(errno, output) of ``netprobe ARGS`` in ``sb`` (None: unconfined)."""
    argv = [netprobe, *map(str, args)]
    if sb is None:
        done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout.decode()
    result = await sb.run(argv, stdin=DEVNULL, timeout=30)
    assert result.reason is ExitReason.EXITED, result
    assert result.returncode != 125, result.stderr
    return result.returncode, result.stdout.decode()


async def reach(sb: Sandbox | None, netprobe: str, servers: Servers) -> dict[str, set[str]]:
    """What the child reaches: per kind ("tcp", "udp"), the hosts whose server
    heard from it."""
    out: dict[str, set[str]] = {"tcp": set(), "udp": set()}
    for host in HOSTS:
        await probe(sb, netprobe, "connect", "tcp", host, servers.tcp_port)
        if servers.accepted(host):
            out["tcp"].add(host)
        await probe(sb, netprobe, "sendto", host, servers.udp_port)
        if servers.received(host):
            out["udp"].add(host)
    return out


async def test_unconfined_reaches_everything(netprobe: str, servers: Servers) -> None:
    """The control of every test below."""
    every = set(HOSTS)
    assert await reach(None, netprobe, servers) == {"tcp": every, "udp": every}


@pytest.mark.parametrize(("rules", "tcp", "udp"), [
    (["127.0.0.1:{t}"], {"127.0.0.1"}, set()),
    (["127.0.0.1:{t}", "127.0.0.1:{u}"], {"127.0.0.1"}, {"127.0.0.1"}),
    (["tcp://127.0.0.2:{t}"], {"127.0.0.2"}, set()),
    (["udp://127.0.0.2:{u}"], set(), {"127.0.0.2"}),
    (["[::1]:{t},{u}"], {"::1"}, {"::1"}),
    (["127.0.0.0/8:{t}"], {"127.0.0.1", "127.0.0.2"}, set()),
    (["[::/0]:*"], {"::1"}, {"::1"}),
    (["*:{u}"], set(), set(HOSTS)),
    ([":{t}"], set(HOSTS), set()),
    (["udp://*"], set(), set(HOSTS)),
    (["localhost:{t}"], {"localhost"}, set()),
    (["127.0.0.1:{t}", "udp://127.0.0.1:1-65535"], {"127.0.0.1"}, {"127.0.0.1"}),
])
@pytest.mark.usefixtures("no_leaks")
async def test_each_form_reaches_what_it_names(netprobe: str, servers: Servers, rules: list[str],
                                               tcp: set[str], udp: set[str]) -> None:
    spec = [r.format(t=servers.tcp_port, u=servers.udp_port) for r in rules]
    if tcp == {"localhost"}:  # what this host's resolver says it is
        tcp = {info[4][0] for info in socket.getaddrinfo("localhost", None)} & set(HOSTS)
    sb = sandbox(netprobe, net_allow=spec)
    assert await reach(sb, netprobe, servers) == {"tcp": tcp, "udp": udp}


async def test_refused_with_eacces(netprobe: str, servers: Servers) -> None:
    sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{servers.tcp_port},{servers.udp_port}"])
    assert (await probe(sb, netprobe, "connect", "tcp", "127.0.0.2", servers.tcp_port))[0] \
        == errno.EACCES
    assert (await probe(sb, netprobe, "sendto", "127.0.0.2", servers.udp_port))[0] \
        == errno.EACCES
    assert (await probe(sb, netprobe, "connect", "tcp", "127.0.0.1", servers.tcp_port))[0] == 0
    assert (await probe(sb, netprobe, "sendto", "127.0.0.1", servers.udp_port))[0] == 0


async def test_deny_wins(netprobe: str, servers: Servers) -> None:
    allowed = sandbox(netprobe, net_allow=["*"])
    denied = sandbox(netprobe, net_allow=["*"], net_deny=["127.0.0.2", "[::1]:1-65535"])
    every = set(HOSTS)
    assert await reach(allowed, netprobe, servers) == {"tcp": every, "udp": every}
    only = {"127.0.0.1"}
    assert await reach(denied, netprobe, servers) == {"tcp": only, "udp": only}


async def test_v4_mapped_address_is_the_v4_host(netprobe: str, servers: Servers) -> None:
    """A dual-stack socket reaching 127.0.0.2 as ::ffff:127.0.0.2 meets its v4 rules."""
    port = servers.tcp_port
    denied = sandbox(netprobe, net_allow=["*"], net_deny=["127.0.0.2"])
    assert (await probe(denied, netprobe, "connect", "tcp", "::ffff:127.0.0.2", port))[0] \
        == errno.EACCES
    assert servers.accepted("127.0.0.2") == 0
    allowed = sandbox(netprobe, net_allow=[f"127.0.0.2:{port}"])
    assert (await probe(allowed, netprobe, "connect", "tcp", "::ffff:127.0.0.2", port))[0] == 0
    assert servers.accepted("127.0.0.2") == 1


@pytest.mark.parametrize("call", ["sendmsg", "sendmmsg"])
async def test_sendmsg_by_rule(netprobe: str, servers: Servers, call: str) -> None:
    sb = sandbox(netprobe, net_allow=[f"udp://127.0.0.1:{servers.udp_port}"])
    assert (await probe(sb, netprobe, call, "127.0.0.2", servers.udp_port))[0] == errno.EACCES
    assert servers.received("127.0.0.2") == 0
    assert (await probe(sb, netprobe, call, "127.0.0.1", servers.udp_port))[0] == 0
    assert servers.received("127.0.0.1") == (2 if call == "sendmmsg" else 1)
    # The control: unconfined, the same call reaches 127.0.0.2.
    assert (await probe(None, netprobe, call, "127.0.0.2", servers.udp_port))[0] == 0
    assert servers.received("127.0.0.2") >= 1


async def test_connected_udp_sends_after_a_checked_connect(netprobe: str,
                                                           servers: Servers) -> None:
    sb = sandbox(netprobe, net_allow=[f"udp://127.0.0.1:{servers.udp_port}"])
    assert (await probe(sb, netprobe, "connected", "127.0.0.1", servers.udp_port))[0] == 0
    assert servers.received("127.0.0.1") == 1
    assert (await probe(sb, netprobe, "connected", "127.0.0.2", servers.udp_port))[0] \
        == errno.EACCES
    assert servers.received("127.0.0.2") == 0


async def test_nonblocking_connect(netprobe: str, servers: Servers) -> None:
    """EINPROGRESS (or an immediate success on loopback), then connected."""
    port = servers.tcp_port
    sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{port}"])
    for confined in (None, sb):
        code, out = await probe(confined, netprobe, "nbconnect", "127.0.0.1", port)
        assert code == 0, out
        assert "final=0 connected=1" in out
        assert out.split()[0] in ("first=115", "first=0"), out
    assert servers.accepted("127.0.0.1") == 2
    code, out = await probe(sb, netprobe, "nbconnect", "127.0.0.2", port)
    assert code == errno.EACCES and "first=13" in out


async def test_blocking_connect_refused_is_reported(netprobe: str) -> None:
    """A blocking connect the guard waits for on the loop ends with the
    kernel's error: nothing listens on that port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{port}"])
        assert (await probe(sb, netprobe, "connect", "tcp", "127.0.0.1", port))[0] \
            == errno.ECONNREFUSED


@pytest.mark.parametrize("mode", ["toctou", "sendtoctou"])
async def test_rewriting_the_address_after_the_trap_changes_nothing(
        netprobe: str, servers: Servers, mode: str) -> None:
    """A second thread flips the sockaddr between an allowed and a refused
    host while the first connects (or sends): the guard reads it once and
    connects to what it read, so the refused host never hears from it."""
    port = servers.tcp_port if mode == "toctou" else servers.udp_port
    count = servers.accepted if mode == "toctou" else servers.received
    rule = f"127.0.0.1:{port}" if mode == "toctou" else f"udp://127.0.0.1:{port}"
    # The control: unconfined, some attempts reach the other host.  Rounds
    # of 40, below the listeners' backlog: a full queue would stall connect.
    # Up to 50 of them: on a quiet machine the flipping thread can lose the
    # race for 400 sends in a row (seen once in a whole-suite run).
    reached = 0
    for _ in range(50):
        await probe(None, netprobe, mode, "127.0.0.1", "127.0.0.2", port, 40)
        count("127.0.0.1")
        reached += count("127.0.0.2")
        if reached:
            break
    assert reached, "the race never hit: the test would prove nothing"
    sb = sandbox(netprobe, net_allow=[rule])
    good = 0
    for _ in range(5):
        _, out = await probe(sb, netprobe, mode, "127.0.0.1", "127.0.0.2", port, 40)
        assert count("127.0.0.2") == 0, out
        good += count("127.0.0.1")
    assert good > 0


def test_without_the_supervisor_address_rules_are_named() -> None:
    """The report of a run without the supervisor names net_allow (and
    net_deny) when they need the guard; port rules are Landlock's."""
    policy = Sandbox(net_allow=["127.0.0.1:80"], net_deny=["127.0.0.2"])
    assert {"net_allow", "net_deny"} <= set(unenforced(policy, Subsystem.SUPERVISOR))
    ports_only = Sandbox(net_allow=["tcp://:80"])
    assert "net_allow" not in unenforced(ports_only, Subsystem.SUPERVISOR)
    assert "unix_allow" in unenforced(Sandbox(unix_allow=["/tmp"]), Subsystem.SUPERVISOR)


def _ping_in_netns(netprobe: str, host: str, rule: str | None, backend: str) -> int:
    """Ping ``host`` in a fresh network namespace of our own (ping sockets
    are off on this host: their sysctl is per namespace), in a sandbox
    with ``rule`` (None: unconfined)."""
    script = f"""
import anyio, os, subprocess, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
    f.write("0 2147483647")
from test_net_guard import probe, sandbox
sb = None if {rule!r} is None else sandbox({netprobe!r}, net_allow=[{rule!r}])
code, out = anyio.run(probe, sb, {netprobe!r}, "ping", {host!r}, backend={backend!r})
print(code)
"""
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.fixture(scope="module")
def netns() -> None:
    if os.geteuid() != 0 or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("needs root to make a network namespace")


@pytest.mark.usefixtures("netns")
async def test_icmp_by_rule(netprobe: str, anyio_backend: str) -> None:
    def ping(host: str, rule: str | None) -> int:
        return _ping_in_netns(netprobe, host, rule, anyio_backend)

    assert ping("127.0.0.1", None) == 0  # the control
    assert ping("127.0.0.1", "icmp://127.0.0.1") == 0
    assert ping("::1", "icmp://*") == 0
    assert ping("127.0.0.2", "icmp://127.0.0.1") == errno.EACCES
    # No icmp rule: no ping socket at all.
    assert ping("127.0.0.1", "*") == errno.EAFNOSUPPORT


def _as_nobody(netprobe: str, tcp_port: int, backend: str) -> list[int]:
    script = f"""
import anyio, os, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
# Everything imported first: the interpreter lives under /root, closed to 65534.
import anyio._backends._{backend}
from test_net_guard import probe, sandbox
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
sb = sandbox({netprobe!r}, net_allow=["127.0.0.1:{tcp_port}"])
async def main():
    return [(await probe(sb, {netprobe!r}, "connect", "tcp", h, {tcp_port}))[0]
            for h in ("127.0.0.1", "127.0.0.2")]
print(*anyio.run(main, backend={backend!r}))
"""
    env = {**os.environ, "ASYNCSANDLOCK_TEST_BUILD": os.path.dirname(netprobe)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return [int(x) for x in done.stdout.split()]


async def test_as_nobody(netprobe: str, servers: Servers, anyio_backend: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534")
    assert _as_nobody(netprobe, servers.tcp_port, anyio_backend) == [0, errno.EACCES]
    assert servers.accepted("127.0.0.1") == 1
    assert servers.accepted("127.0.0.2") == 0


async def test_names_resolve_once_per_sandbox(netprobe: str, servers: Servers,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A Sandbox resolves its names on its first run and keeps the addresses
    for every later run; a new Sandbox resolves anew."""
    from asyncsandlock.handlers import net

    calls: list[str] = []
    real = net._lookup

    async def counting(name: str, on_unavailable: object) -> object:
        calls.append(name)
        return await real(name, on_unavailable)  # type: ignore[arg-type]

    monkeypatch.setattr(net, "_lookup", counting)
    rules = [f"localhost:{servers.tcp_port}"]
    sb = sandbox(netprobe, net_allow=rules)
    for _ in range(3):
        assert (await probe(sb, netprobe, "connect", "tcp", "127.0.0.1", servers.tcp_port))[0] == 0
    assert calls == ["localhost"]
    await probe(sandbox(netprobe, net_allow=rules), netprobe, "connect", "tcp", "127.0.0.1",
                servers.tcp_port)
    assert calls == ["localhost", "localhost"]


async def test_a_name_that_does_not_resolve_is_a_policy_error(netprobe: str) -> None:
    from asyncsandlock import PolicyError

    sb = sandbox(netprobe, net_allow=["no-such-host.invalid:80"])
    with pytest.raises(PolicyError, match=r"no-such-host\.invalid"):
        await probe(sb, netprobe, "connect", "tcp", "127.0.0.1", 80)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_bind_every_port_and_deny_bind(try_syscall: str) -> None:
    """net_allow_bind="*" binds any port; net_deny_bind keeps its ports shut
    (controls: without a bind rule the same bind is refused)."""
    port, other = _free_port(), _free_port()

    async def bind(sb: Sandbox, at: int) -> int:
        return (await probe(sb, try_syscall, "bind-tcp", at))[0]

    assert await bind(sandbox(try_syscall), port) == errno.EACCES
    assert await bind(sandbox(try_syscall, net_allow_bind=["*"]), port) == 0
    ranged = sandbox(try_syscall, net_allow_bind=[f"{min(port, other)}-{max(port, other)}"],
                     net_deny_bind=[port])
    assert await bind(ranged, port) == errno.EACCES
    assert await bind(ranged, other) == 0
    # Port 0: an ephemeral port the kernel picks.
    assert await bind(sandbox(try_syscall), 0) == errno.EACCES
    assert await bind(sandbox(try_syscall, net_allow_bind=[0]), 0) == 0


async def test_an_unspec_family_is_read_as_ipv4(netprobe: str, servers: Servers) -> None:
    """An IPv4 UDP send takes an AF_UNSPEC sockaddr as a sockaddr_in: the
    guard checks it as one (control: unconfined, it reaches 127.0.0.2)."""
    port = servers.udp_port
    assert (await probe(None, netprobe, "unspec", "127.0.0.2", port))[0] == 0
    assert servers.received("127.0.0.2") == 1
    sb = sandbox(netprobe, net_allow=[f"udp://127.0.0.1:{port}"])
    assert (await probe(sb, netprobe, "unspec", "127.0.0.2", port))[0] == errno.EACCES
    assert servers.received("127.0.0.2") == 0
    assert (await probe(sb, netprobe, "unspec", "127.0.0.1", port))[0] == 0
    assert servers.received("127.0.0.1") == 1


@pytest.fixture
def unix_servers(tmp_path: pathlib.Path) -> Iterator[dict[str, str]]:
    """A listening pathname socket in an allowed directory and one outside it."""
    out: dict[str, str] = {}
    socks = []
    for name in ("allowed", "other"):
        folder = tmp_path / name
        folder.mkdir()
        path = str(folder / "sock")
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.listen(8)
        socks.append(sock)
        out[name] = path
    try:
        yield out
    finally:
        for sock in socks:
            sock.close()


async def test_unix_allow(netprobe: str, unix_servers: dict[str, str]) -> None:
    """unix_allow opens the pathname sockets under its paths, through the
    guard; control: allow_unix_sockets reaches the other one too."""
    allowed, other = unix_servers["allowed"], unix_servers["other"]
    sb = sandbox(netprobe, unix_allow=[os.path.dirname(allowed)])
    assert (await probe(sb, netprobe, "unix", allowed))[0] == 0
    assert (await probe(sb, netprobe, "unix", other))[0] == errno.EACCES
    # A symlink inside the allowed directory leads nowhere else.
    link = os.path.join(os.path.dirname(allowed), "link")
    os.symlink(other, link)
    assert (await probe(sb, netprobe, "unix", link))[0] == errno.EACCES
    everything = sandbox(netprobe, allow_unix_sockets=True)
    assert (await probe(everything, netprobe, "unix", other))[0] == 0
    assert (await probe(sandbox(netprobe), netprobe, "unix", allowed))[0] == errno.EACCES
