"""``max_memory`` turns transparent huge pages off in the sandbox.

A process given huge pages (``MADV_HUGEPAGE``, or THP "always") fills
memory several times faster than with 4 KiB pages, faster than the
watcher's looks assume, and passed its budget by up to its headroom.  Under
``max_memory`` the child starts with ``PR_SET_THP_DISABLE`` (csrc/spawn.c,
step ``thp``), which its forks inherit and ``execve`` keeps, and the filter
refuses turning it back on.  Each claim is paired with its control: the
same without ``max_memory``, or unconfined.
"""

from __future__ import annotations

import ctypes
import errno
import pathlib
import subprocess
import sys

import pytest

from asyncsandlock import ExitReason, Sandbox

from conftest import build_helper, system_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaks")]

PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PR_THP_DISABLE_EXCEPT_ADVISED = 1 << 1
THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
BUDGET = 100 << 20
#: The most the huge-page allocator may pass ``BUDGET`` by (docs/limits.md,
#: "Accuracy"): tens of milliseconds of a loaded caller at 4 KiB pages'
#: speed, where huge pages passed it by up to its headroom.
OVERSHOOT = 48 << 20


def _thp_mode() -> str:
    try:
        text = THP.read_text()
    except OSError:
        return "absent"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "absent"


needs_thp = pytest.mark.skipif(_thp_mode() not in ("always", "madvise"),
                               reason=f"transparent huge pages are {_thp_mode()!r} on this "
                                      "host: MADV_HUGEPAGE gets none, confined or not")

_libc = ctypes.CDLL(None, use_errno=True)


def _caller_thp() -> int:
    return int(_libc.prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0))


@pytest.fixture(scope="session")
def hugehog() -> str:
    return build_helper("hugehog")


def _in(helper: str, **kwargs: object) -> Sandbox:
    """The helper readable, and /proc (its smaps_rollup)."""
    return system_sandbox(fs_readable=[helper, "/proc"], **kwargs)


def _probes(stdout: bytes) -> list[tuple[int, int]]:
    """(PR_GET_THP_DISABLE, AnonHugePages kB) of each process that probed."""
    found = []
    for line in stdout.decode().splitlines():
        fields = dict(item.split("=") for item in line.split())
        found.append((int(fields["thp"]), int(fields["huge_kb"])))
    return found


async def test_huge_pages_are_off_under_max_memory(hugehog: str) -> None:
    """The helper, exec'd by a shell inside the sandbox, and its fork: the
    flag is set and 64 MiB asked for huge pages get none."""
    result = await _in(hugehog, max_memory="1G").run(
        ["/bin/sh", "-c", f"{hugehog} probe 64; exit $?"], timeout=60)
    assert result.success, result
    assert _probes(result.stdout or b"") == [(1, 0), (1, 0)], result.stdout


@needs_thp
async def test_huge_pages_control_without_max_memory(hugehog: str) -> None:
    """Control: the same sandbox without ``max_memory`` gets huge pages."""
    result = await _in(hugehog).run(["/bin/sh", "-c", f"{hugehog} probe 64; exit $?"],
                                    timeout=60)
    assert result.success, result
    probes = _probes(result.stdout or b"")
    assert len(probes) == 2 and all(thp == 0 and huge > 0 for thp, huge in probes), probes


async def test_turning_huge_pages_back_on_is_refused(hugehog: str) -> None:
    """Neither arg2 0 nor PR_THP_DISABLE_EXCEPT_ADVISED (which lets
    madvised memory have them) gets through the filter."""
    result = await _in(hugehog, max_memory="1G").run([hugehog, "reenable"], timeout=60)
    assert result.success, result
    assert (result.stdout or b"").split() == [
        b"-1", str(errno.EPERM).encode(), b"-1", str(errno.EPERM).encode(), b"thp=1"]


def test_turning_huge_pages_back_on_control(hugehog: str) -> None:
    """Control: unconfined, both calls succeed (with huge pages off first,
    as in the sandbox, so that turning them on changes something)."""
    script = (f"import ctypes, subprocess; ctypes.CDLL(None).prctl({PR_SET_THP_DISABLE}, 1, 0, 0,"
              f" 0); print(subprocess.run([{hugehog!r}, 'reenable'], capture_output=True).stdout)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout
    assert out.strip() == repr(b"0 0 0 0 thp=3\n").encode()


async def test_the_caller_keeps_its_own_setting(hugehog: str) -> None:
    """The flag belongs to the mm the vfork child shares with the caller
    until it execs: the caller has its own setting back after the spawn,
    whichever it was (6.18's EXCEPT_ADVISED included)."""
    before = _caller_thp()
    try:
        for setting, flags, expected in ((0, 0, 0), (1, PR_THP_DISABLE_EXCEPT_ADVISED, 3),
                                         (1, 0, 1)):
            assert _libc.prctl(PR_SET_THP_DISABLE, setting, flags, 0, 0) == 0
            result = await _in(hugehog, max_memory="1G").run([hugehog, "probe", "4"],
                                                             timeout=60)
            assert result.success, result
            assert _caller_thp() == expected
    finally:
        _libc.prctl(PR_SET_THP_DISABLE, before & 1, before & PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0)
    assert _caller_thp() == before


@needs_thp
async def test_a_huge_page_allocator_is_stopped_near_its_budget(hugehog: str) -> None:
    """An allocator asking for huge pages, 2 MiB at a time: stopped with
    ``MEMORY_LIMIT`` and its peak RSS within :data:`OVERSHOOT` of the
    budget (it printed its peak after each step: the last line)."""
    result = await _in(hugehog, max_memory=BUDGET).run([hugehog, "fill"], timeout=60)
    assert result.reason is ExitReason.MEMORY_LIMIT, result
    peak = int((result.stdout or b"0").split()[-1])
    assert peak - BUDGET <= OVERSHOOT, (peak - BUDGET) >> 20
