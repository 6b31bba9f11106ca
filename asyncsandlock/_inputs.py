"""``asyncsandlock.inputs``: a Gather consumer's named inputs, opened by name.

This module runs inside the sandboxed consumer, so it imports only the
standard library (``os``, ``io``) and reads nothing until it is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import BinaryIO

#: Set by :class:`Gather` in the consumer: ``name:fd,name:fd,...``.
ENV = "ASYNCSANDLOCK_INPUTS"


def parse(text: str) -> dict[str, int]:
    """``"a:3,b:0"`` -> ``{"a": 3, "b": 0}``; raises ValueError if malformed."""
    out: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, sep, fd = item.rpartition(":")
        if not sep or not name or not fd.isdigit():
            raise ValueError(f"{ENV}: {item!r} is not name:fd")
        out[name] = int(fd)
    return out


class Inputs(Mapping[str, BinaryIO]):
    """Read-only mapping of input name to a binary file reading that pipe.

    ``inputs["name"]`` opens the pipe once and returns the same file object
    on every later access; closing it closes the fd.  The names come from
    the ``ASYNCSANDLOCK_INPUTS`` environment variable at the time of the
    first lookup.
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] | None = None
        self._files: dict[str, BinaryIO] = {}

    def _table(self) -> dict[str, int]:
        if self._fds is None:
            self._fds = parse(os.environ.get(ENV, ""))
        return self._fds

    def __getitem__(self, name: str) -> BinaryIO:
        file = self._files.get(name)
        if file is None:
            table = self._table()
            if name not in table:
                raise KeyError(f"no input named {name!r}; this process has {sorted(table)} "
                               f"(from ${ENV})")
            file = self._files[name] = open(table[name], "rb", closefd=True)  # noqa: SIM115
        return file

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return f"<asyncsandlock.inputs {self._table()!r}>"


#: The inputs of this process (empty outside a Gather consumer).
inputs = Inputs()
