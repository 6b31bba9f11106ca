"""The network guard's C fast path (``_netfast.py``, ``csrc/netfast.c``):
once a destination's verdict is known, connects to it are answered in C,
with the guard's guarantees (the verdict memo keyed on what the rules look
at; EINPROGRESS for a non-blocking socket; a blocking connect still under
way waited for on the loop; deny answered as the guard does).  The
address-rewriting race is tested on this path by ``test_net_guard.py``
(its rounds of 40 connects go through C after the first of each
destination)."""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from test_net_guard import Servers, netprobe, probe, sandbox, servers  # noqa: F401

from asyncsandlock import Sandbox, _netfast, _supervisor
from asyncsandlock._core import ffi, lib
from asyncsandlock.handlers import NetGuard

pytestmark = pytest.mark.anyio


class Calls:
    """How often the Python guard and the wait of a connect under way ran."""

    def __init__(self) -> None:
        self.handle = 0
        self.finish = 0


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    seen = Calls()
    handle, finish = NetGuard.handle, _supervisor.finish_connect

    async def counted_handle(self: NetGuard, ctx: Any) -> Any:
        seen.handle += 1
        return await handle(self, ctx)

    def counted_finish(fd: int, started: int, raw: bytes) -> Any:
        seen.finish += 1
        return finish(fd, started, raw)

    monkeypatch.setattr(NetGuard, "handle", counted_handle)
    monkeypatch.setattr(_supervisor, "finish_connect", counted_finish)
    yield seen


def _sockaddr(host: str, port: int, tail: bytes = b"") -> bytes:
    if ":" in host:
        return (socket.AF_INET6.to_bytes(2, "little") + port.to_bytes(2, "big")
                + (tail or b"\0" * 4) + socket.inet_pton(socket.AF_INET6, host) + b"\0" * 4)
    return (socket.AF_INET.to_bytes(2, "little") + port.to_bytes(2, "big")
            + socket.inet_pton(socket.AF_INET, host) + (tail or b"\0" * 8))


@contextlib.contextmanager
def _full_queue(port: int) -> Iterator[None]:
    """The accept queue of a listener on ``port`` made full (its length:
    backlog + 1, for a backlog of 0): a SYN to it is dropped, and sent
    again a second later."""
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield
    finally:
        for filler in fillers:
            filler.close()


def test_verdict_memo_keys() -> None:
    """The memo keys a verdict on the kind, family, port and address: not
    sin_zero, nor a v6 flow label; a short or non-inet sockaddr has no key;
    full, it starts over rather than refuse to learn."""
    memo = ffi.gc(lib.asl_verdicts_new(), lib.asl_verdicts_free)
    a = _sockaddr("127.0.0.1", 80)
    assert lib.asl_verdict_get(memo, 0, a, len(a)) == -1
    assert lib.asl_verdict_put(memo, 0, a, len(a), 1) == 0
    b = _sockaddr("127.0.0.1", 80, b"junkjunk")
    assert lib.asl_verdict_get(memo, 0, b, len(b)) == 1
    assert lib.asl_verdict_get(memo, 1, a, len(a)) == -1  # UDP is another question
    c = _sockaddr("127.0.0.1", 81)
    assert lib.asl_verdict_get(memo, 0, c, len(c)) == -1
    v6 = _sockaddr("::1", 80)
    lib.asl_verdict_put(memo, 0, v6, len(v6), 0)
    flow = _sockaddr("::1", 80, b"\x00\x01\x02\x03")
    assert lib.asl_verdict_get(memo, 0, flow, len(flow)) == 0
    for short in (a[:15], v6[:23], b"\x01\x00/tmp/sock\0"):
        assert lib.asl_verdict_get(memo, 0, short, len(short)) == -2
    for port in range(1, 5000):
        d = _sockaddr("10.0.0.1", port)
        lib.asl_verdict_put(memo, 0, d, len(d), 1)
    d = _sockaddr("10.0.0.1", 4999)
    assert lib.asl_verdict_get(memo, 0, d, len(d)) == 1
    assert lib.asl_verdict_get(memo, 0, a, len(a)) == -1  # forgotten when it started over


@pytest.mark.usefixtures("no_leaks")
async def test_repeated_connects_are_answered_in_c(netprobe: str, servers: Servers,  # noqa: F811
                                                   calls: Calls) -> None:
    """40 connects to the allowed host: the Python guard decides the first,
    C the others; 40 to a refused host: refused alike (EACCES), and the
    refused host hears nothing (the control: unconfined, it hears all 40)."""
    port = servers.tcp_port
    _, out = await probe(None, netprobe, "toctou", "127.0.0.2", "127.0.0.2", port, 40)
    assert out.startswith("ok=40") and servers.accepted("127.0.0.2") == 40
    sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{port}"])
    _, out = await probe(sb, netprobe, "toctou", "127.0.0.1", "127.0.0.1", port, 40)
    assert out.startswith("ok=40 refused=0"), out
    assert servers.accepted("127.0.0.1") == 40
    assert calls.handle == 1
    _, out = await probe(sb, netprobe, "toctou", "127.0.0.2", "127.0.0.2", port, 40)
    assert out.startswith("ok=0 refused=40"), out
    assert servers.accepted("127.0.0.2") == 0
    assert calls.handle == 2


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("yield_to_child", [True, False], ids=["yield", "no-yield"])
async def test_a_loop_of_connects_with_and_without_the_yield(
        netprobe: str, servers: Servers, calls: Calls,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, yield_to_child: bool) -> None:
    """Whether or not the pump hands the CPU to the child after an answer
    (``yield_to_child`` in netfast.c), 40 connects in a loop (the
    listener's backlog holds 64) are each answered once, as the kernel
    would: the first by the Python guard."""
    monkeypatch.setattr(_netfast, "YIELD_TO_CHILD", yield_to_child)
    port = servers.tcp_port
    sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{port}"])
    _, out = await probe(sb, netprobe, "toctou", "127.0.0.1", "127.0.0.1", port, 40)
    assert out.startswith("ok=40 refused=0"), out
    assert servers.accepted("127.0.0.1") == 40
    assert calls.handle == 1


@pytest.mark.usefixtures("no_leaks")
async def test_a_yield_does_not_hold_the_loop(netprobe: str, servers: Servers) -> None:  # noqa: F811
    """A child that connects, then computes for most of a second on the
    CPU the pump handed it: the loop's other tasks go on running (the pump
    yields once after its last answer, and returns when it gets the CPU
    back, not when the child traps again)."""
    port = servers.tcp_port
    sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{port}"])
    script = (f"{netprobe} toctou 127.0.0.1 127.0.0.1 {port} 20 && "
              "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done")
    gaps: list[float] = []
    done = False

    async def tick() -> None:
        while not done:
            start = time.monotonic()
            await anyio.sleep(0.001)
            gaps.append(time.monotonic() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        result = await sb.run(["/bin/sh", "-c", script], timeout=30)
        done = True
    assert result.returncode == 0, result
    assert servers.accepted("127.0.0.1") == 20
    assert len(gaps) > 10 and max(gaps) < 0.25, max(gaps)


@pytest.mark.usefixtures("no_leaks")
async def test_nonblocking_connect_in_c(netprobe: str, servers: Servers,  # noqa: F811
                                        calls: Calls) -> None:
    """A non-blocking socket's connect answered in C: EINPROGRESS (or done
    at once on loopback), then connected, as the kernel says it."""
    port = servers.tcp_port
    sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{port}"])
    for _ in range(3):
        code, out = await probe(sb, netprobe, "nbconnect", "127.0.0.1", port)
        assert code == 0 and "final=0 connected=1" in out, out
        assert out.split()[0] in ("first=115", "first=0"), out
    assert calls.handle == 1 and calls.finish == 0
    assert servers.accepted("127.0.0.1") == 3


@pytest.mark.usefixtures("no_leaks")
async def test_blocking_connect_under_way_is_waited_for_on_the_loop(
        netprobe: str, calls: Calls) -> None:  # noqa: F811
    """A blocking connect C started whose handshake is not over (the
    listener's queue is full: its SYN is dropped, and sent again after a
    second) is handed to the loop, which waits for it without blocking:
    a task keeps ticking meanwhile, and the connect succeeds once the queue
    has room."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        server.setblocking(False)
        port = server.getsockname()[1]
        sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{port}"])
        assert (await probe(sb, netprobe, "connect", "tcp", "127.0.0.1", port))[0] == 0
        assert calls.handle == 1  # the verdict is known from here on
        with _full_queue(port):
            ticks = 0

            async def tick_then_drain() -> None:
                nonlocal ticks
                for _ in range(20):
                    await anyio.sleep(0.02)
                    ticks += 1
                while True:  # room in the queue: the retransmitted SYN gets in
                    try:
                        server.accept()[0].close()
                    except BlockingIOError:
                        await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                tg.start_soon(tick_then_drain)
                code, out = await probe(sb, netprobe, "connect", "tcp", "127.0.0.1", port)
                tg.cancel_scope.cancel()
    assert code == 0, out
    assert calls.handle == 1 and calls.finish == 1
    assert ticks == 20  # the loop ran on while the connect was under way


@pytest.mark.usefixtures("no_leaks")
async def test_blocking_connect_refused_in_c(netprobe: str, calls: Calls) -> None:  # noqa: F811
    """Nothing listens: the kernel's ECONNREFUSED, from C too."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{port}"])
        for _ in range(2):
            code, _ = await probe(sb, netprobe, "connect", "tcp", "127.0.0.1", port)
            assert code == errno.ECONNREFUSED
    assert calls.handle == 1


@pytest.mark.usefixtures("no_leaks")
async def test_refused_socket_connects_again(netprobe: str, servers: Servers,  # noqa: F811
                                             calls: Calls) -> None:
    """A blocking connect refused, then the same socket connected to a port
    that listens: the kernel resets the socket after the refusal, and the
    second connect succeeds (the control: unconfined).  So it does in the
    sandbox, in Python and in C: the connect made for the child ends as the
    kernel's own blocking connect does, not with the socket left half-way
    (a third connect would have been needed)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        shut = closed.getsockname()[1]
        args = ("reconnect", "127.0.0.1", shut, servers.tcp_port)
        code, out = await probe(None, netprobe, *args)
        assert (code, out.strip()) == (0, f"first={errno.ECONNREFUSED} second=0")
        sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{shut}", f"127.0.0.1:{servers.tcp_port}"])
        for _ in range(2):  # the Python guard decides each destination first, then C
            code, out = await probe(sb, netprobe, *args)
            assert (code, out.strip()) == (0, f"first={errno.ECONNREFUSED} second=0")
    assert calls.handle == 2
    assert servers.accepted("127.0.0.1") == 3


@pytest.mark.usefixtures("no_leaks")
async def test_refused_after_a_wait_connects_again(netprobe: str, servers: Servers,  # noqa: F811
                                                    calls: Calls) -> None:
    """The same, for a connect refused only after a wait on the loop: its
    SYN dropped by a full queue, the listener closed meanwhile, the SYN sent
    again refused.  Then the same socket connects to a port that listens,
    as unconfined (the control), in Python and in C."""
    async def attempt(sb: Sandbox | None) -> tuple[int, str]:
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", shut))
            server.listen(0)
            with _full_queue(shut):
                async with anyio.create_task_group() as tg:
                    async def close_soon() -> None:
                        # Before the SYN is sent again, a second after the connect.
                        await anyio.sleep(0.5)
                        server.close()

                    tg.start_soon(close_soon)
                    args = ("reconnect", "127.0.0.1", shut, servers.tcp_port)
                    if sb is not None:
                        return await probe(sb, netprobe, *args)
                    # Unconfined, without blocking the loop (close_soon runs on it).
                    done = await anyio.run_process([netprobe, *map(str, args)], check=False)
                    return done.returncode, done.stdout.decode()

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        shut = free.getsockname()[1]
    expected = (0, f"first={errno.ECONNREFUSED} second=0")
    code, out = await attempt(None)
    assert (code, out.strip()) == expected
    sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{shut}", f"127.0.0.1:{servers.tcp_port}"])
    for _ in range(2):  # the Python guard decides each destination first, then C
        code, out = await attempt(sb)
        assert (code, out.strip()) == expected
    assert calls.handle == 2 and calls.finish == 1
    assert servers.accepted("127.0.0.1") == 3


@pytest.mark.usefixtures("no_leaks")
async def test_v4_mapped_and_deny_in_c(netprobe: str, servers: Servers,  # noqa: F811
                                       calls: Calls) -> None:
    """A dual-stack socket reaching 127.0.0.2 as ::ffff:127.0.0.2 is the v4
    host for the memo too: ``net_deny`` wins over ``*`` on every one of 40
    connects, and the allowed ::ffff:127.0.0.1 is reached 40 times (the
    control: unconfined, the mapped 127.0.0.2 is reached)."""
    port = servers.tcp_port
    _, out = await probe(None, netprobe, "toctou", "::ffff:127.0.0.2", "::ffff:127.0.0.2",
                         port, 40)
    assert out.startswith("ok=40") and servers.accepted("127.0.0.2") == 40
    sb = sandbox(netprobe, net_allow=["*"], net_deny=["127.0.0.2"])
    _, out = await probe(sb, netprobe, "toctou", "::ffff:127.0.0.2", "::ffff:127.0.0.2",
                         port, 40)
    assert out.startswith("ok=0 refused=40"), out
    assert servers.accepted("127.0.0.2") == 0
    _, out = await probe(sb, netprobe, "toctou", "::ffff:127.0.0.1", "::ffff:127.0.0.1",
                         port, 40)
    assert out.startswith("ok=40 refused=0"), out
    assert servers.accepted("127.0.0.1") == 40
    assert calls.handle == 2


_THREADS = """
import socket, sys, threading
port, results = int(sys.argv[1]), []
def connects():
    for _ in range(20):
        with socket.socket() as s:
            results.append(s.connect_ex(("127.0.0.1", port)))
threads = [threading.Thread(target=connects) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(len(results), sorted(set(results)))
"""


@pytest.mark.usefixtures("no_leaks")
async def test_threads_each_with_their_pidfd(netprobe: str, servers: Servers,  # noqa: F811
                                             calls: Calls) -> None:
    """Four threads connect at once: each thread's socket is taken through
    a pidfd of its own (cached per thread id in C), all 80 connects reach
    the allowed host, and the pidfds are closed when the run ends."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 to run threads in")
    port = servers.tcp_port
    sb = sandbox(netprobe, net_allow=[f"127.0.0.1:{port}"])
    accepted = 0

    async def drain() -> None:  # the listener's queue holds 64: drained as they come
        nonlocal accepted
        while True:
            accepted += servers.accepted("127.0.0.1")
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        result = await sb.run([python, "-c", _THREADS, str(port)], timeout=60)
        tg.cancel_scope.cancel()
    accepted += servers.accepted("127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert (result.stdout or b"").split(b"\n")[0] == b"80 [0]"
    assert accepted == 80
    assert 1 <= calls.handle <= 4  # the first of each thread at most, before the memo
