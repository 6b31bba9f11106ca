"""``Sandbox``: the policy as frozen, validated data."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._exceptions import PolicyError
from ._handler import Handler
from ._netspec import NetRule, parse_net_allow, parse_ports
from ._syscalls import AARCH64, X86_64
from ._unavailable import UnavailableHandler, strict

if TYPE_CHECKING:
    from ._pipeline import Stage
    from ._process import SandboxedProcess
    from ._result import Result

#: Read-only system directories that exist on this host; a starting point for
#: ``fs_readable``.
SYSTEM_READABLE: tuple[str, ...] = tuple(
    p for p in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc") if os.path.exists(p)
)

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _paths(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes, os.PathLike)):
        raise PolicyError(name, f"expected a sequence of paths, got the single path {value!r}")
    if not isinstance(value, Iterable):
        raise PolicyError(name, f"expected a sequence of paths, got {value!r}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, (str, os.PathLike)):
            raise PolicyError(name, f"{item!r} is not a path")
        path = os.path.abspath(os.fspath(item))
        if "\0" in path:
            raise PolicyError(name, f"{item!r} contains a NUL byte")
        if not os.path.exists(path):
            raise PolicyError(name, f"{path!r} does not exist")
        if path not in out:
            out.append(path)
    return tuple(out)


def parse_size(name: str, value: object) -> int:
    """Bytes from an int or a string such as ``"512M"`` or ``"2G"``."""
    if isinstance(value, bool):
        raise PolicyError(name, f"{value!r} is not a size")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        text = value.strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
        try:
            size = int(float(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit])
        except ValueError:
            raise PolicyError(name, f"{value!r} is not a size like 1048576, '512M' or '2G'") from None
    else:
        raise PolicyError(name, f"{value!r} is not a size")
    if size <= 0:
        raise PolicyError(name, f"{value!r} must be positive")
    return size


def _positive(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PolicyError(name, f"{value!r} must be a positive integer or None")
    return value


def check_env(name: str, value: object) -> Mapping[str, str]:
    """Validate an environment mapping; returns a read-only copy."""
    if not isinstance(value, Mapping):
        raise PolicyError(name, f"expected a mapping of str to str, got {value!r}")
    for key, val in value.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise PolicyError(name, f"{key!r}={val!r}: keys and values must be str")
        if not key or "=" in key or "\0" in key or "\0" in val:
            raise PolicyError(name, f"{key!r}: not a valid environment variable")
    return MappingProxyType(dict(value))


def check_cwd(name: str, value: object) -> str | None:
    """Validate a working directory; returns it as an absolute path."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise PolicyError(name, f"{value!r} is not a path")
    path = os.path.abspath(os.fspath(value))
    if not os.path.isdir(path):
        raise PolicyError(name, f"{path!r} is not an existing directory")
    return path


def check_syscall_names(name: str, value: object) -> tuple[str, ...]:
    """Validate syscall names against every supported architecture's table."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise PolicyError(name, f"expected a sequence of syscall names, got {value!r}")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or (item not in X86_64 and item not in AARCH64):
            raise PolicyError(name, f"unknown syscall name {item!r}")
        names.append(item)
    return tuple(dict.fromkeys(names))


def check_handlers(name: str, value: object) -> tuple[Handler, ...]:
    """Validate a sequence of :class:`Handler` instances."""
    if not isinstance(value, Iterable) or isinstance(value, (str, Handler)):
        raise PolicyError(name, f"expected a sequence of Handler instances, got {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, Handler):
            raise PolicyError(name, f"{item!r} is not a Handler instance")
        syscalls = item.syscalls
        if isinstance(syscalls, str) or not syscalls:
            raise PolicyError(name, f"{item!r}: syscalls must be a non-empty tuple of names")
        check_syscall_names(name, syscalls)
    return items


@dataclass(frozen=True, slots=True, kw_only=True, weakref_slot=True, eq=False)
class Sandbox:
    """A confinement policy; one instance may run any number of commands.

    Every field is validated on construction and an invalid value raises
    :class:`PolicyError` before any process exists.  The Landlock ruleset
    and the BPF program derived from the policy are built once, on first
    use, and reused.
    """

    fs_readable: Sequence[str | os.PathLike[str]] = ()
    fs_writable: Sequence[str | os.PathLike[str]] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    clean_env: bool = False
    cwd: str | os.PathLike[str] | None = None
    net_allow: Sequence[str] = ()
    net_allow_bind: Sequence[int | str] = ()
    max_open_files: int | None = None
    max_processes: int | None = None
    max_memory: int | str | None = None
    extra_deny_syscalls: Sequence[str] = ()
    handlers: Sequence[Handler] = ()
    on_unavailable: UnavailableHandler = strict
    name: str | None = None
    _compiled: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "fs_readable", _paths("fs_readable", self.fs_readable))
        put(self, "fs_writable", _paths("fs_writable", self.fs_writable))
        put(self, "env", check_env("env", self.env))
        if not isinstance(self.clean_env, bool):
            raise PolicyError("clean_env", f"{self.clean_env!r} must be True or False")
        put(self, "cwd", check_cwd("cwd", self.cwd))
        if isinstance(self.net_allow, str) or not isinstance(self.net_allow, Iterable):
            raise PolicyError("net_allow", f"expected a sequence of rules, got {self.net_allow!r}")
        put(self, "net_allow", tuple(self.net_allow))
        for spec in self.net_allow:
            parse_net_allow(spec)
        if isinstance(self.net_allow_bind, (str, int)) or not isinstance(
            self.net_allow_bind, Iterable
        ):
            raise PolicyError("net_allow_bind",
                              f"expected a sequence of ports, got {self.net_allow_bind!r}")
        put(self, "net_allow_bind", tuple(self.net_allow_bind))
        self.bind_ports()
        put(self, "max_open_files", _positive("max_open_files", self.max_open_files))
        put(self, "max_processes", _positive("max_processes", self.max_processes))
        if self.max_memory is not None:
            put(self, "max_memory", parse_size("max_memory", self.max_memory))
        put(self, "extra_deny_syscalls",
            check_syscall_names("extra_deny_syscalls", self.extra_deny_syscalls))
        put(self, "handlers", check_handlers("handlers", self.handlers))
        if not callable(self.on_unavailable):
            raise PolicyError("on_unavailable", f"{self.on_unavailable!r} is not callable")
        if self.name is not None and not isinstance(self.name, str):
            raise PolicyError("name", f"{self.name!r} must be a str or None")

    def net_rules(self) -> tuple[NetRule, ...]:
        """The parsed ``net_allow`` rules."""
        return tuple(parse_net_allow(spec) for spec in self.net_allow)

    def bind_ports(self) -> frozenset[int]:
        """The TCP ports ``net_allow_bind`` opens."""
        ports: set[int] = set()
        for item in self.net_allow_bind:
            if isinstance(item, bool):
                raise PolicyError("net_allow_bind", f"{item!r} is not a port")
            if isinstance(item, int):
                ports |= parse_ports("net_allow_bind", str(item))
            elif isinstance(item, str):
                ports |= parse_ports("net_allow_bind", item)
            else:
                raise PolicyError("net_allow_bind", f"{item!r} is not a port")
        return frozenset(ports)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return (f"<Sandbox{label} readable={list(self.fs_readable)} "
                f"writable={list(self.fs_writable)} net={list(self.net_allow)}>")

    # The running API lives in _run.py and _pipeline.py; these stubs are
    # replaced there so that this module stays pure data.
    async def run(self, args: Sequence[str], **kwargs: Any) -> Result:
        """Run ``args`` in this sandbox and wait for it; see :func:`asyncsandlock.run`."""
        from ._run import run

        return await run(self, args, **kwargs)

    async def open(self, args: Sequence[str], **kwargs: Any) -> SandboxedProcess:
        """Start ``args`` in this sandbox and return the running process."""
        from ._run import open_process

        return await open_process(self, args, **kwargs)

    def cmd(self, args: Sequence[str], **kwargs: Any) -> Stage:
        """A pipeline stage that runs ``args`` in this sandbox."""
        from ._pipeline import Stage

        return Stage._create(self, args, kwargs)
