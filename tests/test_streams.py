"""Direct tests of the pipe streams (``asyncsandlock/_streams.py``)."""

from __future__ import annotations

import os

import anyio
import anyio.lowlevel
import pytest

from asyncsandlock._streams import FdReceiveStream, FdSendStream

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]


async def test_receive_and_end_of_stream() -> None:
    read, write = os.pipe2(os.O_CLOEXEC)
    stream = FdReceiveStream(read)
    os.write(write, b"data")
    os.close(write)
    assert await stream.receive() == b"data"
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()
    await stream.aclose()
    assert stream.fileno() == -1
    with pytest.raises(anyio.ClosedResourceError):
        await stream.receive()


async def test_a_cancelled_receive_consumes_nothing() -> None:
    """Regression test: receive() read the bytes waiting in the pipe, then
    raised the cancellation, and those bytes were gone."""
    read, write = os.pipe2(os.O_CLOEXEC)
    stream = FdReceiveStream(read)
    os.write(write, b"kept")
    with anyio.CancelScope() as scope:
        scope.cancel()
        await stream.receive()
    assert scope.cancelled_caught
    with anyio.fail_after(5):
        assert await stream.receive() == b"kept"
    os.close(write)
    await stream.aclose()


async def test_a_receive_cancelled_while_waiting() -> None:
    read, write = os.pipe2(os.O_CLOEXEC)
    stream = FdReceiveStream(read)
    with anyio.move_on_after(0.05) as scope:
        await stream.receive()
    assert scope.cancelled_caught
    os.write(write, b"later")
    assert await stream.receive() == b"later"
    os.close(write)
    await stream.aclose()


async def test_a_cancelled_send_writes_nothing() -> None:
    """Regression test: send() wrote, then raised the cancellation: the caller
    was told it failed although the peer got the bytes."""
    read, write = os.pipe2(os.O_CLOEXEC)
    stream = FdSendStream(write)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await stream.send(b"never")
    assert scope.cancelled_caught
    await stream.send(b"sent")
    await stream.aclose()
    assert os.read(read, 100) == b"sent"
    os.close(read)


async def test_send_to_a_closed_reader_is_broken() -> None:
    read, write = os.pipe2(os.O_CLOEXEC)
    stream = FdSendStream(write)
    os.close(read)
    with pytest.raises(anyio.BrokenResourceError):
        await stream.send(b"x")
    await stream.aclose()


async def test_close_wakes_a_parked_receiver() -> None:
    read, write = os.pipe2(os.O_CLOEXEC)
    stream = FdReceiveStream(read)
    async with anyio.create_task_group() as tg:

        async def receiver() -> None:
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()

        tg.start_soon(receiver)
        await anyio.wait_all_tasks_blocked()
        await stream.aclose()
    os.close(write)
