"""The ``asyncsandlock`` command line: ``run``, ``check``, ``profile`` and ``mcp``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

import anyio
from anyio.abc import TaskStatus

from ._exceptions import SandboxError, SpawnError
from ._network import NETWORKS
from ._policy import Sandbox
from ._process import SandboxedProcess
from ._result import Result
from ._types import ExitReason
from ._validate import parse_size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncsandlock",
                                     description="Run commands under Landlock and seccomp.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a command in a sandbox",
                         usage="asyncsandlock run [options] -- CMD [ARG...]")
    run.add_argument("-r", "--read", action="append", default=[], metavar="PATH",
                     help="readable (and executable) tree; repeatable")
    run.add_argument("-w", "--write", action="append", default=[], metavar="PATH",
                     help="writable tree; repeatable")
    run.add_argument("--deny", action="append", default=[], metavar="PATH",
                     help="neither readable nor writable, even inside -r/-w trees; repeatable")
    run.add_argument("--uid", type=int, metavar="UID",
                     help="run the command as this user id, with no supplementary groups")
    run.add_argument("--gid", type=int, metavar="GID", help="its group id (default: the uid)")
    run.add_argument("--no-coredump", action="store_true", help="never write a core dump")
    run.add_argument("--net-allow", action="append", default=[], metavar="SPEC",
                     help="outbound rule such as ':443' or '*'; repeatable")
    run.add_argument("--net-bind", action="append", default=[], metavar="PORTS",
                     help="TCP ports the command may bind ('8080', '8000-8010'); repeatable")
    run.add_argument("-m", "--max-memory", metavar="SIZE",
                     help="resident memory of the whole sandbox, e.g. 512M")
    run.add_argument("--memory-mechanism", choices=("sampled", "cgroup"),
                     help="how --max-memory is held: sampled from the loop (the default), or "
                          "by the kernel in a cgroup of the run's own where one can be made")
    run.add_argument("-P", "--max-processes", type=int, metavar="N")
    run.add_argument("--max-open-files", type=int, metavar="N")
    # Resource limits (issue 11): see docs/limits.md.
    run.add_argument("--max-cpu", type=float, metavar="PERCENT",
                     help="share of one core for the whole sandbox (50: half a core)")
    run.add_argument("--cpu-time", type=float, metavar="SECONDS", help="CPU seconds in all")
    run.add_argument("--cpu-cores", metavar="LIST", help="CPUs it may run on, e.g. 0,1")
    run.add_argument("--max-threads", type=int, metavar="N")
    run.add_argument("-t", "--timeout", type=float, metavar="SECONDS")
    run.add_argument("--profile", metavar="NAME|FILE",
                     help="start from a profile (built-in name or TOML file); flags override it")
    env = run.add_mutually_exclusive_group()
    env.add_argument("--clean-env", dest="clean_env", action="store_true", default=None,
                     help="only PATH, HOME, LANG and TERM from this environment (the default)")
    env.add_argument("--inherit-env", dest="clean_env", action="store_false",
                     help="hand this whole environment, secrets included, to the command")
    run.add_argument("--env", action="append", default=[], metavar="K=V")
    run.add_argument("--cwd", metavar="DIR")
    # copy-on-write workspace (issue 12, docs/workspaces.md)
    run.add_argument("--workdir", metavar="DIR",
                     help="copy-on-write workspace: the command's changes to DIR go to a "
                          "private layer, listed on stderr, then committed or dropped")
    run.add_argument("--on-exit", choices=("commit", "abort"), default="commit",
                     help="commit the changes if the command succeeds (the default; else "
                          "they are dropped), or always abort them")
    run.add_argument("--dry-run", action="store_true",
                     help="list the workspace's changes and apply none")
    run.add_argument("--max-disk", metavar="SIZE", help="bound the workspace layer, e.g. 1G")
    run.add_argument("--workdir-mechanism", choices=("auto", "overlay", "snapshot"),
                     help="the workspace's layer: an overlay where the host allows one, else "
                          "a snapshot (auto, the default), or only one of them")
    # network namespaces (issue 10, docs/network-namespaces.md)
    run.add_argument("--network", choices=NETWORKS, metavar="|".join(NETWORKS),
                     help="the caller's network (host, the default), a private one with only "
                          "lo (loopback), or one joined to the caller's by a veth pair (uplink)")
    run.add_argument("--publish", action="append", type=int, default=[], metavar="PORT",
                     help="forward a port of the caller's loopback to the sandbox's PORT "
                          "(with --network loopback|uplink; the address is printed on "
                          "stderr); repeatable")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    sub.add_parser("check", help="print what this host supports")
    _profile_parsers(sub)
    return parser


def _profile_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``profile show`` and ``mcp`` (issue 13)."""
    profile = sub.add_parser("profile", help="show policy profiles")
    verbs = profile.add_subparsers(dest="verb", required=True)
    show = verbs.add_parser("show", help="print the effective policy of a profile")
    show.add_argument("profile", metavar="NAME|FILE")
    verbs.add_parser("list", help="list the built-in profiles")
    from .mcp._cli import add_arguments

    add_arguments(sub.add_parser("mcp", help="serve MCP code-execution tools"))


def _other_main(ns: argparse.Namespace) -> int:
    """``profile ...`` and ``mcp``."""
    if ns.command == "mcp":
        from .mcp._cli import mcp_main

        return mcp_main(ns)
    from ._profiles import builtin_names, describe, load_profile

    try:
        if ns.verb == "list":
            print("\n".join(builtin_names()))
        else:
            print(describe(load_profile(ns.profile)))
    except SandboxError as exc:
        print(f"asyncsandlock: {exc}", file=sys.stderr)
        return 2
    return 0


def _sandbox(ns: argparse.Namespace, *, interactive: bool) -> Sandbox:
    env = {}
    for item in ns.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"asyncsandlock: --env wants K=V, got {item!r}")
        env[key] = value
    if ns.profile:
        return _from_profile(ns, env, interactive=interactive)
    return Sandbox(
        fs_readable=ns.read, fs_writable=ns.write, net_allow=ns.net_allow,
        net_allow_bind=ns.net_bind, env=env, clean_env=ns.clean_env is not False, cwd=ns.cwd,
        max_memory=parse_size("max_memory", ns.max_memory) if ns.max_memory else None,
        max_processes=ns.max_processes, max_open_files=ns.max_open_files,
        max_cpu=ns.max_cpu, cpu_time=ns.cpu_time, max_threads=ns.max_threads,
        cpu_cores=_cores(ns.cpu_cores),
        interactive=interactive,
        fs_denied=ns.deny, uid=ns.uid, gid=ns.gid, no_coredump=ns.no_coredump,
        workdir=ns.workdir, on_exit=ns.on_exit, max_disk=ns.max_disk,
        workdir_mechanism=ns.workdir_mechanism or "auto",
        network=ns.network or "host", publish=ns.publish,
        memory_mechanism=ns.memory_mechanism or "sampled",
    )


#: What the CLI says when the sandbox was stopped (a timeout has its own line).
_STOPPED = {
    ExitReason.KILLED: "killed",
    ExitReason.MEMORY_LIMIT: "stopped: over its memory budget (max_memory)",
    ExitReason.CPU_LIMIT: "stopped: used up its CPU time (cpu_time)",
    ExitReason.OUTPUT_LIMIT: "stopped: wrote more than max_output",
    ExitReason.DISK_LIMIT: "stopped: its workspace's changes outgrew max_disk",
}


def _cores(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(item) for item in text.split(","))
    except ValueError:
        raise SystemExit(f"asyncsandlock: --cpu-cores wants numbers like 0,1, got {text!r}") \
            from None


def _from_profile(ns: argparse.Namespace, env: dict[str, str], *,
                  interactive: bool) -> Sandbox:
    """The profile's policy, with each flag given on the command line replacing
    its field (lists from flags add to the profile's)."""
    from ._profiles import load_profile

    profile = load_profile(ns.profile)
    if ns.timeout is None:
        ns.timeout = profile.timeout
    fields = profile.fields
    overrides: dict[str, object] = {"interactive": interactive}
    for flag, field in (("read", "fs_readable"), ("write", "fs_writable"),
                        ("net_allow", "net_allow"), ("net_bind", "net_allow_bind"),
                        ("deny", "fs_denied"), ("publish", "publish")):
        if getattr(ns, flag):
            overrides[field] = [*fields.get(field, ()), *getattr(ns, flag)]
    if env:
        overrides["env"] = {**fields.get("env", {}), **env}
    for flag in ("clean_env", "cwd", "max_processes", "max_open_files", "max_cpu", "cpu_time",
                 "max_threads", "uid", "gid", "workdir", "max_disk", "network",
                 "workdir_mechanism", "memory_mechanism"):
        if getattr(ns, flag) is not None:
            overrides[flag] = getattr(ns, flag)
    if ns.cpu_cores is not None:
        overrides["cpu_cores"] = _cores(ns.cpu_cores)
    if ns.no_coredump:
        overrides["no_coredump"] = True
    if ns.workdir is not None:
        overrides["on_exit"] = ns.on_exit
    if ns.max_memory:
        overrides["max_memory"] = parse_size("max_memory", ns.max_memory)
    sandbox: Sandbox = profile.sandbox(**overrides)
    return sandbox


async def _run(ns: argparse.Namespace) -> int:
    cmd = list(ns.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise SystemExit("asyncsandlock run: no command given (put it after --)")
    terminal = _Terminal()
    # On a terminal the command is its foreground group and may manage it
    # (a shell moves its jobs in and out); elsewhere nothing of ours to lend.
    sandbox = _sandbox(ns, interactive=terminal.attached)
    results: list[Result] = []

    failures: list[SandboxError] = []

    async def runner(*, task_status: TaskStatus[SandboxedProcess]) -> None:
        try:
            results.append(await sandbox.run(cmd, stdin=None, stdout=None, stderr=None,
                                             timeout=ns.timeout, task_status=task_status,
                                             dry_run=ns.dry_run))
        except SandboxError as exc:
            failures.append(exc)
            task_status.started(None)  # type: ignore[arg-type]

    with terminal:
        async with anyio.create_task_group() as tg:
            proc = await tg.start(runner)
            if proc is not None:
                terminal.hand_to(proc.pid)
                _report_published(proc)
    if failures:
        raise failures[0]
    result = results[0]
    if result.reason is ExitReason.TIMEOUT:
        print(f"asyncsandlock: timed out after {ns.timeout} s", file=sys.stderr)
    elif result.reason in _STOPPED:
        print(f"asyncsandlock: {_STOPPED[result.reason]}", file=sys.stderr)
    if result.changes is not None:
        _report_changes(result, dry_run=ns.dry_run, on_exit=ns.on_exit)
    if result.returncode < 0:
        return 128 - result.returncode
    return result.returncode


def _report_published(proc: SandboxedProcess) -> None:
    """Where each ``--publish`` port is reached from, on stderr."""
    if proc.network is None:
        return
    for port, (host, there) in sorted(proc.network.published.items()):
        print(f"asyncsandlock: published {port} at {host}:{there}", file=sys.stderr, flush=True)


def _report_changes(result: Result, *, dry_run: bool, on_exit: str) -> None:
    """The workspace's changes on stderr, one a line, and what became of them."""
    marks = {"added": "A", "modified": "M", "deleted": "D"}
    for change in result.changes or ():
        print(f"{marks[change.kind]} {change.path}", file=sys.stderr)
    fate = ("dry run: none applied" if dry_run else "committed"
            if on_exit == "commit" and result.success else "aborted")
    print(f"asyncsandlock: {len(result.changes or ())} changes, {fate}", file=sys.stderr)


class _Terminal:
    """The command runs in its own process group: on a terminal it must be the
    foreground group, or reading the terminal would stop it (SIGTTIN) and
    Ctrl-C would reach only us.  We take the terminal back afterwards, with
    SIGTTOU ignored because by then we are the background group."""

    def __init__(self) -> None:
        self._fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
        self._ours = os.tcgetpgrp(self._fd) if self._fd >= 0 else -1

    @property
    def attached(self) -> bool:
        """Standard input is a terminal whose foreground group is ours."""
        return self._fd >= 0 and self._ours == os.getpgrp()

    def hand_to(self, pgid: int) -> None:
        if self._fd >= 0 and self._ours == os.getpgrp():
            with contextlib.suppress(OSError):
                os.tcsetpgrp(self._fd, pgid)
                # The command may have read the terminal before it was its
                # foreground (it is exec'd before we get here) and been
                # stopped by SIGTTIN: now it may go on.
                os.killpg(pgid, signal.SIGCONT)

    def __enter__(self) -> _Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0 and self._ours == os.getpgrp():
            old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                with contextlib.suppress(OSError):
                    os.tcsetpgrp(self._fd, self._ours)
            finally:
                signal.signal(signal.SIGTTOU, old)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``asyncsandlock`` command."""
    ns = _parser().parse_args(argv)
    if ns.command in ("profile", "mcp"):
        return _other_main(ns)
    if ns.command == "check":
        from ._check import check_main

        return int(check_main())
    try:
        code = anyio.run(_run, ns)
    except SpawnError as exc:
        print(f"asyncsandlock: {exc}", file=sys.stderr)
        return 127 if exc.step == "execve" else 126
    except SandboxError as exc:
        print(f"asyncsandlock: {exc}", file=sys.stderr)
        return 125
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
