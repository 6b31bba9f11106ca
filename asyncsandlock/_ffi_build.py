"""cffi build script for the C core (``asyncsandlock._core``).

The cdef is read from ``csrc/spawn.h`` so that the header stays the single
description of the C interface.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

_CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"


def _cdef() -> str:
    header = (_CSRC / "spawn.h").read_text()
    body = header.split("/* CDEF-BEGIN */", 1)[1].split("/* CDEF-END */", 1)[0]
    # Calls the parent makes itself (Landlock ruleset building, ioctls).
    return body + (
        "\nlong syscall(long number, ...);\nint ioctl(int fd, unsigned long request, ...);\n"
        "char **environ;\n")


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "asyncsandlock._core",
    '#include "spawn.h"\n#include <unistd.h>\n#include <sys/ioctl.h>\nextern char **environ;\n',
    # setuptools wants paths relative to the project root, where it runs us.
    sources=["csrc/spawn.c", "csrc/reaper.c", "csrc/group.c", "csrc/netns.c",
             "csrc/guardcall.c", "csrc/netfast.c", "csrc/notifstep.c",
             "csrc/holes.c"],
    include_dirs=[str(_CSRC)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-fno-stack-protector"],
)

if __name__ == "__main__":
    import os

    os.chdir(_CSRC.parent)
    ffibuilder.compile(verbose=True)
