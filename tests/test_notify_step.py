"""Listener.step, the supervisor's one call into C per notification
(csrc/notifstep.c): its outcomes other than a notification, on fds whose
poll answers are known (a pipe stands in for the listener)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from asyncsandlock._fd import close_fds
from asyncsandlock._kernel._notify import Listener, _continue


@pytest.fixture
def pipe() -> Iterator[list[int]]:
    fds = list(os.pipe())
    yield fds
    close_fds([fd for fd in fds if fd >= 0])


def hang_up(pipe: list[int]) -> None:
    os.close(pipe[1])
    pipe[1] = -1


def test_nothing_queued_is_none_and_does_not_block(pipe: list[int]) -> None:
    listener = Listener(pipe[0])
    assert listener.step({}) is None
    assert not listener.closed


def test_a_hang_up_closes_the_listener(pipe: list[int]) -> None:
    hang_up(pipe)
    listener = Listener(pipe[0])
    assert listener.step({}) is None
    assert listener.closed


def test_a_failed_receive_names_recv(pipe: list[int]) -> None:
    os.write(pipe[1], b"x")  # readable, but RECV on a pipe is ENOTTY
    with pytest.raises(OSError, match="NOTIF_RECV") as info:
        Listener(pipe[0]).step({})
    assert info.value.errno == errno.ENOTTY


@pytest.mark.parametrize("answer", ["step", "respond"])
def test_a_failed_answer_names_send(pipe: list[int], answer: str) -> None:
    listener = Listener(pipe[0])
    with pytest.raises(OSError, match="NOTIF_SEND") as info:
        if answer == "step":
            listener.step({}, 1, 0, 0, 1)
        else:
            listener.respond(1, 0, 0, 1)
    assert info.value.errno == errno.ENOTTY


def test_a_continue_step_answers_first_and_names_send(pipe: list[int]) -> None:
    """asl_notif_continue, the pump's step after a continue_(): its SEND
    comes first (the id read from the buffer), and fails as SEND."""
    listener = Listener(pipe[0])
    os.write(pipe[1], b"x")  # a RECV would be tried, and fail as RECV
    rc = _continue(listener.fd, listener._cbuf)
    with pytest.raises(OSError, match="NOTIF_SEND") as info:
        listener.stepped(rc)
    assert info.value.errno == errno.ENOTTY
