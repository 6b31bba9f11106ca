"""Direct tests of the pipe streams (``asyncsandlock/_streams.py``): the
contract of anyio's byte streams over raw pipe fds, on both backends.

(``tests/test_streams.py`` holds the regression tests of specific bugs.)
"""

from __future__ import annotations

import os
import random

import anyio
import anyio.lowlevel
import pytest

import asyncsandlock._streams

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

_streams = asyncsandlock._streams
BIG = 8 * 1024 * 1024  # far beyond a pipe's 64 KiB: both sides park many times


def pipe() -> tuple[asyncsandlock._streams.FdReceiveStream,
                    asyncsandlock._streams.FdSendStream]:
    read, write = os.pipe2(os.O_CLOEXEC)
    return _streams.FdReceiveStream(read), _streams.FdSendStream(write)


def pattern(size: int) -> bytes:
    """Bytes whose every position is recognisable: a lost or repeated chunk shows."""
    return b"".join(i.to_bytes(4, "big") for i in range(size // 4))


async def receive_all(stream: asyncsandlock._streams.FdReceiveStream) -> bytes:
    chunks = []
    try:
        while True:
            chunks.append(await stream.receive())
    except anyio.EndOfStream:
        return b"".join(chunks)


async def test_send_then_receive() -> None:
    receiver, sender = pipe()
    await sender.send(b"hello")
    await sender.send(b"")  # nothing to write: not an error, not an EOF
    await sender.send(b" world")
    assert await receiver.receive() == b"hello world"
    await sender.aclose()
    await receiver.aclose()


async def test_receive_respects_max_bytes() -> None:
    receiver, sender = pipe()
    await sender.send(b"abcdef")
    assert await receiver.receive(2) == b"ab"
    assert await receiver.receive(10) == b"cdef"
    await sender.aclose()
    await receiver.aclose()


async def test_end_of_stream_once_the_writer_is_gone() -> None:
    receiver, sender = pipe()
    await sender.send(b"last")
    await sender.aclose()
    assert await receiver.receive() == b"last"
    for _ in range(2):  # and it stays at the end
        with pytest.raises(anyio.EndOfStream):
            await receiver.receive()
    await receiver.aclose()


async def test_a_closed_stream_refuses_and_closes_once() -> None:
    receiver, sender = pipe()
    await receiver.aclose()
    await sender.aclose()
    assert (receiver.fileno(), sender.fileno()) == (-1, -1)
    with pytest.raises(anyio.ClosedResourceError):
        await receiver.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await sender.send(b"x")
    # A second close is a no-op (an fd closed twice could be someone else's).
    await receiver.aclose()
    await sender.aclose()


async def test_a_write_after_the_reader_is_gone_is_broken() -> None:
    receiver, sender = pipe()
    await sender.send(b"kept in the pipe")
    await receiver.aclose()
    with pytest.raises(anyio.BrokenResourceError):
        await sender.send(b"x")
    await sender.aclose()


async def test_a_writer_parked_on_a_full_pipe_learns_the_reader_left() -> None:
    """The control of the test above, the hard way: the reader goes while the
    writer waits for room; the writer wakes and fails instead of waiting for ever."""
    receiver, sender = pipe()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def writer() -> None:
                with pytest.raises(anyio.BrokenResourceError):
                    await sender.send(b"x" * BIG)

            tg.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            await receiver.aclose()
    await sender.aclose()


async def test_close_wakes_a_parked_sender() -> None:
    receiver, sender = pipe()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def writer() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await sender.send(b"x" * BIG)

            tg.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            await sender.aclose()
    await receiver.aclose()


async def test_a_large_transfer_arrives_whole_and_in_order() -> None:
    receiver, sender = pipe()
    data = pattern(BIG)
    received = b""
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                nonlocal received
                received = await receive_all(receiver)

            tg.start_soon(reader)
            await sender.send(data)
            await sender.aclose()
    assert received == data
    await receiver.aclose()


async def test_cancelled_receives_lose_no_bytes() -> None:
    """A writer streams 2 MiB while the reader's receives are cancelled at
    random moments, parked or not: what is received is exactly what was sent."""
    receiver, sender = pipe()
    data = pattern(2 * 1024 * 1024)
    rng = random.Random(9)
    chunks: list[bytes] = []
    cancelled = 0
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:

            async def writer() -> None:
                view = memoryview(data)
                while view:
                    size = rng.randrange(1, 200_000)
                    await sender.send(bytes(view[:size]))
                    view = view[size:]
                    await anyio.lowlevel.checkpoint()
                await sender.aclose()

            tg.start_soon(writer)
            while True:
                with anyio.CancelScope() as scope:
                    if rng.random() < 0.3:
                        scope.cancel()  # already cancelled: must read nothing
                    else:
                        scope.deadline = anyio.current_time() + rng.random() * 0.001
                    try:
                        chunks.append(await receiver.receive(rng.randrange(1, 100_000)))
                    except anyio.EndOfStream:
                        break
                cancelled += scope.cancelled_caught
    assert b"".join(chunks) == data
    assert cancelled > 0  # the cancellations did happen
    await receiver.aclose()


async def test_a_receive_cancelled_while_parked_leaves_the_stream_usable() -> None:
    receiver, sender = pipe()
    for _ in range(3):
        with anyio.move_on_after(0.01) as scope:
            await receiver.receive()
        assert scope.cancelled_caught
    await sender.send(b"after")
    assert await receiver.receive() == b"after"
    await sender.aclose()
    await receiver.aclose()
