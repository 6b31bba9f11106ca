"""How ``execute_python`` starts the interpreter.

Most of a short ``execute_python`` call is the interpreter starting, and
most of that start is the ``site`` module: it finds the site-packages
directories and runs every ``.pth`` file in them (an editable install's
import hook, setuptools' distutils shim...), 30 ms of a 45 ms start here
(docs/performance.md).  Untrusted code needs the standard library, not the
server's own packages (the MCP SDK, pydantic...), so by default the
interpreter starts with ``-S``: no ``site``, no site-packages on
``sys.path``.  The operator gives them back with the ``[mcp]`` setting
``site_packages = true`` (docs/mcp.md).

``-S`` also drops the builtins ``site`` adds for interactive use: ``exit``,
``quit`` and ``help``, which generated code calls (``exit(1)``) as often as
``sys.exit``.  So the code is not run as ``python -`` but by :data:`PRELUDE`
(``python -c``), which defines them from ``site``'s own small module, then
reads the code from stdin and runs it in ``__main__`` as ``python -`` would:
same ``__name__``, ``__file__`` (``<stdin>``), ``sys.argv`` (``['-']``),
``sys.path`` (``-I``: nothing of the working directory), future flags of the
code's own, and tracebacks that start in the code (the prelude's own frame
is dropped from the top).  The visible differences: none of
``copyright``, ``credits`` and ``license``; and a ``# -*- coding: ... -*-``
line is honoured (``python -`` of 3.11 refuses source that is not UTF-8).
"""

from __future__ import annotations

from typing import Final

#: Run by ``python -I -S -c``; the code comes on stdin.  It leaves nothing
#: of its own in ``__main__``'s namespace.  An interpreter without
#: ``_sitebuiltins`` (it is CPython's, since 3.4) runs the code without
#: ``exit``/``quit``/``help``, as ``python -S -`` would.
PRELUDE: Final = """\
import builtins, sys
try:
    import _sitebuiltins
except ImportError:
    pass
else:
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    builtins.help = _sitebuiltins._Helper()
    del _sitebuiltins
def _hook(kind, value, tb, default=sys.excepthook, top=sys._getframe()):
    if tb is not None and tb.tb_frame is top:
        tb = tb.tb_next
        if isinstance(value, BaseException):
            value.__traceback__ = tb
    default(kind, value, tb)
sys.excepthook = _hook
sys.argv[0] = "-"
__file__ = "<stdin>"
__cached__ = None
del builtins, sys, _hook
exec(compile(__import__("sys").stdin.buffer.read(), "<stdin>", "exec", dont_inherit=True))
"""


def python_argv(python: str, *, site_packages: bool) -> list[str]:
    """The command line of ``execute_python``; the code goes on its stdin.

    ``-I`` always: no ``PYTHON*`` variables (the environment is clean
    anyway), no user site directory, no working directory on ``sys.path``.
    """
    if site_packages:
        return [python, "-I", "-"]
    return [python, "-I", "-S", "-c", PRELUDE]
