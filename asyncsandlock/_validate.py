"""Validation of policy fields and run arguments: each raises PolicyError
naming the field, before any process exists."""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import IO, Any

from ._exceptions import PolicyError
from ._groups import SYSCALL_GROUPS
from ._handler import ExceptionPolicy, Handler, route
from ._kernel._bpf import DEFAULT_DENY
from ._kernel._sys import SYSCALLS
from ._kernel._syscalls import AARCH64, X86_64

# Limits end up in 64-bit rlimit fields; larger ones would overflow at spawn.
_LIMIT_MAX = (1 << 63) - 1
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: fds are C ints: a larger number is no fd (and overflows os.fstat).
_FD_MAX = (1 << 31) - 1
#: What ``name`` may be: it is to become the hostname the child sees, so a
#: hostname's characters (plus '_'), at most HOST_NAME_MAX (64) of them, and
#: a letter or digit first (no '-' to pass for an option, no '.' for a path).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def show(value: object) -> str:
    """``repr(value)`` for an error message, cut short if long; it never
    fails (``repr`` of an int beyond 4300 digits is a ValueError)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} of {value.bit_length()} bits>" \
            if isinstance(value, int) else f"<{type(value).__name__}>"
    return text if len(text) <= 200 else f"{text[:200]}..."


def check_text(name: str, text: str, what: str = "") -> str:
    """``text`` if the kernel can take it as a C string: no NUL byte, and
    encodable as the file system encoding does (so a lone surrogate, other
    than the ``surrogateescape`` ones standing for undecodable bytes, is
    refused here rather than as a UnicodeEncodeError at spawn)."""
    # The label is made only for an error: show() costs more than the checks.
    if "\0" in text:
        raise PolicyError(name, f"{what or show(text)} contains a NUL byte")
    try:
        os.fsencode(text)
    except UnicodeEncodeError as exc:
        raise PolicyError(name, f"{what or show(text)} cannot be encoded for the kernel "
                                f"({exc.reason}: {text[exc.start:exc.end]!r})") from None
    return text


def check_path(name: str, item: object) -> str:
    """One path (str or a PathLike giving str) as an absolute str; an empty
    path is refused, not read as the current directory."""
    if not isinstance(item, (str, os.PathLike)):
        raise PolicyError(name, f"{show(item)} is not a path")
    text = os.fspath(item)
    if not isinstance(text, str):
        raise PolicyError(name, f"{show(item)} is a bytes path; use str")
    if not text:
        raise PolicyError(name, "empty path (write '.' for the current directory)")
    return os.path.abspath(check_text(name, text))


def check_paths(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes, os.PathLike)):
        raise PolicyError(name, f"expected a sequence of paths, got the single path {show(value)}")
    if not isinstance(value, Iterable):
        raise PolicyError(name, f"expected a sequence of paths, got {show(value)}")
    out: list[str] = []
    for item in value:
        path = check_path(name, item)
        if not os.path.exists(path):
            raise PolicyError(name, f"{show(path)} does not exist")
        if path not in out:
            out.append(path)
    return tuple(out)


def parse_size(name: str, value: object) -> int:
    """Bytes from an int or a string such as ``"512M"`` or ``"2G"``."""
    if isinstance(value, bool):
        raise PolicyError(name, f"{show(value)} is not a size")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        text = value.strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
        try:
            size = int(float(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit])
        except (ValueError, OverflowError):  # OverflowError: "inf", "1e400"
            raise PolicyError(name,
                              f"{show(value)} is not a size like 1048576, '512M' or '2G'") from None
    else:
        raise PolicyError(name, f"{show(value)} is not a size")
    if size <= 0:
        raise PolicyError(name, f"{show(value)} must be positive")
    if size > _LIMIT_MAX:
        raise PolicyError(name, f"{show(value)} is too large")
    return size


def check_positive(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _LIMIT_MAX:
        raise PolicyError(name, f"{show(value)} must be a positive integer or None")
    return value


#: The empty environment every run without ``env=`` gets (read-only).
_NO_ENV: Mapping[str, str] = MappingProxyType({})


def check_env(name: str, value: object) -> Mapping[str, str]:
    """Validate an environment mapping; returns a read-only copy."""
    if type(value) is dict and not value:  # run()'s usual case, without the ABC check
        return _NO_ENV
    if not isinstance(value, Mapping):
        raise PolicyError(name, f"expected a mapping of str to str, got {show(value)}")
    for key, val in value.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise PolicyError(name, f"{show(key)}={show(val)}: keys and values must be str")
        if not key or "=" in key:
            raise PolicyError(name, f"{show(key)}: not a valid environment variable")
        check_text(name, key)
        check_text(name, val, f"the value of {show(key)}")
    return MappingProxyType(dict(value))


def check_cwd(name: str, value: object) -> str | None:
    """Validate a working directory; returns it as an absolute path."""
    if value is None:
        return None
    path = check_path(name, value)
    if not os.path.isdir(path):
        raise PolicyError(name, f"{show(path)} is not an existing directory")
    return path


def check_syscall_names(name: str, value: object, *, groups: bool = False) -> tuple[str, ...]:
    """Validate syscall names against every supported architecture's table
    (and, with ``groups``, the ``@group`` names of ``_groups.py``)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise PolicyError(name, f"expected a sequence of syscall names, got {show(value)}")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or (item not in X86_64 and item not in AARCH64
                                         and (not groups or item not in SYSCALL_GROUPS)):
            raise PolicyError(name, f"unknown syscall name {show(item)}")
        names.append(item)
    return tuple(dict.fromkeys(names))


def check_name(name: str, value: object) -> str | None:
    """Validate a sandbox name (see ``_NAME``)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PolicyError(name, f"{show(value)} must be a str or None")
    if not _NAME.fullmatch(value):
        raise PolicyError(name, f"{show(value)} is not a valid name: 1 to 64 ASCII letters, "
                                "digits, '-', '.' or '_', starting with a letter or digit")
    return value


def check_handlers(name: str, value: object,
                   deny: Iterable[str] | None = None) -> tuple[Handler, ...]:
    """Validate a sequence of :class:`Handler` instances.

    With ``deny`` (the policy's ``extra_deny_syscalls``), also refuse a
    handler that could never run: one that traps a syscall the filter denies
    (:data:`DEFAULT_DENY` and ``deny``), or none of whose syscalls exists on
    this architecture.  Without it, that check is left to the spawn.
    """
    if type(value) is tuple and not value:  # run()'s default, without the ABC check
        return value
    if not isinstance(value, Iterable) or isinstance(value, (str, Handler)):
        raise PolicyError(name, f"expected a sequence of Handler instances, got {show(value)}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, Handler):
            raise PolicyError(name, f"{show(item)} is not a Handler instance")
        syscalls = item.syscalls
        if isinstance(syscalls, str) or not syscalls:
            raise PolicyError(name, f"{show(item)}: syscalls must be a non-empty tuple of names")
        check_syscall_names(name, syscalls, groups=True)
        if not inspect.iscoroutinefunction(item.handle):
            raise PolicyError(name, f"{show(item)}: handle() must be an 'async def' method")
        if not isinstance(item.on_exception, ExceptionPolicy):
            raise PolicyError(name, f"{show(item)}: on_exception must be an ExceptionPolicy, "
                                    f"not {show(item.on_exception)}")
    if deny is not None:
        route(items, SYSCALLS, frozenset(DEFAULT_DENY).union(deny))
    return items


#: What a stdio slot accepts: PIPE, DEVNULL, STDOUT (stderr only), an fd, a
#: file object, or None to inherit the caller's.
StdioTarget = int | IO[Any] | None


def check_args(args: object) -> tuple[str, ...]:
    """Validate a command line (a non-empty sequence of str/PathLike)."""
    # A list or tuple (nearly every call) skips the ABC check, a str item
    # os.fspath(): both cost more than the rest on every spawn's path.
    items: Sequence[object] | None = None
    if (type(args) is list or type(args) is tuple
            or (not isinstance(args, (str, bytes)) and isinstance(args, Sequence))):
        items = args
    if not items:
        raise PolicyError("args", f"expected a non-empty list of arguments, got {show(args)}")
    out = []
    for arg in items:
        if type(arg) is str:
            out.append(check_text("args", arg))
            continue
        if not isinstance(arg, (str, os.PathLike)):
            raise PolicyError("args", f"{show(arg)} is not a str or path")
        text = os.fspath(arg)
        if not isinstance(text, str):
            raise PolicyError("args", f"{show(arg)} is a bytes path; use str")
        out.append(check_text("args", text))
    if not out[0]:
        raise PolicyError("args", "the command (args[0]) is an empty string")
    return tuple(out)


#: The names of the stdio slots, by fd.
SLOTS = ("stdin", "stdout", "stderr")


def check_fd(field: str, fd: object) -> int:
    """``fd`` if it is an open file descriptor, else :class:`PolicyError`."""
    if isinstance(fd, bool) or not isinstance(fd, int) or not 0 <= fd <= _FD_MAX:
        raise PolicyError(field, f"{show(fd)} is not a file descriptor")
    try:
        os.fstat(fd)
    except OSError:
        raise PolicyError(field, f"{fd} is not an open file descriptor") from None
    return fd


def check_fds(field: str, value: object) -> list[int]:
    """A sequence of open fds, else :class:`PolicyError`."""
    if type(value) is tuple and not value:  # run()'s default, without the ABC check
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise PolicyError(field, f"expected a sequence of fds, got {show(value)}")
    return [check_fd(field, fd) for fd in value]


def check_file(field: str, file: Any) -> int:
    """The fd of a file object for a stdio slot, else :class:`PolicyError`."""
    try:
        fd = file.fileno()
    except (OSError, ValueError) as exc:  # closed, or io.UnsupportedOperation
        raise PolicyError(field, f"{show(file)} has no file descriptor ({exc})") from None
    return check_fd(field, fd)


def check_timeout(timeout: object) -> float | None:
    """Validate a ``timeout=`` argument: positive, finite seconds, or None."""
    if timeout is None:
        return None
    seconds = math.nan
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        with contextlib.suppress(OverflowError):  # an int beyond any float stays NaN
            seconds = float(timeout)
    # "not > 0" rather than "<= 0": NaN compares false both ways.
    if not (seconds > 0 and math.isfinite(seconds)):
        raise PolicyError("timeout", f"{show(timeout)} must be a positive, finite number of "
                                     "seconds, or None for no timeout")
    return seconds


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
