"""Validation of policy fields and run arguments: each raises PolicyError
naming the field, before any process exists."""

from __future__ import annotations

import inspect
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import IO, Any

from ._exceptions import PolicyError
from ._groups import SYSCALL_GROUPS
from ._handler import ExceptionPolicy, Handler
from ._syscalls import AARCH64, X86_64

# Limits end up in 64-bit rlimit fields; larger ones would overflow at spawn.
_LIMIT_MAX = (1 << 63) - 1
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def check_paths(name: str, value: object) -> tuple[str, ...]:
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
        except (ValueError, OverflowError):  # OverflowError: "inf", "1e400"
            raise PolicyError(name,
                              f"{value!r} is not a size like 1048576, '512M' or '2G'") from None
    else:
        raise PolicyError(name, f"{value!r} is not a size")
    if size <= 0:
        raise PolicyError(name, f"{value!r} must be positive")
    if size > _LIMIT_MAX:
        raise PolicyError(name, f"{value!r} is too large")
    return size


def check_positive(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _LIMIT_MAX:
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


def check_syscall_names(name: str, value: object, *, groups: bool = False) -> tuple[str, ...]:
    """Validate syscall names against every supported architecture's table
    (and, with ``groups``, the ``@group`` names of ``_groups.py``)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise PolicyError(name, f"expected a sequence of syscall names, got {value!r}")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or (item not in X86_64 and item not in AARCH64
                                         and (not groups or item not in SYSCALL_GROUPS)):
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
        check_syscall_names(name, syscalls, groups=True)
        if not inspect.iscoroutinefunction(item.handle):
            raise PolicyError(name, f"{item!r}: handle() must be an 'async def' method")
        if not isinstance(item.on_exception, ExceptionPolicy):
            raise PolicyError(name, f"{item!r}: on_exception must be an ExceptionPolicy, "
                                    f"not {item.on_exception!r}")
    return items


#: What a stdio slot accepts: PIPE, DEVNULL, STDOUT (stderr only), an fd, a
#: file object, or None to inherit the caller's.
StdioTarget = int | IO[Any] | None


def check_args(args: object) -> tuple[str, ...]:
    """Validate a command line (a non-empty sequence of str/PathLike)."""
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence) or not args:
        raise PolicyError("args", f"expected a non-empty list of arguments, got {args!r}")
    out = []
    for arg in args:
        if not isinstance(arg, (str, os.PathLike)):
            raise PolicyError("args", f"{arg!r} is not a str or path")
        text = os.fspath(arg)
        if "\0" in text:
            raise PolicyError("args", f"{text!r} contains a NUL byte")
        out.append(text)
    return tuple(out)


#: The names of the stdio slots, by fd.
SLOTS = ("stdin", "stdout", "stderr")


def check_fd(field: str, fd: object) -> int:
    """``fd`` if it is an open file descriptor, else :class:`PolicyError`."""
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise PolicyError(field, f"{fd!r} is not a file descriptor")
    try:
        os.fstat(fd)
    except OSError:
        raise PolicyError(field, f"{fd} is not an open file descriptor") from None
    return fd


def check_timeout(timeout: object) -> float | None:
    """Validate a ``timeout=`` argument (positive seconds or None)."""
    # "not > 0" rather than "<= 0": NaN compares false both ways.
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise PolicyError("timeout", f"{timeout!r} must be a positive number of seconds or None")
    return timeout


def check_input(input: object, stdin: StdioTarget) -> StdioTarget:
    """Validate an ``input=`` argument; returns the stdin target that carries it."""
    if input is None:
        return stdin
    if not isinstance(input, (bytes, bytearray, memoryview)):
        raise PolicyError("input", f"expected bytes, got {type(input).__name__}")
    # DEVNULL is run()'s default, so it is not a second choice of stdin.
    if stdin is not None and stdin != subprocess.DEVNULL:
        raise PolicyError("stdin", "stdin and input cannot both be given")
    return subprocess.PIPE
