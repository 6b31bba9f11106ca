"""Escape battery, the caller's terminal (issue 8, item 6).

The caller (a fresh interpreter, root and uid 65534) is a session leader
whose controlling terminal is a pty it made; the terminal is handed to the
child as fd 0, as a command-line user would.  Without ``interactive=True``
the child must not take the foreground (TIOCSPGRP), resize it (TIOCSWINSZ,
which signals the caller), steal it (TIOCSCTTY), redirect the console to it
(TIOCCONS), drop it (TIOCNOTTY), push input into it (TIOCSTI) or open
/dev/tty; and ``run()`` without ``stdin`` must not hand the caller's
terminal over at all (``read``).  The control runs the same helper
unconfined, in a process group of its own like the sandbox.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from conftest import build_helper
from escapes import (
    BACKENDS,
    DENIED,
    NOEFFECT,
    Attempt,
    attempt,
    check_control,
    check_held,
    run_caller,
)

T = "6"  # issue 8, item 6
TTY = [
    attempt("tiocsti", "tty", "sti", item=T),
    attempt("tiocspgrp", "tty", "spgrp", item=T),
    attempt("tiocswinsz", "tty", "swinsz", item=T),
    attempt("tiocnotty", "tty", "notty", item=T),
    attempt("tiocsctty", "tty", "sctty", item=T),
    attempt("tioccons", "tty", "cons", item=T),
    attempt("open-dev-tty", "tty", "devtty", item=T),
    attempt("read-caller-stdin-by-default", "tty", "read", held={NOEFFECT}, item=T),
]
# Stealing a terminal from its session and redirecting the console need
# CAP_SYS_ADMIN: as uid 65534 they fail unconfined too, so no pair.
NEEDS_ROOT = {"tiocsctty", "tioccons"}
CALLERS = {"root": None, "nobody": 65534}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root (and to drop to uid 65534)")
    helper = build_helper("escape")
    return {name: run_caller("terminal", helper, uid=uid) for name, uid in CALLERS.items()}


def cases() -> list[Any]:
    return [pytest.param(caller, a, id=f"{caller}-{a.id}") for caller in CALLERS for a in TTY
            if not (caller == "nobody" and a.id in NEEDS_ROOT)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("caller", "a"), cases())
def test_held(outcomes: dict[str, Any], caller: str, a: Attempt, backend: str) -> None:
    code, damage, stdout = outcomes[caller][a.id][backend]
    check_held(a, code, damage, stdout.encode())


@pytest.mark.parametrize(("caller", "a"), cases())
def test_control(outcomes: dict[str, Any], caller: str, a: Attempt) -> None:
    check_control(a, outcomes[caller][a.id]["control"])


assert DENIED


# The command line's interactive mode (interactive=True) is the permission:
# a shell on the user's terminal needs these.
INTERACTIVE = ("tiocspgrp", "tiocswinsz", "tiocnotty")


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("attack", INTERACTIVE)
def test_granted_when_interactive(outcomes: dict[str, Any], caller: str, attack: str) -> None:
    assert outcomes[caller][attack]["interactive"] == 0
