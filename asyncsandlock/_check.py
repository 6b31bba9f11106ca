"""``asyncsandlock check``: what this host supports, and whether a sandbox runs.

The table is :func:`probe`'s :class:`Capabilities`; the verdict comes from
really running a command under the default (strict) policy, once plain and
once with a syscall handler, so it cannot disagree with what a user's own
sandbox would meet.
"""

from __future__ import annotations

import errno
import os
import platform
import sys

import anyio

from ._cgroup import memory_backend
from ._exceptions import ConfinementUnavailable, SandboxError
from ._features import Capabilities, probe
from ._handler import Handler
from ._kernel._notify import HandlerCtx, NotifAction
from ._policy import SYSTEM_READABLE, Sandbox
from ._refusal import hint_for, strict
from ._types import Subsystem


class _Pass(Handler):
    syscalls = ("uname",)

    async def handle(self, ctx: HandlerCtx) -> NotifAction:
        return NotifAction.continue_()


def _process_line(caps: Capabilities) -> str:
    if caps.seccomp_mode is None:
        return "unknown (/proc/self/status is unreadable)"
    if caps.under_listener:
        return "under a seccomp listener (inside a supervised sandbox)"
    if caps.under_seccomp:
        count = caps.seccomp_filters
        return f"under {count} seccomp filter{'s' if count != 1 else ''} (a container or sandbox)"
    return "no seccomp filter"


def rows(caps: Capabilities) -> list[tuple[str, str, str]]:
    """(feature, answer, what asyncsandlock uses it for), one per table line."""
    return [
        ("Landlock", str(caps.landlock), "files, TCP ports, signals, abstract sockets"),
        ("seccomp filter", str(caps.seccomp_filter), "the syscall deny list"),
        ("seccomp user notification", str(caps.user_notification),
         "syscall handlers, max_processes"),
        ("SYNC_WAKE_UP", str(caps.sync_wake_up), "faster syscall handlers (Linux 6.6)"),
        ("pidfd", str(caps.pidfd), "waiting for sandboxes"),
        ("clone3", str(caps.clone3), "not needed (refused inside sandboxes)"),
        ("user namespaces", str(caps.user_namespace), "not needed"),
        ("network namespaces", str(caps.network_namespace), "not needed"),
        ("this process", _process_line(caps), ""),
    ]


def container_rows() -> list[tuple[str, str, str]]:
    """What a container or pod gives this process (issue 13): the lines that
    explain a refusal there, and where workspaces can go."""
    status = {}
    try:
        with open("/proc/self/status") as f:
            status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    except OSError:
        pass
    caps = status.get("CapEff", "?").strip()
    root_ro = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
    tmp = os.environ.get("TMPDIR") or "/tmp"  # gettempdir() raises where none is writable
    return [
        ("pid", f"{os.getpid()}" + (" (PID 1: orphans of sandboxes are ours to reap)"
                                    if os.getpid() == 1 else ""), ""),
        ("user", f"uid {os.getuid()}, capabilities {'none' if caps.strip('0') == '' else caps}",
         "none are needed"),
        ("no_new_privs", status.get("NoNewPrivs", "?").strip(), "sandboxes set it for themselves"),
        ("root file system", "read-only" if root_ro else "writable",
         "workspaces need a writable directory (an emptyDir)"),
        (f"{tmp}", "writable" if os.access(tmp, os.W_OK) else "NOT writable",
         "the MCP server's default workspace root"),
        _memory_cgroup_row(),
    ]


def _memory_cgroup_row() -> tuple[str, str, str]:
    """Where max_memory can be the kernel's (issue 11, cgmem; docs/limits.md)."""
    found = memory_backend()
    if found.directory is None or found.files is None:
        return ("memory cgroup", "none", found.reason)
    return ("memory cgroup", f"v{found.files.version}, own group {found.directory}",
            'max_memory with memory_mechanism="cgroup"')


def _table(lines: list[tuple[str, str, str]]) -> str:
    first = max(len(a) for a, _, _ in lines)
    second = max(len(b) for _, b, _ in lines)
    out = [f"  {a:<{first}}  {b:<{second}}  {c}".rstrip() for a, b, c in lines]
    return "\n".join(out)


async def _runs(sandbox: Sandbox) -> str | None:
    """None if ``sandbox`` runs a command here, else why not."""
    try:
        result = await sandbox.run([sys.executable, "-I", "-S", "-c", ""], timeout=30)
    except ConfinementUnavailable as exc:
        return f"{exc.subsystem.value} is refused ({errno.errorcode.get(exc.errno, exc.errno)})"
    except (SandboxError, OSError) as exc:
        return str(exc)
    return None if result.success else f"the test command failed ({result.reason.value})"


def _supervisor_only(subsystem: Subsystem, error: OSError) -> None:
    """Run without anything but the supervisor: its line is about it alone."""
    if subsystem is Subsystem.SUPERVISOR:
        strict(subsystem, error)


async def _check() -> int:
    caps = await probe()
    readable = (*SYSTEM_READABLE, sys.base_prefix, sys.prefix)
    default = await _runs(Sandbox(fs_readable=readable))
    supervised = await _runs(Sandbox(fs_readable=readable, handlers=[_Pass()],
                                     on_unavailable=_supervisor_only))
    print(f"asyncsandlock check: Linux {platform.release()} {platform.machine()}, "
          f"Python {platform.python_version()}")
    print()
    print(_table(rows(caps) + container_rows()))
    print()
    refusals = caps.refusals(supervised=True)
    if refusals:
        print("refused here:")
        for sub, why in refusals.items():
            print(f"  {sub.value}: {why}\n    hint: {hint_for(sub)}")
        print()
    if default is None:
        print("a default (strict) sandbox runs here")
    else:
        print(f"a default (strict) sandbox cannot run here: {default}")
    if supervised is None:
        print("syscall handlers and max_processes run here")
    else:
        print(f"syscall handlers and max_processes cannot run here: {supervised}\n"
              "  (on_unavailable=allow_degraded(Subsystem.SUPERVISOR) runs without them)")
    return 0 if default is None else 1


def check_main() -> int:
    """``asyncsandlock check``: print the table; 0 if a default sandbox runs here."""
    return anyio.run(_check)
